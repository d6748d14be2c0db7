"""Tokenizer + pretraining stages end to end on tiny settings: artifacts, reuse, tracking,
HF export, the golden loss curve, divergence and bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from bertforge.errors import DataError, TrainingDivergedError
from bertforge.pipeline.graph import Pipeline
from bertforge.pipeline.store import MANIFEST
from conftest import REPO, TINY, compose, copy_outputs, run_entry_point
from wandb_offline import read_offline_run

GOLDEN = REPO / "tests" / "golden" / "pretrain_bert_tiny_10_steps.json"
# WordPiece training in `tokenizers` breaks count ties in hash-map order (huggingface/tokenizers
# #1794), so the golden curve is defined on a fixed vocabulary trained once on the TINY corpus.
GOLDEN_TOKENIZER = REPO / "tests" / "golden" / "tokenizer_bert_tiny_test.json"


@pytest.fixture(scope="module")
def tiny_run(tiny_upstream):
    """The session's tiny upstream (read-only here: tests that build copy it first)."""
    pipeline = Pipeline(compose(*TINY, outputs=tiny_upstream))
    return tiny_upstream, {
        name: pipeline.artifact(name) for name in ("tokenizer", "pretrain_data", "pretrain")
    }


def test_artifacts_and_manifests(tiny_run):
    _, artifacts = tiny_run
    tokenizer, pretrain = artifacts["tokenizer"], artifacts["pretrain"]
    assert (tokenizer.path / "tokenizer.json").exists() and (tokenizer.path / "vocab.txt").exists()
    assert {"vocab_size", "unk_rate", "tokens_per_word", "train_seconds"} <= set(tokenizer.metrics)
    for name in ("model.safetensors", "model_config.json", "loss_curves.png", "hf/config.json"):
        assert (pretrain.path / name).exists(), name
    assert (pretrain.path / "checkpoints" / "last.ckpt").exists()
    manifest = json.loads((pretrain.path / MANIFEST).read_text())
    assert manifest["upstream"]["tokenizer"] == tokenizer.hash
    assert set(manifest["upstream"]) == {"tokenizer", "pretrain_data"}
    assert manifest["model"] == {"name": "pretrained bert_tiny", "trained_length": 64}
    for name in ("tokenizer.json", "vocab.txt", "tokenizer_config.json"):
        assert (pretrain.path / "hf" / name).is_file()  # the export is a whole checkpoint
    metrics = manifest["metrics"]
    expected = {"val_loss_mlm", "val_loss_nsp", "val_mlm_accuracy", "val_nsp_accuracy"}
    assert expected | {"tokens_per_s", "steps"} <= set(metrics)
    assert metrics["steps"] == 6 and metrics["tokens_per_s"] > 0
    assert 0.0 <= metrics["val_mlm_accuracy"] <= 1.0


def test_wandb_offline_run_holds_metrics_and_config(tiny_run):
    _, artifacts = tiny_run
    runs = json.loads((artifacts["pretrain"].path / MANIFEST).read_text())["wandb_runs"]
    run = read_offline_run(Path(runs[0]))
    assert run["run"].run_group == "tiny" and run["run"].job_type == "pretrain"
    config = run["config"]
    assert config["pretrain"]["mask_rate"] == 0.15 and config["model"]["name"] == "bert_tiny"
    # the whole lineage: the upstream stages' settings, the artifacts, the code version
    assert config["tokenizer"]["vocab_size"] == 800 and config["corpus"]["max_documents"] == 120
    assert config["artifacts"]["tokenizer"] == f"tokenizer-{artifacts['tokenizer'].hash}"
    assert config["artifacts"]["pretrain"] == f"pretrain-{artifacts['pretrain'].hash}"
    assert set(config["code"]) == {"version", "git_commit", "git_dirty"}
    logged = {key for row in run["history"] for key in row}
    assert {"train/loss_mlm", "train/loss_nsp", "train/lr", "val/loss_mlm"} <= logged
    assert any(key.startswith("pretrain/loss_curves") for key in logged)
    tokenizer_runs = json.loads((artifacts["tokenizer"].path / MANIFEST).read_text())["wandb_runs"]
    tokenizer_run = read_offline_run(Path(tokenizer_runs[0]))
    assert tokenizer_run["run"].job_type == "tokenizer"
    assert any("tokenizer/unk_rate" in row for row in tokenizer_run["history"])
    data_runs = json.loads((artifacts["pretrain_data"].path / MANIFEST).read_text())["wandb_runs"]
    data_run = read_offline_run(Path(data_runs[0]))
    assert data_run["run"].job_type == "pretrain_data"
    assert any("pretrain_data/train_examples" in row for row in data_run["history"])


def test_second_run_reuses_and_loggers_do_not_change_hashes(tiny_run):
    outputs, artifacts = tiny_run
    watch = ["logger=none", "trainer.enable_progress_bar=true", "pretrain.num_workers=1"]
    again = compose(*TINY, *watch, "pretrain.checkpoint_every_n_steps=5", outputs=outputs)
    results = {r.stage: r.artifact for r in Pipeline(again).run(["tokenizer", "pretrain"])}
    assert results["tokenizer"].reused and results["pretrain"].reused
    assert results["pretrain"].hash == artifacts["pretrain"].hash


def test_result_relevant_key_changes_the_hash(tiny_run):
    outputs, _ = tiny_run
    pipeline = Pipeline(compose(*TINY, "pretrain.mask_rate=0.3", outputs=outputs))
    assert pipeline.hashed("pretrain_data") == Pipeline(compose(*TINY)).hashed("pretrain_data")
    assert pipeline.hashed("pretrain") != Pipeline(compose(*TINY)).hashed("pretrain")


def test_length_bucketing_is_hashed_and_cuts_padding(tiny_outputs):
    varied = [*TINY, "pretrain.short_seq_prob=0.5", "pretrain.max_steps=40", "logger=csv"]
    plain = Pipeline(compose(*varied, outputs=tiny_outputs)).artifact("pretrain")
    cfg = compose(*varied, "pretrain.length_bucket_window=32", outputs=tiny_outputs)
    bucketed = Pipeline(cfg).artifact("pretrain")
    assert bucketed.hash != plain.hash
    assert bucketed.manifest["config"]["pretrain"]["length_bucket_window"] == 32
    assert 0 < bucketed.metrics["padding_share"] < 0.6 * plain.metrics["padding_share"]


def test_hf_export_reproduces_our_logits(tiny_run):
    from transformers import BertForPreTraining

    from bertforge.artifacts import load_pretrained

    _, artifacts = tiny_run
    ours, config = load_pretrained(artifacts["pretrain"])
    theirs = BertForPreTraining.from_pretrained(artifacts["pretrain"].path / "hf")
    ours.eval(), theirs.eval()
    ids = torch.randint(5, config.vocab_size, (3, 12))
    mask = torch.ones_like(ids, dtype=torch.bool)
    mask[1, 8:] = False
    types = torch.zeros_like(ids)
    types[:, 6:] = 1
    with torch.no_grad():
        out = ours(ids, token_type_ids=types, attention_mask=mask)
        ref = theirs(input_ids=ids, token_type_ids=types, attention_mask=mask.long())
    torch.testing.assert_close(out.nsp_logits, ref.seq_relationship_logits)
    torch.testing.assert_close(out.mlm_logits[mask], ref.prediction_logits[mask])


def golden_losses(outputs: Path, monkeypatch) -> list[float]:
    from tokenizers import Tokenizer

    import bertforge.stages.tokenizer

    fixed = Tokenizer.from_file(str(GOLDEN_TOKENIZER))
    monkeypatch.setattr(bertforge.stages.tokenizer, "train_tokenizer", lambda texts, cfg: fixed)
    # the golden was recorded with torch's dropout on the padded batch: the speed switches that
    # draw other dropout masks (unpad, fast_dropout) are off; tests/test_model.py shows that
    # they change nothing else (same outputs and gradients without dropout)
    cfg = compose(
        *TINY, "pretrain.max_steps=10", "pretrain.val_check_interval=10",
        "trainer.log_every_n_steps=1", "model.unpad=false", "model.fast_dropout=false",
        outputs=outputs,
    )  # fmt: skip
    artifact = Pipeline(cfg).artifact("pretrain")
    rows = (artifact.path / "logs" / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    column = header.index("train/loss")
    return [float(r.split(",")[column]) for r in rows[1:] if r.split(",")[column]]


def test_golden_loss_curve(tmp_path, monkeypatch):
    losses = golden_losses(tmp_path, monkeypatch)
    golden = json.loads(GOLDEN.read_text())
    assert len(losses) == len(golden["train_loss"]) == 10
    torch.testing.assert_close(losses, golden["train_loss"], atol=1e-3, rtol=0)


def test_mlm_only_drops_nsp(tiny_outputs):
    cfg = compose(*TINY, "pretrain=mlm_only", outputs=tiny_outputs)
    metrics = Pipeline(cfg).artifact("pretrain").metrics
    assert "val_loss_mlm" in metrics and "val_loss_nsp" not in metrics


def test_nan_loss_stops_with_step_and_keeps_last_good_checkpoint(tiny_outputs):
    cfg = compose(
        *TINY, "pretrain.lr=1e6", "pretrain.max_steps=40", "pretrain.checkpoint_every_n_steps=1",
        "pretrain.warmup_ratio=0", "pretrain.gradient_clip_val=1e9", outputs=tiny_outputs,
    )  # fmt: skip
    pipeline = Pipeline(cfg)
    with pytest.raises(TrainingDivergedError, match=r"at step \d+; lower pretrain.lr"):
        pipeline.artifact("pretrain")
    path = pipeline.store.path_for("pretrain", pipeline.artifact_hash("pretrain"))
    assert not (path / MANIFEST).exists()
    checkpoint = torch.load(path / "checkpoints" / "last.ckpt", weights_only=False)
    weights = checkpoint["state_dict"].values()
    assert all(torch.isfinite(w).all() for w in weights if w.is_floating_point())


@pytest.mark.parametrize(
    ("make_corpus", "fragment"),
    [
        (lambda d: (d / "blank.txt").write_text("  \n\n "), "has no text"),
        (lambda d: (d / "latin.txt").write_bytes("caf\xe9 au lait".encode("cp1252")), "byte"),
        (lambda d: None, r"no \*\.txt files"),
    ],
    ids=["empty", "not-utf8", "no-files"],
)
def test_bad_corpus_fails_clearly_and_leaves_nothing_complete(tmp_path, make_corpus, fragment):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    make_corpus(corpus)
    cfg = compose(*TINY, "corpus=text_files", f"corpus.path={corpus}", outputs=tmp_path / "out")
    with pytest.raises(DataError, match=fragment):
        Pipeline(cfg).run(["pretrain"])
    assert not list((tmp_path / "out").rglob(MANIFEST))


def test_missing_corpus_path_exits_2_with_one_line(tmp_path):
    missing = tmp_path / "nowhere"
    result = run_entry_point(
        "pretrain.py", *TINY, "corpus=text_files", f"corpus.path={missing}",
        f"paths.outputs={tmp_path}",
    )  # fmt: skip
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "corpus.path" in errors[0] and str(missing) in errors[0]
    assert not list(tmp_path.rglob(MANIFEST))


@pytest.mark.slow
def test_cli_builds_then_reuses(tmp_path):
    args = [*TINY, "stages=[tokenizer,pretrain]", f"paths.outputs={tmp_path}"]
    first = run_entry_point("run.py", *args)
    assert first.returncode == 0, first.stderr[-2000:]
    second = run_entry_point("run.py", *args)
    assert second.returncode == 0, second.stderr[-2000:]
    assert second.stdout.count("reused") == 2 and "built" not in second.stdout


@pytest.mark.slow
def test_losses_clearly_fall(tiny_outputs):
    cfg = compose(
        *TINY, "pretrain.max_steps=250", "pretrain.global_batch_size=16",
        "pretrain.val_check_interval=125", outputs=tiny_outputs,
    )  # fmt: skip
    metrics = Pipeline(cfg).artifact("pretrain").metrics
    assert metrics["train_loss_last"] < metrics["train_loss_first"] - 0.5


def test_force_rebuilds_only_the_requested_stage(tiny_run, tiny_outputs):
    _, artifacts = tiny_run
    pipeline = Pipeline(compose(*TINY, "logger=csv", "force=true", outputs=tiny_outputs))
    pipeline.run(["pretrain"])
    rebuilt = pipeline.results["pretrain"].artifact
    assert not rebuilt.reused and rebuilt.hash == artifacts["pretrain"].hash
    assert pipeline.results["tokenizer"].artifact.reused  # upstream untouched by force


def test_loader_workers_do_not_change_the_result(tiny_upstream, tmp_path):
    """`pretrain.num_workers` is not hashed, so it must not change what is computed: masks and
    order come from the loader's own seeds, and workers never draw from the global RNG."""
    from safetensors.torch import load_file

    weights = []
    for workers in (0, 2):
        outputs = copy_outputs(tiny_upstream, tmp_path / f"workers{workers}")
        shutil.rmtree(outputs / "artifacts" / "pretrain")  # built again with these workers
        cfg = compose(*TINY, f"pretrain.num_workers={workers}", outputs=outputs)
        weights.append(load_file(Pipeline(cfg).artifact("pretrain").path / "model.safetensors"))
    for name, tensor in weights[0].items():
        assert torch.equal(tensor, weights[1][name]), name

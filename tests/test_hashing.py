"""What decides reuse: every config field is hashed by a stage or marked watch-only, inputs are
hashed by content, and an input edited in place rebuilds exactly the stages that read it."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from bertforge.config import Config, ProbeConfig
from bertforge.errors import DataError
from bertforge.pipeline.fingerprint import Fingerprints
from bertforge.pipeline.graph import Pipeline
from bertforge.pipeline.stage import leaf_fields
from bertforge.stages import GRAPH
from conftest import CONF, TINY, compose, copy_outputs

# --- The schema ------------------------------------------------------------------------------


def test_every_config_field_is_hashed_by_a_stage_or_marked_watch_only():
    hashed_somewhere = set()
    for stage in GRAPH.values():
        hashed_somewhere |= {path for path, h in leaf_fields(stage.settings).items() if h}
    unaccounted = [
        path
        for path, hashed in leaf_fields(Config).items()
        if hashed and path not in hashed_somewhere
    ]
    assert not unaccounted, f"fields neither hashed by a stage nor watch_only(): {unaccounted}"
    # and a watch-only field is never in a hash
    watch_only = {path for path, hashed in leaf_fields(Config).items() if not hashed}
    assert {"pretrain.num_workers", "trainer.devices", "logger.project"} <= watch_only
    assert "trainer.precision" in hashed_somewhere and "model.vocab_size" in watch_only


def test_a_stage_hashes_only_the_settings_it_reads():
    base = Pipeline(compose(*TINY))
    for override, changed in [
        ("pretrain.mask_rate=0.3", {"pretrain"}),
        ("pretrain.lr_schedule=one_cycle", {"pretrain"}),
        ("pretrain.lr_schedule=trapezoidal", {"pretrain"}),
        ("pretrain.decay_ratio=0.3", {"pretrain"}),
        ("pretrain.max_seq_length=32", {"pretrain_data", "pretrain"}),
        ("pretrain.num_workers=2", set()),
        ("pretrain.checkpoint_every_n_steps=7", set()),
        ("trainer.devices=2", set()),
        ("trainer.precision=bf16-mixed", {"pretrain", "finetune"}),
        ("tokenizer.vocab_size=900", {"tokenizer"}),
        ("finetune.lr=5e-4", {"finetune"}),
        ("finetune.export=false", set()),
        ("visualize.perplexity=20", {"visualize"}),
        ("visualize.n_jobs=1", set()),
        ("seed=7", {"pretrain_data", "pretrain", "finetune", "visualize", "evolution", "probe"}),
        ("pretrain.snapshot_steps=[2,4]", {"pretrain"}),
        ("evolution.batch_size=8", set()),
        ("evolution.n_jobs=1", set()),
        (
            "task.train_per_class=2",
            {"finetune", "extract", "probe", "evolution"},
        ),  # extract embeds the task's texts
        ("task.max_train_examples=10", {"finetune", "extract", "probe", "evolution"}),
        ("task.subset_seed=3", {"finetune", "extract", "probe", "evolution"}),
        ("corpus.format=lines", {"tokenizer", "pretrain_data"}),
        ("corpus.text_column=document", {"tokenizer", "pretrain_data"}),
        ("corpus.document_marker='^### '", {"tokenizer", "pretrain_data"}),
        ("probe.C=0.1", {"probe"}),
        ("task.max_examples=40", {"finetune", "extract", "probe", "evolution"}),
        ("model=bert_mini", {"pretrain", "probe"}),  # probe's random model is a bert_mini
    ]:
        other = Pipeline(compose(*TINY, override))
        differ = {name for name in GRAPH if other.hashed(name) != base.hashed(name)}
        assert differ == changed, override


def test_hf_initialisation_and_tokenizer_enter_the_right_hashes(tmp_path):
    """tokenizer.source/hf_model enter the tokenizer's hash (the checkpoint by content);
    pretrain.init/hf_model the pretraining's; with init=hf, model.* is not read and not hashed."""
    checkpoint = tmp_path / "checkpoint"
    checkpoint.mkdir()
    (checkpoint / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nword\n")
    hf_tokenizer = ["tokenizer.source=hf", f"tokenizer.hf_model={checkpoint}"]
    continued = [*hf_tokenizer, "pretrain.init=hf", f"pretrain.hf_model={checkpoint}"]

    def differ(a: list[str], b: list[str]) -> set[str]:
        first, second = Pipeline(compose(*TINY, *a)), Pipeline(compose(*TINY, *b))
        return {name for name in GRAPH if first.hashed(name) != second.hashed(name)}

    assert differ([], hf_tokenizer) == {"tokenizer"}
    assert differ(hf_tokenizer, continued) == {"pretrain"}
    # the checkpoint gives the pretrained shape; only the probe's random-init model reads model.*
    assert differ(continued, [*continued, "model=bert_mini"]) == {"probe"}
    assert differ(hf_tokenizer, [*hf_tokenizer, "model=bert_mini"]) == {"pretrain", "probe"}
    before = {n: Pipeline(compose(*TINY, *continued)).hashed(n) for n in GRAPH}
    (checkpoint / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nother\n")
    after = Pipeline(compose(*TINY, *continued))
    assert {n for n in GRAPH if before[n] != after.hashed(n)} == {"tokenizer", "pretrain"}


@pytest.mark.parametrize(
    "override",
    [
        "evolution.split=validation", "evolution.max_examples=40", "evolution.pooling=cls",
        "evolution.layer=1", "evolution.align=none", "evolution.perplexity=5",
        "evolution.n_iter=400", "evolution.knn_k=3", "evolution.words=[bank]",
        f"evolution.senses_file={CONF / 'evolution' / 'senses.csv'}",
    ],
)  # fmt: skip
def test_every_evolution_setting_rebuilds_evolution_alone(override):
    base = Pipeline(compose(*TINY))
    other = Pipeline(compose(*TINY, override))
    assert {name for name in GRAPH if other.hashed(name) != base.hashed(name)} == {"evolution"}


def test_every_evolution_field_is_covered_by_the_sensitivity_test():
    from bertforge.config import EvolutionConfig

    tested = test_every_evolution_setting_rebuilds_evolution_alone.pytestmark[0].args[1]
    hashed = [f.name for f in dataclasses.fields(EvolutionConfig) if f.metadata.get("hashed", 1)]
    assert sorted(hashed) == sorted(o.split("=")[0].removeprefix("evolution.") for o in tested)


PROBE_CHANGES = {  # a changed value for every ProbeConfig field
    "models": "probe.models=[pretrained,random]",
    "split": "probe.split=test",
    "pooling": "probe.pooling=cls",
    "C": "probe.C=0.1",
    "max_iter": "probe.max_iter=50",
    "max_train_examples": "probe.max_train_examples=100",
    "max_seq_length": "probe.max_seq_length=64",
}


def test_every_probe_field_changes_the_probe_hash_alone():
    assert set(PROBE_CHANGES) == {f.name for f in dataclasses.fields(ProbeConfig)}
    base = Pipeline(compose(*TINY))
    for override in PROBE_CHANGES.values():
        other = Pipeline(compose(*TINY, override))
        differ = {name for name in GRAPH if other.hashed(name) != base.hashed(name)}
        assert differ == {"probe"}, override


def test_probe_hashes_the_seed_and_architecture_only_for_its_random_model():
    base = Pipeline(compose(*TINY, "probe.models=[pretrained,finetuned]"))
    for override in ("seed=7", "model=bert_mini"):
        other = Pipeline(compose(*TINY, "probe.models=[pretrained,finetuned]", override))
        assert other.hashed("probe") == base.hashed("probe"), override


def test_config_files_never_repeat_a_schema_default():
    """Defaults live in the dataclasses only: a YAML line that repeats one could drift."""
    defaults = OmegaConf.to_container(OmegaConf.structured(Config))
    for field in dataclasses.fields(Config):
        for path in sorted((CONF / field.name).glob("*.yaml")):
            values = yaml.safe_load(path.read_text()) or {}
            values.pop("defaults", None)
            repeated = [k for k, v in values.items() if defaults[field.name].get(k, ...) == v]
            assert not repeated, f"{path} repeats the schema default of {repeated}"


# --- Content fingerprints --------------------------------------------------------------------


def test_fingerprints_follow_the_bytes_not_the_location(tmp_path):
    a = tmp_path / "a" / "corpus"
    a.mkdir(parents=True)
    (a / "one.txt").write_text("First document.\n")
    (a / "two.txt").write_text("Second document.\n")
    prints = Fingerprints(tmp_path / "cache.sqlite")
    before = prints.of("corpus.path", str(a))
    b = tmp_path / "elsewhere" / "corpus"
    shutil.copytree(a, b)
    assert prints.of("corpus.path", str(b)) == before  # same bytes, same names
    assert prints.of("corpus.path", str(b / "*.txt")) == before  # a glob of the same files
    (b / "two.txt").write_text("Second document, edited.\n")
    assert prints.of("corpus.path", str(b)) != before
    (b / "two.txt").rename(b / "three.txt")  # names matter inside a directory
    assert prints.of("corpus.path", str(b))["sha256"] != before["sha256"]


def test_each_extra_corpus_path_is_hashed_by_content(tmp_path):
    """corpus.extra_paths is a list of inputs: each entry is fingerprinted like corpus.path."""
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "speech.txt").write_text("Fellow citizens.\n", encoding="utf-8")
    (tmp_path / "more.txt").write_text("More text.\n", encoding="utf-8")

    def tokenizer_hash(*extra: Path) -> tuple[str, dict]:
        paths = ",".join(map(str, extra))
        pipeline = Pipeline(
            compose(*TINY, f"corpus.extra_paths=[{paths}]", outputs=tmp_path / "outputs")
        )
        return pipeline.artifact_hash("tokenizer"), pipeline.hashed("tokenizer")

    first, hashed = tokenizer_hash(tmp_path / "a" / "speech.txt", tmp_path / "more.txt")
    assert [e["file"] for e in hashed["corpus"]["extra_paths"]] == ["speech.txt", "more.txt"]
    assert tokenizer_hash(tmp_path / "b" / "speech.txt", tmp_path / "more.txt")[0] == first
    assert tokenizer_hash(tmp_path / "more.txt", tmp_path / "a" / "speech.txt")[0] != first
    assert tokenizer_hash(tmp_path / "a" / "speech.txt")[0] != first
    (tmp_path / "more.txt").write_text("Edited text.\n", encoding="utf-8")
    assert tokenizer_hash(tmp_path / "a" / "speech.txt", tmp_path / "more.txt")[0] != first
    with pytest.raises(DataError, match=r"corpus\.extra_paths\[1\]=.*nowhere.txt does not exist"):
        tokenizer_hash(tmp_path / "more.txt", tmp_path / "nowhere.txt")


def test_digests_are_cached_by_size_and_mtime(tmp_path):
    big = tmp_path / "big.txt"
    big.write_bytes(b"x" * 1_000_000)
    first = Fingerprints(tmp_path / "cache.sqlite")
    digest = first.of("corpus.path", str(big))
    assert first.files_hashed == 1
    again = Fingerprints(tmp_path / "cache.sqlite")  # a later run, same cache
    assert again.of("corpus.path", str(big)) == digest and again.files_hashed == 0
    big.write_bytes(b"y" * 1_000_000)  # same size, new mtime: read again
    assert again.of("corpus.path", str(big)) != digest and again.files_hashed == 1


def test_a_missing_input_fails_before_anything_builds(tmp_path):
    cfg = compose(*TINY, "corpus=text_files", f"corpus.path={tmp_path / 'nowhere'}")
    with pytest.raises(Exception, match=r"corpus\.path=.*nowhere does not exist"):
        Pipeline(cfg).check(["pretrain"])


def test_a_wrong_task_column_fails_before_anything_builds(tmp_path):
    """#14.9: a wrong task.text_columns was reported only after tokenizer and pretraining."""
    (tmp_path / "train.csv").write_text("review,label\ngood film,pos\nbad film,neg\n")
    (tmp_path / "dev.csv").write_text("review,label\nfine film,pos\n")
    cfg = compose(
        *TINY, "task=local_files", f"task.train_file={tmp_path / 'train.csv'}",
        f"task.validation_file={tmp_path / 'dev.csv'}", "task.text_columns=[text]",
        outputs=tmp_path / "outputs",
    )  # fmt: skip
    with pytest.raises(DataError, match=r"train\.csv has no column 'text'; columns found: review"):
        Pipeline(cfg).run(["finetune"])
    assert not list((tmp_path / "outputs").rglob("manifest.json"))  # nothing was built


# --- Editing inputs in place -----------------------------------------------------------------


def write_inputs(root: Path, hf_export: Path) -> dict[str, Path]:
    """A text corpus, a local_files task and an HF checkpoint under `root`."""
    corpus = root / "corpus"
    corpus.mkdir(parents=True)
    topics = ["the market rose and shares gained", "the team won the match at home"]
    for i in range(40):
        text = f"Document {i}. {topics[i % 2].capitalize()} again. It was day {i} of the season."
        (corpus / f"doc{i:02d}.txt").write_text(text + "\n")
    task = root / "task"
    task.mkdir()
    for split in ("train", "dev"):
        rows = ["text,label"] + [
            f"{topics[i % 2]} {i},{'pos' if i % 2 else 'neg'}" for i in range(16)
        ]
        (task / f"{split}.csv").write_text("\n".join(rows) + "\n")
    shutil.copytree(hf_export, root / "hf")
    return {"corpus": corpus, "task": task, "hf": root / "hf"}


def overrides(paths: dict[str, Path]) -> list[str]:
    return [
        *TINY, "corpus=text_files", f"corpus.path={paths['corpus']}", "tokenizer.vocab_size=200",
        "task=local_files", f"task.train_file={paths['task'] / 'train.csv'}",
        f"task.validation_file={paths['task'] / 'dev.csv'}", "task.text_columns=[text]",
        "finetune.init=random", "finetune.max_steps=2", "extract.source=hf",
        f"extract.hf_model={paths['hf']}", "extract.dataset=task", "extract.split=validation",
        "extract.words=[]",
    ]  # fmt: skip


@pytest.mark.slow
def test_editing_an_input_in_place_rebuilds_exactly_the_stages_that_read_it(
    tiny_upstream, tmp_path
):
    pretrain = next((tiny_upstream / "artifacts" / "pretrain").glob("*/hf"))
    paths = write_inputs(tmp_path / "inputs", pretrain)
    outputs = tmp_path / "outputs"

    def reused() -> dict[str, bool]:
        pipeline = Pipeline(compose(*overrides(paths), outputs=outputs))
        pipeline.run(["pretrain_data", "finetune", "extract"])
        return {name: result.artifact.reused for name, result in pipeline.results.items()}

    first = reused()
    assert not any(first.values())
    assert all(reused().values())  # nothing changed: everything reused

    # The corpus: the tokenizer and everything built on it (random-init fine-tuning included).
    (paths["corpus"] / "doc00.txt").write_text("한국어 문서입니다. 완전히 다른 텍스트.\n")
    assert reused() == {"tokenizer": False, "pretrain_data": False, "finetune": False,
                        "extract": True}  # fmt: skip

    # A task file: fine-tuning and extraction (it embeds the task's texts), nothing upstream.
    train = paths["task"] / "train.csv"
    train.write_text(train.read_text().replace(",pos", ",positive").replace(",neg", ",negative"))
    dev = paths["task"] / "dev.csv"
    dev.write_text(train.read_text())
    assert reused() == {"tokenizer": True, "pretrain_data": True, "finetune": False,
                        "extract": False}  # fmt: skip
    labels = [json.loads(p.read_text())["label_names"] for p in
              (outputs / "artifacts" / "finetune").glob("*/labels.json")]  # fmt: skip
    assert ["negative", "positive"] in labels  # the new classes, not the old ones

    # The HF checkpoint read by extract: extract alone.
    config = json.loads((paths["hf"] / "config.json").read_text())
    (paths["hf"] / "config.json").write_text(json.dumps({**config, "layer_norm_eps": 1e-6}))
    assert reused() == {"tokenizer": True, "pretrain_data": True, "finetune": True,
                        "extract": False}  # fmt: skip

    # The same bytes elsewhere (another directory, as from another working directory): reused.
    moved = {name: tmp_path / "moved" / name for name in paths}
    for name, path in paths.items():
        shutil.copytree(path, moved[name])
    paths = moved
    assert all(reused().values())
    copy_outputs(outputs, tmp_path / "outputs_copy")  # and the artifacts themselves move too
    outputs = tmp_path / "outputs_copy"
    assert all(reused().values())

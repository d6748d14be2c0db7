"""pretrain.snapshot_steps and the evolution stage: snapshots (and their resume), one aligned map
over three snapshots, k-NN accuracy and sense silhouettes per snapshot, W&B series, errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from bertforge.analysis.embed import load_embeddings
from bertforge.analysis.evolution import (
    aligned_maps,
    knn_accuracy,
    procrustes_onto,
    read_senses,
    sense_silhouette,
)
from bertforge.analysis.layouts import embed_2d
from bertforge.config import TaskConfig, VisualizeConfig
from bertforge.errors import ConfigError, DataError
from bertforge.lit.snapshots import EncoderSnapshots
from bertforge.pipeline.graph import Pipeline
from bertforge.stages import evolution
from conftest import CONF, TINY, compose, copy_outputs
from wandb_offline import read_offline_run

SENSES = CONF / "evolution" / "senses.csv"
SNAPSHOTS = ["pretrain.snapshot_steps=[2,4]"]  # TINY pretrains for 6 steps: 2, 4 and 6 (final)
FAST = [
    "evolution.perplexity=5", "evolution.n_iter=300", "evolution.knn_k=5", "evolution.n_jobs=1",
    f"evolution.senses_file={SENSES}",
]  # fmt: skip


@pytest.fixture(scope="module")
def evolved(tiny_upstream, tmp_path_factory):
    outputs = copy_outputs(tiny_upstream, tmp_path_factory.mktemp("outputs"))
    cfg = compose(*TINY, *SNAPSHOTS, *FAST, "logger=wandb", outputs=outputs)
    pipeline = Pipeline(cfg)
    return pipeline.artifact("pretrain"), pipeline.artifact("evolution")


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_pretraining_saves_the_encoder_at_the_snapshot_steps(evolved):
    pretrain, _ = evolved
    files = sorted(p.name for p in (pretrain.path / "snapshots").iterdir())
    assert files == ["step_2.safetensors", "step_4.safetensors"]  # step 6 is model.safetensors
    early, final = (
        load_file(pretrain.path / "snapshots" / "step_2.safetensors"),
        load_file(pretrain.path / "model.safetensors"),
    )
    name = "embeddings.word_embeddings.weight"
    assert early.keys() <= {key.removeprefix("bert.") for key in final}  # the encoder only
    assert not torch.equal(early[name], final[f"bert.{name}"])  # trained on after step 2


def test_one_row_per_snapshot_with_files_and_numbers(evolved):
    _, artifact = evolved
    for name in ("evolution.png", "knn.png", "senses.png", "maps/step_2.png", "maps/step_6.png"):
        assert (artifact.path / name).stat().st_size > 5_000, name
    rows = read_csv(artifact.path / "evolution.csv")
    assert [int(row["step"]) for row in rows] == [2, 4, 6]
    for row in rows:
        assert 0.0 <= float(row["knn_accuracy"]) <= 1.0
        assert 0.0 <= float(row["knn_accuracy_2d"]) <= 1.0 and float(row["trustworthiness"]) > 0.5
        assert -1.0 <= float(row["sense_silhouette"]) <= 1.0
        for word in ("bank", "game", "record"):
            assert -1.0 <= float(row[f"silhouette_{word}"]) <= 1.0, word
    saved = json.loads((artifact.path / "evolution.json").read_text())
    assert saved["steps"] == [2, 4, 6] and len(saved["labels"]) == 48  # TINY: 48 test texts
    assert {len(xy) for xy in saved["maps"].values()} == {48}
    metrics = artifact.metrics
    assert metrics["snapshots"] == 3 and metrics["texts"] == 48
    assert metrics["knn_accuracy_last"] == pytest.approx(float(rows[-1]["knn_accuracy"]))
    assert "sense_silhouette_first" in metrics and "sense_silhouette_last" in metrics


def test_the_last_snapshot_is_a_plain_opentsne_fit_and_the_others_share_its_space(evolved):
    _, artifact = evolved
    saved = json.loads((artifact.path / "evolution.json").read_text())
    X, _ = load_embeddings(artifact.path / "sentences" / "step_6", layer=-1)
    cfg = VisualizeConfig(perplexity=5, n_iter=300, snapshots=[])
    plain = embed_2d(np.asarray(X), "tsne", cfg, seed=42, n_jobs=1)  # TINY's seed is 42
    np.testing.assert_allclose(np.array(saved["maps"]["6"]), plain.xy, rtol=1e-5, atol=1e-4)
    low, high = plain.xy.min(axis=0), plain.xy.max(axis=0)
    margin = 0.5 * (high - low)
    for step in ("2", "4"):
        placed = np.array(saved["maps"][step])
        assert ((placed >= low - margin) & (placed <= high + margin)).all(), step


def test_wandb_holds_a_step_indexed_image_series_and_the_table(evolved):
    _, artifact = evolved
    (run,) = artifact.manifest["wandb_runs"]
    history = read_offline_run(Path(run))["history"]
    frames = [row for row in history if "evolution/map/path" in row]
    assert [row["_step"] for row in frames] == [2, 4, 6]
    assert all("evolution/knn_accuracy" in row for row in frames)
    tables = list((Path(run) / "files" / "media" / "table").rglob("*.table.json"))
    (table,) = [json.loads(p.read_text()) for p in tables]
    assert table["columns"][:2] == ["step", "knn_accuracy"] and len(table["data"]) == 3


def test_without_a_sense_file_the_silhouette_is_skipped(evolved, caplog):
    pretrain, _ = evolved
    outputs = pretrain.path.parents[2]
    cfg = compose(*TINY, *SNAPSHOTS, *FAST[:-1], "evolution.words=[said]", outputs=outputs)
    with caplog.at_level("INFO"):
        artifact = Pipeline(cfg).artifact("evolution")
    assert "evolution.senses_file is not set" in caplog.text
    rows = read_csv(artifact.path / "evolution.csv")
    assert "sense_silhouette" not in rows[0] and float(rows[0]["occurrences_said"]) > 0
    assert not (artifact.path / "senses.png").exists()


# --- the pieces ------------------------------------------------------------------------------


def test_procrustes_undoes_a_rotation_and_scale():
    rng = np.random.default_rng(0)
    reference = rng.normal(size=(50, 8)).astype(np.float32)
    rotation, _ = np.linalg.qr(rng.normal(size=(8, 8)))
    moved = 3.0 * reference @ rotation + 5.0
    np.testing.assert_allclose(procrustes_onto(moved, reference), reference, atol=1e-4)


def test_aligned_maps_place_earlier_points_near_their_later_selves():
    rng = np.random.default_rng(1)
    centres = rng.normal(scale=8, size=(3, 16))
    late = np.concatenate([c + rng.normal(size=(30, 16)) for c in centres]).astype(np.float32)
    early = late + rng.normal(scale=0.1, size=late.shape).astype(np.float32)  # barely moved
    cfg = VisualizeConfig(perplexity=10, n_iter=300, snapshots=[])
    (placed, final_xy), _ = aligned_maps([early @ np.eye(16)[::-1], late], cfg, seed=0)
    labels = np.repeat([0, 1, 2], 30)
    for c in range(3):  # each cluster lands where its later self is
        gap = np.linalg.norm(placed[labels == c].mean(0) - final_xy[labels == c].mean(0))
        assert gap < 0.25 * np.ptp(final_xy, axis=0).max(), c


def test_knn_accuracy_and_silhouette_on_separable_data():
    rng = np.random.default_rng(2)
    X = np.concatenate([rng.normal(size=(20, 4)), rng.normal(size=(20, 4)) + 10])
    labels = ["a"] * 20 + ["b"] * 20
    assert knn_accuracy(X, labels, k=5, seed=0) == (1.0, 5)
    assert knn_accuracy(rng.normal(size=(40, 4)), labels, k=5, seed=0)[0] < 0.8
    X = np.concatenate([rng.normal(size=(10, 4)) + 5, rng.normal(size=(10, 4)) - 5])
    assert sense_silhouette(X, ["river"] * 10 + ["finance"] * 10) > 0.5
    assert sense_silhouette(X, ["river"] * 20) is None


def test_the_shipped_sense_file_reads(tmp_path):
    rows = read_senses(SENSES)
    assert {row["word"] for row in rows} == {"bank", "game", "record"}
    assert {row["sense"] for row in rows if row["word"] == "bank"} == {"river", "finance"}
    bad = tmp_path / "senses.csv"
    bad.write_text("word,text,label\nbank,On the bank.,river\n")
    with pytest.raises(DataError, match="it needs word, sentence, sense"):
        read_senses(bad)


# --- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("pretrain.snapshot_steps=[0,4]", r"has \[0\] outside 1\.\.6"),
        ("pretrain.snapshot_steps=[4,7]", r"has \[7\] outside 1\.\.6"),
        ("evolution.align=rotate", "evolution.align='rotate' is not one of procrustes, none"),
        ("evolution.n_iter=200", "evolution.n_iter=200 must be >= 251"),
        ("evolution.pooling=max", "evolution.pooling='max' is not one of cls, mean"),
    ],
)
def test_bad_settings_are_one_line_config_errors(override, fragment):
    with pytest.raises(ConfigError, match=fragment) as error:
        compose(*TINY, override)
    assert "\n" not in str(error.value)


def test_a_regression_task_is_refused_at_start_up():
    settings = compose(*TINY)
    with pytest.raises(ConfigError, match="choose a classification task"):
        evolution.check(evolution.Settings(settings.evolution, TaskConfig(name="stsb"), 1))


def test_perplexity_too_large_for_the_texts(evolved):
    pretrain, _ = evolved
    cfg = compose(
        *TINY, *SNAPSHOTS, *FAST, "evolution.perplexity=20", outputs=pretrain.path.parents[2]
    )
    with pytest.raises(ConfigError, match=r"use evolution\.perplexity <= 15\.6"):
        Pipeline(cfg).artifact("evolution")


def test_resumed_pretraining_keeps_every_snapshot_once(tiny_upstream, tmp_path, monkeypatch):
    """A run that dies after step 5 (last.ckpt at step 3, snapshot 4 already written) resumes
    from step 3 and ends with the snapshots of an uninterrupted run, each file once."""
    reference = copy_outputs(tiny_upstream, tmp_path / "reference")
    expected = Pipeline(compose(*TINY, *SNAPSHOTS, outputs=reference)).artifact("pretrain")

    killed = copy_outputs(tiny_upstream, tmp_path / "killed")
    original = EncoderSnapshots.on_train_batch_end

    def dies_after_step_5(self, trainer, *args):
        original(self, trainer, *args)
        if trainer.global_step == 5:
            raise RuntimeError("killed")

    monkeypatch.setattr(EncoderSnapshots, "on_train_batch_end", dies_after_step_5)
    cfg = compose(*TINY, *SNAPSHOTS, outputs=killed)
    with pytest.raises(RuntimeError, match="killed"):
        Pipeline(cfg).artifact("pretrain")
    (directory,) = (killed / "artifacts" / "pretrain").glob(f"{expected.hash}")
    assert sorted(p.name for p in (directory / "snapshots").iterdir()) == [
        "step_2.safetensors", "step_4.safetensors",
    ]  # fmt: skip
    assert (
        torch.load(directory / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 3
    )

    monkeypatch.setattr(EncoderSnapshots, "on_train_batch_end", original)
    resumed = Pipeline(cfg).artifact("pretrain")
    assert sorted(p.name for p in (resumed.path / "snapshots").iterdir()) == [
        "step_2.safetensors", "step_4.safetensors",
    ]  # fmt: skip
    for name in ("step_2.safetensors", "step_4.safetensors"):
        ours, theirs = (
            load_file(resumed.path / "snapshots" / name),
            load_file(expected.path / "snapshots" / name),
        )
        for key in theirs:
            torch.testing.assert_close(ours[key], theirs[key], rtol=0, atol=0, msg=key)

    (resumed.path / "snapshots" / "step_2.safetensors").unlink()  # lost while stopped:
    (resumed.path / "manifest.json").unlink()  # the resumed run must not go on without it
    with pytest.raises(DataError, match=r"snapshots of steps \[2\] are missing"):
        Pipeline(cfg).artifact("pretrain")

"""Stage `probe`: linear probes per layer for pretrained, random and fine-tuned models; the
analysis on synthetic features; bad input as one line."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from bertforge.analysis.probe import chance_level, fit_probe, probe_layers
from bertforge.errors import ConfigError, DataError
from bertforge.pipeline.graph import Pipeline
from conftest import TINY, compose, copy_outputs, requires_shared_data

# --- The analysis on synthetic features -------------------------------------------------------


def synthetic_layers(n: int, seed: int = 0):
    """Three classes; layer 0 is noise, layer 1 holds the class in two of its 16 dimensions."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    noise = rng.normal(size=(n, 16))
    separable = rng.normal(size=(n, 16))
    separable[:, 3] += 6.0 * (y == 1)
    separable[:, 7] += 6.0 * (y == 2)
    return {0: noise, 1: separable}, y


def test_the_informative_layer_scores_near_one_and_noise_near_chance():
    train, y_train = synthetic_layers(300, seed=0)
    val, y_val = synthetic_layers(300, seed=1)
    scores = probe_layers("synthetic", train, y_train, val, y_val, C=1.0)
    by_layer = {s.layer: s for s in scores}
    assert by_layer[1].val > 0.97 and by_layer[1].converged
    chance = chance_level(y_train, y_val)
    assert chance == pytest.approx(1 / 3, abs=0.01)
    assert abs(by_layer[0].val - chance) < 0.1  # noise: chance, though it fits train better
    assert by_layer[0].train > by_layer[0].val
    assert {s.metric for s in scores} == {"accuracy"} and {s.n_val for s in scores} == {300}


def test_regression_probe_scores_pearson():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 8))
    y = X[:, 2] * 2.0 + 0.1 * rng.normal(size=200)
    val, train, converged = fit_probe(
        X[:100], y[:100], X[100:], y[100:], task_type="regression", C=1.0
    )
    assert val > 0.98 and train > 0.98 and converged
    constant, _, _ = fit_probe(
        np.zeros((100, 8)), y[:100], np.zeros((100, 8)), y[100:], task_type="regression"
    )
    assert constant == 0.0  # no signal, no NaN


def test_too_few_examples_or_one_class_is_a_data_error():
    layers, y = synthetic_layers(30)
    with pytest.raises(DataError, match="needs at least 10 of each"):
        probe_layers("m", {0: layers[0][:5]}, y[:5], {0: layers[0]}, y)
    with pytest.raises(DataError, match="same label"):
        probe_layers("m", {0: layers[0]}, np.zeros(30, int), {0: layers[0]}, y)


# --- The stage on the tiny model --------------------------------------------------------------

PROBE = ["probe.max_train_examples=40", "logger=wandb"]


@pytest.fixture(scope="module")
def probed(tiny_upstream, tmp_path_factory):
    outputs = copy_outputs(tiny_upstream, tmp_path_factory.mktemp("outputs"))
    pipeline = Pipeline(compose(*TINY, *PROBE, outputs=outputs))
    return pipeline.artifact("probe")


def test_probe_scores_every_layer_of_every_model(probed):
    with open(probed.path / "probe.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["model"], int(r["layer"])) for r in rows] == [
        (model, layer) for model in ("pretrained", "random", "finetuned") for layer in (0, 1, 2)
    ]  # bert_tiny: embeddings + 2 layers
    for row in rows:
        assert 0.0 <= float(row["val"]) <= 1.0 and 0.0 <= float(row["train"]) <= 1.0
        assert row["metric"] == "accuracy"
        assert (int(row["n_train"]), int(row["n_val"])) == (40, 48)  # TINY: 48 per split
    document = json.loads((probed.path / "probe.json").read_text())
    assert document["task"] == "bbc_news" and document["split"] == "validation"
    assert 0.0 < document["chance"] < 0.5 and len(document["rows"]) == 9
    assert (probed.path / "probe.png").stat().st_size > 10_000
    assert not (probed.path / "embeddings").exists()  # the scratch vectors are gone
    metrics = probed.metrics
    assert {"pretrained_best", "random_best_layer", "finetuned_last", "chance"} <= set(metrics)


def test_probe_logs_its_figure_and_table_to_wandb(probed):
    manifest = json.loads((probed.path / "manifest.json").read_text())
    (run,) = [Path(p) for p in manifest["wandb_runs"]]
    files = run / "files"
    assert list((files / "media" / "images" / "probe").glob("curves_*.png"))
    (table,) = (files / "media" / "table" / "probe").glob("layers_*.table.json")
    content = json.loads(table.read_text())
    assert content["columns"][:4] == ["model", "layer", "metric", "val"]
    assert len(content["data"]) == 9


def test_probe_without_finetuned_needs_no_finetune(tiny_outputs):
    pipeline = Pipeline(compose(*TINY, "probe.models=[random]", outputs=tiny_outputs))
    assert pipeline.needed(["probe"]) == ["tokenizer", "probe"]
    full = Pipeline(compose(*TINY, outputs=tiny_outputs)).needed(["probe"])
    assert {"pretrain", "finetune", "probe"} <= set(full)


def test_unknown_model_name_is_a_config_error():
    with pytest.raises(ConfigError, match=r"probe.models='trained' is not one of pretrained"):
        compose(*TINY, "probe.models=[pretrained,trained]")


def test_task_with_too_few_examples_fails_before_anything_builds(tmp_path):
    cfg = compose(*TINY, "task.max_examples=4", "probe.models=[random]", outputs=tmp_path)
    with pytest.raises(DataError, match=r"4 training and 4 held-out examples; it needs at least"):
        Pipeline(cfg).run(["probe"])
    assert not (tmp_path / "artifacts").exists()  # the check came first


def test_regression_task_gets_a_ridge_probe_scored_by_pearson(tiny_outputs):
    glue = requires_shared_data("glue", "STS-B").parent
    cfg = compose(
        *TINY, "task=stsb", f"task.data_dir={glue}", "probe.models=[random]", outputs=tiny_outputs
    )
    probe = Pipeline(cfg).artifact("probe")
    document = json.loads((probe.path / "probe.json").read_text())
    assert document["metric"] == "pearson" and document["chance"] == 0.0
    assert [(r["model"], r["layer"], r["metric"]) for r in document["rows"]] == [
        ("random", layer, "pearson") for layer in (0, 1, 2)
    ]
    assert all(-1.0 <= r["val"] <= 1.0 for r in document["rows"])

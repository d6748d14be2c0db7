"""Linear probes on frozen per-layer embeddings: how much of a task each layer's vectors hold,
as far as a linear model can read it (Alain & Bengio 2016; Tenney et al. 2019).

A probe is fit per layer on the train split's vectors (standardised, then an L2-regularised
logistic regression; for a regression task a ridge regression) and scored on a held-out split:
accuracy, or Pearson's r for regression. The chance line is what the probe reaches knowing no
input: the share of the held-out split that has the train split's most frequent label (0 for
Pearson's r). Plain functions of arrays: no model, no stage, no files other than those named.
"""

from __future__ import annotations

import csv
import io
import json
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from scipy.stats import pearsonr
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from bertforge.analysis.figures import fit_title, save_figure
from bertforge.errors import DataError
from bertforge.files import write_atomic

COLUMNS = ("model", "layer", "metric", "val", "train", "n_train", "n_val")  # probe.csv


@dataclass(frozen=True)
class LayerScore:
    """One probe: `model`'s layer `layer` (0 = embedding output), its held-out score `val`
    and its score on the examples it was fit on (`train`; a large gap says it memorised)."""

    model: str
    layer: int
    metric: str  # accuracy | pearson
    val: float
    train: float
    n_train: int
    n_val: int
    converged: bool = True


def probe_metric(task_type: str) -> str:
    return "pearson" if task_type == "regression" else "accuracy"


def _score(metric: str, gold: np.ndarray, predicted: np.ndarray) -> float:
    if metric == "accuracy":
        return float(np.mean(gold == predicted))
    if np.ptp(predicted) == 0 or np.ptp(gold) == 0:  # constant: r undefined, no linear signal
        return 0.0
    return float(pearsonr(gold, predicted).statistic)


def fit_probe(
    X_train: np.ndarray,
    y_train: np.ndarray,
    X_val: np.ndarray,
    y_val: np.ndarray,
    *,
    task_type: str = "classification",
    C: float = 1.0,
    max_iter: int = 2000,
) -> tuple[float, float, bool]:
    """(held-out score, train score, converged) of one probe on standardised features.

    Classification: multinomial logistic regression (lbfgs) with inverse L2 strength `C`.
    Regression: ridge with alpha = 1 / C, scored by Pearson's r.
    """
    if task_type == "regression":
        head = Ridge(alpha=1.0 / C)
    else:
        head = LogisticRegression(C=C, max_iter=max_iter)
    probe = make_pipeline(StandardScaler(), head)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        probe.fit(np.asarray(X_train, dtype=np.float64), y_train)
    converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
    metric = probe_metric(task_type)
    val = _score(metric, np.asarray(y_val), probe.predict(np.asarray(X_val, dtype=np.float64)))
    train = _score(metric, np.asarray(y_train), probe.predict(np.asarray(X_train)))
    return val, train, converged


def probe_layers(
    model: str,
    train: Mapping[int, np.ndarray],
    y_train: Sequence,
    val: Mapping[int, np.ndarray],
    y_val: Sequence,
    *,
    task_type: str = "classification",
    C: float = 1.0,
    max_iter: int = 2000,
) -> list[LayerScore]:
    """A probe per layer: `train[layer]` (N_train, H) and `val[layer]` (N_val, H) hold the
    vectors of each layer; the labels are class indices (or scores for regression)."""
    y_train, y_val = np.asarray(y_train), np.asarray(y_val)
    check_probe_labels(y_train, y_val, task_type)
    scores = []
    for layer in sorted(train):
        if len(train[layer]) != len(y_train) or len(val[layer]) != len(y_val):
            raise DataError(
                f"layer {layer} of {model}: {len(train[layer])}/{len(val[layer])} vectors for "
                f"{len(y_train)}/{len(y_val)} labels; give one vector per example"
            )
        v, t, ok = fit_probe(
            train[layer], y_train, val[layer], y_val, task_type=task_type, C=C, max_iter=max_iter
        )
        metric = probe_metric(task_type)
        scores.append(LayerScore(model, layer, metric, v, t, len(y_train), len(y_val), ok))
    return scores


MIN_EXAMPLES = 10  # per split: fewer give a probe (and its score) that says nothing


def check_probe_labels(y_train: np.ndarray, y_val: np.ndarray, task_type: str) -> None:
    """Enough examples to fit and score a probe: DataError naming the fix otherwise."""
    fix = (
        "raise task.max_examples (or probe.max_train_examples), probe a larger task, or leave "
        "probe out of stages=[...]"
    )
    if len(y_train) < MIN_EXAMPLES or len(y_val) < MIN_EXAMPLES:
        raise DataError(
            f"the probe has {len(y_train)} training and {len(y_val)} held-out examples; it "
            f"needs at least {MIN_EXAMPLES} of each: {fix}"
        )
    if task_type != "regression" and len(np.unique(y_train)) < 2:
        raise DataError(
            f"every one of the {len(y_train)} probe training examples has the same label; a "
            f"probe needs two classes at least: {fix}"
        )


def chance_level(y_train: Sequence, y_val: Sequence, task_type: str = "classification") -> float:
    """The score of a probe that ignores its input: the held-out share of the train split's
    most frequent class (accuracy), or 0 (Pearson's r)."""
    if task_type == "regression":
        return 0.0
    values, counts = np.unique(np.asarray(y_train), return_counts=True)
    return float(np.mean(np.asarray(y_val) == values[np.argmax(counts)]))


def best_layers(scores: Sequence[LayerScore]) -> dict[str, float]:
    """Per model: `<model>_best` (highest held-out score), `<model>_best_layer` and
    `<model>_last` (the last layer's score)."""
    summary: dict[str, float] = {}
    for model in dict.fromkeys(s.model for s in scores):
        rows = [s for s in scores if s.model == model]
        best = max(rows, key=lambda s: s.val)
        last = max(rows, key=lambda s: s.layer)
        summary |= {
            f"{model}_best": best.val,
            f"{model}_best_layer": best.layer,
            f"{model}_last": last.val,
        }
    return summary


def write_probe_results(
    scores: Sequence[LayerScore], directory: Path, chance: float, about: Mapping
) -> tuple[Path, Path]:
    """probe.csv (one row per model and layer, `COLUMNS`) and probe.json (the same rows with
    the chance level and `about`: task, split, pooling, ...)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    for s in scores:
        writer.writerow([s.model, s.layer, s.metric, f"{s.val:.6f}", f"{s.train:.6f}",
                         s.n_train, s.n_val])  # fmt: skip
    csv_path, json_path = Path(directory) / "probe.csv", Path(directory) / "probe.json"
    write_atomic(csv_path, out.getvalue())
    document = {**about, "chance": chance, "rows": [asdict(s) for s in scores]}
    write_atomic(json_path, json.dumps(document, indent=2) + "\n")
    return csv_path, json_path


def plot_probe_curves(
    scores: Sequence[LayerScore],
    chance: float,
    path: Path,
    title: str,
    names: Mapping[str, str] | None = None,
    chance_label: str = "",
) -> Path:
    """One curve per model: layer (0 = embeddings) against the held-out score, with the chance
    line; accuracy on a 0-1 axis. `names`: legend label per model (default: the model key)."""
    names = names or {}
    metric = scores[0].metric if scores else "accuracy"
    fig, ax = plt.subplots(figsize=(6.4, 4.2), layout="constrained")
    for model in dict.fromkeys(s.model for s in scores):
        rows = sorted((s for s in scores if s.model == model), key=lambda s: s.layer)
        label = names.get(model, model)
        ax.plot([s.layer for s in rows], [s.val for s in rows], "o-", label=label)
    chance_label = chance_label or ("majority class" if metric == "accuracy" else "no signal")
    chance_label = f"{chance_label} ({chance:.2f})"
    ax.axhline(chance, color="0.4", ls="--", lw=1, label=chance_label)
    layers = sorted({s.layer for s in scores})
    ax.set_xticks(layers, ["emb" if layer == 0 else str(layer) for layer in layers])
    ax.set(xlabel="layer (emb = embedding output)", ylabel=f"held-out {metric} of a linear probe")
    if metric == "accuracy":
        ax.set_ylim(0.0, 1.02)
    else:
        ax.set_ylim(min(-0.1, *(s.val for s in scores)), 1.02)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    ax.set_title(fit_title(title, fig.get_figwidth(), 10), fontsize=10)
    return save_figure(fig, path)

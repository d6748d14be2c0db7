"""Embeddings over pretraining time: one aligned map of the same texts at several checkpoints,
k-NN label accuracy and the sense separation of homonyms per checkpoint.

The map is an openTSNE fit of the last checkpoint's embeddings (`layouts.embed_2d`); every
earlier checkpoint's embeddings are placed into it with `TSNEEmbedding.transform`
(`prepare_partial`: each point starts at the median of its nearest reference points; then
`optimize` against the fixed reference), so all panels share one coordinate system. Distances
to the reference points are measured in the last checkpoint's space: with `align="procrustes"`
an earlier checkpoint's vectors are first mapped onto it by the rotation and uniform scale that
best match the same texts' vectors there (orthogonal Procrustes), which leaves that
checkpoint's own neighbourhoods unchanged.
"""

from __future__ import annotations

import csv
import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from bertforge.analysis.figures import fit_title, save_figure
from bertforge.analysis.layouts import Labels, Layout, check_points, embed_2d, label_codes
from bertforge.config import VisualizeConfig
from bertforge.errors import ConfigError, DataError

SENSE_COLUMNS = ("word", "sentence", "sense")
TRANSFORM_NEIGHBOURS = 25  # openTSNE's default k for placing new points


def procrustes_onto(X: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """`X` (N, D) rotated, uniformly scaled and shifted to best match `reference` (N, D), row
    for row: pairwise distances within `X` change only by the common scale."""
    from scipy.linalg import orthogonal_procrustes

    A, B = X - X.mean(axis=0), reference - reference.mean(axis=0)
    rotation, singular_sum = orthogonal_procrustes(A, B)
    scale = singular_sum / max(float((A**2).sum()), 1e-12)
    return (scale * A @ rotation + reference.mean(axis=0)).astype(np.float32)


def aligned_maps(
    embeddings: Sequence[np.ndarray],
    cfg: VisualizeConfig,
    seed: int,
    *,
    align: str = "procrustes",
    n_jobs: int = 1,
) -> tuple[list[np.ndarray], Layout]:
    """2-D positions of each (N, D) array of `embeddings` (oldest first) in one t-SNE map fitted
    on the last; returns them and the last one's layout."""
    reference = check_points(embeddings[-1])
    if 3 * cfg.perplexity > len(reference) - 1:
        allowed = math.floor((len(reference) - 1) / 3 * 10) / 10
        raise ConfigError(
            f"evolution.perplexity={cfg.perplexity:g} is too large for {len(reference)} texts "
            f"(t-SNE needs 3 x perplexity < N); use evolution.perplexity <= {allowed:g}"
        )
    final = embed_2d(reference, "tsne", cfg, seed, n_jobs=n_jobs)
    k = min(TRANSFORM_NEIGHBOURS, len(reference) - 1)
    maps = []
    for X in embeddings[:-1]:
        X = check_points(X)
        if X.shape != reference.shape:
            raise DataError(f"snapshot embeddings {X.shape} and {reference.shape} differ")
        if align == "procrustes":
            X = procrustes_onto(X, reference)
        placed = final.embedding.transform(X, perplexity=min(5.0, (k - 1) / 3), k=k)
        maps.append(np.asarray(placed, dtype=np.float32))
    return [*maps, final.xy], final


def knn_accuracy(X: np.ndarray, labels: Labels, k: int, seed: int) -> tuple[float, int]:
    """Stratified 5-fold cross-validated accuracy of scikit-learn's k-NN classifier on `X`
    (fewer folds when the largest class is smaller); the same folds for every X of the same
    labels and seed. Returns (accuracy, the k used: at most the training fold's size)."""
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.neighbors import KNeighborsClassifier

    coded = label_codes(labels)
    if coded is None or len(coded[1]) < 2:
        raise DataError("k-NN label accuracy needs labelled texts of at least two classes")
    codes = coded[0]
    folds = int(min(5, np.bincount(codes).max()))
    if folds < 2:
        raise DataError("k-NN label accuracy needs a class with at least two texts")
    k = max(1, min(k, len(codes) - math.ceil(len(codes) / folds)))
    cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
    with warnings.catch_warnings():  # "The least populated class has only n members"
        warnings.simplefilter("ignore", UserWarning)
        scores = cross_val_score(KNeighborsClassifier(n_neighbors=k), X, codes, cv=cv)
    return float(np.mean(scores)), k


def sense_silhouette(X: np.ndarray, senses: Sequence[str]) -> float | None:
    """Silhouette (cosine distance) of one word's occurrences grouped by sense, in [-1, 1];
    None when there are fewer than two senses or no sense has two occurrences."""
    from sklearn.metrics import silhouette_score

    if not 2 <= len(set(senses)) < len(senses):
        return None
    return float(silhouette_score(X, list(senses), metric="cosine"))


def read_senses(path: str | Path) -> list[dict[str, str]]:
    """The rows (word, sentence, sense) of a sense label file (CSV with a header row)."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            columns = reader.fieldnames or []
            rows = list(reader)
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"evolution.senses_file={path} cannot be read ({err})") from None
    missing = [c for c in SENSE_COLUMNS if c not in columns]
    if missing:
        raise DataError(
            f"evolution.senses_file={path} has columns {', '.join(columns) or 'none'}; it needs "
            f"{', '.join(SENSE_COLUMNS)} (one row per example sentence)"
        )
    rows = [{c: (row[c] or "").strip() for c in SENSE_COLUMNS} for row in rows]
    empty = [i + 2 for i, row in enumerate(rows) if not all(row.values())]
    if not rows or empty:
        where = f"lines {empty[:5]} have empty cells" if empty else "it has no rows"
        raise DataError(f"evolution.senses_file={path}: {where}; fill in word, sentence, sense")
    return rows


# --- figures ---------------------------------------------------------------------------------


def _limits(maps: Sequence[np.ndarray]) -> tuple[tuple[float, float], tuple[float, float]]:
    """Shared axis limits that hold every panel's points, with a 5% margin."""
    points = np.concatenate(maps)
    low, high = points.min(axis=0), points.max(axis=0)
    pad = 0.05 * (high - low) + 1e-6
    return (low[0] - pad[0], high[0] + pad[0]), (low[1] - pad[1], high[1] + pad[1])


def _draw(ax, xy: np.ndarray, labels: Labels, limits) -> None:
    coded = label_codes(labels)
    codes, names = coded if coded else (np.zeros(len(xy), dtype=int), [""])
    cmap = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
    size = float(np.clip(3000 / max(len(xy), 1), 2, 20))
    for c, name in enumerate(names):
        mask = codes == c
        color = cmap(c % cmap.N)
        ax.scatter(*xy[mask].T, s=size, color=color, label=str(name) or None, linewidths=0)
    ax.set_xlim(*limits[0])
    ax.set_ylim(*limits[1])
    ax.set_xticks([])
    ax.set_yticks([])


def plot_aligned_maps(
    maps: Sequence[np.ndarray], titles: Sequence[str], labels: Labels, title: str, path: Path
) -> Path:
    """One panel per checkpoint, side by side, with the same axes, coloured by label."""
    limits = _limits(maps)
    width = 3.6 * len(maps) + 1.8
    fig, axes = plt.subplots(
        1,
        len(maps),
        figsize=(width, 4.2),
        squeeze=False,
        sharex=True,
        sharey=True,
        layout="constrained",
    )
    for ax, xy, subtitle in zip(axes[0], maps, titles, strict=True):
        _draw(ax, np.asarray(xy), labels, limits)
        ax.set_title(subtitle, fontsize=9)
    handles, names = axes[0, 0].get_legend_handles_labels()
    if len(names) > 1:
        fig.legend(handles, names, loc="outside right center", markerscale=2, fontsize=8)
    fig.suptitle(fit_title(title, width, 11), fontsize=11)
    return save_figure(fig, path)


def plot_map(
    xy: np.ndarray, labels: Labels, limits_of: Sequence[np.ndarray], title: str, path: Path
) -> Path:
    """One checkpoint's panel alone, with the axes of all of `limits_of` (a W&B series frame)."""
    fig, ax = plt.subplots(figsize=(6.5, 5), layout="constrained")
    _draw(ax, np.asarray(xy), labels, _limits(limits_of))
    handles, names = ax.get_legend_handles_labels()
    if len(names) > 1:
        fig.legend(handles, names, loc="outside right center", markerscale=2, fontsize=8)
    fig.suptitle(fit_title(title, 6.5, 10), fontsize=10)
    return save_figure(fig, path)


def plot_curves(
    steps: Sequence[int],
    curves: Mapping[str, Sequence[float | None]],
    ylabel: str,
    title: str,
    path: Path,
    ylim: tuple[float, float] | None = None,
) -> Path:
    """Values per optimizer step, one line per curve (a None value leaves a gap)."""
    fig, ax = plt.subplots(figsize=(6.5, 4), layout="constrained")
    for name, values in curves.items():
        y = [np.nan if v is None else v for v in values]
        ax.plot(steps, y, marker="o", label=name)
    if len(steps) <= 12:
        ax.set_xticks(list(steps))
    ax.set_xlabel("pretraining step (optimizer updates)")
    ax.set_ylabel(ylabel)
    if ylim:
        ax.set_ylim(*ylim)
    ax.grid(alpha=0.3)
    if len(curves) > 1:
        ax.legend(fontsize=8)
    ax.set_title(fit_title(title, 6.5, 10), fontsize=10)
    return save_figure(fig, path)

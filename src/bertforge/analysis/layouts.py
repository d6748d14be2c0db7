"""2-D layouts of embeddings (t-SNE, UMAP, PCA), numbers that say how faithful they are, figures.

t-SNE runs on openTSNE (Barnes-Hut gradients below 10k points, FFT-accelerated above;
snapshots during optimisation; the Student-t degrees of freedom `dof`) or on scikit-learn's
TSNE. `visualize.n_iter` counts every update, the early-exaggeration phase included, as
scikit-learn's `max_iter` does: the defaults (750 with 250 exaggerated) are openTSNE's 250 + 500.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes

from bertforge.analysis.figures import annotate_points, fit_title, save_figure
from bertforge.checks import check_choice
from bertforge.config import VisualizeConfig
from bertforge.errors import ConfigError, DataError

log = logging.getLogger(__name__)

METHODS = ("tsne", "umap", "pca")
METHOD_NAMES = {"tsne": "t-SNE", "umap": "UMAP", "pca": "PCA"}
QUALITY_MAX_POINTS = 5000  # quality numbers beyond this many points use a fixed subsample
Labels = Sequence[Any] | None  # one label per point (str or int), or none
Names = Sequence[str] | None  # names of integer labels: label i is names[i]


@dataclass
class Layout:
    """A 2-D layout of N points and how it was made."""

    xy: np.ndarray  # (N, 2)
    method: str  # tsne | umap | pca
    seconds: float = 0.0
    kl_divergence: float | None = None  # t-SNE only
    snapshots: dict[int, np.ndarray] = field(default_factory=dict)  # update count -> (N, 2)
    params: dict[str, Any] = field(default_factory=dict)  # what produced it
    embedding: Any = None  # openTSNE's TSNEEmbedding: its `transform` places new points here

    @property
    def description(self) -> str:
        """E.g. "t-SNE (perplexity 30, dof 1)", for figure titles."""
        shown = {
            "tsne": ("perplexity", "dof"),
            "umap": ("n_neighbors", "min_dist"),
            "pca": ("explained_variance",),
        }[self.method]
        details = ", ".join(f"{key} {self.params[key]:.3g}" for key in shown)
        return f"{METHOD_NAMES[self.method]} ({details})"


def check_points(X: np.ndarray) -> np.ndarray:
    """`X` as a float32 (N, D) array with at least 3 rows and no NaN or inf."""
    X = np.asarray(X, dtype=np.float32)
    if X.ndim != 2:
        raise DataError(f"embeddings must be a 2-D array (N, H), got shape {X.shape}")
    if len(X) < 3:
        raise DataError(
            f"a 2-D layout needs at least 3 points, got {len(X)}; extract more texts "
            "(extract.max_examples, extract.split)"
        )
    bad = ~np.isfinite(X).all(axis=1)
    if bad.any():
        raise DataError(
            f"{int(bad.sum())} of {len(X)} embeddings contain NaN/inf (first: row "
            f"{int(np.argmax(bad))}); re-extract them from a checkpoint that did not diverge"
        )
    return X


def _check_tsne(cfg: VisualizeConfig, n: int) -> None:
    if 3 * cfg.perplexity > n - 1:
        allowed = math.floor((n - 1) / 3 * 10) / 10
        raise ConfigError(
            f"visualize.perplexity={cfg.perplexity:g} is too large for {n} points (t-SNE needs "
            f"3 x perplexity < N); use visualize.perplexity <= {allowed:g} or more points"
        )
    # The N-independent checks (iterations, snapshots, sklearn's limits) run when the
    # VisualizeConfig is built, i.e. at start-up.


def _tsne_opentsne(X: np.ndarray, cfg: VisualizeConfig, seed: int, n_jobs: int) -> Layout:
    """openTSNE in segments: exaggerated, then plain, stopping at each snapshot.

    Segments after the exaggeration phase leave the result unchanged; a snapshot inside it
    perturbs the layout at float rounding level (the affinities are scaled back and forth).
    """
    import openTSNE

    tsne = openTSNE.TSNE(
        perplexity=cfg.perplexity,
        learning_rate="auto" if cfg.learning_rate is None else cfg.learning_rate,
        early_exaggeration=cfg.early_exaggeration,
        dof=cfg.dof,
        initialization=cfg.init,
        negative_gradient_method="auto",  # Barnes-Hut below 10k points (faster there), FFT above
        n_jobs=n_jobs,
        random_state=seed,
    )
    embedding = tsne.prepare_initial(X)
    snapshots, done = {}, 0
    for stop in sorted({cfg.early_exaggeration_iter, cfg.n_iter, *cfg.snapshots}):
        early = done < cfg.early_exaggeration_iter
        embedding.optimize(
            stop - done,
            exaggeration=cfg.early_exaggeration if early else None,
            momentum=tsne.initial_momentum if early else tsne.final_momentum,
            inplace=True,
        )
        done = stop
        if stop in cfg.snapshots and stop < cfg.n_iter:
            snapshots[stop] = np.array(embedding)
    kl = float(embedding.kl_divergence)
    layout = Layout(np.array(embedding), "tsne", kl_divergence=kl, snapshots=snapshots)
    layout.embedding = embedding
    return layout


def _tsne_sklearn(X: np.ndarray, cfg: VisualizeConfig, seed: int, n_jobs: int) -> Layout:
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    tsne = TSNE(
        perplexity=cfg.perplexity,
        early_exaggeration=cfg.early_exaggeration,
        learning_rate="auto" if cfg.learning_rate is None else cfg.learning_rate,
        max_iter=cfg.n_iter,
        init=cfg.init,
        random_state=seed,
        n_jobs=n_jobs,
    )
    with threadpool_limits(n_jobs, user_api="openmp"):  # its gradient threads ignore n_jobs
        xy = tsne.fit_transform(X)
    return Layout(xy, "tsne", kl_divergence=float(tsne.kl_divergence_))


def _umap(X: np.ndarray, cfg: VisualizeConfig, seed: int) -> Layout:
    if cfg.umap_n_neighbors >= len(X):
        raise ConfigError(
            f"visualize.umap_n_neighbors={cfg.umap_n_neighbors} needs more than that many "
            f"points, got {len(X)}; use visualize.umap_n_neighbors <= {len(X) - 1}"
        )
    import umap  # imported here: numba makes the import take seconds

    reducer = umap.UMAP(
        n_neighbors=cfg.umap_n_neighbors,
        min_dist=cfg.umap_min_dist,
        random_state=seed,
        n_jobs=1,  # a seed makes UMAP single-threaded anyway; saying so avoids its warning
    )
    return Layout(reducer.fit_transform(X), "umap")


def _pca(X: np.ndarray, seed: int) -> Layout:
    from sklearn.decomposition import PCA

    pca = PCA(n_components=2, random_state=seed)
    xy = pca.fit_transform(X)
    return Layout(
        xy, "pca", params={"explained_variance": float(pca.explained_variance_ratio_.sum())}
    )


def embed_2d(
    X: np.ndarray,
    method: str | None = None,
    cfg: VisualizeConfig | None = None,
    seed: int = 0,
    *,
    n_jobs: int = 2,
) -> Layout:
    """Lay out the rows of `X` in 2-D with `method` (default `cfg.method`); same seed, same
    layout. t-SNE records `cfg.snapshots` (openTSNE only) and its final KL divergence."""
    cfg = cfg or VisualizeConfig()
    method = method or cfg.method
    check_choice("visualize.method", method, METHODS)
    X = check_points(X)
    started = time.perf_counter()
    if method == "tsne":
        _check_tsne(cfg, len(X))
        run = _tsne_opentsne if cfg.tsne_backend == "opentsne" else _tsne_sklearn
        layout = run(X, cfg, seed, n_jobs)
        layout.params = {
            "backend": cfg.tsne_backend,
            "perplexity": cfg.perplexity,
            "dof": cfg.dof,
            "n_iter": cfg.n_iter,
            "early_exaggeration_iter": cfg.early_exaggeration_iter,
        }
    elif method == "umap":
        layout = _umap(X, cfg, seed)
        layout.params = {"n_neighbors": cfg.umap_n_neighbors, "min_dist": cfg.umap_min_dist}
    else:
        layout = _pca(X, seed)
    layout.xy = np.asarray(layout.xy, dtype=np.float32)
    layout.seconds = time.perf_counter() - started
    layout.params["seed"] = seed
    return layout


# --- quality numbers ----------------------------------------------------------------------------


def label_codes(labels: Labels) -> tuple[np.ndarray, list[Any]] | None:
    """Integer codes 0..C-1 for `labels` and the distinct labels in code order; None when
    there are no labels (None, or every label None)."""
    if labels is None or all(label is None for label in labels):
        return None
    uniques, codes = np.unique(np.asarray(labels), return_inverse=True)
    return codes.reshape(-1), uniques.tolist()


def subsample(n: int, max_points: int, seed: int) -> np.ndarray | None:
    """Sorted indices of a fixed random subsample of `max_points` of `n`, or None if n fits."""
    if n <= max_points:
        return None
    return np.sort(np.random.default_rng(seed).choice(n, max_points, replace=False))


def _loo_knn_accuracy(neighbours: np.ndarray, codes: np.ndarray) -> float:
    """Leave-one-out k-NN accuracy: majority label of each point's neighbours (nearest breaks
    ties) against its own label."""
    n, k = neighbours.shape
    votes = np.zeros((n, codes.max() + 1))
    weights = 1.0 + 1e-3 * np.arange(k, 0, -1) / k  # rank-based tie-break
    np.add.at(
        votes, (np.repeat(np.arange(n), k), codes[neighbours].reshape(-1)), np.tile(weights, n)
    )
    return float((votes.argmax(axis=1) == codes).mean())


def layout_quality(
    X: np.ndarray,
    layout: Layout | np.ndarray,
    labels: Labels = None,
    k: int = 10,
    *,
    max_points: int = QUALITY_MAX_POINTS,
    seed: int = 0,
) -> dict[str, float]:
    """How faithful a 2-D layout of `X` is, as numbers in [0, 1] (silhouette in [-1, 1]).

    trustworthiness: are 2-D neighbours true neighbours (sklearn); knn_preservation: mean share
    of each point's k high-D neighbours still among its k 2-D neighbours; knn_accuracy_2d /
    knn_accuracy_hd: leave-one-out k-NN label accuracy in 2-D / in the original space;
    silhouette_2d: label clusters in 2-D; kl_divergence for t-SNE. Beyond `max_points` points
    everything is computed on a fixed subsample (`n_evaluated` of `n_points`).
    """
    from sklearn.manifold import trustworthiness
    from sklearn.metrics import silhouette_score
    from sklearn.neighbors import NearestNeighbors

    X = check_points(X)
    xy = check_points(layout.xy if isinstance(layout, Layout) else layout)
    if len(xy) != len(X) or (labels is not None and len(labels) != len(X)):
        raise DataError(
            f"{len(X)} embeddings, {len(xy)} layout points and "
            f"{'no' if labels is None else len(labels)} labels; give one of each per point"
        )
    coded = label_codes(labels)
    codes = coded[0] if coded else None
    n_points = len(X)
    keep = subsample(n_points, max_points, seed)
    if keep is not None:
        log.info("layout quality on a fixed subsample of %d of %d points", len(keep), n_points)
        X, xy = X[keep], xy[keep]
        codes = codes[keep] if codes is not None else None
    n = len(X)
    k = max(1, min(k, (n - 1) // 2))  # trustworthiness needs k < N / 2
    hd = NearestNeighbors(n_neighbors=k).fit(X).kneighbors(return_distance=False)
    low = NearestNeighbors(n_neighbors=k).fit(xy).kneighbors(return_distance=False)
    quality = {
        "trustworthiness": float(trustworthiness(X, xy, n_neighbors=k)),
        "knn_preservation": float((hd[:, :, None] == low[:, None, :]).sum(axis=(1, 2)).mean() / k),
    }
    if codes is not None:
        quality["knn_accuracy_2d"] = _loo_knn_accuracy(low, codes)
        quality["knn_accuracy_hd"] = _loo_knn_accuracy(hd, codes)
        if 2 <= len(np.unique(codes)) < n:
            quality["silhouette_2d"] = float(silhouette_score(xy, codes))
    if isinstance(layout, Layout) and layout.kl_divergence is not None:
        quality["kl_divergence"] = layout.kl_divergence
    quality.update(k=float(k), n_evaluated=float(n), n_points=float(n_points))
    return quality


# --- figures ------------------------------------------------------------------------------------


def _groups(n: int, labels: Labels, label_names: Names) -> list[tuple[str, np.ndarray]]:
    """(legend name, row mask) per label of the `n` points; one unnamed group without labels."""
    coded = label_codes(labels)
    if coded is None:
        return [("", np.ones(n, dtype=bool))]
    codes, uniques = coded
    names = [
        label_names[u] if label_names is not None and isinstance(u, int) else str(u)
        for u in uniques
    ]
    return [(name, codes == c) for c, name in enumerate(names)]


def _colors(n: int) -> list:
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20" if n <= 20 else "hsv")
    return [cmap(i if n <= 20 else i / n) for i in range(n)]


def _draw(ax: Axes, xy: np.ndarray, groups: list[tuple[str, np.ndarray]]) -> None:
    size = float(np.clip(4000 / max(len(xy), 1), 2, 25))
    for (name, mask), color in zip(groups, _colors(len(groups)), strict=True):
        ax.scatter(*xy[mask].T, s=size, color=color, label=name or None, alpha=0.8, linewidths=0)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_aspect("equal", adjustable="datalim")


QUALITY_LINES = (
    ("trustworthiness", "trustworthiness"),
    ("knn_preservation", "kNN preservation"),
    ("knn_accuracy_2d", "kNN accuracy 2-D"),
    ("knn_accuracy_hd", "kNN accuracy high-D"),
    ("silhouette_2d", "silhouette 2-D"),
    ("kl_divergence", "KL divergence"),
)


def quality_text(quality: Mapping[str, float]) -> str:
    """The quality numbers, one per line, with the subsample noted."""
    lines = [f"{name}: {quality[key]:.3f}" for key, name in QUALITY_LINES if key in quality]
    lines.append(f"k = {quality['k']:g}")
    if quality["n_evaluated"] < quality["n_points"]:
        lines.append(f"on {quality['n_evaluated']:g} of {quality['n_points']:g} points")
    return "\n".join(lines)


def _short_quality(quality: Mapping[str, float]) -> str:
    if "knn_accuracy_2d" in quality:
        first = f"kNN acc. {quality['knn_accuracy_2d']:.3f}"
    else:
        first = f"kNN pres. {quality['knn_preservation']:.3f}"
    return f"{first} · trust. {quality['trustworthiness']:.3f}"


Annotations = Sequence[tuple[int, str]] | None  # (point index, text) pairs to label


def scatter_figure(
    xy: np.ndarray,
    labels: Labels,
    label_names: Names,
    title: str,
    quality: Mapping[str, float] | None = None,
    annotations: Annotations = None,
):
    """A scatter plot coloured by label (integer labels are named by `label_names`), with a
    legend, the quality numbers in a text box and `annotations` on chosen points; the title is
    wrapped to the figure's width."""
    xy = np.asarray(xy)
    groups = _groups(len(xy), labels, label_names)
    fig, ax = plt.subplots(figsize=(8, 6.5), layout="constrained")
    _draw(ax, xy, groups)
    fig.suptitle(fit_title(title, fig.get_figwidth(), 10), fontsize=10)
    if len(groups) > 1:
        fig.legend(loc="outside right center", markerscale=2, fontsize=8)
    if quality:
        box = {"boxstyle": "round", "facecolor": "white", "alpha": 0.85}
        text = quality_text(quality)
        ax.text(0.01, 0.99, text, transform=ax.transAxes, va="top", fontsize=8, bbox=box)
    if annotations:
        annotate_points(ax, xy, annotations)
    return fig


def plot_scatter(
    xy: np.ndarray,
    labels: Labels,
    label_names: Names,
    title: str,
    path: Path,
    quality: Mapping[str, float] | None = None,
    annotations: Annotations = None,
) -> Path:
    """`scatter_figure` as a PNG at `path`."""
    return save_figure(scatter_figure(xy, labels, label_names, title, quality, annotations), path)


def _plot_panels(
    panels: list[tuple[str, np.ndarray]], labels: Labels, label_names: Names, title: str, path: Path
) -> Path:
    groups = _groups(len(panels[0][1]), labels, label_names)
    width = 4.3 * len(panels) + 1.6
    fig, axes = plt.subplots(
        1, len(panels), figsize=(width, 4.8), squeeze=False, layout="constrained"
    )
    for ax, (subtitle, xy) in zip(axes[0], panels, strict=True):
        _draw(ax, np.asarray(xy), groups)
        ax.set_title(subtitle, fontsize=9)
    if len(groups) > 1:
        handles, names = axes[0, 0].get_legend_handles_labels()
        fig.legend(handles, names, loc="outside right center", markerscale=2, fontsize=8)
    fig.suptitle(fit_title(title, width, 11), fontsize=11)
    return save_figure(fig, path)


def plot_snapshots(
    layout: Layout, labels: Labels, label_names: Names, title: str, path: Path
) -> Path:
    """The t-SNE layout after each snapshot's number of updates and at the end, side by side."""
    if not layout.snapshots:
        raise ConfigError(
            "this layout has no snapshots; set visualize.snapshots (e.g. [250, 500]) with "
            "visualize.tsne_backend=opentsne"
        )
    exaggerated = layout.params["early_exaggeration_iter"]
    panels = [
        (f"{step} updates" + (" (exaggerated)" if step <= exaggerated else ""), xy)
        for step, xy in sorted(layout.snapshots.items())
    ]
    panels.append((f"{layout.params['n_iter']} updates (final)", layout.xy))
    return _plot_panels(panels, labels, label_names, title, path)


def plot_dof_comparison(
    layouts: Mapping[float, Layout],
    qualities: Mapping[float, Mapping[str, float]],
    labels: Labels,
    label_names: Names,
    title: str,
    path: Path,
) -> Path:
    """t-SNE layouts for several Student-t degrees of freedom (1 = t-SNE's heavy tails; large
    values approach SNE's Gaussian and crowd the clusters together), with their numbers."""
    panels = [
        (f"dof = {dof:g}\n{_short_quality(qualities[dof])}", layout.xy)
        for dof, layout in layouts.items()
    ]
    return _plot_panels(panels, labels, label_names, title, path)


def plot_method_panel(
    layouts: Mapping[str, Layout],
    qualities: Mapping[str, Mapping[str, float]],
    labels: Labels,
    label_names: Names,
    title: str,
    path: Path,
) -> Path:
    """The same points laid out by each method (e.g. t-SNE | UMAP | PCA), with their numbers."""
    panels = [
        (
            f"{METHOD_NAMES[layout.method]} ({layout.seconds:.1f} s)\n"
            f"{_short_quality(qualities[name])}",
            layout.xy,
        )
        for name, layout in layouts.items()
    ]
    return _plot_panels(panels, labels, label_names, title, path)


# --- benchmark ----------------------------------------------------------------------------------


def benchmark_tsne(
    sizes: Sequence[int] = (10_000,),
    dims: Sequence[int] = (128, 768),
    seed: int = 0,
    backends: Sequence[str] = ("opentsne", "sklearn"),
    n_jobs: int = 2,
) -> list[dict[str, Any]]:
    """openTSNE vs scikit-learn t-SNE on 10 Gaussian clusters: fit seconds and quality per
    (size, dimension, backend), default settings (750 updates, perplexity 30)."""
    from sklearn.datasets import make_blobs

    results = []
    for n in sizes:
        for dim in dims:
            X, y = make_blobs(n, dim, centers=10, cluster_std=4.0, random_state=seed)
            for backend in backends:
                cfg = VisualizeConfig(tsne_backend=backend, snapshots=[])
                layout = embed_2d(X, "tsne", cfg, seed, n_jobs=n_jobs)
                quality = layout_quality(X, layout, y, seed=seed)
                row = {"n": n, "dim": dim, "backend": backend, "n_jobs": n_jobs}
                row["seconds"] = layout.seconds
                results.append({**row, **quality})
                log.info("benchmark %s", results[-1])
    return results

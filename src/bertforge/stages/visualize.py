"""The visualize stage's work: the lecture's figures, each with its quality numbers.

- `<method>.png`: the embeddings laid out by `visualize.method`, coloured by label;
- `tsne_snapshots.png`: t-SNE after 250 and 500 updates and at the end;
- `tsne_dof.png`: the Student-t kernel with dof 1, 10, 100 (why the heavy tail);
- `methods.png`: t-SNE | UMAP | PCA on the same points;
- `words.png`: contextual vectors of `extract.words`, one point per occurrence;
- `attention_<i>.png` / `attention_<i>_mean.png`: attention per layer and head for a sentence.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from bertforge.analysis.attention import attention_maps, plot_attention_average, plot_attention_grid
from bertforge.config import Config
from bertforge.analysis.embed import load_embeddings
from bertforge.stages.extract import SENTENCES, WORDS, load_encoder
from bertforge.pipeline.store import BuildContext
from bertforge.pipeline.tracking import StageLoggers
from bertforge.analysis.layouts import (
    METHOD_NAMES,
    Layout,
    embed_2d,
    layout_quality,
    plot_dof_comparison,
    plot_method_panel,
    plot_scatter,
    plot_snapshots,
)

QUALITY_KEYS = (
    "trustworthiness", "knn_preservation", "knn_accuracy_2d", "knn_accuracy_hd", "silhouette_2d",
    "kl_divergence",
)  # fmt: skip


def numbers(quality: dict, prefix: str = "") -> dict[str, float]:
    return {f"{prefix}{k}": quality[k] for k in QUALITY_KEYS if quality.get(k) is not None}


class Figures:
    """Lays out one set of points several ways; records figures and metrics as it goes."""

    def __init__(self, cfg: Config, ctx: BuildContext, X: np.ndarray, labels: list, title: str):
        self.cfg, self.v, self.ctx = cfg, cfg.visualize, ctx
        self.X, self.labels, self.title = X, labels, title
        self.metrics: dict[str, float] = {}
        self.figures: dict[str, Path] = {}
        self._done: dict[tuple, tuple[Layout, dict]] = {}

    def layout(self, method: str, **changes) -> tuple[Layout, dict]:
        """A layout and its quality numbers, computed once per distinct setting (snapshots
        don't change t-SNE's final layout, so the main t-SNE serves the panels too)."""
        v = replace(self.v, **changes) if changes else self.v
        key = (method, v.dof, v.tsne_backend) if method == "tsne" else (method,)
        if key not in self._done or (v.snapshots and not self._done[key][0].snapshots):
            layout = embed_2d(self.X, method, v, seed=self.cfg.seed, n_jobs=v.n_jobs)
            quality = layout_quality(
                self.X, layout, self.labels, k=v.knn_k, max_points=v.quality_max_points,
                seed=self.cfg.seed,
            )  # fmt: skip
            self._done[key] = (layout, quality)
        return self._done[key]

    def main(self) -> Layout:
        method = self.v.method
        layout, quality = self.layout(method)
        self.metrics |= numbers(quality) | {"layout_seconds": layout.seconds}
        title = f"{self.title} · {layout.description}"
        self.figures[method] = plot_scatter(
            layout.xy, self.labels, None, title, self.ctx.path / f"{method}.png", quality
        )
        if layout.snapshots:
            self.figures["tsne_snapshots"] = plot_snapshots(
                layout, self.labels, None, self.title, self.ctx.path / "tsne_snapshots.png"
            )
        return layout

    def dof_comparison(self) -> None:
        layouts, qualities = {}, {}
        for dof in self.v.compare_dof:
            layouts[dof], qualities[dof] = self.layout(
                "tsne", dof=dof, snapshots=[], tsne_backend="opentsne"
            )
            self.metrics |= numbers(qualities[dof], f"dof{dof:g}_")
        self.figures["tsne_dof"] = plot_dof_comparison(
            layouts, qualities, self.labels, None, self.title, self.ctx.path / "tsne_dof.png"
        )

    def method_panel(self) -> None:
        layouts, qualities = {}, {}
        for method in ("tsne", "umap", "pca"):
            name = METHOD_NAMES[method]
            layouts[name], qualities[name] = self.layout(method, snapshots=[])
            self.metrics |= numbers(qualities[name], f"{method}_")
        self.figures["methods"] = plot_method_panel(
            layouts, qualities, self.labels, None, self.title, self.ctx.path / "methods.png"
        )


def word_figure(cfg: Config, extract_dir: Path, out: Path, title: str) -> dict[str, float]:
    """t-SNE (or PCA for few points) of every occurrence of the words of interest."""
    X, rows = load_embeddings(extract_dir / WORDS, layer=cfg.visualize.layer)
    words = [row["word"] for row in rows]
    v = cfg.visualize
    perplexity = min(v.perplexity, (len(X) - 1) / 3 - 1e-6)
    method = "tsne" if perplexity >= 2 else "pca"
    v = replace(v, perplexity=max(perplexity, 1.0), snapshots=[])
    layout = embed_2d(X, method, v, seed=cfg.seed, n_jobs=v.n_jobs)
    quality = layout_quality(X, layout, words, k=min(v.knn_k, max(1, len(X) // 2 - 1)))
    title = f"{title} · contextual word vectors · {layout.description}"
    plot_scatter(layout.xy, words, None, title, out, quality)
    return numbers(quality, "words_")


def run_visualization(cfg: Config, ctx: BuildContext, loggers: StageLoggers) -> dict[str, float]:
    v = cfg.visualize
    extract = ctx.upstream["extract"]
    model_name = extract.manifest.get("model_name", cfg.model.name)
    X, rows = load_embeddings(extract.path / SENTENCES, layer=v.layer)
    labels = [row.get("label") for row in rows]
    title = f"{model_name} · layer {v.layer} · {cfg.extract.pooling} pooling · {cfg.extract.split}"

    figures = Figures(cfg, ctx, np.asarray(X), labels, title)
    main = figures.main()
    if v.compare_dof:
        figures.dof_comparison()
    if v.compare_methods:
        figures.method_panel()
    metrics = dict(figures.metrics)
    if (extract.path / WORDS).is_dir():
        figures.figures["words"] = ctx.path / "words.png"
        metrics |= word_figure(cfg, extract.path, ctx.path / "words.png", model_name)

    encoder = load_encoder(cfg, ctx.upstream)
    for i, sentence in enumerate(v.attention_sentences):
        tokens, probs = attention_maps(encoder.bert, encoder.tokenizer, sentence)
        figures.figures[f"attention_{i}"] = plot_attention_grid(
            tokens, probs, ctx.path / f"attention_{i}.png", f"{model_name}: “{sentence}”"
        )
        figures.figures[f"attention_{i}_mean"] = plot_attention_average(
            tokens, probs, ctx.path / f"attention_{i}_mean.png", title=f"{model_name}: head average"
        )

    points = [
        [float(x), float(y), str(label), row.get("text", "")[:200]]
        for (x, y), label, row in zip(main.xy, labels, rows, strict=True)
    ]
    (ctx.path / "points.json").write_text(json.dumps(points), encoding="utf-8")
    for name, path in figures.figures.items():
        loggers.log_image(f"visualize/{name}", path)
    loggers.log_table("visualize/points", ["x", "y", "label", "text"], points)
    loggers.log_metrics({f"visualize/{k}": value for k, value in metrics.items()})
    ctx.extra["figures"] = {name: str(path) for name, path in figures.figures.items()}
    return metrics

"""Stage `visualize`: the lecture's figures, each with the numbers that say how faithful it is.

- `<method>.png`: the embeddings laid out by `visualize.method`, coloured by label;
- `tsne_snapshots.png`: t-SNE after 250 and 500 updates and at the end;
- `tsne_dof.png`: the Student-t kernel with dof 1, 10, 100 (why the heavy tail);
- `methods.png`: t-SNE | UMAP | PCA on the same points;
- `words.png`: contextual vectors of `extract.words`, one point per occurrence, a few labelled
  with their sentence (all of them in the W&B table `visualize/words`);
- `attention_<i>_layer<k>.png`: attention of every head of layer k for sentence i;
  `attention_<i>_mean.png`: the head average of every layer.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from bertforge.analysis.attention import (
    attention_maps,
    plot_attention_average,
    plot_attention_layers,
)
from bertforge.analysis.figures import spread_points
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
from bertforge.artifacts import (
    SENTENCES,
    WORDS,
    embeddings_of,
    extraction_encoder,
    has_embeddings,
)
from bertforge.config import VisualizeConfig
from bertforge.pipeline.stage import BuildContext, Stage

QUALITY_KEYS = (
    "trustworthiness", "knn_preservation", "knn_accuracy_2d", "knn_accuracy_hd", "silhouette_2d",
    "kl_divergence",
)  # fmt: skip


@dataclass
class Settings:
    visualize: VisualizeConfig
    seed: int


def numbers(quality: dict, prefix: str = "") -> dict[str, float]:
    return {f"{prefix}{k}": quality[k] for k in QUALITY_KEYS if quality.get(k) is not None}


def layer_name(layer: int) -> str:
    """0: "embedding layer", -1: "last layer", -2: "layer L-1", 3: "layer 3"."""
    if layer == 0:
        return "embedding layer"
    return "last layer" if layer == -1 else f"layer L{layer + 1}" if layer < 0 else f"layer {layer}"


ANNOTATED_WORDS = 8  # occurrences labelled with their sentence in words.png
SNIPPET_CHARS = 22  # characters kept on each side of the word in a label
WORD_COLUMNS = ["word", "sentence", "x", "y", "layer"]  # the W&B table visualize/words


def snippet(row: dict, chars: int = SNIPPET_CHARS) -> str:
    """The words around one occurrence, e.g. "…sat on the bank of the…", on one line."""
    text, start, end = row.get("text", ""), row.get("char_start"), row.get("char_end")
    if start is None or end is None:
        return " ".join(text.split())[: 2 * chars] + "…"
    left = text[max(0, start - chars) : start]
    right = text[end : end + chars]
    if start > chars:  # drop the cut-off word at either end
        left = "…" + re.sub(r"^\S*\s", "", left, count=1)
    if end + chars < len(text):
        right = re.sub(r"\s\S*$", "", right) + "…"
    return " ".join((left + text[start:end] + right).split())


class Figures:
    """Lays out one set of points several ways; records figures and metrics as it goes."""

    def __init__(self, s: Settings, out: Path, X: np.ndarray, labels: list, title: str):
        self.v, self.seed, self.out = s.visualize, s.seed, out
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
            layout = embed_2d(self.X, method, v, seed=self.seed, n_jobs=v.n_jobs)
            quality = layout_quality(
                self.X, layout, self.labels, k=v.knn_k, max_points=v.quality_max_points,
                seed=self.seed,
            )  # fmt: skip
            self._done[key] = (layout, quality)
        return self._done[key]

    def main(self) -> Layout:
        method = self.v.method
        layout, quality = self.layout(method)
        self.metrics |= numbers(quality) | {"layout_seconds": layout.seconds}
        title = f"{self.title}\n{layout.description}"
        self.figures[method] = plot_scatter(
            layout.xy, self.labels, None, title, self.out / f"{method}.png", quality
        )
        if layout.snapshots:
            self.figures["tsne_snapshots"] = plot_snapshots(
                layout, self.labels, None, self.title, self.out / "tsne_snapshots.png"
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
            layouts, qualities, self.labels, None, self.title, self.out / "tsne_dof.png"
        )

    def method_panel(self) -> None:
        layouts, qualities = {}, {}
        for method in ("tsne", "umap", "pca"):
            name = METHOD_NAMES[method]
            layouts[name], qualities[name] = self.layout(method, snapshots=[])
            self.metrics |= numbers(qualities[name], f"{method}_")
        self.figures["methods"] = plot_method_panel(
            layouts, qualities, self.labels, None, self.title, self.out / "methods.png"
        )


def word_figure(
    s: Settings, X: np.ndarray, rows: list[dict], out: Path, title: str
) -> tuple[dict, list[list]]:
    """t-SNE (or PCA for few points) of every occurrence of the words of interest, a few
    labelled with their sentence; returns the quality numbers and one table row per occurrence
    (word, sentence, x, y, layer)."""
    words = [row["word"] for row in rows]
    v = s.visualize
    perplexity = min(v.perplexity, (len(X) - 1) / 3 - 1e-6)
    method = "tsne" if perplexity >= 2 else "pca"
    v = replace(v, perplexity=max(perplexity, 1.0), snapshots=[])
    layout = embed_2d(X, method, v, seed=s.seed, n_jobs=v.n_jobs)
    quality = layout_quality(X, layout, words, k=min(v.knn_k, max(1, len(X) // 2 - 1)))
    title = f"{title}\ncontextual word vectors · {layout.description}"
    snippets = {}  # the same sentence twice says nothing new: labels come from distinct ones
    for i in spread_points(layout.xy, words, 3 * ANNOTATED_WORDS):
        snippets.setdefault(snippet(rows[i]), i)
    annotations = [(i, text) for text, i in list(snippets.items())[:ANNOTATED_WORDS]]
    plot_scatter(layout.xy, words, None, title, out, quality, annotations)
    table = [
        [row["word"], row.get("context") or row.get("text", "")[:200], float(x), float(y), v.layer]
        for (x, y), row in zip(layout.xy, rows, strict=True)
    ]
    return numbers(quality, "words_"), table


def build(ctx: BuildContext) -> dict[str, float]:
    s: Settings = ctx.settings
    v = s.visualize
    extract = ctx.upstream["extract"]
    model_name = extract.manifest.get("model_name", "model")
    X, rows = embeddings_of(extract, SENTENCES, v.layer)
    labels = [row.get("label") for row in rows]
    split = rows[0].get("split", "") if rows else ""
    title = f"{model_name} · {layer_name(v.layer)} · {split} split"

    figures = Figures(s, ctx.path, np.asarray(X), labels, title)
    main = figures.main()
    if v.compare_dof:
        figures.dof_comparison()
    if v.compare_methods:
        figures.method_panel()
    metrics = dict(figures.metrics)
    word_table = None
    if has_embeddings(extract, WORDS):
        word_X, word_rows = embeddings_of(extract, WORDS, v.layer)
        figures.figures["words"] = ctx.path / "words.png"
        word_metrics, word_table = word_figure(
            s, np.asarray(word_X), word_rows, ctx.path / "words.png",
            f"{model_name} · {layer_name(v.layer)}",
        )  # fmt: skip
        metrics |= word_metrics

    if v.attention_sentences:
        encoder = extraction_encoder(extract)
        for i, sentence in enumerate(v.attention_sentences):
            tokens, probs = attention_maps(encoder.bert, encoder.tokenizer, sentence)
            title = f"{model_name}: “{sentence}”"
            stem = f"attention_{i}"
            for path in plot_attention_layers(tokens, probs, ctx.path, stem, title):
                figures.figures[path.stem] = path
            figures.figures[f"{stem}_mean"] = plot_attention_average(
                tokens, probs, ctx.path / f"{stem}_mean.png", title
            )

    points = [
        [float(x), float(y), str(label), row.get("text", "")[:200]]
        for (x, y), label, row in zip(main.xy, labels, rows, strict=True)
    ]
    (ctx.path / "points.json").write_text(json.dumps(points), encoding="utf-8")
    with ctx.loggers() as loggers:
        for name, path in figures.figures.items():
            loggers.log_image(f"visualize/{name}", path)
        loggers.log_table("visualize/points", ["x", "y", "label", "text"], points)
        if word_table is not None:
            loggers.log_table("visualize/words", WORD_COLUMNS, word_table)
        loggers.log_metrics({f"visualize/{k}": value for k, value in metrics.items()})
    ctx.extra["figures"] = {name: str(path) for name, path in figures.figures.items()}
    return metrics


STAGE = Stage(
    "visualize",
    Settings,
    build,
    upstream=lambda s: ("extract",),
    summary=(
        "trustworthiness", "knn_accuracy_2d", "knn_accuracy_hd", "silhouette_2d", "kl_divergence",
        "umap_knn_accuracy_2d", "pca_knn_accuracy_2d",
    ),
)  # fmt: skip

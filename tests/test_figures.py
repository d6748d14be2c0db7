"""Figures that read well: titles inside the figure, attention one file per layer at a bounded
size, loss and accuracy panels, words labelled with their sentence; the gradient norm per step."""

from __future__ import annotations

import csv
import math

import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.image import imread
from matplotlib.text import Annotation

from bertforge.analysis.attention import (
    attention_average_figure,
    attention_layer_figure,
    plot_attention_layers,
)
from bertforge.analysis.figures import read_metric_columns, spread_points, training_curves_figure
from bertforge.analysis.layouts import scatter_figure
from bertforge.stages.visualize import layer_name, snippet

LONG_TITLE = (
    "pretrained bert_small (L4/H512/A8) from sentence-transformers/all-MiniLM-L6-v2 · last layer"
    " · test split\nUMAP (n_neighbors 15, min_dist 0.1)"
)
TOKENS = ["[CLS]", "i", "like", "to", "watch", "football", "on", "the", "week", "##end", "."]


def drawn(fig):
    fig.canvas.draw()
    return fig.canvas.get_renderer()


def assert_inside(box, frame, what: str) -> None:
    assert (frame.x0 - 1 <= box.x0 and box.x1 <= frame.x1 + 1) and (
        frame.y0 - 1 <= box.y0 and box.y1 <= frame.y1 + 1
    ), f"{what} at {box} leaves {frame}"


def assert_titles_inside(fig) -> None:
    renderer = drawn(fig)
    for text in [fig._suptitle, *(ax.title for ax in fig.axes)]:
        if text is not None and text.get_text():
            assert_inside(text.get_window_extent(renderer), fig.bbox, text.get_text())


def attention_probs(L: int, nh: int, T: int) -> np.ndarray:
    probs = np.random.default_rng(0).random((L, nh, T, T)).astype(np.float32) ** 4
    return probs / probs.sum(-1, keepdims=True)


def test_a_long_scatter_title_is_wrapped_inside_the_figure():
    xy = np.random.default_rng(0).normal(size=(120, 2))
    labels = [f"label number {i % 12}" for i in range(120)]
    fig = scatter_figure(xy, labels, None, LONG_TITLE)
    assert_titles_inside(fig)
    renderer = fig.canvas.get_renderer()
    assert_inside(fig.legends[0].get_window_extent(renderer), fig.bbox, "legend")
    plt.close(fig)


def test_word_figure_labels_a_few_points_with_their_sentence():
    text = "Analysts said the $5bn deal would close next year, a year later than planned."
    rows, points = [], []
    rng = np.random.default_rng(1)
    for word, centre in (("said", (0, 0)), ("year", (5, 2))):
        start = text.index(word)
        for _ in range(20):
            rows.append({"word": word, "text": text, "char_start": start, "char_end": start + 4})
            points.append(rng.normal(centre, 1.0))
    xy, words = np.array(points), [row["word"] for row in rows]
    chosen = spread_points(xy, words, 6)
    assert len(set(chosen)) == 6 and {words[i] for i in chosen} == {"said", "year"}
    fig = scatter_figure(xy, words, None, "words", None, [(i, snippet(rows[i])) for i in chosen])
    renderer = drawn(fig)
    (ax,) = fig.axes
    labels = [t for t in ax.texts if isinstance(t, Annotation)]
    assert len(labels) == 6 and "said the $5bn deal" in labels[0].get_text().replace("\\", "")
    frame = ax.get_window_extent(renderer)
    boxes = [label.get_window_extent(renderer) for label in labels]
    for label, box in zip(labels, boxes, strict=True):
        assert_inside(box, frame, label.get_text())
    overlapping = [(a, b) for i, a in enumerate(boxes) for b in boxes[i + 1 :] if a.overlaps(b)]
    assert not overlapping
    plt.close(fig)

    row = {"text": text, "char_start": text.index("year"), "char_end": text.index("year") + 4}
    assert snippet(row, chars=12) == "…close next year, a year…"
    assert [layer_name(k) for k in (-1, -2, 0, 3)] == [
        "last layer", "layer L-1", "embedding layer", "layer 3"
    ]  # fmt: skip


def test_attention_is_one_bounded_figure_per_layer(tmp_path):
    probs = attention_probs(2, 12, len(TOKENS))  # 12 heads a layer, as in BERT-base
    paths = plot_attention_layers(TOKENS, probs, tmp_path, "attention_0", "model: “sentence”")
    assert [p.name for p in paths] == ["attention_0_layer1.png", "attention_0_layer2.png"]
    height, width = imread(paths[0]).shape[:2]
    assert width <= 2400 and height <= 1600, (width, height)

    fig = attention_layer_figure(TOKENS, probs, 1, "model: " + LONG_TITLE)
    assert_titles_inside(fig)
    assert "layer 2 of 2 (last)" in fig._suptitle.get_text()
    heads = [ax for ax in fig.axes if ax.get_title().startswith("head")]
    assert len(heads) == 12
    assert {ax.get_ylabel() for ax in heads} == {"query (attending)", ""}
    assert {ax.get_xlabel() for ax in heads} == {"key (attended to)", ""}
    labelled = [ax for ax in heads if ax.get_xticklabels() and ax.get_xticklabels()[0].get_text()]
    assert len(labelled) == 4  # key tokens under the bottom row only
    plt.close(fig)

    fig = attention_average_figure(TOKENS, probs, "model")
    assert [ax.get_title() for ax in fig.axes[:2]] == ["layer 1 of 2", "layer 2 of 2 (last)"]
    assert_titles_inside(fig)
    plt.close(fig)


def write_metrics(path, nsp: bool = True) -> None:
    columns = ["step", "train/loss", "train/loss_mlm", "val/loss_mlm", "val/mlm_accuracy"]
    if nsp:
        columns += ["train/loss_nsp", "val/loss_nsp", "val/nsp_accuracy"]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        for step in range(0, 200, 2):
            mlm, nsp_loss = 9 * math.exp(-step / 50) + 3, 0.7 * math.exp(-step / 100)
            writer.writerow({"step": step, "train/loss": mlm + nsp_loss, "train/loss_mlm": mlm}
                            | ({"train/loss_nsp": nsp_loss} if nsp else {}))  # fmt: skip
            if step % 50 == 48:
                writer.writerow({"step": step, "val/loss_mlm": mlm, "val/mlm_accuracy": 0.3}
                                | ({"val/loss_nsp": nsp_loss, "val/nsp_accuracy": 0.7}
                                   if nsp else {}))  # fmt: skip


@pytest.mark.parametrize("nsp", [True, False])
def test_loss_curves_have_a_panel_per_loss_and_one_for_accuracy(tmp_path, nsp):
    write_metrics(tmp_path / "metrics.csv", nsp)
    fig = training_curves_figure(read_metric_columns(tmp_path / "metrics.csv"), "pretraining")
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["MLM loss", *(["NSP loss"] if nsp else []), "validation accuracy"]
    renderer = drawn(fig)
    assert_titles_inside(fig)
    mlm = fig.axes[0]
    first = mlm.transData.transform(mlm.lines[0].get_xydata()[:5])  # the early, high MLM loss
    legend = mlm.get_legend().get_window_extent(renderer)
    assert not any(legend.contains(x, y) for x, y in first)
    assert fig.axes[-1].get_ylim() == (0.0, 1.0)
    plt.close(fig)


def test_pretraining_logs_the_gradient_norm_every_logged_step(tiny_upstream):
    (csv_path,) = tiny_upstream.glob("artifacts/pretrain/*/logs/metrics.csv")
    columns = read_metric_columns(csv_path)
    norms, lrs = columns["train/grad_norm"], columns["train/lr"]
    assert [step for step, _ in norms] == [step for step, _ in lrs]
    assert all(math.isfinite(norm) and norm > 0 for _, norm in norms)

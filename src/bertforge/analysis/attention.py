"""Attention maps of one sentence: each layer's heads (one figure per layer), and the head
average per layer. Rows are query tokens (who attends), columns key tokens (attended to)."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
from tokenizers import Tokenizer
from torch import nn

from bertforge.analysis.embed import as_bert, encode_batch, encoder_tokenizer, eval_mode
from bertforge.analysis.figures import fit_title, save_figure
from bertforge.errors import DataError

CELL_INCHES = 0.2  # heat-map size per token, so tick labels stay readable...
PANEL_INCHES = (1.8, 4.5)  # ...within these bounds on a panel's side
HEADS_PER_ROW = 4
DPI = 110


@torch.inference_mode()
def attention_maps(
    bert: nn.Module, tokenizer: Tokenizer, sentence: str, max_seq_length: int = 128
) -> tuple[list[str], np.ndarray]:
    """The WordPiece tokens of `sentence` ([CLS] ... [SEP]) and its attention probabilities,
    shape (L, nh, T, T): [layer, head, query token, key token], each row summing to 1."""
    if not sentence.strip():
        raise DataError("the attention sentence is empty; set visualize.attention_sentences")
    bert = as_bert(bert)
    encoding = encoder_tokenizer(tokenizer, max_seq_length).encode(sentence)
    with eval_mode(bert):
        _, _, attentions = encode_batch(bert, [encoding], output_attentions=True)
    probs = torch.stack(attentions)[:, 0]  # (L, nh, T, T)
    return list(encoding.tokens), probs.float().cpu().numpy()


def _panel_inches(T: int) -> float:
    return float(np.clip(CELL_INCHES * T, *PANEL_INCHES))


def _heatmap(ax, matrix, tokens: list[str], vmax: float, x_labels: bool, y_labels: bool):
    """One (query, key) heat map; token labels on the bottom (keys) and left (queries) only
    where asked, at a size that fits the panel."""
    image = ax.imshow(matrix, cmap="viridis", vmin=0.0, vmax=vmax)
    T = len(tokens)
    fontsize = float(np.clip(0.75 * _panel_inches(T) * 72 / T, 4, 8))
    ticks = np.arange(T)
    ax.set_xticks(ticks, tokens if x_labels else [], rotation=90, fontsize=fontsize)
    ax.set_yticks(ticks, tokens if y_labels else [], fontsize=fontsize)
    if x_labels:
        ax.set_xlabel("key (attended to)", fontsize=8)
    if y_labels:
        ax.set_ylabel("query (attending)", fontsize=8)
    return image


def _grid(n: int, T: int, title: str):
    """A constrained figure with `n` square panels, at most HEADS_PER_ROW a row; returns the
    figure, its used axes and whether each shows x / y tick labels (bottom of its column, first
    of its row)."""
    cols = min(n, HEADS_PER_ROW)
    rows = math.ceil(n / cols)
    side = _panel_inches(T)
    fig, axes = plt.subplots(
        rows,
        cols,
        figsize=(side * cols + 2.2, side * rows + 1.6),
        squeeze=False,
        layout="constrained",
    )
    for ax in axes.flat[n:]:
        ax.axis("off")
    used = list(axes.flat[:n])
    labels = [(i + cols >= n, i % cols == 0) for i in range(n)]
    fig.suptitle(fit_title(title, fig.get_figwidth(), 11), fontsize=11)
    return fig, used, labels


def layer_title(layer: int, num_layers: int) -> str:
    """ "layer 3 of 6", "layer 6 of 6 (last)"; layers count from 1."""
    return f"layer {layer} of {num_layers}" + (" (last)" if layer == num_layers else "")


def attention_layer_figure(
    tokens: list[str], probs: np.ndarray, layer: int, title: str, vmax: float | None = None
):
    """The heads of `layer` (0-based index into probs (L, nh, T, T)), one heat map each."""
    L, nh, T, _ = probs.shape
    vmax = float(probs.max()) if vmax is None else vmax
    fig, axes, labels = _grid(nh, T, f"{title}\n{layer_title(layer + 1, L)}, every head")
    for head, (ax, (x_labels, y_labels)) in enumerate(zip(axes, labels, strict=True)):
        image = _heatmap(ax, probs[layer, head], tokens, vmax, x_labels, y_labels)
        ax.set_title(f"head {head + 1}", fontsize=9)
    fig.colorbar(image, ax=axes, shrink=0.6, label="attention probability")
    return fig


def plot_attention_layers(
    tokens: list[str], probs: np.ndarray, out_dir: Path, stem: str, title: str
) -> list[Path]:
    """One figure per layer, `<stem>_layer<k>.png` with k = 1..L, its heads side by side (at
    most HEADS_PER_ROW a row) on one colour scale shared by every layer."""
    vmax = float(probs.max())
    return [
        save_figure(
            attention_layer_figure(tokens, probs, layer, title, vmax),
            Path(out_dir) / f"{stem}_layer{layer + 1}.png",
            dpi=DPI,
        )
        for layer in range(probs.shape[0])
    ]


def attention_average_figure(tokens: list[str], probs: np.ndarray, title: str):
    """The head-averaged attention of each layer, one panel per layer."""
    L, _, T, _ = probs.shape
    means = probs.mean(axis=1)  # (L, T, T)
    vmax = float(means.max())
    fig, axes, labels = _grid(L, T, f"{title}\nmean over heads, per layer")
    for layer, (ax, (x_labels, y_labels)) in enumerate(zip(axes, labels, strict=True)):
        image = _heatmap(ax, means[layer], tokens, vmax, x_labels, y_labels)
        ax.set_title(layer_title(layer + 1, L), fontsize=9)
    fig.colorbar(image, ax=axes, shrink=0.6, label="attention probability")
    return fig


def plot_attention_average(tokens: list[str], probs: np.ndarray, path: Path, title: str) -> Path:
    """`attention_average_figure` as a PNG at `path`."""
    return save_figure(attention_average_figure(tokens, probs, title), path, dpi=DPI)

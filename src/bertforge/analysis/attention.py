"""Attention maps of one sentence: every layer and head, and the head average per layer."""

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
from bertforge.analysis.figures import save_figure
from bertforge.errors import DataError

CELL_INCHES = 0.28  # heat-map size per token, so tick labels stay readable


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


def _heatmap(ax, matrix, tokens: list[str], vmax: float, x_labels: bool, y_labels: bool):
    image = ax.imshow(matrix, cmap="viridis", vmin=0.0, vmax=vmax)
    ticks = np.arange(len(tokens))
    ax.set_xticks(ticks, tokens if x_labels else [], rotation=90, fontsize=7)
    ax.set_yticks(ticks, tokens if y_labels else [], fontsize=7)
    return image


def plot_attention_grid(tokens: list[str], probs: np.ndarray, path: Path, title: str) -> Path:
    """One heat map per (layer, head): rows are layers, columns heads; y = query, x = key."""
    L, nh, T, _ = probs.shape
    vmax = float(probs.max())  # one colour scale for all panels
    side = max(1.6, CELL_INCHES * T)
    fig, axes = plt.subplots(
        L, nh, figsize=(side * nh + 1.5, side * L + 1.0), squeeze=False, layout="constrained"
    )
    for layer in range(L):
        for head in range(nh):
            ax = axes[layer, head]
            image = _heatmap(ax, probs[layer, head], tokens, vmax, layer == L - 1, head == 0)
            ax.set_title(f"layer {layer + 1} · head {head + 1}", fontsize=8)
    fig.colorbar(image, ax=axes, shrink=0.6, label="attention probability")
    fig.suptitle(title)
    return save_figure(fig, path, dpi=110)


def plot_attention_average(
    tokens: list[str], probs: np.ndarray, path: Path, title: str = "attention, mean over heads"
) -> Path:
    """The head-averaged attention of each layer, tick labels on every panel."""
    L, _, T, _ = probs.shape
    means = probs.mean(axis=1)  # (L, T, T)
    vmax = float(means.max())
    cols = min(L, 4)
    rows = math.ceil(L / cols)
    side = max(2.5, CELL_INCHES * T + 1.0)
    fig, axes = plt.subplots(
        rows,
        cols,
        figsize=(side * cols + 1.5, side * rows + 0.8),
        squeeze=False,
        layout="constrained",
    )
    for layer, ax in enumerate(axes.flat):
        if layer >= L:
            ax.axis("off")
            continue
        image = _heatmap(ax, means[layer], tokens, vmax, True, True)
        ax.set_title(f"layer {layer + 1}", fontsize=9)
    fig.colorbar(image, ax=axes, shrink=0.6, label="attention probability")
    fig.suptitle(title)
    return save_figure(fig, path, dpi=110)

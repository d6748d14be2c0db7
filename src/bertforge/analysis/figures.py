"""Figure saving, and training-curve figures drawn from a stage's CSV metrics."""

from __future__ import annotations

import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def save_figure(fig, path: Path, dpi: int = 120) -> Path:
    """Write `fig` as PNG (creating the directory) and free it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def read_metric_columns(csv_path: Path) -> dict[str, list[tuple[int, float]]]:
    """Lightning CSVLogger rows -> {metric: [(step, value), ...]} (empty cells skipped).

    A step logged twice (a run resumed from a checkpoint older than its last rows) keeps its
    last value."""
    columns: dict[str, dict[int, float]] = {}
    with open(csv_path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            step = int(float(row.get("step") or 0))
            for key, value in row.items():
                if key != "step" and value not in ("", None):
                    columns.setdefault(key, {})[step] = float(value)
    return {key: sorted(values.items()) for key, values in columns.items()}


def plot_training_curves(csv_path: Path, png_path: Path, window: int = 10) -> dict[str, float]:
    """Plot every loss (train and validation) against the step; return first/last train loss.

    `train_loss_first`/`train_loss_last` are means over the first/last `window` logged values,
    the plain numbers that show the loss fell.
    """
    columns = read_metric_columns(csv_path)
    losses = sorted(key for key in columns if "loss" in key)
    fig, ax = plt.subplots(figsize=(7, 4))
    for key in losses:
        steps, values = zip(*columns[key], strict=True)
        style = "-" if key.startswith("train/") else "o--"
        ax.plot(steps, values, style, label=key, markersize=4)
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy")
    ax.set_title("pretraining losses")
    ax.grid(alpha=0.3)
    if losses:
        ax.legend()
    fig.tight_layout()
    save_figure(fig, png_path)

    train = [value for _, value in columns.get("train/loss", [])]
    if not train:
        return {}
    first, last = train[:window], train[-window:]
    return {
        "train_loss_first": sum(first) / len(first),
        "train_loss_last": sum(last) / len(last),
    }

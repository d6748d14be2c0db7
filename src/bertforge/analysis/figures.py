"""Figure saving, titles that fit, and training-curve figures drawn from a stage's CSV metrics."""

from __future__ import annotations

import csv
import textwrap
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np


def save_figure(fig, path: Path, dpi: int = 120) -> Path:
    """Write `fig` as PNG (creating the directory) and free it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def fit_title(text: str, width_inches: float, fontsize: float = 10) -> str:
    """`text` with each line wrapped to fit `width_inches` at `fontsize`, so a centred title
    never runs off the figure (plain text in DejaVu Sans averages 0.5-0.55 em a character)."""
    chars = max(16, int(width_inches * 72 / (0.6 * fontsize)))
    return "\n".join(
        textwrap.fill(line, chars, break_on_hyphens=False) or line for line in text.split("\n")
    )


def annotate_points(ax, xy: np.ndarray, annotations: Sequence[tuple[int, str]]) -> None:
    """Label points (index, text) with a boxed text pointing away from the layout's centre,
    then move each label inside the axes and off the labels and texts placed before it."""
    fig = ax.get_figure(root=True)
    centre, spread = xy.mean(axis=0), xy.std(axis=0) + 1e-9
    box = {"boxstyle": "round,pad=0.2", "facecolor": "white", "alpha": 0.85, "edgecolor": "0.6"}
    labels = []
    for index, text in annotations:
        direction = (xy[index] - centre) / spread
        direction = direction / (np.linalg.norm(direction) + 1e-9)
        label = ax.annotate(
            text.replace("$", r"\$"),  # a dollar sign would start mathtext
            xy[index],
            xytext=tuple(24 * direction),
            textcoords="offset points",
            ha="left" if direction[0] >= 0 else "right",
            va="bottom" if direction[1] >= 0 else "top",
            fontsize=7,
            bbox=box,
            arrowprops={"arrowstyle": "-", "color": "0.4", "lw": 0.8},
        )
        label.set_in_layout(False)  # placed inside the axes below, never shrinking them
        labels.append(label)
    fig.draw_without_rendering()  # final layout and data limits
    renderer = fig.canvas.get_renderer()
    frame = ax.get_window_extent(renderer).padded(-4)
    taken = [t.get_window_extent(renderer) for t in ax.texts if t not in labels]
    points = 72 / fig.dpi
    for label in labels:
        bb = label.get_window_extent(renderer).padded(3)
        dx = max(0.0, frame.x0 - bb.x0) - max(0.0, bb.x1 - frame.x1)
        dy = max(0.0, frame.y0 - bb.y0) - max(0.0, bb.y1 - frame.y1)
        # the smallest vertical move that keeps it inside and off the boxes placed before it
        moves = [dy, *(t.y1 - bb.y0 + 1 for t in taken), *(t.y0 - bb.y1 - 1 for t in taken)]
        free = [
            move for move in moves
            if frame.y0 <= bb.y0 + move and bb.y1 + move <= frame.y1
            and not any(t.overlaps(bb.translated(dx, move)) for t in taken)
        ]  # fmt: skip
        dy = min(free, key=lambda move: abs(move - dy), default=dy)
        ox, oy = label.xyann
        label.xyann = (ox + dx * points, oy + dy * points)
        taken.append(bb.translated(dx, dy))


def spread_points(xy: np.ndarray, groups: Sequence, n: int) -> list[int]:
    """`n` point indices to label, taking turns between the groups (one group label per point):
    first each group's most typical point (nearest its mean), then the point farthest from those
    already taken, so the labels spread over the layout."""
    xy = np.asarray(xy, dtype=float)
    groups = np.asarray([str(g) for g in groups])
    order = list(dict.fromkeys(groups.tolist()))
    chosen: list[int] = []
    while len(chosen) < min(n, len(xy)):
        before = len(chosen)
        for group in order:
            members = [i for i in np.flatnonzero(groups == group) if i not in chosen]
            if not members or len(chosen) >= n:
                continue
            if not any(groups[i] == group for i in chosen):
                centre = xy[groups == group].mean(axis=0)
                scores = -np.linalg.norm(xy[members] - centre, axis=1)
            else:
                scores = np.linalg.norm(xy[members][:, None] - xy[chosen][None], axis=2).min(1)
            chosen.append(int(members[int(np.argmax(scores))]))
        if len(chosen) == before:
            break
    return chosen


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


CURVE_PANELS = (  # (title, y label, ((CSV column, legend label), ...)); empty panels are left out
    ("MLM loss", "cross-entropy", (("train/loss_mlm", "train"), ("val/loss_mlm", "validation"))),
    ("NSP loss", "cross-entropy", (("train/loss_nsp", "train"), ("val/loss_nsp", "validation"))),
    ("validation accuracy", "accuracy",
     (("val/mlm_accuracy", "MLM (masked tokens)"), ("val/nsp_accuracy", "NSP (sentence pairs)"))),
)  # fmt: skip


def training_curves_figure(columns: dict[str, list[tuple[int, float]]], title: str = "pretraining"):
    """One panel per loss (MLM, NSP: their scales differ by an order of magnitude) and one for
    the validation accuracies, against the step; a CSV without those columns gets one panel
    with every loss."""
    panels = [
        (name, unit, [(key, label) for key, label in curves if columns.get(key)])
        for name, unit, curves in CURVE_PANELS
    ]
    panels = [panel for panel in panels if panel[2]]
    if not panels:
        losses = sorted(key for key in columns if "loss" in key)
        panels = [("losses", "cross-entropy", [(key, key) for key in losses])]
    fig, axes = plt.subplots(
        1, len(panels), figsize=(4.3 * len(panels), 3.8), sharex=True, squeeze=False,
        layout="constrained",
    )  # fmt: skip
    for ax, (name, unit, curves) in zip(axes[0], panels, strict=True):
        for key, label in curves:
            steps, values = zip(*columns[key], strict=True)
            if key.startswith("train/"):
                ax.plot(steps, values, "-", lw=1, alpha=0.8, label=label)
            else:
                ax.plot(steps, values, "o--", markersize=4, label=label)
        if unit == "accuracy":
            ax.set_ylim(0.0, 1.0)
        ax.set_title(name, fontsize=10)
        ax.set(xlabel="step", ylabel=unit)
        ax.grid(alpha=0.3)
        if curves:
            ax.legend(loc="best", fontsize=8)
    fig.suptitle(fit_title(title, fig.get_figwidth(), 11), fontsize=11)
    return fig


def plot_training_curves(
    csv_path: Path, png_path: Path, window: int = 10, title: str = "pretraining"
) -> dict[str, float]:
    """Plot the loss and accuracy curves of a Lightning CSV log; return first/last train loss.

    `train_loss_first`/`train_loss_last` are means over the first/last `window` logged values,
    the plain numbers that show the loss fell.
    """
    columns = read_metric_columns(csv_path)
    save_figure(training_curves_figure(columns, title), png_path)
    train = [value for _, value in columns.get("train/loss", [])]
    if not train:
        return {}
    first, last = train[:window], train[-window:]
    return {
        "train_loss_first": sum(first) / len(first),
        "train_loss_last": sum(last) / len(last),
    }

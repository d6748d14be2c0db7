"""Fine-tuning results: predictions and confusion matrices per seed, numbers over seeds."""

from __future__ import annotations

import csv
import io
import random
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
from sklearn.metrics import ConfusionMatrixDisplay

from bertforge.analysis.figures import save_figure
from bertforge.analysis.stats import summarize
from bertforge.data.tasks import TaskData, metric_postfix
from bertforge.files import write_atomic

RUN_COLUMNS = ("steps", "train_seconds")  # what each seed's row holds beside the metrics


def prediction_rows(task: TaskData, split: str, outputs: torch.Tensor) -> tuple[list, list]:
    """(columns, rows) pairing each example with its prediction; `outputs` are class
    probabilities (N, C) or scores (N,)."""
    examples = task.splits[split]
    texts = [e.text_a if e.text_b is None else f"{e.text_a} [SEP] {e.text_b}" for e in examples]
    if task.task_type == "regression":
        scores = outputs.tolist()
        rows = [
            [e.id, t, e.label, round(s, 4)] for e, t, s in zip(examples, texts, scores, strict=True)
        ]
        return ["id", "text", "gold", "predicted"], rows
    names = task.label_names
    confidence, predicted = outputs.max(-1)
    rows = [
        [e.id, t, names[e.label], names[p], round(c, 4)]
        for e, t, p, c in zip(examples, texts, predicted.tolist(), confidence.tolist(), strict=True)
    ]
    return ["id", "text", "gold", "predicted", "confidence"], rows


def plot_confusion_matrix(
    gold: list[int], predicted: list[int], label_names: list[str], path: Path, title: str
) -> Path:
    """Counts of (gold row, predicted column), labelled, with the count in every cell."""
    n = len(label_names)
    fig, ax = plt.subplots(figsize=(2.5 + 0.9 * n, 2 + 0.9 * n), layout="constrained")
    ConfusionMatrixDisplay.from_predictions(
        gold, predicted, labels=list(range(n)), display_labels=label_names, cmap="Blues",
        ax=ax, colorbar=False, xticks_rotation=45,
    )  # fmt: skip
    ax.set_xlabel("predicted")
    ax.set_ylabel("gold")
    ax.set_title(title)
    return save_figure(fig, path)


def report_predictions(
    task: TaskData,
    outputs_per_split: dict[str, torch.Tensor],
    seed: int,
    out_dir: Path,
    sample_size: int,
    loggers,
) -> None:
    """Per scored split: `predictions_seed<N>_<split>.csv` (every row), a W&B table of a sample,
    and for classification `confusion_matrix_seed<N>_<split>.png` plus a W&B confusion plot."""
    for split, outputs in outputs_per_split.items():
        name = f"seed{seed}_{split}"
        columns, rows = prediction_rows(task, split, outputs)
        with open(out_dir / f"predictions_{name}.csv", "w", newline="", encoding="utf-8") as f:
            csv.writer(f).writerows([columns, *rows])
        key = f"{split}{metric_postfix(task.name, split)}"
        sample = random.Random(seed).sample(rows, min(sample_size, len(rows)))
        loggers.log_table(f"predictions/{key}", columns, sample)
        if task.task_type == "classification":
            gold = [e.label for e in task.splits[split]]
            predicted = outputs.argmax(-1).tolist()
            title = f"{task.name} {split}, seed {seed}"
            png = out_dir / f"confusion_matrix_{name}.png"
            plot_confusion_matrix(gold, predicted, task.label_names, png, title)
            loggers.log_image(f"confusion_matrix/{key}", png)
            loggers.log_confusion_matrix(f"confusion/{key}", gold, predicted, task.label_names)


def results_table(rows: list[dict]) -> tuple[list[str], list[list]]:
    """(columns, rows): one row per seed, then the mean, std and 95% CI bounds over seeds
    (std and CI are empty with a single seed)."""
    columns = list(rows[0])
    table = [[str(row["seed"]), *(row[c] for c in columns[1:])] for row in rows]
    summaries = [summarize([row[c] for row in rows]) for c in columns[1:]]
    for label, field in (("mean", "mean"), ("std", "std"), ("ci95_low", "ci_low"),
                         ("ci95_high", "ci_high")):  # fmt: skip
        table.append([label, *(getattr(s, field) for s in summaries)])
    return columns, table


def markdown_row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def write_results(rows: list[dict], task: str, model: str, out_dir: Path) -> dict[str, float]:
    """`results.csv` and `results.md`; returns `<metric>` (mean over seeds) with `<metric>_std`
    and `<metric>_ci95` (half-width) when there is more than one seed."""
    columns, table = results_table(rows)
    text = io.StringIO()
    csv.writer(text).writerows([columns, *table])
    write_atomic(out_dir / "results.csv", text.getvalue())
    metrics = [c for c in columns[1:] if c not in RUN_COLUMNS]
    n = len(rows)

    def cell(column: str, value: float | None) -> str:
        if value is None:
            return "–"
        return f"{value:.0f}" if column in RUN_COLUMNS else f"{value:.4f}"

    lines = [
        f"# {task}: {model}, {n} seed{'s' * (n > 1)}",
        "",
        "| seed | " + " | ".join(columns[1:]) + " |",
        "|" + "---:|" * len(columns),
        *(markdown_row([row[0], *map(cell, columns[1:], row[1:])]) for row in table[:n]),
    ]
    summary: dict[str, float] = {}
    stats_line = []
    for column in columns[1:]:
        s = summarize([row[column] for row in rows])
        stats_line.append(
            s.describe(cell_format="{:.4f}") if column in metrics else cell(column, s.mean)
        )
        if column in metrics:
            summary[column] = s.mean
            if s.std is not None:
                summary[f"{column}_std"] = s.std
                summary[f"{column}_ci95"] = s.ci_high - s.mean
    lines += [
        f"| mean (n={n}) | " + " | ".join(stats_line) + " |",
        "",
        "mean ± std [95% CI of the mean, Student t]; std and CI need two or more seeds. `val_`: "
        "the best checkpoint (chosen on the validation split) scored on the validation split "
        "(GLUE: the dev set); `test_`: the same checkpoint on the test split, scored once.",
    ]
    write_atomic(out_dir / "results.md", "\n".join(lines) + "\n")
    return summary

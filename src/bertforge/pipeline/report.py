"""Ablation reports: a sweep's jobs grouped by setting, mean ± std and n per metric.

Every pipeline job writes `pipeline.json` (its overrides and each stage's metrics) into its Hydra
job directory. `write_report(sweep_dir, metrics)` reads them all, groups jobs by their overrides
without the seed, and writes `report.md`, `report.csv` and `report.png` into the sweep directory.
`ReportCallback` does this at the end of every multirun.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

from bertforge.errors import DataError

JOB_FILE = "pipeline.json"
SEED_KEYS = ("seed", "finetune.seeds")  # varied for replication, not a setting


@dataclass(frozen=True)
class Row:
    setting: str
    metric: str
    mean: float
    std: float
    n: int


def write_job_record(job_dir: Path, overrides: list[str], results) -> None:
    record = {
        "overrides": overrides,
        "stages": {
            r.stage: {
                "hash": r.artifact.hash,
                "path": str(r.artifact.path),
                "reused": r.artifact.reused,
                "seconds": r.seconds,
                "metrics": r.artifact.metrics,
            }
            for r in results
        },
    }
    (Path(job_dir) / JOB_FILE).write_text(json.dumps(record, indent=2), encoding="utf-8")


def setting_of(overrides: list[str], shared: set[str] = frozenset()) -> str:
    """The overrides that tell this job's setting apart: neither seeds nor shared by all jobs."""
    kept = [
        o for o in overrides if o.split("=", 1)[0].lstrip("+~") not in SEED_KEYS and o not in shared
    ]
    return " ".join(sorted(kept)) or "(defaults)"


def collect(sweep_dir: Path, metrics: list[str]) -> list[Row]:
    """Rows of mean ± std over the jobs of each setting, for `stage/metric` names."""
    jobs = sorted(Path(sweep_dir).glob(f"*/{JOB_FILE}"))
    if not jobs:
        raise DataError(
            f"{sweep_dir} holds no */{JOB_FILE}; pass the directory of a finished multirun "
            "(outputs/multirun/<date>/<time>)"
        )
    records = [json.loads(job.read_text(encoding="utf-8")) for job in jobs]
    shared = (
        set.intersection(*(set(r["overrides"]) for r in records)) if len(records) > 1 else set()
    )
    values: dict[tuple[str, str], list[float]] = defaultdict(list)
    for record in records:
        setting = setting_of(record["overrides"], shared)
        for name in metrics:
            stage, _, metric = name.partition("/")
            value = record["stages"].get(stage, {}).get("metrics", {}).get(metric)
            if value is not None:
                values[(setting, name)].append(value)
    if not values:
        raise DataError(f"none of the jobs in {sweep_dir} produced {', '.join(metrics)}")
    return [
        Row(
            setting, metric, statistics.fmean(v), statistics.stdev(v) if len(v) > 1 else 0.0, len(v)
        )
        for (setting, metric), v in sorted(values.items())
    ]


def render_markdown(rows: list[Row]) -> str:
    metrics = sorted({r.metric for r in rows})
    settings = sorted({r.setting for r in rows})
    table = {(r.setting, r.metric): r for r in rows}
    lines = [
        "| setting | " + " | ".join(metrics) + " |",
        "|---|" + "---|" * len(metrics),
    ]
    for setting in settings:
        cells = []
        for metric in metrics:
            r = table.get((setting, metric))
            cells.append(f"{r.mean:.4f} ± {r.std:.4f} (n={r.n})" if r else "–")
        lines.append(f"| `{setting}` | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_report(rows: list[Row], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = sorted({r.metric for r in rows})
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.5 * len(metrics), 3.8), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        mine = [r for r in rows if r.metric == metric]
        ax.bar(range(len(mine)), [r.mean for r in mine], yerr=[r.std for r in mine], capsize=4)
        ax.set_xticks(range(len(mine)), [r.setting for r in mine], rotation=20, ha="right")
        ax.set_title(f"{metric} (mean ± std)")
        for i, r in enumerate(mine):
            ax.annotate(f"{r.mean:.3f}\nn={r.n}", (i, r.mean), ha="center", va="bottom")
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(sweep_dir: Path, metrics: list[str]) -> list[Row]:
    sweep_dir = Path(sweep_dir)
    rows = collect(sweep_dir, metrics)
    (sweep_dir / "report.md").write_text(render_markdown(rows), encoding="utf-8")
    with open(sweep_dir / "report.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["setting", "metric", "mean", "std", "n"])
        writer.writerows([r.setting, r.metric, r.mean, r.std, r.n] for r in rows)
    plot_report(rows, sweep_dir / "report.png")
    return rows


def log_report_to_wandb(sweep_dir: Path, rows: list[Row], logger_cfg: Any, group: str) -> None:
    """One `report` run in the sweep's W&B group holding the table and the plot."""
    if logger_cfg.backend != "wandb":
        return
    import wandb

    from bertforge.pipeline.tracking import resolve_wandb_mode

    run = wandb.init(
        project=logger_cfg.project,
        entity=logger_cfg.entity,
        group=group,
        job_type="report",
        name=f"{group}-report",
        dir=str(sweep_dir),
        mode=resolve_wandb_mode(logger_cfg),
        settings=wandb.Settings(silent=True, console="off", x_disable_stats=True),
    )
    columns = ["setting", "metric", "mean", "std", "n"]
    data = [[r.setting, r.metric, r.mean, r.std, r.n] for r in rows if math.isfinite(r.mean)]
    run.log({"report": wandb.Table(columns=columns, data=data)})
    run.log({"report_plot": wandb.Image(str(sweep_dir / "report.png"))})
    run.finish()


class ReportCallback(Callback):
    """Hydra callback: write the ablation report when a multirun ends."""

    def __init__(self, metrics: list[str] | None = None) -> None:
        self.metrics = list(metrics or [])

    def on_multirun_end(self, config, **kwargs: Any) -> None:
        from bertforge.config import to_config
        from bertforge.pipeline.runs import hydra_run_name

        sweep_dir = Path(config.hydra.sweep.dir)
        metrics = self.metrics or list(config.get("report_metrics") or [])
        if not metrics or not list(sweep_dir.glob(f"*/{JOB_FILE}")):
            return
        rows = write_report(sweep_dir, metrics)
        print(render_markdown(rows))
        print(f"report: {sweep_dir / 'report.md'}")
        cfg = to_config(config)
        log_report_to_wandb(sweep_dir, rows, cfg.logger, cfg.run_name or hydra_run_name())

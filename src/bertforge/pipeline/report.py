"""Sweep reports: per setting n, mean, std and 95% CI; differences between settings with p-values.

Every pipeline job writes `pipeline.json` (its overrides and each stage's metrics) into its Hydra
job directory. `write_report(sweep_dir, metrics)` reads them all, groups the jobs by their
overrides without the seed (a *setting*), and writes `report.md`, `report.csv` and `report.png`
into the sweep directory. With two or more settings, each setting is compared with the sweep's
first one (the *reference*), paired by seed (see `bertforge.analysis.stats`).
`ReportCallback` does this at the end of every multirun and logs a `report` run to W&B.
"""

from __future__ import annotations

import csv
import json
import logging
import textwrap
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import OmegaConf

from bertforge.analysis.stats import Comparison, compare, format_p, summarize
from bertforge.config import LoggerConfig
from bertforge.errors import DataError
from bertforge.files import replacing, write_atomic

log = logging.getLogger(__name__)

JOB_FILE = "pipeline.json"
SEED_KEYS = ("seed", "finetune.seeds")  # varied for replication, not a setting
CSV_COLUMNS = [
    "kind", "setting", "reference", "metric", "n", "mean", "std", "ci_low", "ci_high",
    "p_value", "test", "seeds_needed", "verdict",
]  # fmt: skip
CELLS = "mean ± sample std [95% CI of the mean, Student t] (n = seeds)"


@dataclass(frozen=True)
class Job:
    setting: str
    seed: str  # the job's seed overrides, e.g. "seed=2": runs of two settings pair on it
    metrics: dict[str, float]  # "stage/metric" -> value


@dataclass(frozen=True)
class Row:
    """One setting's values of one metric over its seeds (std and CI None when n == 1)."""

    setting: str
    metric: str
    n: int
    mean: float
    std: float | None
    ci_low: float | None
    ci_high: float | None
    values: tuple[float, ...] = ()


@dataclass
class Report:
    sweep_dir: Path
    metrics: list[str]  # in the order asked for
    settings: list[str]  # in sweep (job number) order; settings[0] is the reference
    jobs: int
    seeds: list[str] = field(default_factory=list)  # e.g. ["seed=1", "seed=2"]
    rows: list[Row] = field(default_factory=list)
    differences: dict[str, list[Comparison]] = field(default_factory=dict)  # metric -> arms

    @property
    def reference(self) -> str:
        return self.settings[0]

    def row(self, setting: str, metric: str) -> Row | None:
        return next((r for r in self.rows if (r.setting, r.metric) == (setting, metric)), None)


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
    write_atomic(Path(job_dir) / JOB_FILE, json.dumps(record, indent=2))


def _is_seed(override: str) -> bool:
    return override.split("=", 1)[0].lstrip("+~") in SEED_KEYS


def setting_of(overrides: list[str], shared: set[str] = frozenset()) -> str:
    """The overrides that tell this job's setting apart: neither seeds nor shared by all jobs."""
    kept = [o for o in overrides if not _is_seed(o) and o not in shared]
    return " ".join(sorted(kept)) or "(defaults)"


def seed_of(overrides: list[str]) -> str:
    return " ".join(sorted(o for o in overrides if _is_seed(o))) or "(default seed)"


def _job_number(path: Path) -> tuple[int, str]:
    name = path.parent.name
    return (int(name), name) if name.isdigit() else (1 << 30, name)


def load_jobs(sweep_dir: Path, metrics: list[str]) -> list[Job]:
    """The sweep's jobs in job-number order, with the `stage/metric` values they produced."""
    paths = sorted(Path(sweep_dir).glob(f"*/{JOB_FILE}"), key=_job_number)
    if not paths:
        raise DataError(
            f"{sweep_dir} holds no */{JOB_FILE}; pass the directory of a finished multirun "
            "(outputs/multirun/<date>/<time>)"
        )
    records = [json.loads(p.read_text(encoding="utf-8")) for p in paths]
    shared = (
        set.intersection(*(set(r["overrides"]) for r in records)) if len(records) > 1 else set()
    )
    jobs = []
    for record in records:
        values = {}
        for name in metrics:
            stage, _, metric = name.partition("/")
            value = record["stages"].get(stage, {}).get("metrics", {}).get(metric)
            if value is not None:
                values[name] = float(value)
        jobs.append(
            Job(setting_of(record["overrides"], shared), seed_of(record["overrides"]), values)
        )
    return jobs


def build_report(jobs: list[Job], metrics: list[str], sweep_dir: Path = Path(".")) -> Report:
    """Summaries per (setting, metric) and, per metric, each setting against the first."""
    settings = list(dict.fromkeys(job.setting for job in jobs))
    by_seed: dict[tuple[str, str], dict[str, float]] = defaultdict(dict)
    pooled: dict[tuple[str, str], list[float]] = defaultdict(list)
    for job in jobs:
        for metric, value in job.metrics.items():
            pooled[(job.setting, metric)].append(value)
            by_seed[(job.setting, metric)][job.seed] = value
    if not pooled:
        raise DataError(f"none of the jobs in {sweep_dir} produced {', '.join(metrics)}")
    seeds = sorted({job.seed for job in jobs}, key=lambda s: (len(s), s))
    report = Report(Path(sweep_dir), list(metrics), settings, len(jobs), seeds)
    for metric in metrics:
        for setting in settings:
            values = pooled.get((setting, metric))
            if values:
                s = summarize(values)
                report.rows.append(
                    Row(setting, metric, s.n, s.mean, s.std, s.ci_low, s.ci_high, tuple(values))
                )
        reference = by_seed.get((settings[0], metric), {})
        if not reference:
            continue
        for setting in settings[1:]:
            arm = by_seed.get((setting, metric))
            if not arm:
                continue
            a, b = pooled[(setting, metric)], pooled[(settings[0], metric)]
            if len(arm) == len(a) and len(reference) == len(b):  # no seed repeats in a setting
                a, b = arm, reference
            report.differences.setdefault(metric, []).append(compare(a, b, setting, settings[0]))
    return report


def collect(sweep_dir: Path, metrics: list[str]) -> Report:
    return build_report(load_jobs(sweep_dir, metrics), metrics, sweep_dir)


def _num(x: float | None, digits: int = 4) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def format_cell(row: Row | None) -> str:
    if row is None:
        return "–"
    if row.std is None:
        return f"{row.mean:.4f} (n=1, no spread)"
    return f"{row.mean:.4f} ± {row.std:.4f} [{row.ci_low:.4f}, {row.ci_high:.4f}] (n={row.n})"


def render_markdown(report: Report) -> str:
    metrics = [m for m in report.metrics if any(r.metric == m for r in report.rows)]
    lines = [
        f"# Sweep report: {report.sweep_dir.resolve().name}",
        "",
        f"{report.jobs} jobs, {len(report.settings)} settings, seeds: {', '.join(report.seeds)}.",
        f"Cells: {CELLS}.",
        "",
        "| setting | " + " | ".join(metrics) + " |",
        "|---|" + "---|" * len(metrics),
    ]
    for i, setting in enumerate(report.settings):
        tag = " (reference)" if i == 0 and report.differences else ""
        cells = [format_cell(report.row(setting, m)) for m in metrics]
        lines.append(f"| `{setting}`{tag} | " + " | ".join(cells) + " |")
    if report.differences:
        lines += _render_differences(report)
    return "\n".join(lines) + "\n"


def _render_differences(report: Report) -> list[str]:
    arms = "the other setting" if len(report.settings) == 2 else "each other setting"
    lines = [
        "",
        "## Differences",
        "",
        f"{arms.capitalize()} minus the reference `{report.reference}` (the sweep's first "
        "setting), paired by seed (scipy.stats.ttest_rel); Welch's unpaired t-test where the "
        "seeds do not match. *Seeds needed*: pairs (runs per arm if unpaired) that would make the "
        "observed difference significant at 0.05 with 80% power (noncentral t at the observed "
        "effect size; a rough guide).",
        "",
        "| metric | setting | difference [95% CI] | p | test | n | seeds needed |",
        "|---|---|---|---|---|---|---|",
    ]
    for metric, comparisons in report.differences.items():
        for c in comparisons:
            ci = f" [{_num(c.ci_low)}, {_num(c.ci_high)}]" if c.ci_low is not None else ""
            p = "–" if c.p_value is None else f"{c.p_value:.3g}"
            needed = "–" if c.seeds_needed is None else str(c.seeds_needed)
            lines.append(
                f"| {metric} | `{c.arm}` | {c.mean:+.4f}{ci} | {p} | {c.test} | {c.sample_size} "
                f"| {needed} |"
            )
    lines += ["", "Verdicts:", ""]
    for metric, comparisons in report.differences.items():
        lines += [f"- **{metric}**: {c.verdict}" for c in comparisons]
    return lines


def write_csv(report: Report, path: Path) -> None:
    """One table: a `setting` row per (setting, metric), a `difference` row per comparison."""

    def blank(x: Any) -> Any:
        return "" if x is None else x

    with replacing(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_COLUMNS)
        for r in report.rows:
            writer.writerow(
                ["setting", r.setting, "", r.metric, r.n, r.mean, blank(r.std),
                 blank(r.ci_low), blank(r.ci_high), "", "", "", ""]
            )  # fmt: skip
        for metric, comparisons in report.differences.items():
            for c in comparisons:
                writer.writerow(
                    ["difference", c.arm, c.reference, metric, c.n, c.mean, blank(c.std),
                     blank(c.ci_low), blank(c.ci_high), blank(c.p_value), c.test,
                     blank(c.seeds_needed), c.verdict]
                )  # fmt: skip


def tick_label(setting: str, width: int = 22) -> str:
    """A setting on short lines: one override per line, a long one as `key` and `=value`."""
    lines = []
    for override in setting.split():
        key, eq, value = override.partition("=")
        parts = [override] if len(override) <= width or not eq else [key, eq + value]
        for part in parts:
            lines += textwrap.wrap(part, width, break_on_hyphens=False) or [part]
    return "\n".join(lines)


def _band_below(ax, low: float, high: float) -> None:
    """Y limits that leave the lower fifth of the axes free for the value labels."""
    span = (high - low) or (abs(high) * 0.1 or 1.0)
    ax.set_ylim(low - 0.35 * span, high + 0.12 * span)


def _plot_points(ax, labels, points, also_show: tuple[float, ...] = ()) -> None:
    """points: (x, mean, ci_low, ci_high, seed values, label) per setting; the y range covers
    them and the values `also_show` (the zero line of a difference)."""
    import numpy as np

    lows, highs = list(also_show), list(also_show)
    for x, mean, lo, hi, values, text in points:
        if values:
            jitter = np.linspace(-0.12, 0.12, len(values)) if len(values) > 1 else [0.0]
            ax.scatter(x + np.asarray(jitter), values, s=14, color="0.55", zorder=2)
        yerr = None if lo is None else [[mean - lo], [hi - mean]]
        ax.errorbar(x, mean, yerr=yerr, fmt="o", ms=7, capsize=6, color=f"C{x}", zorder=3)
        ax.text(x, 0.03, text, transform=ax.get_xaxis_transform(), ha="center", va="bottom",
                fontsize=8, bbox=dict(boxstyle="round,pad=0.2", fc="white", ec="0.8"))  # fmt: skip
        lows += [mean, *(v for v in (lo, *values) if v is not None)]
        highs += [mean, *(v for v in (hi, *values) if v is not None)]
    _band_below(ax, min(lows), max(highs))
    ax.set_xticks(range(len(labels)), labels, fontsize=8)
    ax.set_xlim(-0.6, len(labels) - 0.4)
    ax.grid(axis="y", alpha=0.3)


def _p_label(c: Comparison) -> str:
    if c.p_value is not None:
        return format_p(c.p_value)
    return "identical" if c.mean == 0 and c.n > 1 else "no test"


def plot_report(report: Report, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig = report_figure(report)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def report_figure(report: Report):
    """One column per metric: the settings (mean, 95% CI, seeds as dots) and, below, each
    setting's difference from the reference (95% CI, dashed zero line)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [m for m in report.metrics if any(r.metric == m for r in report.rows)]
    nrows = 2 if report.differences else 1
    width = max(4.2, 1.5 + 1.5 * len(report.settings))  # 1.5 in: a 22-character tick line
    fig, axes = plt.subplots(
        nrows, len(metrics), figsize=(width * len(metrics), 4.4 * nrows), squeeze=False,
        layout="constrained",
    )  # fmt: skip
    labels = [tick_label(s) for s in report.settings]
    for col, metric in enumerate(metrics):
        ax = axes[0][col]
        points = []
        for x, setting in enumerate(report.settings):
            r = report.row(setting, metric)
            if r is not None:
                points.append((x, r.mean, r.ci_low, r.ci_high, r.values, f"{r.mean:.4g}\nn={r.n}"))
        _plot_points(ax, labels, points)
        ax.set_title(f"{metric}\nmean, 95% CI (bars), seeds (dots)", fontsize=10)
        if nrows == 1:
            continue
        ax = axes[1][col]
        comparisons = report.differences.get(metric, [])
        if not comparisons:
            ax.set_axis_off()
            continue
        index = {s: i for i, s in enumerate(report.settings)}
        diff_points = [
            (index[c.arm], c.mean, c.ci_low, c.ci_high, (),
             f"{c.mean:+.3g}\n" + _p_label(c))
            for c in comparisons
        ]  # fmt: skip
        ax.axhline(0.0, color="0.3", ls="--", lw=1)
        _plot_points(ax, labels, diff_points, also_show=(0.0,))
        ax.text(0, 0.5, "reference", transform=ax.get_xaxis_transform(), ha="center",
                va="center", fontsize=8, color="0.4", rotation=90)  # fmt: skip
        ax.set_xlim(-0.6, len(labels) - 0.4)
        pairing = "paired by seed" if all(c.paired for c in comparisons) else "see report.md"
        ax.set_title(
            textwrap.fill(f"{metric}: difference from {report.reference}", 48)
            + f"\n95% CI, {pairing}",
            fontsize=9,
        )
    return fig


def write_report(sweep_dir: Path, metrics: list[str]) -> Report:
    sweep_dir = Path(sweep_dir)
    report = collect(sweep_dir, metrics)
    write_atomic(sweep_dir / "report.md", render_markdown(report))
    write_csv(report, sweep_dir / "report.csv")
    plot_report(report, sweep_dir / "report.png")
    return report


def sweep_group(sweep_dir: Path) -> str:
    """The W&B group of a sweep's jobs when neither logger.group nor run_name is set (the same
    name `pipeline.cli.hydra_run_name` gives its jobs)."""
    return f"sweep-{sweep_dir.parent.name}-{sweep_dir.name}"


def log_report_to_wandb(report: Report, logger_cfg: Any, group: str, save_dir: Path) -> str | None:
    """One `report` run in the sweep's W&B group holding the tables, the verdicts and the plot.
    Files go to `<save_dir>/wandb` next to the jobs' runs. Returns the run's directory, or None
    (no W&B logger, or W&B could not start: a warning, never a crash)."""
    if logger_cfg.backend != "wandb":
        return None
    import wandb

    from bertforge.pipeline.tracking import resolve_wandb_mode

    (Path(save_dir) / "wandb").mkdir(parents=True, exist_ok=True)
    try:
        run = wandb.init(
            project=logger_cfg.project, entity=logger_cfg.entity, group=group, job_type="report",
            name=f"{group}-report", dir=str(save_dir), mode=resolve_wandb_mode(logger_cfg),
            tags=[*logger_cfg.tags, "report"], reinit="create_new",
            settings=wandb.Settings(silent=True, console="off", x_disable_stats=True,
                                    init_timeout=logger_cfg.init_timeout),
        )  # fmt: skip
    except Exception as exc:  # the service being away must not lose the files written above
        log.warning("W&B report run not created (%s); report.md/.csv/.png are written", exc)
        return None
    rows = [[r.setting, r.metric, r.n, r.mean, r.std, r.ci_low, r.ci_high] for r in report.rows]
    columns = ["setting", "metric", "n", "mean", "std", "ci_low", "ci_high"]
    tables = {"report": wandb.Table(columns=columns, data=rows, allow_mixed_types=True)}
    if report.differences:
        diffs = [
            [m, c.arm, c.reference, c.test, c.n, c.mean, c.ci_low, c.ci_high, c.p_value,
             c.seeds_needed, c.verdict]
            for m, cs in report.differences.items() for c in cs
        ]  # fmt: skip
        columns = ["metric", "setting", "reference", "test", "n", "difference", "ci_low",
                   "ci_high", "p_value", "seeds_needed", "verdict"]  # fmt: skip
        tables["differences"] = wandb.Table(columns=columns, data=diffs, allow_mixed_types=True)
        run.summary["verdicts"] = "\n".join(
            f"{m}: {c.verdict}" for m, cs in report.differences.items() for c in cs
        )
    run.log({**tables, "report_plot": wandb.Image(str(report.sweep_dir / "report.png"))})
    run_dir = str(Path(run.dir).parent)
    run.finish()
    return run_dir


class ReportCallback(Callback):
    """Hydra callback: write the sweep report when a multirun ends and log it to W&B.

    Resolves only the keys it needs: the sweep-level config has no `hydra.job.num`, so resolving
    all of it (`hydra.sweep.subdir: ${hydra.job.num}`) fails at this point.
    """

    def __init__(self, metrics: list[str] | None = None, wandb: bool = True) -> None:
        self.metrics = list(metrics or [])
        self.wandb = wandb

    def on_multirun_end(self, config, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        metrics = self.metrics or list(OmegaConf.select(config, "report_metrics") or [])
        if not metrics or not any(sweep_dir.glob(f"*/{JOB_FILE}")):
            return
        try:
            report = write_report(sweep_dir, metrics)
        except DataError as exc:
            log.warning("no sweep report: %s", exc)
            return
        print(render_markdown(report))
        print(f"report: {sweep_dir / 'report.md'}")
        if not self.wandb:
            return
        logger_cfg = OmegaConf.to_object(
            OmegaConf.merge(OmegaConf.structured(LoggerConfig), config.logger)
        )
        group = logger_cfg.group or OmegaConf.select(config, "run_name") or sweep_group(sweep_dir)
        log_report_to_wandb(report, logger_cfg, group, Path(str(config.paths.outputs)))

"""Experiment tracking: one set of Lightning loggers per stage execution.

CSV metrics are always written (into the artifact directory). W&B runs are named
`<group>-<stage>` with `group` = the pipeline run, `job_type` = the stage; they go offline when no
API key is present or the service cannot be reached, and never crash a run. Either cause is
reported once per process, and later stages go offline at once instead of waiting
`logger.init_timeout` seconds again.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import os
import warnings
from argparse import Namespace
from pathlib import Path
from typing import Any

from lightning.pytorch.core.saving import save_hparams_to_yaml
from lightning.pytorch.loggers import Logger, TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only

from bertforge.config import LoggerConfig
from bertforge.files import replacing
from bertforge.pipeline.distributed import is_rank_zero
from bertforge.pipeline.runs import wandb_api_key_present

log = logging.getLogger(__name__)
WANDB_TAG_LENGTH = 64  # W&B rejects longer tags


# Why this process logs offline although logger.mode=online (no API key, or the service did not
# answer), once known: later stages go offline at once, without another warning or another wait.
_offline_reason: str | None = None


def _go_offline(reason: str) -> None:
    global _offline_reason
    if _offline_reason is None:
        _offline_reason = reason
        warnings.warn(reason, stacklevel=3)


def resolve_wandb_mode(cfg: LoggerConfig) -> str:
    if cfg.mode != "online":
        return cfg.mode
    if _offline_reason is None and not wandb_api_key_present():
        _go_offline(
            "logger.mode=online but no W&B API key (set WANDB_API_KEY or run `wandb login`); "
            "logging offline instead"
        )
    return "offline" if _offline_reason is not None else "online"


@contextlib.contextmanager
def _no_error_reports():
    """A failing `wandb.init` reports its exception to the W&B server through OpenTelemetry
    exporters, which flush at interpreter exit with 10 s HTTP timeouts: against a server that
    accepts connections but never answers, the process then hung ~25 s at exit after a 2 s
    `init_timeout` (measured, wandb 0.31). The online attempt therefore runs with
    WANDB_ERROR_REPORTING=false unless the user set it."""
    if "WANDB_ERROR_REPORTING" in os.environ:
        yield
        return
    os.environ["WANDB_ERROR_REPORTING"] = "false"
    try:
        yield
    finally:
        os.environ.pop("WANDB_ERROR_REPORTING", None)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    key = os.environ.get("WANDB_API_KEY")
    return line.replace(key, "<WANDB_API_KEY>") if key else line


class MetricsCSV:
    """`metrics.csv`: one row per logging call with a column per key ever logged (sorted), each
    row written through at once so that a killed run loses none.

    Rows an earlier process left behind are settled before this process writes its first row:
    a last line cut short by a kill or a full disk is dropped, and so are the rows from the
    step this process starts logging at (`drop_steps_from`; by default the step of its first
    row), which it logs again. So no step is in the file twice and readers need no clean-up.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.columns: list[str] = []
        self.settled = False  # earlier processes' rows checked (and dropped where redone)

    def drop_steps_from(self, step: int) -> None:
        """Drop the rows earlier processes logged at `step` or later (once, before this process
        writes; later calls change nothing)."""
        if self.settled:
            return
        columns, rows, cut = self._read()
        kept = [row for row in rows if _step_of(row) < step]
        if cut or len(kept) < len(rows):
            self._rewrite(columns, kept)
        self.columns, self.settled = columns, True

    def append(self, row: dict[str, Any]) -> None:
        if not self.settled:
            self.drop_steps_from(_step_of(row))
        try:
            if set(row) <= set(self.columns):
                with open(self.path, "a", newline="", encoding="utf-8") as f:
                    csv.DictWriter(f, self.columns).writerow(row)
                return
            columns, rows, _ = self._read()  # a new key: the header changes, write it all again
            self.columns = sorted(set(columns) | set(row))
            self._rewrite(self.columns, [*rows, row])
        except OSError as err:  # a failed write() names no file; say which one
            err.filename = err.filename or str(self.path)
            raise

    def _read(self) -> tuple[list[str], list[dict[str, str]], bool]:
        """(columns, complete rows, whether a cut last line was left out)."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return [], [], False
        lines = text.splitlines(keepends=True)
        cut = bool(lines) and not lines[-1].endswith("\n")
        if cut:
            lines.pop()
        reader = csv.DictReader(lines)
        rows = [row for row in reader if None not in row and None not in row.values()]
        return list(reader.fieldnames or []), rows, cut or len(rows) < max(len(lines) - 1, 0)

    def _rewrite(self, columns: list[str], rows: list[dict[str, Any]]) -> None:
        """Replace the file at once (temporary file and rename): a full disk leaves it as it was."""
        with replacing(self.path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, columns)
            writer.writeheader()
            writer.writerows(rows)


def _step_of(row: dict[str, Any]) -> int:
    try:
        return int(float(row.get("step") or 0))
    except ValueError:
        return 0


class AppendingCSVLogger(Logger):
    """Metrics into `<save_dir>/<name>/<version>/metrics.csv` (`MetricsCSV`), hyperparameters
    into `hparams.yaml` beside it, as Lightning's CSVLogger lays them out. A resumed run goes
    on in the same file: rows reach the disk at every logging step, and a fit resuming from a
    checkpoint drops the rows it is about to log again (`drop_steps_from`, called by
    `bertforge.lit.trainer.ResumeState`), so every step is in the file once. (Lightning logs
    a step's row after the checkpoint saved at that step's end: a kill between the two loses
    that one row, as the resumed run starts after it.)
    """

    def __init__(self, save_dir: Path, name: str, version: str) -> None:
        super().__init__()
        self._save_dir = Path(save_dir)
        self._name = name
        self._version = version
        self._hparams: dict[str, Any] = {}
        self._file: MetricsCSV | None = None

    @property
    def name(self) -> str:
        return self._name

    @property
    def version(self) -> str:
        return self._version

    @property
    def save_dir(self) -> str:
        return str(self._save_dir)

    @property
    def root_dir(self) -> str:
        return str(self._save_dir / self._name)

    @property
    def log_dir(self) -> str:
        return str(self._save_dir / self._name / self._version)

    @property
    def metrics_file(self) -> MetricsCSV:
        if self._file is None:
            Path(self.log_dir).mkdir(parents=True, exist_ok=True)
            self._file = MetricsCSV(Path(self.log_dir) / "metrics.csv")
        return self._file

    @rank_zero_only
    def log_hyperparams(self, params: dict[str, Any] | Namespace, *args, **kwargs) -> None:
        self._hparams.update(vars(params) if isinstance(params, Namespace) else params)
        Path(self.log_dir).mkdir(parents=True, exist_ok=True)
        save_hparams_to_yaml(Path(self.log_dir) / "hparams.yaml", self._hparams)

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        row = {
            key: value.item() if hasattr(value, "item") else value for key, value in metrics.items()
        }
        self.metrics_file.append({**row, "step": 0 if step is None else int(step)})

    @rank_zero_only
    def drop_steps_from(self, step: int) -> None:
        self.metrics_file.drop_steps_from(step)


def _started_wandb_logger(mode: str, kwargs: dict[str, Any]) -> WandbLogger:
    """Start the W&B run now (so that a failure is caught here) and hand it to Lightning's
    WandbLogger through its public `experiment` argument. (Lightning's own start passes
    `anonymous=None` to `wandb.init`, which wandb >= 0.19 answers with a deprecation warning on
    every run; the setting has no effect.)"""
    import wandb

    save_dir = kwargs["save_dir"]
    init = {key: value for key, value in kwargs.items() if key != "save_dir"}
    run = wandb.init(mode=mode, dir=save_dir, **init)
    # the x-axis WandbLogger sets on the runs it starts itself: its `trainer/global_step` key
    run.define_metric("trainer/global_step")
    run.define_metric("*", step_metric="trainer/global_step", step_sync=True)
    return WandbLogger(
        experiment=run, save_dir=save_dir, project=kwargs["project"], name=kwargs["name"]
    )


class StageLoggers:
    """The loggers of one stage execution; `close()` finishes the W&B run."""

    def __init__(
        self,
        cfg: LoggerConfig,
        *,
        stage: str,
        group: str,
        name: str,
        artifact_dir: Path,
        outputs: Path,
        config: dict[str, Any],
        tags: list[str] = (),
        run_suffix: str = "",
        resume_id: str | None = None,
        uses: list[str] = (),
    ) -> None:
        """`run_suffix` tells apart several runs of one stage execution (e.g. "seed42"): each
        gets its own W&B run and CSV directory `logs/<suffix>`. `resume_id` continues that W&B
        run (an interrupted build resuming from its checkpoint); the CSV file is appended to.
        `uses`: the W&B artifact names of the upstream artifacts (lineage, online only; offline
        they are in the config under `artifacts`). `tags`: the command-line overrides."""
        self.cfg = cfg
        self.stage = stage
        self.name = name
        self.uses = list(uses)
        self.loggers: list[Logger] = [
            AppendingCSVLogger(save_dir=artifact_dir, name="logs", version=run_suffix)
        ]
        self.wandb: WandbLogger | None = None
        if cfg.backend == "tensorboard":
            self.loggers.append(
                TensorBoardLogger(save_dir=artifact_dir, name="tensorboard", version=run_suffix)
            )
        elif cfg.backend == "wandb" and is_rank_zero():  # one W&B run per stage, rank 0's
            tags = [*cfg.tags, stage, *(t[:WANDB_TAG_LENGTH] for t in tags)]
            self.wandb = self._start_wandb(group, outputs, config, tags, resume_id)
            if self.wandb is not None:
                self.loggers.append(self.wandb)
                self._link_upstream()
        for logger in self.loggers:
            logger.log_hyperparams(config)

    def _start_wandb(
        self,
        group: str,
        outputs: Path,
        config: dict[str, Any],
        tags: list[str],
        resume_id: str | None,
    ) -> WandbLogger | None:
        import wandb

        (outputs / "wandb").mkdir(parents=True, exist_ok=True)
        kwargs = dict(
            project=self.cfg.project,
            entity=self.cfg.entity,
            group=group,
            job_type=self.stage,
            name=self.name,
            tags=list(dict.fromkeys(tags)),
            save_dir=str(outputs),
            config=config,
            **({"id": resume_id, "resume": "allow"} if resume_id else {}),
            # Console capture and system-metric sampling cost up to half the throughput of a
            # small model on 2 cores (measured): opt-in with logger.console / system_metrics.
            settings=wandb.Settings(
                init_timeout=self.cfg.init_timeout,
                silent=True,
                console="auto" if self.cfg.console else "off",
                x_disable_stats=not self.cfg.system_metrics,
            ),
        )
        mode = resolve_wandb_mode(self.cfg)
        if mode == "online":
            try:
                with _no_error_reports():
                    return _started_wandb_logger(mode, kwargs)
            except Exception as exc:  # the service being away must not end the run
                _go_offline(f"W&B unreachable ({_first_line(exc)}); logging offline instead")
                wandb.finish()
                mode = "offline"
        try:
            return _started_wandb_logger(mode, kwargs)
        except Exception as exc:
            reason = _first_line(exc)
            warnings.warn(f"W&B could not start ({reason}); CSV metrics only", stacklevel=2)
            return None

    def _link_upstream(self) -> None:
        """W&B lineage: the upstream artifacts this run reads. Offline runs cannot use
        artifacts (wandb raises); their config's `artifacts` names them instead."""
        for name in self.uses:
            self.use_artifact(name)

    @property
    def csv_path(self) -> Path:
        return Path(self.loggers[0].log_dir) / "metrics.csv"

    @property
    def wandb_run_path(self) -> str | None:
        """Online: entity/project/run id. Offline: the `offline-run-*` directory, which is
        what `wandb sync` takes (not its `files/` subdirectory)."""
        if self.wandb is None or not is_rank_zero():  # other ranks hold a dummy experiment
            return None
        run = self.wandb.experiment
        return str(Path(run.dir).parent) if run.offline else run.path

    def log_hyperparams(self, params: dict[str, Any]) -> None:
        for logger in self.loggers:
            logger.log_hyperparams(params)

    def log_summary(self, metrics: dict[str, float]) -> None:
        """Final numbers: the W&B run summary (not a history step) and a CSV row."""
        if self.wandb is not None:
            self.wandb.experiment.summary.update(metrics)
        self.loggers[0].log_metrics(metrics, step=0)

    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        for logger in self.loggers:
            logger.log_metrics(metrics, step=step)

    def log_image(self, key: str, path: Path) -> None:
        if self.wandb is not None:
            self.wandb.log_image(key=key, images=[str(path)])

    def log_step(self, step: int, values: dict[str, Any], images: dict[str, Path]) -> None:
        """One point of a W&B series indexed by `step` (W&B's own step, which media panels
        slide over); steps must increase from call to call."""
        if self.wandb is not None:
            import wandb

            row = values | {key: wandb.Image(str(path)) for key, path in images.items()}
            self.wandb.experiment.log(row, step=step)

    def log_table(self, key: str, columns: list[str], data: list[list]) -> None:
        if self.wandb is not None:
            self.wandb.log_table(key=key, columns=columns, data=data)

    def log_confusion_matrix(
        self, key: str, gold: list[int], predicted: list[int], names: list[str]
    ) -> None:
        """W&B's interactive confusion matrix (beside the PNG of the artifact)."""
        if self.wandb is not None:
            import wandb

            plot = wandb.plot.confusion_matrix(y_true=gold, preds=predicted, class_names=names)
            self.wandb.experiment.log({key: plot})

    def use_artifact(self, name: str) -> None:
        """Link W&B artifact `name` (its latest version) as an input of this run; online only."""
        run = self.wandb.experiment if self.wandb is not None else None
        if run is None or run.offline:
            return
        try:
            run.use_artifact(f"{name}:latest")
        except Exception as exc:  # not logged yet (log_artifacts=false upstream), or offline
            log.debug("could not link upstream artifact %s: %s", name, exc)

    def log_artifact(self, directory: Path, name: str, kind: str) -> None:
        """Log a directory as W&B artifact `name` (`<stage>-<hash>`, the names `uses` refers to)."""
        if self.wandb is None or not self.cfg.log_artifacts:
            return
        import wandb

        artifact = wandb.Artifact(name=name, type=kind)
        artifact.add_dir(str(directory))
        self.wandb.experiment.log_artifact(artifact)

    def __enter__(self) -> StageLoggers:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close("success" if exc_type is None else "failed")

    def close(self, status: str = "success") -> None:
        for logger in self.loggers:
            logger.finalize(status)
        if self.wandb is not None:
            self.wandb.experiment.finish(exit_code=0 if status == "success" else 1)

"""Pruning of Optuna trials from inside a fine-tuning run.

Hydra's Optuna sweeper (hydra-optuna-sweeper) asks the study for a trial, turns it into
overrides and launches a job: the job never sees the trial, so it cannot report intermediate
values or be pruned. `hydra/sweeper=optuna_pruning` (src/hydra_plugins/bertforge_optuna_pruning)
is that sweeper plus a pruner (`hydra.sweeper.pruner`, default optuna's MedianPruner) and this
hand-over: around each job it launches in this process (Hydra's basic launcher) it sets the
*running trial* below; `OptunaPruning`, a callback of the fine-tuning trainer, reports the
validation main metric of each epoch to it and stops the fit with `optuna.TrialPruned` when the
pruner says so. The sweeper tells the study the trial was PRUNED (not FAIL) and goes on with
the next one; the pruned job's artifact gets no manifest, so it is never taken as complete.

Where jobs run in other processes (submitit, joblib launchers) there is no running trial: the
sweeper warns once that pruning is off, and the callback does nothing. Without an Optuna
sweep at all the callback does nothing either.

What is reported: with several `finetune.seeds`, only the first seed's fit reports (step =
its epoch, 0-based), so every trial is compared on the same curve; later seeds run to the end.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn

log = logging.getLogger(__name__)

MODE_DIRECTION = {"max": "maximize", "min": "minimize"}


@dataclass
class RunningTrial:
    """The Optuna trial of the job running in this process, set by the pruning sweeper."""

    trial: Any  # optuna.trial.Trial
    directions: list[str]  # the study's: "maximize" / "minimize", one per objective
    pruned_at: int | None = None  # the step at which a callback pruned it
    _warned: bool = False

    def accepts(self, mode: str) -> bool:
        """Whether values of a metric optimised in `mode` ("max"/"min") can be reported:
        a single-objective study in the same direction (optuna prunes single objectives only).
        Says why not once per trial."""
        if self.directions == [MODE_DIRECTION[mode]]:
            return True
        if not self._warned:
            self._warned = True
            log.warning(
                "no pruning for trial %d: the study's directions %s do not match the "
                "monitored metric's (%s); pruning needs one objective in that direction",
                self.trial.number, self.directions, MODE_DIRECTION[mode],
            )  # fmt: skip
        return False


_running: RunningTrial | None = None


def running_trial() -> RunningTrial | None:
    """The trial of the job running in this process, or None (no pruning sweep, or a launcher
    that runs jobs in other processes)."""
    return _running


@contextlib.contextmanager
def trial_running(trial: Any, directions: Sequence[str]) -> Iterator[RunningTrial]:
    """Expose `trial` to the job launched inside the block (in this process)."""
    global _running
    previous, _running = _running, RunningTrial(trial, list(directions))
    try:
        yield _running
    finally:
        _running = previous


class OptunaPruning(Callback):
    """Reports `monitor` after each validation of a fit to the running Optuna trial (step =
    the epoch) and raises `optuna.TrialPruned` when the trial should be pruned.

    Does nothing without a running trial or with `report=False` (a later seed). Non-finite
    values are not reported (optuna's MedianPruner prunes a trial whose values are all NaN).
    Under DDP rank 0, which holds the trial, decides and every rank stops together."""

    def __init__(self, monitor: str, mode: str = "max", report: bool = True) -> None:
        self.monitor = monitor
        self.mode = mode
        self.report = report

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.report or trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        step = trainer.current_epoch
        prune = trainer.is_global_zero and self._report_and_decide(trainer, step)
        if trainer.world_size > 1:
            prune = trainer.strategy.broadcast(prune, src=0)
        if prune:
            import optuna

            raise optuna.TrialPruned(f"pruned at epoch {step} ({self.monitor})")

    def _report_and_decide(self, trainer: pl.Trainer, step: int) -> bool:
        running = running_trial()
        if running is None or not running.accepts(self.mode):
            return False
        value = trainer.callback_metrics.get(self.monitor)
        if value is None or not math.isfinite(value := float(value)):
            return False
        running.trial.report(value, step=step)
        if not running.trial.should_prune():
            return False
        running.pruned_at = step
        log.info(
            "pruning trial %d at epoch %d (%s=%.4f): the pruner stops it",
            running.trial.number, step, self.monitor, value,
        )  # fmt: skip
        return True

"""The sweep of `hydra/sweeper=optuna_pruning`.

`OptunaPruningSweeperImpl.sweep` is hydra-optuna-sweeper 1.2/1.3's `OptunaSweeperImpl.sweep`
(same search space, sampler, batches, failure rate and `optimization_results.yaml`) with three
changes, which the plugin's loop has no hook for:

1. the study is created with `hydra.sweeper.pruner` (the plugin passes none);
2. with Hydra's basic launcher, which runs jobs one after the other in this process, each job
   is launched alone with its trial exposed (`bertforge.pipeline.optuna_pruning.trial_running`)
   so that its trainer can report to it; other launchers get the whole batch, as before, and
   a warning that their jobs cannot be pruned;
3. a job that stopped with `optuna.TrialPruned` is told to the study as PRUNED (optuna keeps
   its last reported value), is not a failure, and the sweep goes on.

It calls the plugin's helpers `create_params_from_overrides` and the `OptunaSweeperImpl`
methods `_process_searchspace_config`, `_parse_sweeper_params_config`, `_configure_trials`,
`_get_directions` and `_to_grid_sampler_choices` (private: tests/test_private_apis.py checks
them); optuna only through its public API (create_study, ask, tell).
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Sequence
from typing import Any

import optuna
from hydra._internal.core_plugins.basic_launcher import BasicLauncher
from hydra.core.utils import JobReturn, JobStatus
from hydra.types import HydraContext, TaskFunction
from hydra_plugins.hydra_optuna_sweeper._impl import (
    OptunaSweeperImpl,
    create_params_from_overrides,
)
from omegaconf import DictConfig, OmegaConf
from optuna.trial import TrialState

from bertforge.pipeline.optuna_pruning import RunningTrial, trial_running

log = logging.getLogger(__name__)
GRID_EXHAUSTED = "`Study.stop` is supposed to be invoked inside an objective function"


class OptunaPruningSweeperImpl(OptunaSweeperImpl):
    def __init__(self, *args: Any, pruner: Any | None = None) -> None:
        super().__init__(*args)
        self.pruner = pruner if pruner is not None else optuna.pruners.NopPruner()
        self.trials_in_process = False

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        super().setup(hydra_context=hydra_context, task_function=task_function, config=config)
        self.trials_in_process = isinstance(self.launcher, BasicLauncher)
        if not self.trials_in_process and not isinstance(self.pruner, optuna.pruners.NopPruner):
            log.warning(
                "%s runs jobs outside this process, where their Optuna trial cannot be reached: "
                "no trial will be pruned (hydra/launcher=basic prunes)",
                type(self.launcher).__name__,
            )

    def sweep(self, arguments: list[str]) -> None:
        self._process_searchspace_config()
        params_conf = [*self._parse_sweeper_params_config(), *arguments]
        is_grid_sampler = (
            isinstance(self.sampler, functools.partial)
            and self.sampler.func == optuna.samplers.GridSampler
        )
        distributions, fixed_params = create_params_from_overrides(params_conf)
        search_space = dict(self.search_space_distributions or {})
        search_space.update(distributions)
        if is_grid_sampler:
            grid = {name: self._to_grid_sampler_choices(d) for name, d in search_space.items()}
            self.sampler = self.sampler(grid)
            self.n_trials = min(self.n_trials, math.prod(len(v) for v in grid.values()))
            log.info(f"Updating num of trials to {self.n_trials} due to using GridSampler.")
        for name in fixed_params:
            search_space.pop(name, None)

        directions = self._get_directions()
        study = optuna.create_study(
            study_name=self.study_name,
            storage=self.storage,
            sampler=self.sampler,
            pruner=self.pruner,
            directions=directions,
            load_if_exists=True,
        )
        log.info(f"Study name: {study.study_name}")
        log.info(f"Storage: {self.storage}")
        log.info(f"Sampler: {type(self.sampler).__name__}")
        log.info(f"Pruner: {type(self.pruner).__name__}")
        log.info(f"Directions: {directions}")

        n_trials_to_go = self.n_trials
        while n_trials_to_go > 0:
            batch_size = min(n_trials_to_go, self.n_jobs)
            trials = [study.ask() for _ in range(batch_size)]
            overrides = self._configure_trials(trials, search_space, fixed_params)
            returns, running = self._launch(trials, overrides, directions)
            failures = []
            for trial, ret, exposed in zip(trials, returns, running, strict=True):
                if pruned(ret, exposed):
                    log.info(f"Trial {trial.number} pruned at step {exposed.pruned_at}")
                    tell(study, trial, is_grid_sampler, state=TrialState.PRUNED)
                    continue
                try:
                    values = objective_values(ret, len(directions))
                    tell(study, trial, is_grid_sampler, values=values)
                except Exception as e:
                    study.tell(trial=trial, state=TrialState.FAIL)
                    log.warning(f"Failed experiment: {e}")
                    failures.append(e)
            if len(failures) / len(returns) > self.max_failure_rate:
                log.error(
                    f"Failed {failures} times out of {len(returns)} "
                    f"with max_failure_rate={self.max_failure_rate}."
                )
                for ret, exposed in zip(returns, running, strict=True):
                    if not pruned(ret, exposed):
                        ret.return_value  # noqa: B018  (JobReturn raises the job's error)
            n_trials_to_go -= batch_size
        self._save_results(study, directions)

    def _launch(
        self, trials: list, overrides: Sequence[Sequence[str]], directions: list[str]
    ) -> tuple[list[JobReturn], list[RunningTrial | None]]:
        """Run the batch's jobs; in this process, one at a time with its trial exposed."""
        if not self.trials_in_process:
            returns = list(self.launcher.launch(overrides, initial_job_idx=self.job_idx))
            self.job_idx += len(returns)
            return returns, [None] * len(returns)
        returns, running = [], []
        for trial, override in zip(trials, overrides, strict=True):
            with trial_running(trial, directions) as exposed:
                returns += self.launcher.launch([override], initial_job_idx=self.job_idx)
            running.append(exposed)
            self.job_idx += 1
        return returns, running

    def _save_results(self, study: optuna.Study, directions: list[str]) -> None:
        """`optimization_results.yaml` in the sweep directory, as the plugin writes it (also
        when every trial was pruned: no best trial then)."""
        results: dict[str, Any] = {"name": "optuna"}
        complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        counts = {
            state.name.lower(): len(study.get_trials(deepcopy=False, states=(state,)))
            for state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
        }
        log.info(f"Trials: {counts}")
        if not complete:
            log.warning("No trial completed: no best parameters")
        elif len(directions) < 2:
            best_trial = study.best_trial
            results |= {"best_params": best_trial.params, "best_value": best_trial.value}
            log.info(f"Best parameters: {best_trial.params}")
            log.info(f"Best value: {best_trial.value}")
        else:
            best_trials = study.best_trials
            results["solutions"] = [{"params": t.params, "values": t.values} for t in best_trials]
            log.info(f"Number of Pareto solutions: {len(best_trials)}")
            for t in best_trials:
                log.info(f"    Values: {t.values}, Params: {t.params}")
        results["trials"] = counts
        OmegaConf.save(
            OmegaConf.create(results), f"{self.config.hydra.sweep.dir}/optimization_results.yaml"
        )


def pruned(ret: JobReturn, exposed: RunningTrial | None) -> bool:
    """Whether the job stopped because its trainer pruned its trial."""
    return ret.status == JobStatus.FAILED and exposed is not None and exposed.pruned_at is not None


def objective_values(ret: JobReturn, n_objectives: int) -> list[float]:
    """The job's return value as the study's objective values (the plugin's checks)."""
    if n_objectives == 1:
        try:
            return [float(ret.return_value)]
        except (ValueError, TypeError):
            raise ValueError(
                f"Return value must be float-castable. Got '{ret.return_value}'."
            ) from None
    try:
        values = [float(v) for v in ret.return_value]
    except (ValueError, TypeError):
        raise ValueError(
            "Return value must be a list or tuple of float-castable values."
            f" Got '{ret.return_value}'."
        ) from None
    if len(values) != n_objectives:
        raise ValueError(
            "The number of the values and the number of the objectives are"
            f" mismatched. Expect {n_objectives}, but actually {len(values)}."
        )
    return values


def tell(study: optuna.Study, trial, is_grid_sampler: bool, **kwargs: Any) -> None:
    """`study.tell`, except that the grid sampler's stop request once its grid is used up
    (an error outside `study.optimize`) is ignored, as the plugin does."""
    try:
        study.tell(trial=trial, **kwargs)
    except RuntimeError as e:
        if not (is_grid_sampler and GRID_EXHAUSTED in str(e)):
            raise

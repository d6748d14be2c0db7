"""`hydra/sweeper=optuna_pruning`: hydra-optuna-sweeper's `optuna` sweeper plus a pruner.

    hydra:
      sweeper:                   # every key of the `optuna` sweeper, plus:
        pruner:                  # hydra/sweeper/pruner=median (default), percentile,
          n_startup_trials: 3    #   hyperband, successive_halving or nop (no pruning)
          n_warmup_steps: 1      # steps (epochs) of a trial that are never pruned

Hydra only instantiates plugins found in the `hydra_plugins` namespace package, so the class
lives here; Hydra's plugin scan imports this module, which registers the configs. The sweep
itself is in `_impl.py` (imported when the sweeper is built: optuna loads only for a sweep),
the hand-over to the job in `bertforge.pipeline.optuna_pruning`. (No `from __future__ import
annotations` here: Hydra's scan runs this module before it is in sys.modules, where dataclasses
would look string annotations up.)
"""

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra_plugins.hydra_optuna_sweeper.config import OptunaSweeperConf
from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper
from omegaconf import MISSING

# The arguments of optuna 2.10's pruners: https://optuna.readthedocs.io/en/v2.10.1/reference/pruners.html


@dataclass
class MedianPrunerConf:
    """Prunes a trial whose best value so far is worse than the median of the complete trials'
    values at the same step."""

    _target_: str = "optuna.pruners.MedianPruner"
    n_startup_trials: int = 5  # complete trials before any pruning
    n_warmup_steps: int = 0  # a trial's first steps are never pruned
    interval_steps: int = 1
    n_min_trials: int = 1  # complete trials that reached the step


@dataclass
class PercentilePrunerConf(MedianPrunerConf):
    _target_: str = "optuna.pruners.PercentilePruner"
    percentile: float = 25.0  # prune below the 25th percentile (maximize)


@dataclass
class HyperbandPrunerConf:
    _target_: str = "optuna.pruners.HyperbandPruner"
    min_resource: int = 1
    max_resource: Any = "auto"
    reduction_factor: int = 3
    bootstrap_count: int = 0


@dataclass
class SuccessiveHalvingPrunerConf:
    _target_: str = "optuna.pruners.SuccessiveHalvingPruner"
    min_resource: Any = "auto"
    reduction_factor: int = 4
    min_early_stopping_rate: int = 0
    bootstrap_count: int = 0


@dataclass
class NopPrunerConf:
    _target_: str = "optuna.pruners.NopPruner"


@dataclass
class OptunaPruningSweeperConf(OptunaSweeperConf):
    _target_: str = (
        "hydra_plugins.bertforge_optuna_pruning.optuna_pruning_sweeper.OptunaPruningSweeper"
    )
    defaults: list[Any] = field(default_factory=lambda: [{"sampler": "tpe"}, {"pruner": "median"}])
    pruner: Any = MISSING  # a hydra/sweeper/pruner option; null: no pruning


store = ConfigStore.instance()
store.store(group="hydra/sweeper", name="optuna_pruning", node=OptunaPruningSweeperConf,
            provider="bertforge")  # fmt: skip
for name, node in {
    "median": MedianPrunerConf, "percentile": PercentilePrunerConf,
    "hyperband": HyperbandPrunerConf, "successive_halving": SuccessiveHalvingPrunerConf,
    "nop": NopPrunerConf,
}.items():  # fmt: skip
    store.store(group="hydra/sweeper/pruner", name=name, node=node, provider="bertforge")


class OptunaPruningSweeper(OptunaSweeper):
    """The `optuna` sweeper whose trials the job can report to and be pruned by."""

    def __init__(
        self,
        sampler: Any,
        direction: Any,
        storage: Any | None,
        study_name: str | None,
        n_trials: int,
        n_jobs: int,
        max_failure_rate: float,
        search_space: Any | None,
        custom_search_space: str | None,
        params: Any | None,
        pruner: Any | None = None,
    ) -> None:
        from ._impl import OptunaPruningSweeperImpl

        self.sweeper = OptunaPruningSweeperImpl(
            sampler, direction, storage, study_name, n_trials, n_jobs, max_failure_rate,
            search_space, custom_search_space, params, pruner=pruner,
        )  # fmt: skip

"""Canaries for what we use of Lightning, Hydra and W&B beyond their public APIs.

Each test fails with a message naming our code that depends on it and what to re-check when a
new release changes it. pyproject.toml caps these libraries below the next minor release; raise
a cap only once this file passes with the new version.
"""

from __future__ import annotations

import inspect
import signal

import lightning.pytorch as pl
import pytest
from lightning.pytorch.demos.boring_classes import BoringModel

from bertforge.lit.trainer import Trainer, TrainingInterrupted, validates_after_this_batch


def canary(condition: bool, ours: str, recheck: str) -> None:
    if not condition:
        pytest.fail(f"{pl.__version__=}: {ours} no longer holds; re-check {recheck}", pytrace=False)


# --- lightning: the fit loop's "validate after this batch?" decision ---------------------------

VAL_FX = (
    "src/bertforge/lit/trainer.py validates_after_this_batch() calls "
    "trainer.fit_loop.epoch_loop._should_check_val_fx(trainer.fit_loop._data_fetcher)"
)
VAL_FX_RECHECK = (
    "that LastCheckpoint saves a step that validates only after its validation "
    "(tests/test_resume.py resumes bit for bit)"
)


def test_should_check_val_fx_has_the_signature_we_call():
    from lightning.pytorch.loops.fit_loop import _FitLoop
    from lightning.pytorch.loops.training_epoch_loop import _TrainingEpochLoop

    method = getattr(_TrainingEpochLoop, "_should_check_val_fx", None)
    canary(method is not None, VAL_FX, VAL_FX_RECHECK)
    canary(list(inspect.signature(method).parameters) == ["self", "data_fetcher"], VAL_FX,
           VAL_FX_RECHECK)  # fmt: skip
    canary("_data_fetcher" in inspect.getsource(_FitLoop.__init__), VAL_FX, VAL_FX_RECHECK)


class _RecordValidations(pl.Callback):
    def __init__(self) -> None:
        self.predicted: list[int] = []  # steps after which validates_after_this_batch said yes
        self.validated: list[int] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if validates_after_this_batch(trainer):
            self.predicted.append(trainer.global_step)

    def on_validation_start(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self.validated.append(trainer.global_step)


@pytest.mark.parametrize(
    "schedule",
    [
        # pretraining: every n batches across epochs, and the last step
        {"max_steps": 14, "val_check_interval": 4, "check_val_every_n_epoch": None},
        # fine-tuning: at every epoch's end (5 batches per epoch here)
        {"max_epochs": 2, "limit_train_batches": 5, "val_check_interval": 5,
         "check_val_every_n_epoch": None},
    ],
)  # fmt: skip
def test_should_check_val_fx_predicts_exactly_the_validations_that_follow(schedule, tmp_path):
    record = _RecordValidations()
    trainer = pl.Trainer(
        **schedule, limit_val_batches=1, callbacks=[record], default_root_dir=tmp_path,
        logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(BoringModel())
    canary(record.validated != [] and record.predicted == record.validated,
           f"{VAL_FX}: it said {record.predicted}, validations ran after {record.validated}",
           VAL_FX_RECHECK)  # fmt: skip


# --- lightning: DDP ranks re-launched under Hydra ----------------------------------------------

RELAUNCH = (
    "src/bertforge/pipeline/distributed.py patch_lightning_hydra_relaunch() replaces "
    "lightning.pytorch.strategies.launchers.subprocess_script._hydra_subprocess_cmd"
    "(local_rank) -> (command, cwd)"
)
RELAUNCH_RECHECK = (
    "how Lightning starts ranks 1..N-1 under Hydra (_SubprocessScriptLauncher."
    "_call_children_scripts) and tests/test_distributed.py"
)


def test_hydra_subprocess_cmd_is_looked_up_where_we_replace_it(monkeypatch):
    from lightning.pytorch.strategies.launchers import subprocess_script

    from bertforge.pipeline.distributed import _job_relaunch_command, patch_lightning_hydra_relaunch

    original = getattr(subprocess_script, "_hydra_subprocess_cmd", None)
    canary(original is not None, RELAUNCH, RELAUNCH_RECHECK)
    canary(list(inspect.signature(original).parameters) == ["local_rank"], RELAUNCH,
           RELAUNCH_RECHECK)  # fmt: skip
    caller = subprocess_script._SubprocessScriptLauncher._call_children_scripts
    # a module-level name looked up at call time: replacing the module attribute takes effect
    canary("_hydra_subprocess_cmd" in caller.__code__.co_names, RELAUNCH, RELAUNCH_RECHECK)
    monkeypatch.setattr(subprocess_script, "_hydra_subprocess_cmd", original)  # restored after
    patch_lightning_hydra_relaunch()
    assert subprocess_script._hydra_subprocess_cmd is _job_relaunch_command


# --- lightning: what fit does on Ctrl-C ------------------------------------------------------


def test_a_keyboard_interrupt_in_fit_reaches_us_as_training_interrupted(tmp_path):
    """Lightning 2.6 catches KeyboardInterrupt, calls Callback.on_exception with it and then
    sys.exit(1); bertforge.lit.trainer.Trainer turns that into TrainingInterrupted."""

    class CtrlCAtStep3(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            if trainer.global_step == 3:
                raise KeyboardInterrupt

    trainer = Trainer(
        max_steps=10, callbacks=[CtrlCAtStep3()], default_root_dir=tmp_path, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    try:
        with pytest.raises(BaseException) as caught:
            trainer.fit(BoringModel())
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)  # Lightning ignores SIGINT now
    canary(isinstance(caught.value, TrainingInterrupted) and caught.value.step == 3,
           f"src/bertforge/lit/trainer.py Trainer._reporting_interrupts got {caught.value!r}",
           "what Lightning's _call_and_handle_interrupt does with a KeyboardInterrupt")  # fmt: skip


# --- W&B ---------------------------------------------------------------------------------------


def test_wandb_accepts_the_experimental_setting_we_pass():
    import wandb

    try:
        settings = wandb.Settings(x_disable_stats=True, console="off", silent=True)
    except Exception as err:  # pydantic's ValidationError for an unknown setting
        settings, error = None, err
    else:
        error = None
    canary(settings is not None and settings.x_disable_stats is True,
           f"wandb.Settings(x_disable_stats=True) in src/bertforge/pipeline/tracking.py and "
           f"pipeline/report.py ({wandb.__version__=}: {error})",
           "how wandb turns off system-metric sampling (it halved throughput)")  # fmt: skip


def test_wandb_logger_logs_the_step_under_the_key_our_runs_plot_against():
    """pipeline/tracking.py starts W&B runs itself and declares Lightning's x-axis key."""
    from lightning.pytorch.loggers import WandbLogger

    class Run:  # what WandbLogger calls on the run it is given
        def __init__(self) -> None:
            self.logged: list[dict] = []

        def log(self, row: dict) -> None:
            self.logged.append(row)

    run = Run()
    WandbLogger(experiment=run).log_metrics({"train/loss": 1.0}, step=7)
    canary(run.logged == [{"train/loss": 1.0, "trainer/global_step": 7}],
           f"src/bertforge/pipeline/tracking.py _started_wandb_logger() defines "
           f"'trainer/global_step' as the x-axis, WandbLogger logged {run.logged}",
           "the key WandbLogger.log_metrics adds for the step")  # fmt: skip


# --- hydra-optuna-sweeper and Hydra: what the optuna_pruning sweeper builds on ------------------

PRUNING_SWEEPER = "src/hydra_plugins/bertforge_optuna_pruning/_impl.py OptunaPruningSweeperImpl"
PRUNING_RECHECK = (
    "its sweep() against the plugin's OptunaSweeperImpl.sweep (it is a copy with a pruner, "
    "trials exposed to in-process jobs and PRUNED trials) and tests/test_optuna_pruning.py"
)


def test_the_optuna_sweeper_internals_we_call_are_there():
    from hydra_plugins.hydra_optuna_sweeper import _impl

    expected = {  # method -> its parameters
        "__init__": ["self", "sampler", "direction", "storage", "study_name", "n_trials",
                     "n_jobs", "max_failure_rate", "search_space", "custom_search_space",
                     "params"],
        "_process_searchspace_config": ["self"],
        "_parse_sweeper_params_config": ["self"],
        "_configure_trials": ["self", "trials", "search_space_distributions", "fixed_params"],
        "_get_directions": ["self"],
        "_to_grid_sampler_choices": ["self", "distribution"],
        "setup": ["self", "hydra_context", "task_function", "config"],
    }  # fmt: skip
    for name, parameters in expected.items():
        method = getattr(_impl.OptunaSweeperImpl, name, None)
        found = None if method is None else list(inspect.signature(method).parameters)
        canary(found == parameters, f"{PRUNING_SWEEPER} calls OptunaSweeperImpl.{name}"
               f"({', '.join(parameters[1:])}), found {found}", PRUNING_RECHECK)  # fmt: skip
    found = list(inspect.signature(_impl.create_params_from_overrides).parameters)
    canary(found == ["arguments"], f"{PRUNING_SWEEPER} calls create_params_from_overrides"
           f"(arguments), found {found}", PRUNING_RECHECK)  # fmt: skip
    # attributes its sweep() reads, set by __init__ / setup
    source = inspect.getsource(_impl.OptunaSweeperImpl)
    for attribute in ("self.search_space_distributions", "self.launcher", "self.job_idx",
                      "self.config", "self.sampler", "self.max_failure_rate"):  # fmt: skip
        canary(f"{attribute} =" in source, f"{PRUNING_SWEEPER} reads {attribute}",
               PRUNING_RECHECK)  # fmt: skip


def test_hydras_basic_launcher_is_the_class_we_take_for_in_process_jobs():
    from hydra._internal.core_plugins.basic_launcher import BasicLauncher, BasicLauncherConf

    canary(BasicLauncherConf._target_ == f"{BasicLauncher.__module__}.BasicLauncher",
           f"{PRUNING_SWEEPER} exposes trials only to jobs of hydra._internal.core_plugins."
           "basic_launcher.BasicLauncher (hydra/launcher=basic)",
           "that Hydra's default launcher still runs jobs in the sweeper's process")  # fmt: skip

"""Build the Lightning Trainer from `conf/trainer/*` plus a stage's own schedule."""

from __future__ import annotations

import glob
import os
import random
import warnings
import zipfile
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, Checkpoint, TQDMProgressBar
from lightning.pytorch.loggers import Logger, WandbLogger
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.trainer.states import TrainerFn

from bertforge.config import TrainerConfig
from bertforge.errors import ConfigError
from bertforge.files import remove_dead_temp_files, replacing

RNG_KEY = "bertforge_rng_states"
RUN_ID_KEY = "wandb_run_id"
STOP_KEY = "bertforge_should_stop"
LAST_CHECKPOINT = Path("checkpoints") / "last.ckpt"  # under a training root directory


def world_size(cfg: TrainerConfig) -> int:
    """Processes that share one optimizer step: devices per node x nodes."""
    devices = cfg.devices
    if isinstance(devices, (list, tuple)):
        devices = len(devices)
    elif devices in ("auto", -1, "-1"):
        devices = torch.cuda.device_count() if cfg.accelerator in ("gpu", "cuda") else 1
    return max(1, int(devices)) * cfg.num_nodes


def batch_plan(global_batch: int, cfg: TrainerConfig, micro_batch: int | None, key: str):
    """(per-device batch, gradient accumulation) so that every optimizer step sees
    `global_batch` examples whatever the number of devices and nodes."""
    world = world_size(cfg)
    micro = micro_batch or global_batch // world
    if micro < 1 or global_batch % (world * micro):
        raise ConfigError(
            f"{key}.global_batch_size={global_batch} is not divisible by world size {world} x "
            f"micro batch {micro}; use a multiple of {world * max(micro, 1)} (or change "
            f"{key}.micro_batch_size)"
        )
    return micro, global_batch // (world * micro)


def last_checkpoint(directory: Path) -> Path | None:
    """`<directory>/checkpoints/last.ckpt` if an interrupted run left one, for resuming.

    An unreadable one (cut short by a full disk) is set aside as `last.ckpt.damaged` with a
    warning, and training starts over rather than failing on every rerun."""
    path = Path(directory) / LAST_CHECKPOINT
    if not path.is_file():
        return None
    try:
        with zipfile.ZipFile(path):  # torch.save writes a zip; a cut one has no directory
            return path
    except (zipfile.BadZipFile, OSError) as err:
        damaged = path.with_name("last.ckpt.damaged")
        os.replace(path, damaged)
        message = f"{path} is unreadable ({err}); moved to {damaged}, training from the start"
        warnings.warn(message, stacklevel=2)
        return None


def checkpoint_run_id(directory: Path) -> str | None:
    """The W&B run id stored in `<directory>`'s last checkpoint, to continue that run."""
    path = last_checkpoint(directory)
    if path is None:
        return None
    checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    return checkpoint.get(RUN_ID_KEY)


def rng_states() -> dict[str, Any]:
    """Every RNG a training step may draw from, in types `torch.load(weights_only=True)` reads."""
    _, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    states = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": (torch.from_numpy(keys.copy()), pos, has_gauss, cached_gaussian),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    keys, pos, has_gauss, cached_gaussian = states["numpy"]
    np.random.set_state(("MT19937", keys.numpy(), pos, has_gauss, cached_gaussian))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


class _FirstWriteError:
    """A binary file for `torch.save` that keeps the first OSError of a write: torch's zip
    writer turns it into a RuntimeError ("unexpected pos ...") that no longer says the disk
    was full (measured, torch 2.13)."""

    def __init__(self, raw) -> None:
        self.raw = raw
        self.error: OSError | None = None

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        try:
            while view.nbytes:  # an unbuffered write may take only part of it
                view = view[self.raw.write(view) :]
        except OSError as err:
            self.error = self.error or err
            raise
        return len(data)

    def flush(self) -> None:
        self.raw.flush()


def save_atomically(obj: Any, path: Path) -> None:
    """`torch.save(obj)` to `path` so that `path` is either the old file or the whole new one
    (`files.replacing`: a temporary file beside it, fsynced and renamed). Any failure (full
    disk, quota, size limit, Ctrl-C) leaves the previous `path` as it was; an OSError is
    re-raised with `path` as its file name."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_dead_temp_files(path.parent, glob.escape(path.name))
    with replacing(path) as tmp, open(tmp, "wb", buffering=0) as raw:
        out = _FirstWriteError(raw)
        try:
            torch.save(obj, out)
        except Exception:
            if out.error is not None:
                raise OSError(out.error.errno, out.error.strerror, str(path)) from None
            raise


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, but atomic on the target's own file system.

    Lightning's default writes the file under $TMPDIR and then moves it into place: across
    file systems that is a copy over the old checkpoint, and a full disk cut `last.ckpt` to a
    fraction of its size (7.25 MB -> 2.0 MB on a 20 MB tmpfs, measured), after which training
    started over. This one writes next to the target and renames (`save_atomically`)."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None or "://" in str(path):  # remote storage: Lightning's way
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        save_atomically(checkpoint, Path(path))


@runtime_checkable
class TruncatableLog(Protocol):
    """A logger whose rows from `step` on can be dropped (they are about to be logged again)."""

    def drop_steps_from(self, step: int) -> None: ...


def validates_after_this_batch(trainer: pl.Trainer) -> bool:
    """Whether the fit loop runs a validation right after the current training batch.

    Lightning has no public hook for this; `_should_check_val_fx` is the loop's own decision
    (tests/test_private_apis.py checks it is still there with this signature)."""
    loop = trainer.fit_loop
    return bool(loop.epoch_loop._should_check_val_fx(loop._data_fetcher))


class LastCheckpoint(Checkpoint):
    """`<root>/checkpoints/last.ckpt`, to resume from: every `every_n_train_steps` optimizer
    steps (None: none), after every validation of a fit, and when the fit ends.

    A step that validates is saved after its validation, never before: Lightning resumes a
    checkpoint written at a step's end as if that step's validation had run, so an earlier
    save would lose the validation (and, when fine-tuning, the best checkpoint it picks). As a
    `Checkpoint`, Lightning runs it after the other callbacks (ModelCheckpoint and this in the
    order given), so it records their state after a validation.
    """

    def __init__(self, root_dir: Path, every_n_train_steps: int | None) -> None:
        self.path = Path(root_dir) / LAST_CHECKPOINT
        self.every_n_train_steps = every_n_train_steps
        self._saved_step = 0  # no need to save before the first step

    def on_train_start(self, trainer, pl_module) -> None:
        self._saved_step = trainer.global_step  # resumed: that step is in last.ckpt already

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        every = self.every_n_train_steps
        if every and trainer.global_step % every == 0 and not validates_after_this_batch(trainer):
            self._save(trainer)

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking:
            self._save(trainer)

    def on_train_end(self, trainer, pl_module) -> None:
        self._save(trainer)

    def _save(self, trainer: pl.Trainer) -> None:
        if trainer.global_step != self._saved_step and not trainer.fast_dev_run:
            trainer.save_checkpoint(self.path)  # every rank calls it; rank 0 writes
            self._saved_step = trainer.global_step


class ResumeState(Callback):
    """Stores what Lightning's checkpoints leave out, so a killed run resumes as if never
    stopped: the RNG states (dropout draws), the id of the W&B run to continue, and whether a
    callback (early stopping) had decided to stop. When a fit starts, loggers that can
    (`TruncatableLog`) drop the rows an earlier process logged from the resumed step on, which
    this fit logs again: a step is never in `metrics.csv` twice."""

    def __init__(self) -> None:
        self._resumed_step = 0

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module, checkpoint: dict) -> None:
        checkpoint[RNG_KEY] = rng_states()
        checkpoint[STOP_KEY] = trainer.should_stop
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                checkpoint[RUN_ID_KEY] = logger.version

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module, checkpoint: dict) -> None:
        if RNG_KEY in checkpoint:
            set_rng_states(checkpoint[RNG_KEY])
        trainer.should_stop = checkpoint.get(STOP_KEY, False)
        self._resumed_step = checkpoint.get("global_step", 0)

    def on_fit_start(self, trainer: pl.Trainer, pl_module) -> None:
        # called after on_load_checkpoint; 0 when training starts from scratch
        for logger in trainer.loggers:
            if isinstance(logger, TruncatableLog):
                logger.drop_steps_from(self._resumed_step)


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) stopped a fit or validation: the directory it trained in, the step it
    had reached, and the checkpoint a rerun resumes from (None: nothing saved yet) with its
    step."""

    def __init__(
        self, root_dir: Path, step: int, checkpoint: Path | None, checkpoint_step: int | None
    ) -> None:
        super().__init__(f"interrupted at step {step} in {root_dir}")
        self.root_dir = Path(root_dir)
        self.step = step
        self.checkpoint = checkpoint
        self.checkpoint_step = checkpoint_step


class _KeyboardInterruptSeen(Callback):
    def __init__(self) -> None:
        self.seen = False

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self.seen = self.seen or isinstance(exception, KeyboardInterrupt)


class Trainer(pl.Trainer):
    """`pl.Trainer` whose fit/validate/test/predict raise `TrainingInterrupted` on Ctrl-C.

    Lightning 2.6 catches the KeyboardInterrupt itself: it logs "Detected KeyboardInterrupt,
    attempting graceful shutdown", ignores further SIGINTs, runs the `on_exception` hooks,
    finalizes the loggers as "failed", tears down (killing ranks it launched) and calls
    `sys.exit(1)`, so the caller could not tell an interrupt from a failure."""

    def __init__(self, *args, **kwargs) -> None:
        self._sigint_seen = _KeyboardInterruptSeen()
        kwargs["callbacks"] = [*kwargs.get("callbacks", []), self._sigint_seen]
        super().__init__(*args, **kwargs)

    def fit(self, *args, **kwargs):
        return self._reporting_interrupts(super().fit, *args, **kwargs)

    def validate(self, *args, **kwargs):
        return self._reporting_interrupts(super().validate, *args, **kwargs)

    def test(self, *args, **kwargs):
        return self._reporting_interrupts(super().test, *args, **kwargs)

    def predict(self, *args, **kwargs):
        return self._reporting_interrupts(super().predict, *args, **kwargs)

    def _reporting_interrupts(self, run, *args, **kwargs):
        try:
            return run(*args, **kwargs)
        except (SystemExit, KeyboardInterrupt):
            if not self._sigint_seen.seen:
                raise
        path = Path(self.default_root_dir) / LAST_CHECKPOINT
        path = path if path.is_file() else None
        raise TrainingInterrupted(
            Path(self.default_root_dir), self.global_step, path, checkpoint_step(path)
        )


def checkpoint_step(path: Path | None) -> int | None:
    """The optimizer step a checkpoint was saved at (None: no checkpoint or unreadable)."""
    if path is None:
        return None
    try:
        return int(
            torch.load(path, map_location="cpu", weights_only=True, mmap=True)["global_step"]
        )
    except Exception:
        return None


def make_trainer(
    cfg: TrainerConfig,
    *,
    root_dir: Path,
    loggers: list[Logger],
    max_steps: int = -1,
    max_epochs: int | None = None,
    val_check_interval: int | float | None = None,
    limit_val_batches: int | float = 1.0,
    gradient_clip_val: float | None = None,
    accumulate_grad_batches: int = 1,
    checkpoint_every_n_steps: int | None = None,
    callbacks: list[Callback] = (),
) -> Trainer:
    if cfg.enable_progress_bar:
        callbacks = [TQDMProgressBar(refresh_rate=cfg.progress_refresh_rate), *callbacks]
    return Trainer(
        accelerator=cfg.accelerator,
        devices=cfg.devices,
        num_nodes=cfg.num_nodes,
        strategy=cfg.strategy,
        precision=cfg.precision,
        max_steps=max_steps,
        max_epochs=max_epochs,
        val_check_interval=val_check_interval,
        check_val_every_n_epoch=None if isinstance(val_check_interval, int) else 1,
        limit_val_batches=limit_val_batches,
        gradient_clip_val=gradient_clip_val,
        accumulate_grad_batches=accumulate_grad_batches,
        log_every_n_steps=cfg.log_every_n_steps,
        enable_progress_bar=cfg.enable_progress_bar,
        enable_model_summary=False,
        default_root_dir=root_dir,
        logger=loggers,
        callbacks=[*callbacks, ResumeState(), LastCheckpoint(root_dir, checkpoint_every_n_steps)],
        plugins=[AtomicCheckpointIO()],
    )

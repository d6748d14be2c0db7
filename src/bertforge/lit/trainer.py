"""Build the Lightning Trainer from `conf/trainer/*` plus a stage's own schedule."""

from __future__ import annotations

import os
import random
import warnings
import zipfile
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import Logger, WandbLogger

from bertforge.config import TrainerConfig
from bertforge.errors import ConfigError

RNG_KEY = "bertforge_rng_states"
RUN_ID_KEY = "wandb_run_id"
STOP_KEY = "bertforge_should_stop"


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
    path = Path(directory) / "checkpoints" / "last.ckpt"
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


class LastCheckpoint(ModelCheckpoint):
    """`<root>/checkpoints/last.ckpt`, to resume from: every `every_n_train_steps` steps (None:
    none) and after every validation of a fit.

    A step that validates is saved after its validation, never before: Lightning resumes a
    checkpoint written at a step's end as if that step's validation had run, so an earlier
    save would lose the validation (and, when fine-tuning, the best checkpoint it picks). Put
    it after the other checkpoint callbacks, so it records their state after a validation.
    """

    def __init__(self, root_dir: Path, every_n_train_steps: int | None) -> None:
        super().__init__(
            dirpath=Path(root_dir) / "checkpoints",
            save_last=True,
            save_top_k=0,
            every_n_train_steps=every_n_train_steps,
        )

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not trainer.fit_loop.epoch_loop._should_check_val_fx(trainer.fit_loop._data_fetcher):
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def on_validation_end(self, trainer, pl_module) -> None:
        if not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


class ResumeState(Callback):
    """Stores what Lightning's checkpoints leave out, so a killed run resumes as if never
    stopped: the RNG states (dropout draws), the id of the W&B run to continue, and whether a
    callback (early stopping) had decided to stop."""

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
) -> pl.Trainer:
    if cfg.enable_progress_bar:
        callbacks = [TQDMProgressBar(refresh_rate=cfg.progress_refresh_rate), *callbacks]
    return pl.Trainer(
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
    )

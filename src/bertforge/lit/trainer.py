"""Build the Lightning Trainer from `conf/trainer/*` plus a stage's own schedule."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import Logger

from bertforge.config import TrainerConfig
from bertforge.errors import ConfigError


def world_size(cfg: TrainerConfig) -> int:
    """Processes that share one optimizer step: devices per node x nodes."""
    devices = cfg.devices
    if isinstance(devices, (list, tuple)):
        devices = len(devices)
    elif devices in ("auto", -1, "-1"):
        import torch

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
    """`<directory>/checkpoints/last.ckpt` if an interrupted run left one, for resuming."""
    path = Path(directory) / "checkpoints" / "last.ckpt"
    return path if path.is_file() else None


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
    checkpoint = ModelCheckpoint(
        dirpath=Path(root_dir) / "checkpoints",
        save_last=True,
        save_top_k=0,
        every_n_train_steps=checkpoint_every_n_steps,
    )
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
        callbacks=[checkpoint, *callbacks],
    )

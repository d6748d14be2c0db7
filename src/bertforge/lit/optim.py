"""AdamW with BERT's weight-decay exemptions and its learning-rate schedules (linear warmup +
linear decay, trapezoidal, one-cycle); the gradient norm both training modules log."""

from __future__ import annotations

from collections.abc import Callable

import lightning.pytorch as pl
import torch
from torch import nn


def adamw_param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay matrices and embeddings; leave biases and LayerNorm parameters (all 1-D) alone."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.ndim >= 2 else no_decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def linear_factor(warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    """LR factor rises linearly from 0 to 1 over `warmup_steps`, then falls linearly to 0."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return factor


def trapezoidal_factor(
    warmup_steps: int, total_steps: int, decay_steps: int
) -> Callable[[int], float]:
    """Warmup-stable-decay (Hägele et al. 2024; "trapezoidal", Xing et al. 2018): the linear
    warmup of `linear_factor`, then 1 until the last `decay_steps`, then linearly to 0."""
    decay_start = total_steps - decay_steps

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        if step < decay_start:
            return 1.0
        return max(0.0, (total_steps - step) / max(1, decay_steps))

    return factor


def lr_factor(
    schedule: str, warmup_steps: int, total_steps: int, decay_steps: int = 0
) -> Callable[[int], float]:
    """The LR factor at each optimizer step of `schedule` (linear or trapezoidal; one_cycle is
    torch's own scheduler, see `configure_adamw`)."""
    if schedule == "trapezoidal":
        return trapezoidal_factor(warmup_steps, total_steps, decay_steps)
    if schedule == "linear":
        return linear_factor(warmup_steps, total_steps)
    raise ValueError(f"lr_factor has no factor for schedule {schedule!r} (linear, trapezoidal)")


def configure_adamw(
    model: nn.Module,
    *,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float],
    eps: float,
    warmup_steps: int,
    total_steps: int,
    schedule: str = "linear",
    decay_steps: int = 0,
) -> dict:
    """The `configure_optimizers` return value shared by the pretraining and fine-tuning modules;
    `schedule` names the LR schedule (`lr_factor`)."""
    fused = next(model.parameters()).is_cuda
    optimizer = torch.optim.AdamW(
        adamw_param_groups(model, weight_decay), lr=lr, betas=tuple(betas), eps=eps, fused=fused
    )
    if schedule == "one_cycle":  # Smith & Topin 2018: cosine rise from lr/25 over the warmup,
        # cosine fall to lr/25e4 (momentum is not cycled)
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=lr, total_steps=total_steps, pct_start=warmup_steps / total_steps,
            cycle_momentum=False,
        )  # fmt: skip
    else:
        factor = lr_factor(schedule, warmup_steps, total_steps, decay_steps)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def configure_adamw_from_hparams(model: nn.Module, hp, total_steps: int) -> dict:
    """`configure_adamw` with a LightningModule's saved hyper-parameters."""
    return configure_adamw(
        model,
        lr=hp.lr,
        weight_decay=hp.weight_decay,
        betas=hp.adam_betas,
        eps=hp.adam_eps,
        warmup_steps=hp.warmup_steps,
        total_steps=total_steps,
        schedule=hp.get("lr_schedule", "linear"),  # the fine-tuning module has linear only
        decay_steps=hp.get("decay_steps", 0),
    )


def log_grad_norm(module: pl.LightningModule) -> None:
    """Log `train/grad_norm`: the total L2 norm of the gradients about to be applied (unscaled,
    accumulated, before clipping), from a module's `on_before_optimizer_step`."""
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    if grads:
        module.log("train/grad_norm", torch.nn.utils.get_total_norm(grads))

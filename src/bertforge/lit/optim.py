"""AdamW with BERT's weight-decay exemptions and a linear warmup + linear decay schedule; the
gradient norm both training modules log."""

from __future__ import annotations

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


def linear_warmup_decay(
    optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """LR factor rises linearly from 0 to 1 over `warmup_steps`, then falls linearly to 0."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def configure_adamw(
    model: nn.Module,
    *,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float],
    eps: float,
    warmup_steps: int,
    total_steps: int,
) -> dict:
    """The `configure_optimizers` return value shared by the pretraining and fine-tuning modules."""
    fused = next(model.parameters()).is_cuda
    optimizer = torch.optim.AdamW(
        adamw_param_groups(model, weight_decay), lr=lr, betas=tuple(betas), eps=eps, fused=fused
    )
    scheduler = linear_warmup_decay(optimizer, warmup_steps, total_steps)
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
    )


def log_grad_norm(module: pl.LightningModule) -> None:
    """Log `train/grad_norm`: the total L2 norm of the gradients about to be applied (unscaled,
    accumulated, before clipping), from a module's `on_before_optimizer_step`."""
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    if grads:
        module.log("train/grad_norm", torch.nn.utils.get_total_norm(grads))

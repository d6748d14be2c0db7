"""The fine-tuning LightningModule: a sequence head trained with cross-entropy or MSE.

Validation metrics (`val/<metric>`) are computed every epoch on the task's "validation" split;
`evaluate` scores a whole eval split outside Lightning's loops (no sharding across ranks) and
returns its predictions in order.
"""

from __future__ import annotations

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from bertforge.data.task_metrics import build_metrics
from bertforge.data.tasks import TaskData
from bertforge.errors import TrainingDivergedError
from bertforge.lit.optim import configure_adamw_from_hparams, log_grad_norm
from bertforge.model import BertForSequenceClassification


class FinetuningModule(pl.LightningModule):
    def __init__(
        self,
        model: BertForSequenceClassification,
        task: TaskData,
        *,
        lr: float,
        weight_decay: float,
        adam_betas: tuple[float, float],
        adam_eps: float,
        warmup_steps: int,
        total_steps: int,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["model", "task"])
        self.model = model
        self.task = task
        self.regression = task.task_type == "regression"
        self.val_metrics = build_metrics(task, prefix="val/", split="validation")

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.model(
            batch["input_ids"],
            token_type_ids=batch["token_type_ids"],
            attention_mask=batch["attention_mask"],
        ).logits  # (B, num_labels)

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.regression:
            return F.mse_loss(logits.squeeze(-1).float(), labels.float())
        return F.cross_entropy(logits.float(), labels)

    def predict(self, logits: torch.Tensor) -> torch.Tensor:
        """What the metrics take: scores (B,) float, or class indices (B,) long."""
        return logits.squeeze(-1).float() if self.regression else logits.argmax(-1)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.loss(self(batch), batch["labels"])
        if not torch.isfinite(loss):
            raise TrainingDivergedError(
                f"the fine-tuning loss became {loss.item()} at step {self.global_step}; lower "
                f"finetune.lr (now {self.hparams.lr})"
            )
        batch_size = batch["input_ids"].shape[0]
        self.log("train/loss", loss, batch_size=batch_size, prog_bar=True)
        self.log("train/lr", self.optimizers().param_groups[0]["lr"], batch_size=batch_size)
        return loss

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        log_grad_norm(self)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        logits = self(batch)
        batch_size = batch["input_ids"].shape[0]
        loss = self.loss(logits, batch["labels"])
        self.log("val/loss", loss, batch_size=batch_size, sync_dist=True)
        self.val_metrics.update(self.predict(logits), batch["labels"])
        self.log_dict(self.val_metrics, batch_size=batch_size, prog_bar=True)  # per epoch

    @torch.no_grad()
    def evaluate(self, loader: DataLoader, split: str) -> tuple[dict[str, float], torch.Tensor]:
        """Metrics (`<metric><postfix>`) on `split`, and its outputs in order: class
        probabilities (N, C) or scores (N,)."""
        self.eval()
        metrics = build_metrics(self.task, split=split).to(self.device)
        outputs = []
        for batch in loader:
            batch = {key: value.to(self.device) for key, value in batch.items()}
            logits = self(batch)
            metrics.update(self.predict(logits), batch["labels"])
            outputs.append(self.predict(logits) if self.regression else logits.float().softmax(-1))
        return {k: v.item() for k, v in metrics.compute().items()}, torch.cat(outputs).cpu()

    def configure_optimizers(self) -> dict:
        return configure_adamw_from_hparams(self.model, self.hparams, self.hparams.total_steps)

"""The MLM (+ NSP) pretraining LightningModule: losses, accuracies, throughput, optimiser."""

from __future__ import annotations

import time
from dataclasses import asdict

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torchmetrics.classification import MulticlassAccuracy

from bertforge.errors import TrainingDivergedError
from bertforge.lit.optim import configure_adamw_from_hparams, log_grad_norm
from bertforge.model import BertConfig, BertForPreTraining


class PretrainingModule(pl.LightningModule):
    def __init__(
        self,
        model_config: dict,
        objective: str = "mlm_nsp",
        lr: float = 1e-3,
        weight_decay: float = 0.01,
        adam_betas: tuple[float, float] = (0.9, 0.98),
        adam_eps: float = 1e-6,
        warmup_steps: int = 0,
        max_steps: int = 1000,
        lr_schedule: str = "linear",  # see bertforge.lit.optim.lr_factor
        decay_steps: int = 0,  # trapezoidal: steps of the final linear decay
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.config = BertConfig(**model_config)
        self.model = BertForPreTraining(self.config)
        self.nsp = objective == "mlm_nsp"
        self.val_mlm_accuracy = MulticlassAccuracy(self.config.vocab_size, average="micro")
        self.val_nsp_accuracy = MulticlassAccuracy(2, average="micro")
        self._step_started = 0.0
        self.tokens_seen = 0  # non-padding training tokens, for the stage's tokens/s figure
        self.padded_tokens_seen = 0  # all positions of the training batches, padding included
        self.train_seconds = 0.0

    @classmethod
    def from_config(cls, config: BertConfig, **kwargs) -> PretrainingModule:
        return cls(model_config=asdict(config), **kwargs)

    def losses(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = self.model(
            batch["input_ids"],
            token_type_ids=batch["token_type_ids"],
            attention_mask=batch["attention_mask"],
            masked_positions=batch["masked_positions"],
        )
        mlm_targets = batch["mlm_labels"][batch["masked_positions"]]  # (M,)
        result = {
            "mlm_logits": out.mlm_logits,
            "mlm_targets": mlm_targets,
            "loss_mlm": F.cross_entropy(out.mlm_logits.float(), mlm_targets),
        }
        result["loss"] = result["loss_mlm"]
        if self.nsp:
            result["nsp_logits"] = out.nsp_logits
            result["loss_nsp"] = F.cross_entropy(
                out.nsp_logits.float(), batch["next_sentence_label"]
            )
            result["loss"] = result["loss"] + result["loss_nsp"]
        return result

    def on_train_batch_start(self, batch: dict, batch_idx: int) -> None:
        self._step_started = time.perf_counter()

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        out = self.losses(batch)
        loss = out["loss"]
        if not torch.isfinite(loss):
            raise TrainingDivergedError(
                f"the pretraining loss became {loss.item()} at step {self.global_step}; lower "
                f"pretrain.lr (now {self.hparams.lr}); the last good checkpoint is kept"
            )
        with torch.no_grad():
            mlm_acc = (out["mlm_logits"].argmax(-1) == out["mlm_targets"]).float().mean()
        metrics = {
            "train/loss": loss,
            "train/loss_mlm": out["loss_mlm"],
            "train/mlm_accuracy": mlm_acc,
            "train/lr": self.optimizers().param_groups[0]["lr"],
        }
        if self.nsp:
            nsp_acc = (out["nsp_logits"].argmax(-1) == batch["next_sentence_label"]).float().mean()
            metrics |= {"train/loss_nsp": out["loss_nsp"], "train/nsp_accuracy": nsp_acc}
        self.log_dict(metrics, prog_bar=False)
        self.log("loss", loss, prog_bar=True, logger=False)
        return loss

    def on_train_batch_end(self, outputs, batch: dict, batch_idx: int) -> None:
        seconds = time.perf_counter() - self._step_started
        tokens = batch["attention_mask"].sum().item()
        self.tokens_seen += tokens
        self.padded_tokens_seen += batch["attention_mask"].numel()
        self.train_seconds += seconds
        self.log_dict(
            {
                "train/tokens_per_s": tokens / seconds,
                "train/padded_tokens_per_s": batch["attention_mask"].numel() / seconds,
            }
        )

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        log_grad_norm(self)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        out = self.losses(batch)
        batch_size = batch["input_ids"].shape[0]
        self.val_mlm_accuracy(out["mlm_logits"], out["mlm_targets"])
        self.log("val/loss_mlm", out["loss_mlm"], batch_size=batch_size, sync_dist=True)
        self.log("val/mlm_accuracy", self.val_mlm_accuracy, batch_size=batch_size, sync_dist=True)
        if self.nsp:
            self.val_nsp_accuracy(out["nsp_logits"], batch["next_sentence_label"])
            self.log("val/loss_nsp", out["loss_nsp"], batch_size=batch_size, sync_dist=True)
            self.log(
                "val/nsp_accuracy", self.val_nsp_accuracy, batch_size=batch_size, sync_dist=True
            )
        self.log("val/loss", out["loss"], batch_size=batch_size, prog_bar=True, sync_dist=True)

    def configure_optimizers(self) -> dict:
        return configure_adamw_from_hparams(self.model, self.hparams, self.hparams.max_steps)

"""Encoder snapshots during pretraining: the weights at chosen optimizer steps, for `evolution`.

`<directory>/step_<N>.safetensors` holds the encoder (`BertModel`, no MLM/NSP heads) after
optimizer step N, written atomically by rank 0. A run resumed from `last.ckpt` keeps the
snapshots written before the kill: Lightning runs this callback before the checkpoint
callback at a step's end, so every snapshot at or before the checkpoint's step is on disk; one
written after it is written again, with the same weights, when the resumed run reaches its step.
"""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from safetensors.torch import save_model

from bertforge.analysis.embed import as_bert
from bertforge.errors import DataError
from bertforge.files import remove_dead_temp_files, replacing

SNAPSHOT_PATTERN = "step_*.safetensors"


def snapshot_file(step: int) -> str:
    return f"step_{step}.safetensors"


class EncoderSnapshots(Callback):
    """Save `pl_module.model`'s encoder after each optimizer step in `steps`, once."""

    def __init__(self, directory: Path, steps: list[int]) -> None:
        self.directory = Path(directory)
        self.steps = sorted(set(steps))
        self._saved: set[int] = set()
        self._resumed_step = 0  # the step of the checkpoint a resumed fit starts from

    def path(self, step: int) -> Path:
        return self.directory / snapshot_file(step)

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        self._resumed_step = checkpoint.get("global_step", 0)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # after on_load_checkpoint; also when the checkpoint ends the run (no training starts)
        done = [step for step in self.steps if step <= self._resumed_step]
        if trainer.is_global_zero:
            self.directory.mkdir(parents=True, exist_ok=True)
            remove_dead_temp_files(self.directory, SNAPSHOT_PATTERN)
            missing = [step for step in done if not self.path(step).is_file()]
            if missing:
                raise DataError(
                    f"training resumes at step {self._resumed_step} but the snapshots of steps "
                    f"{missing} are missing from {self.directory}; rebuild with force=true"
                )
        self._saved = set(done)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # With gradient accumulation several batches end at the same step: the first one
        # after the optimizer step saves it.
        step = trainer.global_step
        if step in self.steps and step not in self._saved:
            if trainer.is_global_zero:
                self.save(pl_module, step)
            self._saved.add(step)

    def save(self, pl_module: pl.LightningModule, step: int) -> Path:
        path = self.path(step)
        with replacing(path) as tmp:
            save_model(as_bert(pl_module.model), str(tmp))
        return path

"""Pretraining data: the Arrow example cache served to training, dynamic MLM masking.

The examples (NSP pairs or MLM-only chunks) are built once per pretraining-data config by
`bertforge.data.pretraining_examples.write_pretraining_examples` and saved as Arrow; masking is
redrawn for every batch from a generator seeded by (seed, epoch, batch), so a resumed run draws
the same masks.
"""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import torch

from bertforge.data.padding import pad_rows
from bertforge.data.pretraining_examples import (  # noqa: F401 (re-exported for the stages)
    IGNORE_INDEX,
    NEXT,
    RANDOM_NEXT,
    SpecialIds,
    special_ids_of,
    truncate_pair,
    write_pretraining_examples,
)
from bertforge.data.resumable import ResumableLoader, derived_seed
from bertforge.errors import DataError


class MaskedLanguageModelingCollator:
    """Pads a batch and draws a fresh MLM mask: `mask_rate` of the non-special tokens become
    targets; of those 80% turn into [MASK], 10% into a random token and 10% stay unchanged."""

    def __init__(self, special: SpecialIds, vocab_size: int, mask_rate: float) -> None:
        self.special = special
        self.vocab_size = vocab_size
        self.mask_rate = mask_rate
        self.special_tensor = torch.tensor(special.all)
        self.first_regular_id = max(special.all) + 1

    def __call__(
        self, rows: list[dict], generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        input_ids, token_type_ids, attention_mask = pad_rows(
            [row["input_ids"] for row in rows],
            [row["token_type_ids"] for row in rows],
            self.special.pad,
        )
        attention_mask = attention_mask.bool()
        batch, width = input_ids.shape

        candidates = attention_mask & ~torch.isin(input_ids, self.special_tensor)  # (B, T)
        masked = candidates & (torch.rand(batch, width, generator=generator) < self.mask_rate)
        if not masked.any():  # a tiny batch can draw no target at all; give it one
            masked.view(-1)[candidates.view(-1).nonzero()[0]] = True
        mlm_labels = input_ids.masked_fill(~masked, IGNORE_INDEX)
        draw = torch.rand(batch, width, generator=generator)
        to_mask_token = masked & (draw < 0.8)
        to_random = masked & (draw >= 0.8) & (draw < 0.9)
        input_ids = input_ids.masked_fill(to_mask_token, self.special.mask)
        random_ids = torch.randint(
            self.first_regular_id, self.vocab_size, (batch, width), generator=generator
        )
        input_ids = torch.where(to_random, random_ids, input_ids)
        return {
            "input_ids": input_ids,
            "token_type_ids": token_type_ids,
            "attention_mask": attention_mask,
            "masked_positions": masked,
            "mlm_labels": mlm_labels,
            "next_sentence_label": torch.tensor([row["next_sentence_label"] for row in rows]),
        }


class PretrainingDataModule(pl.LightningDataModule):
    """Serves the Arrow example cache (`<data_dir>/{train,validation}`), memory-mapped.

    Batches come from `ResumableLoader`s: training order and masks follow from (seed, epoch,
    batch), validation masks are the same at every evaluation, and a resumed run continues
    mid-epoch where it stopped. `length_bucket_window` > 0 batches examples of similar length.
    """

    def __init__(
        self,
        data_dir: Path,
        collator: MaskedLanguageModelingCollator,
        batch_size: int,
        num_workers: int = 0,
        length_bucket_window: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.data_dir = Path(data_dir)
        self.collator = collator
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.length_bucket_window = length_bucket_window
        self.seed = seed

    def setup(self, stage: str | None = None) -> None:
        from datasets import load_from_disk

        self.train = load_from_disk(str(self.data_dir / "train"))
        self.validation = load_from_disk(str(self.data_dir / "validation"))
        if len(self.train) < self.batch_size:
            raise DataError(
                f"the corpus gives {len(self.train)} pretraining examples, fewer than "
                f"pretrain.global_batch_size={self.batch_size}; lower the batch size or add text"
            )

    def _loader(self, dataset, train: bool) -> ResumableLoader:
        lengths = None
        if train and self.length_bucket_window > 0:
            import pyarrow.compute as pc

            lengths = pc.list_value_length(dataset.data.column("input_ids")).to_pylist()
        trainer = self.trainer
        return ResumableLoader(
            dataset,
            self.batch_size,
            self.collator,
            seed=derived_seed(self.seed, "train" if train else "validation"),
            shuffle=train,
            drop_last=train,
            rank=trainer.global_rank if trainer else 0,
            world_size=trainer.world_size if trainer else 1,
            num_workers=self.num_workers,
            lengths=lengths,
            bucket_window=self.length_bucket_window if train else 0,
        )

    def train_dataloader(self) -> ResumableLoader:
        return self._loader(self.train, train=True)

    def val_dataloader(self) -> ResumableLoader:
        return self._loader(self.validation, train=False)

"""Fine-tuning data: the tokenizer of a checkpoint, encoded sentence (pair) examples, padding.

Pairs become `[CLS] A [SEP] B [SEP]` with token types 0 for `[CLS] A [SEP]` and 1 for `B [SEP]`
(the tokenizer's post-processor); the longer segment is trimmed first to `max_seq_length`.
Batches are padded to their longest row only.
"""

from __future__ import annotations

import json
from pathlib import Path

import lightning.pytorch as pl
import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
from torch.utils.data import DataLoader

from bertforge.data.padding import pad_rows
from bertforge.data.resumable import ResumableLoader
from bertforge.data.tasks import Example, TaskData
from bertforge.data.tokenizer import (
    CLS,
    PAD,
    SEP,
    TOKENIZER_FILE,
    UNK,
    VOCAB_FILE,
    add_bert_template,
    load_tokenizer,
)
from bertforge.errors import DataError


def wordpiece_from_vocab(vocab_file: Path, lowercase: bool) -> Tokenizer:
    """A BERT WordPiece tokenizer for a checkpoint that ships only vocab.txt."""
    tok = Tokenizer(models.WordPiece.from_file(str(vocab_file), unk_token=UNK))
    tok.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    missing = [t for t in (CLS, SEP, PAD) if tok.token_to_id(t) is None]
    if missing:
        raise DataError(f"{vocab_file} lacks {', '.join(missing)}; it is not a BERT vocabulary")
    add_bert_template(tok, tok.token_to_id(CLS), tok.token_to_id(SEP))
    return tok


def load_checkpoint_tokenizer(directory: Path) -> Tokenizer:
    """tokenizer.json of a checkpoint directory, else one built from its vocab.txt (lowercased
    unless its tokenizer_config.json says `do_lower_case: false`)."""
    directory = Path(directory)
    if (directory / TOKENIZER_FILE).is_file():
        return load_tokenizer(directory)
    if not (directory / VOCAB_FILE).is_file():
        raise DataError(
            f"{directory} has neither {TOKENIZER_FILE} nor {VOCAB_FILE}; add the tokenizer files "
            "of the checkpoint (save_pretrained() of its tokenizer)"
        )
    config_file = directory / "tokenizer_config.json"
    config = json.loads(config_file.read_text()) if config_file.is_file() else {}
    return wordpiece_from_vocab(directory / VOCAB_FILE, config.get("do_lower_case", True))


def encode_examples(
    tokenizer: Tokenizer, examples: list[Example], max_seq_length: int
) -> list[dict[str, list[int] | int | float]]:
    """Rows of `input_ids`, `token_type_ids` (with special tokens, unpadded) and `label`."""
    tok = Tokenizer.from_str(tokenizer.to_str())  # a copy: truncation and padding are settings
    tok.no_padding()
    tok.enable_truncation(max_seq_length, strategy="longest_first")
    inputs = [e.text_a if e.text_b is None else (e.text_a, e.text_b) for e in examples]
    return [
        {"input_ids": enc.ids, "token_type_ids": enc.type_ids, "label": e.label}
        for e, enc in zip(examples, tok.encode_batch(inputs), strict=True)
    ]


class PaddingCollator:
    """Pads rows to the batch's longest; labels are long (classes) or float (regression)."""

    def __init__(self, pad_id: int, regression: bool) -> None:
        self.pad_id = pad_id
        self.label_dtype = torch.float if regression else torch.long

    def __call__(self, rows: list[dict], generator=None) -> dict[str, torch.Tensor]:
        input_ids, token_type_ids, attention_mask = pad_rows(
            [row["input_ids"] for row in rows], [row["token_type_ids"] for row in rows], self.pad_id
        )
        return {
            "input_ids": input_ids,
            "token_type_ids": token_type_ids,
            "attention_mask": attention_mask,
            "labels": torch.tensor([row["label"] for row in rows], dtype=self.label_dtype),
        }


class FinetuningDataModule(pl.LightningDataModule):
    """Train on "train", validate on "validation", test on the task's eval split(s)."""

    def __init__(
        self,
        task: TaskData,
        tokenizer: Tokenizer,
        max_seq_length: int,
        batch_size: int,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        self.task = task
        self.tokenizer = tokenizer
        self.max_seq_length = max_seq_length
        self.batch_size = batch_size
        self.num_workers = num_workers
        pad_id = tokenizer.token_to_id(PAD)
        if pad_id is None:
            raise DataError(f"the tokenizer has no {PAD} token; it is not a BERT tokenizer")
        self.collator = PaddingCollator(pad_id, task.task_type == "regression")
        self.encoded: dict[str, list[dict]] = {}
        self.seed = 0  # of the training order; set per fine-tuning seed

    def setup(self, stage: str | None = None) -> None:
        if not self.encoded:  # Lightning calls setup for fit and again for test
            needed = {"train", "validation", *self.task.eval_splits}
            self.encoded = {
                split: encode_examples(self.tokenizer, self.task.splits[split], self.max_seq_length)
                for split in needed
            }

    def loader(self, split: str) -> DataLoader:
        """All of `split` in order, for evaluation outside Lightning's loops."""
        return DataLoader(
            self.encoded[split],
            batch_size=self.batch_size,
            collate_fn=self.collator,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def _resumable(self, split: str, train: bool) -> ResumableLoader:
        trainer = self.trainer
        return ResumableLoader(
            self.encoded[split],
            self.batch_size,
            self.collator,
            seed=self.seed,
            shuffle=train,
            drop_last=False,
            rank=trainer.global_rank if trainer else 0,
            world_size=trainer.world_size if trainer else 1,
            num_workers=self.num_workers,
        )

    def train_dataloader(self) -> ResumableLoader:
        """Shuffled by `self.seed` and the epoch; resumes mid-epoch from a checkpoint."""
        return self._resumable("train", train=True)

    def val_dataloader(self) -> ResumableLoader:
        return self._resumable("validation", train=False)

    def test_dataloader(self) -> list[DataLoader]:
        return [self.loader(split) for split in self.task.eval_splits]

"""Pretraining data: NSP example building, the tokenised Arrow cache, dynamic MLM masking.

Examples follow BERT's `create_pretraining_data.py`: sentences of one document are packed up to
a target length; segment A is a prefix of that chunk and segment B either its true continuation
or, half of the time, a span of another document (next_sentence_label 1, as in HF). Examples are
built once per pretraining-data config and saved as Arrow; masking is redrawn for every batch
from a generator seeded by (seed, epoch, batch), so a resumed run draws the same masks.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import lightning.pytorch as pl
import torch

from bertforge.data.resumable import ResumableLoader, derived_seed
from bertforge.errors import DataError

IGNORE_INDEX = -100
NEXT = 0  # segment B follows segment A
RANDOM_NEXT = 1  # segment B comes from another document

TokenIds = list[int]


@dataclass(frozen=True)
class SpecialIds:
    pad: int
    cls: int
    sep: int
    mask: int
    all: tuple[int, ...]  # every special id; never masked, never drawn as a random replacement


def truncate_pair(a: TokenIds, b: TokenIds, max_tokens: int, rng: random.Random) -> None:
    """Trim the longer segment, from a random end, until both fit (in place)."""
    while len(a) + len(b) > max_tokens:
        longer = a if len(a) > len(b) else b
        del longer[0 if rng.random() < 0.5 else -1]


def examples_from_document(
    docs: Sequence[Sequence[TokenIds]],
    index: int,
    max_tokens: int,
    short_seq_prob: float,
    nsp: bool,
    rng: random.Random,
) -> list[tuple[TokenIds, TokenIds, int]]:
    """(segment A, segment B, next_sentence_label) triples from document `index`.

    `docs` are non-empty lists of tokenised sentences; `max_tokens` excludes the special tokens.
    Without NSP, B is empty and the label is ignored.
    """
    document = docs[index]
    target = max_tokens if rng.random() >= short_seq_prob else rng.randint(2, max_tokens)
    examples, chunk, length, i = [], [], 0, 0
    while i < len(document):
        chunk.append(document[i])
        length += len(document[i])
        if i == len(document) - 1 or length >= target:
            if not nsp:
                tokens = [t for sentence in chunk for t in sentence][:max_tokens]
                examples.append((tokens, [], IGNORE_INDEX))
            else:
                a_end = rng.randint(1, len(chunk) - 1) if len(chunk) >= 2 else 1
                a = [t for sentence in chunk[:a_end] for t in sentence]
                if (len(chunk) == 1 or rng.random() < 0.5) and len(docs) > 1:
                    label, b = RANDOM_NEXT, []
                    other = rng.randrange(len(docs) - 1)
                    other += other >= index  # any document but this one
                    start = rng.randrange(len(docs[other]))
                    for sentence in docs[other][start:]:
                        b.extend(sentence)
                        if len(b) >= target - len(a):
                            break
                    i -= len(chunk) - a_end  # the unused sentences start the next chunk
                else:
                    label = NEXT
                    b = [t for sentence in chunk[a_end:] for t in sentence]
                truncate_pair(a, b, max_tokens, rng)
                if a and b:
                    examples.append((a, b, label))
            chunk, length = [], 0
        i += 1
    return examples


def build_examples(
    docs: Sequence[Sequence[TokenIds]],
    special: SpecialIds,
    max_seq_length: int,
    short_seq_prob: float,
    nsp: bool,
    dupe_factor: int,
    seed: int,
) -> dict[str, list]:
    """Columns `input_ids`, `token_type_ids`, `next_sentence_label` over `dupe_factor` passes."""
    rng = random.Random(seed)
    docs = [doc for doc in docs if doc]
    max_tokens = max_seq_length - (3 if nsp else 2)
    columns: dict[str, list] = {"input_ids": [], "token_type_ids": [], "next_sentence_label": []}
    for _ in range(dupe_factor):
        triples = [
            triple
            for index in range(len(docs))
            for triple in examples_from_document(docs, index, max_tokens, short_seq_prob, nsp, rng)
        ]
        rng.shuffle(triples)
        for a, b, label in triples:
            ids = [special.cls, *a, special.sep] + ([*b, special.sep] if b else [])
            columns["input_ids"].append(ids)
            columns["token_type_ids"].append([0] * (len(a) + 2) + [1] * (len(ids) - len(a) - 2))
            columns["next_sentence_label"].append(label)
    return columns


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
        lengths = [len(row["input_ids"]) for row in rows]
        batch, width = len(rows), max(lengths)
        input_ids = torch.full((batch, width), self.special.pad, dtype=torch.long)
        token_type_ids = torch.zeros((batch, width), dtype=torch.long)
        for i, row in enumerate(rows):
            input_ids[i, : lengths[i]] = torch.as_tensor(row["input_ids"])
            token_type_ids[i, : lengths[i]] = torch.as_tensor(row["token_type_ids"])
        attention_mask = torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]

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


def special_ids_of(tokenizer) -> SpecialIds:
    from bertforge.data.tokenizer import special_token_ids

    ids = special_token_ids(tokenizer)
    return SpecialIds(ids["[PAD]"], ids["[CLS]"], ids["[SEP]"], ids["[MASK]"], tuple(ids.values()))


def tokenize_documents(documents, tokenizer) -> list[list[TokenIds]]:
    """Each document as a list of tokenised sentences (no special tokens), in one batch call."""
    from bertforge.data.corpus import split_sentences

    sentences = [split_sentences(doc.text) for doc in documents]
    flat = [s for doc_sentences in sentences for s in doc_sentences]
    encoded = iter(tokenizer.encode_batch(flat, add_special_tokens=False))
    return [[ids for ids in (next(encoded).ids for _ in doc) if ids] for doc in sentences]


def write_pretraining_examples(documents, *, tokenizer_dir: Path, out_dir: Path, cfg, seed: int):
    """Tokenise the corpus once and save train/validation examples as Arrow under `out_dir`.

    Validation examples come from the corpus' validation split, or, if it has none, from the
    last 5% of the training examples. Returns the numbers recorded in the manifest.
    """
    from datasets import Dataset, Features, Value
    from datasets import Sequence as ArrowSequence

    from bertforge.data.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(tokenizer_dir)
    special = special_ids_of(tokenizer)
    nsp = cfg.objective == "mlm_nsp"

    def examples(split_docs, seed_offset: int) -> dict[str, list]:
        docs = tokenize_documents(split_docs, tokenizer)
        return build_examples(
            docs, special, cfg.max_seq_length, cfg.short_seq_prob, nsp, cfg.dupe_factor,
            seed + seed_offset,
        )  # fmt: skip

    train = examples([d for d in documents if d.split == "train"], 0)
    validation = examples([d for d in documents if d.split == "validation"], 1)
    if not validation["input_ids"]:
        n = max(1, len(train["input_ids"]) // 20)
        validation = {k: v[-n:] for k, v in train.items()}
        train = {k: v[:-n] for k, v in train.items()}
    if not train["input_ids"]:
        raise DataError(
            "the corpus yields no pretraining examples (documents too short or empty); add text "
            "or lower pretrain.max_seq_length"
        )
    features = Features(
        {
            "input_ids": ArrowSequence(Value("int32")),
            "token_type_ids": ArrowSequence(Value("int8")),
            "next_sentence_label": Value("int8"),
        }
    )
    for name, columns in (("train", train), ("validation", validation)):
        Dataset.from_dict(columns, features=features).save_to_disk(str(Path(out_dir) / name))
    lengths = [len(ids) for ids in train["input_ids"]]
    return {
        "train_examples": len(lengths),
        "validation_examples": len(validation["input_ids"]),
        "train_tokens": sum(lengths),
        "mean_length": sum(lengths) / len(lengths),
        "random_next_share": sum(label == RANDOM_NEXT for label in train["next_sentence_label"])
        / len(lengths),
    }

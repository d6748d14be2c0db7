"""Training batches that can resume mid-epoch, bit for bit.

Everything random about a batch is a function of (seed, epoch, rank, batch index): the epoch's
example order and the generator handed to the collator (e.g. for MLM masks). The loader speaks
Lightning's `state_dict` / `load_state_dict` protocol, so a checkpoint records its position and a
resumed run continues with the batch that would have come next, with the same masks.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader

Collate = Callable[[list[dict], torch.Generator], dict[str, torch.Tensor]]


def derived_seed(*parts: Any) -> int:
    """A 63-bit seed from any hashable parts, stable across processes (unlike `hash`)."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def generator(*parts: Any) -> torch.Generator:
    return torch.Generator().manual_seed(derived_seed(*parts))


def length_bucketed(
    order: torch.Tensor, lengths: torch.Tensor, batch_size: int, window: int, g: torch.Generator
) -> list[list[int]]:
    """Batches of similar length: every window of `window` batches of the (shuffled) `order` is
    sorted by length and cut into batches, then the batch order is shuffled. Incomplete batches
    are dropped."""
    span = window * batch_size
    batches = []
    for start in range(0, len(order) - batch_size + 1, span):
        chunk = order[start : start + span]
        chunk = chunk[torch.argsort(lengths[chunk], stable=True)]
        full = len(chunk) // batch_size * batch_size
        batches += chunk[:full].view(-1, batch_size).tolist()
    return [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]


class ResumableLoader:
    """Batches of a map-style dataset, sharded over `world_size` ranks.

    With `shuffle`, each epoch has its own order; without, the order and the collator's
    generator are the same every time (e.g. fixed validation masks). `lengths` and
    `bucket_window` > 0 make batches of similar length (`length_bucketed`).
    """

    def __init__(
        self,
        dataset,
        batch_size: int,
        collate: Collate,
        *,
        seed: int,
        shuffle: bool = True,
        drop_last: bool = True,
        rank: int = 0,
        world_size: int = 1,
        num_workers: int = 0,
        lengths: Sequence[int] | None = None,
        bucket_window: int = 0,
    ) -> None:
        if bucket_window > 0 and lengths is None:
            raise ValueError("bucket_window needs the examples' lengths")
        self.dataset = dataset
        self.batch_size = batch_size
        self.collate = collate
        self.seed = seed
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.rank = rank
        self.world_size = world_size
        self.num_workers = num_workers
        self.lengths = None if lengths is None else torch.as_tensor(lengths)
        self.bucket_window = bucket_window
        self.epoch = 0
        self._resume_at = 0  # batches of `epoch` to skip on the next iteration
        self._yielded = 0  # batches of `epoch` handed out so far

    def _rank_indices(self, epoch: int) -> torch.Tensor:
        n = len(self.dataset)
        if self.shuffle:
            order = torch.randperm(n, generator=generator(self.seed, "order", epoch))
        else:
            order = torch.arange(n)
        if self.world_size > 1:  # like DistributedSampler: equal shares, cut or padded
            if self.drop_last:
                order = order[: n - n % self.world_size]
            else:
                order = torch.cat([order, order[: -n % self.world_size]])
            order = order[self.rank :: self.world_size]
        return order

    def batches(self, epoch: int) -> list[list[int]]:
        """This rank's batches (dataset indices) of `epoch`."""
        order = self._rank_indices(epoch)
        if self.bucket_window > 0:
            g = generator(self.seed, "buckets", epoch, self.rank)
            return length_bucketed(order, self.lengths, self.batch_size, self.bucket_window, g)
        batches = list(order.split(self.batch_size))
        if self.drop_last and batches and len(batches[-1]) < self.batch_size:
            batches.pop()
        return [b.tolist() for b in batches]

    def __len__(self) -> int:
        return len(self.batches(0))

    def _rows(self, batches: list[list[int]]):
        """The rows of each batch, read in worker processes if `num_workers` > 0."""
        if self.num_workers == 0:
            return (self.dataset.__getitems__(b) if hasattr(self.dataset, "__getitems__")
                    else [self.dataset[i] for i in b] for b in batches)  # fmt: skip
        return DataLoader(  # its own generator: workers must not draw from the global RNG
            self.dataset, batch_sampler=batches, collate_fn=list, num_workers=self.num_workers,
            generator=generator(self.seed, "workers"),
        )  # fmt: skip

    def __iter__(self):
        epoch, start = self.epoch, self._resume_at
        self._resume_at, self._yielded = 0, start
        batches = self.batches(epoch)
        for index, rows in enumerate(self._rows(batches[start:]), start):
            self._yielded = index + 1
            if self._yielded == len(batches) and self.shuffle:  # the epoch is handed out
                self.epoch, self._yielded = epoch + 1, 0
            yield self.collate(rows, generator(self.seed, "batch", epoch, self.rank, index))

    def state_dict(self) -> dict[str, int]:
        """The position of the first batch not yet trained on. (Lightning does not fetch ahead
        from a loader with a length, so every batch handed out has been trained on.)"""
        return {"epoch": self.epoch, "batches": self._yielded}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self._resume_at = int(state["epoch"]), int(state["batches"])

"""Padding token rows into the model's three inputs, for every batch the project builds
(pretraining, fine-tuning, embedding extraction)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def pad_rows(
    input_ids: Sequence[Sequence[int]], token_type_ids: Sequence[Sequence[int]], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows of ids and token types padded to the longest row.

    Returns input_ids (B, T) long, `pad_id` past each row's end; token_type_ids (B, T) long, 0
    past the end; attention_mask (B, T) long, 1 on real tokens and 0 on padding.
    """
    lengths = np.fromiter((len(row) for row in input_ids), np.int64, count=len(input_ids))
    width = int(lengths.max())
    ids = np.full((len(lengths), width), pad_id, np.int64)
    types = np.zeros((len(lengths), width), np.int64)
    for row, (row_ids, row_types, length) in enumerate(
        zip(input_ids, token_type_ids, lengths, strict=True)
    ):
        ids[row, :length] = row_ids
        types[row, :length] = row_types
    mask = (np.arange(width)[None, :] < lengths[:, None]).astype(np.int64)
    return torch.from_numpy(ids), torch.from_numpy(types), torch.from_numpy(mask)

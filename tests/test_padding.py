"""One padding helper for the pretraining collator, the fine-tuning collator and extraction."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer

import bertforge.analysis.embed as embed
import bertforge.data.finetuning as finetuning
import bertforge.data.pretraining as pretraining
from bertforge.data.padding import pad_rows
from bertforge.data.pretraining_examples import SpecialIds
from bertforge.model import BertConfig, BertModel

ROWS = [[2, 11, 12, 3, 13, 3], [2, 14, 3], [2, 15, 16, 17, 3]]
TYPES = [[0, 0, 0, 0, 1, 1], [0, 0, 0], [0, 0, 0, 0, 0]]


@pytest.mark.parametrize("as_array", [False, True])
def test_pad_rows(as_array):
    rows = [np.array(row, np.int32) for row in ROWS] if as_array else ROWS
    types = [np.array(row, np.int8) for row in TYPES] if as_array else TYPES
    input_ids, token_type_ids, attention_mask = pad_rows(rows, types, pad_id=7)
    assert input_ids.tolist() == [ROWS[0], [2, 14, 3, 7, 7, 7], [2, 15, 16, 17, 3, 7]]
    assert token_type_ids.tolist() == [TYPES[0], [0] * 6, [0] * 6]
    assert attention_mask.tolist() == [[1] * 6, [1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 0]]
    assert {t.dtype for t in (input_ids, token_type_ids, attention_mask)} == {torch.long}


@pytest.fixture
def calls(monkeypatch) -> list:
    """Every call of pad_rows from the three modules that pad batches."""
    seen = []

    def spy(*args):
        seen.append(args)
        return pad_rows(*args)

    for module in (pretraining, finetuning, embed):
        monkeypatch.setattr(module, "pad_rows", spy)
    return seen


def test_pretraining_collator_pads_with_pad_rows(calls):
    special = SpecialIds(pad=0, cls=2, sep=3, mask=4, all=(0, 1, 2, 3, 4))
    collator = pretraining.MaskedLanguageModelingCollator(special, vocab_size=30, mask_rate=0.5)
    rows = [
        {"input_ids": r, "token_type_ids": t, "next_sentence_label": 0}
        for r, t in zip(ROWS, TYPES, strict=True)
    ]
    batch = collator(rows, torch.Generator().manual_seed(0))
    ids, types, mask = pad_rows(ROWS, TYPES, 0)
    assert len(calls) == 1
    assert torch.equal(batch["token_type_ids"], types) and torch.equal(
        batch["attention_mask"], mask.bool()
    )
    kept = ~batch["masked_positions"]
    assert torch.equal(batch["input_ids"][kept], ids[kept])
    assert torch.equal(batch["mlm_labels"][~kept], ids[~kept])


def test_finetuning_collator_pads_with_pad_rows(calls):
    rows = [
        {"input_ids": r, "token_type_ids": t, "label": n}
        for n, (r, t) in enumerate(zip(ROWS, TYPES, strict=True))
    ]
    batch = finetuning.PaddingCollator(pad_id=0, regression=False)(rows)
    expected = dict(
        zip(
            ("input_ids", "token_type_ids", "attention_mask"), pad_rows(ROWS, TYPES, 0), strict=True
        )
    )
    assert len(calls) == 1
    assert all(torch.equal(batch[key], value) for key, value in expected.items())
    assert batch["labels"].tolist() == [0, 1, 2]


def test_extraction_pads_with_pad_rows(calls):
    from pathlib import Path

    tokenizer = Tokenizer.from_file(
        str(Path(__file__).parent / "golden" / "tokenizer_bert_tiny_test.json")
    )
    config = BertConfig(
        vocab_size=tokenizer.get_vocab_size(),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
    )
    bert = BertModel(config).eval()
    encodings = tokenizer.encode_batch(["A short one.", "A somewhat longer sentence than that."])
    with torch.no_grad():
        hidden, mask, _ = embed.encode_batch(bert, encodings)
    assert len(calls) == 1 and [tuple(h.shape) for h in hidden] == [(2, mask.shape[1], 16)] * 2
    assert torch.equal(
        mask, pad_rows([e.ids for e in encodings], [e.type_ids for e in encodings], 0)[2]
    )
    assert mask.sum(1).tolist() == [len(e.ids) for e in encodings]

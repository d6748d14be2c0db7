"""Building pretraining examples: linear truncation, spans equal to BERT's list-based reference,
and a result that does not depend on `pretrain.tokenize_chunk_chars`."""

from __future__ import annotations

import itertools
import random
import time
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer

from bertforge.config import PretrainConfig
from bertforge.data.corpus import Document, load_bbc_news
from bertforge.data.pretraining_examples import (
    IGNORE_INDEX,
    NEXT,
    RANDOM_NEXT,
    SpecialIds,
    TokenizedSplit,
    _record_batch,
    example_spans,
    tokenize_split,
    truncate_pair,
    write_pretraining_examples,
)
from bertforge.data.tokenizer import save_tokenizer
from bertforge.errors import DataError

GOLDEN_TOKENIZER = Path(__file__).parent / "golden" / "tokenizer_bert_tiny_test.json"
SPECIAL = SpecialIds(pad=0, cls=2, sep=3, mask=4, all=(0, 1, 2, 3, 4))


# --- The reference: BERT's create_pretraining_data.py on lists (quadratic truncation) ---------


def reference_truncate(a: list, b: list, max_tokens: int, rng: random.Random) -> None:
    while len(a) + len(b) > max_tokens:
        longer = a if len(a) > len(b) else b
        del longer[0 if rng.random() < 0.5 else -1]


def reference_examples(docs, max_seq_length, short_seq_prob, nsp, dupe_factor, seed):
    rng = random.Random(seed)
    docs = [doc for doc in docs if doc]
    max_tokens = max_seq_length - (3 if nsp else 2)
    rows = []
    for _ in range(dupe_factor):
        triples = []
        for index, document in enumerate(docs):
            target = max_tokens if rng.random() >= short_seq_prob else rng.randint(2, max_tokens)
            chunk, length, i = [], 0, 0
            while i < len(document):
                chunk.append(document[i])
                length += len(document[i])
                if i == len(document) - 1 or length >= target:
                    if not nsp:
                        tokens = [t for sentence in chunk for t in sentence][:max_tokens]
                        triples.append((tokens, [], IGNORE_INDEX))
                    else:
                        a_end = rng.randint(1, len(chunk) - 1) if len(chunk) >= 2 else 1
                        a = [t for sentence in chunk[:a_end] for t in sentence]
                        if (len(chunk) == 1 or rng.random() < 0.5) and len(docs) > 1:
                            label, b = RANDOM_NEXT, []
                            other = rng.randrange(len(docs) - 1)
                            other += other >= index
                            start = rng.randrange(len(docs[other]))
                            for sentence in docs[other][start:]:
                                b.extend(sentence)
                                if len(b) >= target - len(a):
                                    break
                            i -= len(chunk) - a_end
                        else:
                            label = NEXT
                            b = [t for sentence in chunk[a_end:] for t in sentence]
                        reference_truncate(a, b, max_tokens, rng)
                        if a and b:
                            triples.append((a, b, label))
                    chunk, length = [], 0
                i += 1
        rng.shuffle(triples)
        for a, b, label in triples:
            ids = [SPECIAL.cls, *a, SPECIAL.sep] + ([*b, SPECIAL.sep] if b else [])
            rows.append((ids, [0] * (len(a) + 2) + [1] * (len(ids) - len(a) - 2), label))
    return rows


def as_split(docs: list[list[list[int]]]) -> TokenizedSplit:
    """The compact form of tokenised documents (lists of non-empty sentences)."""
    docs = [doc for doc in docs if doc]
    sentences = [sentence for doc in docs for sentence in doc]
    tokens = np.array([t for sentence in sentences for t in sentence], np.int32)
    sentence_starts = np.cumsum([0] + [len(s) for s in sentences])
    doc_starts = np.cumsum([0] + [len(doc) for doc in docs])
    return TokenizedSplit(tokens, sentence_starts, doc_starts)


# --- Truncation ------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_truncate_pair_keeps_the_reference_tokens_and_draws(seed):
    rng = random.Random(seed)
    for _ in range(200):
        a, b = list(range(rng.randint(0, 60))), list(range(100, 100 + rng.randint(0, 60)))
        max_tokens = rng.randint(1, 80)
        ours, theirs = random.Random(seed), random.Random(seed)
        expected_a, expected_b = a[:], b[:]
        reference_truncate(expected_a, expected_b, max_tokens, theirs)
        truncate_pair(a, b, max_tokens, ours)
        assert (a, b) == (expected_a, expected_b)
        assert ours.random() == theirs.random()  # the same number of draws


def test_truncate_pair_is_linear():
    """A million tokens: the reference (deleting from a list's front) took 46 s here."""
    a, b = list(range(1_000_000)), [1, 2, 3]
    started = time.perf_counter()
    truncate_pair(a, b, 125, random.Random(0))
    assert time.perf_counter() - started < 10
    assert len(a) + len(b) == 125 and b == [1, 2, 3]
    assert a == list(range(a[0], a[0] + 122))


# --- Example spans ---------------------------------------------------------------------------


def random_docs(rng: random.Random) -> list[list[list[int]]]:
    return [
        [
            [rng.randrange(5, 900) for _ in range(rng.choice([1, 3, 9, 30, 140]))]
            for _ in range(rng.randint(0, 12))
        ]
        for _ in range(rng.randint(1, 9))
    ]


@pytest.mark.parametrize("nsp", [True, False])
@pytest.mark.parametrize("seed", range(6))
def test_example_spans_equal_the_reference(nsp, seed):
    from datasets import Features, List, Value

    schema = Features(
        {
            "input_ids": List(Value("int32")),
            "token_type_ids": List(Value("int8")),
            "next_sentence_label": Value("int8"),
        }
    ).arrow_schema
    rng = random.Random(seed)
    docs = random_docs(rng)
    max_seq_length, short_seq_prob = rng.choice([8, 16, 64]), rng.choice([0.0, 0.1, 0.9])
    expected = reference_examples(docs, max_seq_length, short_seq_prob, nsp, 2, seed)
    split = as_split(docs)
    spans = example_spans(split, max_seq_length - (3 if nsp else 2), short_seq_prob, nsp, 2, seed)
    got = _record_batch(split.tokens, spans, SPECIAL, schema).to_pydict()
    assert list(zip(*got.values(), strict=True)) == expected


# --- Tokenising in chunks --------------------------------------------------------------------

LONG_LINE = " ".join(["ΟΔΟΣ naïve café 한국어 문장입니다 état x" for _ in range(400)])


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("tokenizer")
    save_tokenizer(Tokenizer.from_file(str(GOLDEN_TOKENIZER)), directory)
    return directory


def documents() -> list[Document]:
    docs = load_bbc_news()[:40]
    extra = [Document("long", f"One line without an end {LONG_LINE}", "train")]
    extra.append(Document("blank", " \n\n ", "train"))
    return [*docs, *extra]


def test_chunked_tokenisation_equals_one_call_per_sentence():
    from bertforge.data.corpus import split_sentences

    tokenizer = Tokenizer.from_file(str(GOLDEN_TOKENIZER))
    texts = [doc.text for doc in documents()]
    expected = [
        ids
        for text in texts
        for sentence in split_sentences(text)
        if (ids := tokenizer.encode(sentence, add_special_tokens=False).ids)
    ]
    for chunk_chars in (1, 50, 10**9):
        split = tokenize_split(texts, tokenizer, chunk_chars)
        starts = split.sentence_starts.tolist()
        sentences = [split.tokens[s:e].tolist() for s, e in itertools.pairwise(starts)]
        assert sentences == expected, chunk_chars
        assert split.num_documents == len(texts) - 1  # the blank one has no sentence


@pytest.mark.parametrize("objective", ["mlm_nsp", "mlm_only"])
def test_examples_are_byte_identical_for_any_chunk_size(tmp_path, tokenizer_dir, objective):
    outputs = {}
    for chunk_chars in (7, 300, 10**9):
        out = tmp_path / str(chunk_chars)
        cfg = PretrainConfig(
            objective=objective, max_seq_length=32, tokenize_chunk_chars=chunk_chars
        )
        stats = write_pretraining_examples(
            documents(), tokenizer_dir=tokenizer_dir, out_dir=out, cfg=cfg, seed=3
        )
        files = {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
        outputs[chunk_chars] = (stats, files)
    (stats, files), *others = outputs.values()
    assert stats["train_examples"] > 100
    assert {Path("train/state.json"), Path("validation/state.json")} <= set(files)
    assert not [name for name in files if name.name.startswith(".")]  # no temporary file left
    for other in others:
        assert other == (stats, files)


def test_a_one_file_corpus_holds_out_the_tail(tmp_path, tokenizer_dir):
    """One file without blank lines is one document: it trains, the last 5% of the examples
    validate (its file name used to send it to the validation split: no training examples)."""
    from bertforge.config import CorpusConfig
    from bertforge.data.corpus import load_documents

    path = tmp_path / "wiki.txt"
    path.write_text("\n".join(doc.text.replace("\n\n", "\n") for doc in load_bbc_news()[:20]))
    docs = load_documents(CorpusConfig(source="text_files", path=str(path)))
    assert [doc.split for doc in docs] == ["train"]
    cfg = PretrainConfig(objective="mlm_only", max_seq_length=32)
    stats = write_pretraining_examples(
        docs, tokenizer_dir=tokenizer_dir, out_dir=tmp_path / "out", cfg=cfg, seed=0
    )
    total = stats["train_examples"] + stats["validation_examples"]
    assert total > 100 and stats["validation_examples"] == total // 20


def test_nsp_on_one_document_is_an_error_naming_the_fix(tmp_path, tokenizer_dir, caplog):
    """One document gives no NSP negatives: it used to train with random_next_share 0."""
    text = "\n".join(doc.text for doc in load_bbc_news()[:5])
    one = [Document("wiki.txt", text, "train")]
    cfg = PretrainConfig(max_seq_length=32)
    with pytest.raises(
        DataError,
        match=r"mlm_nsp needs at least 2 training documents .* has 1 \(in corpus=text_files, "
        r"documents are separated by blank lines, or one per file\); use pretrain=mlm_only",
    ):
        write_pretraining_examples(
            one, tokenizer_dir=tokenizer_dir, out_dir=tmp_path, cfg=cfg, seed=0
        )
    assert not list(tmp_path.iterdir())  # nothing written
    two = [*one, Document("b.txt", load_bbc_news()[5].text, "train")]
    two.append(Document("c.txt", load_bbc_news()[6].text, "validation"))
    stats = write_pretraining_examples(
        two, tokenizer_dir=tokenizer_dir, out_dir=tmp_path / "out", cfg=cfg, seed=0
    )
    assert 0 < stats["random_next_share"] < 1
    assert "validation split has one document" in caplog.text

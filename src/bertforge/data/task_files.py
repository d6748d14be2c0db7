"""Reading task files through `datasets`: csv / tsv (GLUE TSVs too), jsonl and parquet.

The files are parsed by `datasets` (its csv, json and parquet builders) into a temporary cache
that is removed right after loading (the tables stay in memory), so nothing is written outside
the run's outputs. What stays here are our checks of the file itself, each a one-line
`DataError` that names the file, the line and the fix: UTF-8, empty files, duplicated columns,
rows with missing or extra fields, unreadable JSON lines or parquet files.

Reading rules: TSV cells are literal (no quoting: GLUE and NSMC cells hold stray quotes), CSV
uses standard quoting, a leading UTF-8 byte-order mark is dropped, blank lines are skipped, and
every cell of a csv / tsv is read as text. Positions: "line N" of a csv / tsv / jsonl counts the
header and blank lines (a quoted csv cell that spans lines counts once); "row N" of a parquet
file counts data rows.
"""

from __future__ import annotations

import csv
import functools
import json
import logging
import re
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bertforge.errors import ConfigError, DataError

if TYPE_CHECKING:
    import datasets
    import pyarrow as pa

log = logging.getLogger(__name__)

LOCAL_FILE_TYPES = (".csv", ".tsv", ".jsonl", ".parquet")
_UTF8_CHUNK = 1 << 20
_FIELD_COUNT = re.compile(r"Expected (\d+) fields in line (\d+), saw (\d+)")


# --- Files ---------------------------------------------------------------------------------


@dataclass
class Table:
    """The rows of one file, column-wise, with the place of each row in the file.

    A table has at least one row: every split needs examples. `json_columns` hold JSON-encoded
    cells (a jsonl column whose values mix types, e.g. numbers and text).
    """

    path: Path
    data: pa.Table
    locate: Callable[[int], str]  # row index -> "line 7" / "row 3"
    json_columns: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if self.data.num_rows == 0:
            raise DataError(f"{self.path} has no examples; each split needs at least one row")

    @property
    def columns(self) -> list[str]:
        return self.data.column_names

    def column(self, name: str) -> list[Any]:
        values = self.data.column(name).to_pylist()
        if name in self.json_columns:
            return [None if value is None else json.loads(value) for value in values]
        return values


def read_local_file(name: str, key: str) -> Table:
    """A csv / tsv / jsonl / parquet file named by the config key `key`."""
    path = Path(name)
    suffix = path.suffix.lower()
    if suffix not in LOCAL_FILE_TYPES:
        raise ConfigError(
            f"{key}={name} has an unsupported extension; use one of {', '.join(LOCAL_FILE_TYPES)}"
        )
    if not path.is_file():
        raise DataError(f"{path} not found; check {key}")
    if suffix == ".parquet":
        return read_parquet(path)
    if suffix == ".jsonl":
        return read_jsonl(path)
    # TSV cells hold stray quotes (GLUE, NSMC): read them literally. CSV uses standard quoting.
    if suffix == ".tsv":
        return read_delimited(path, "\t", csv.QUOTE_NONE)
    return read_delimited(path, ",", csv.QUOTE_MINIMAL)


def check_utf8(path: Path) -> None:
    """A non-empty UTF-8 file, checked a chunk at a time (the error names the byte offset)."""
    offset, pending = 0, b""  # bytes before `data`; an incomplete character at a chunk's end
    with path.open("rb") as f:
        while chunk := f.read(_UTF8_CHUNK):
            data = pending + chunk
            try:
                data.decode("utf-8")
                pending = b""
            except UnicodeDecodeError as err:
                if err.end != len(data) or len(data) - err.start > 3:
                    _not_utf8(path, offset + err.start)
                pending = data[err.start :]  # may complete in the next chunk
            offset += len(data) - len(pending)
    if pending:
        _not_utf8(path, offset)
    if offset == 0:
        raise DataError(f"{path} is empty (0 bytes); point the task at a file with examples")


def _not_utf8(path: Path, offset: int) -> None:
    raise DataError(f"{path} is not UTF-8 (invalid byte at offset {offset}); re-save it as UTF-8")


def _check_columns(path: Path, columns: list[str]) -> None:
    duplicated = sorted({c for c in columns if columns.count(c) > 1})
    if duplicated:
        raise DataError(
            f"{path} has duplicated column names {', '.join(duplicated)}; rename them so each "
            "column name is unique"
        )


@contextmanager
def _quiet_datasets() -> Iterator[None]:
    """No progress bars and no logged errors from `datasets` (we raise our own one line)."""
    import datasets

    bars, verbosity = datasets.is_progress_bar_enabled(), datasets.logging.get_verbosity()
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity(logging.CRITICAL)
    try:
        yield
    finally:
        datasets.logging.set_verbosity(verbosity)
        if bars:
            datasets.enable_progress_bars()


class _Unreadable(Exception):
    """`datasets` could not parse a file; `reason` is the innermost error's first line."""

    def __init__(self, reason: str, empty: bool) -> None:
        super().__init__(reason)
        self.reason, self.empty = reason, empty


def _load(builder: str, path: Path, **options: Any) -> datasets.Dataset:
    """`datasets.load_dataset(builder, data_files=path)` through a temporary cache, in memory."""
    import datasets

    with tempfile.TemporaryDirectory(prefix="bertforge-task-") as cache, _quiet_datasets():
        try:
            return datasets.load_dataset(
                builder,
                data_files=str(path.resolve()),
                split="train",
                cache_dir=cache,
                keep_in_memory=True,
                **options,
            )
        except Exception as err:  # datasets wraps the parser's error in its own types
            root = err
            while root.__cause__ is not None or root.__context__ is not None:
                root = root.__cause__ or root.__context__
            reason = (str(root).strip().splitlines() or [type(root).__name__])[0]
            raise _Unreadable(reason, "corresponds to no data" in str(err)) from None


def read_delimited(
    path: Path,
    delimiter: str,
    quoting: int,
    header: tuple[str, ...] | None = None,
    skip_short_rows: bool = False,
) -> Table:
    """A csv / tsv file, every cell as text; `header` names the columns of a file without a
    header row. Rows with missing fields are an error, or skipped with `skip_short_rows`."""
    import datasets
    import pandas as pd
    import pyarrow.compute as pc

    check_utf8(path)
    options: dict[str, Any] = dict(
        sep=delimiter,
        quoting=quoting,
        encoding="utf-8-sig",
        keep_default_na=False,
        skip_blank_lines=False,  # blank lines stay rows, so that a row's index gives its line
    )
    first_line = 0 if header else 1
    try:
        if header is None:
            names = pd.read_csv(path, header=None, nrows=1, dtype=str, **options).iloc[0]
            header = tuple("" if pd.isna(name) else str(name) for name in names)
            _check_columns(path, list(header))
        features = datasets.Features({name: datasets.Value("string") for name in header})
        # The header row is read as a row too (dropped below): with names given, pandas would
        # take the first field of a row with one field too many as its index.
        read = functools.partial(
            _load, "csv", path, **options, header=None, names=list(header), features=features
        )
        dataset = read(engine="c")
        if pc.any(pc.equal(dataset.data.table.column(header[-1]), "")).as_py():
            # The C parser fills missing fields with "": only the python one (3 x slower) tells
            # a short row or a blank line (None) from empty cells ("").
            dataset = read(engine="python")
    except (_Unreadable, pd.errors.ParserError, csv.Error) as err:
        reason = err.reason if isinstance(err, _Unreadable) else str(err)
        if isinstance(err, _Unreadable) and err.empty:
            return Table(path, _empty_table(header or ()), str)
        match = _FIELD_COUNT.search(reason)
        if match:
            expected, line, saw = match.groups()
            raise DataError(
                f"{path}, line {line}: {saw} fields where the header has {expected}; fix or "
                f"remove the row (is the file {delimiter!r}-separated?)"
            ) from None
        raise DataError(
            f"{path}: {reason}; fix the file (is it {delimiter!r}-separated?)"
        ) from None

    table = dataset.data.table.slice(first_line)
    nulls = [pc.is_null(table.column(name)) for name in header]
    blank = functools.reduce(pc.and_, nulls)
    short = pc.and_(functools.reduce(pc.or_, nulls), pc.invert(blank))
    if skip_short_rows:
        skipped = pc.sum(short).as_py() or 0
        if skipped:
            log.warning("%s: skipped %d rows with missing fields", path, skipped)
        keep = pc.invert(functools.reduce(pc.or_, nulls))
    else:
        if pc.any(short).as_py():
            index = int(np.flatnonzero(short.to_numpy(zero_copy_only=False))[0])
            fields = sum(
                value is not None for value in table.slice(index, 1).to_pylist()[0].values()
            )
            raise DataError(
                f"{path}, line {index + 1 + first_line}: {fields} fields where the header has "
                f"{len(header)}; fix or remove the row (is the file {delimiter!r}-separated?)"
            )
        keep = pc.invert(blank)
    lines = np.flatnonzero(keep.to_numpy(zero_copy_only=False)) + 1 + first_line
    return Table(path, table.filter(keep), lambda i: f"line {lines[i]}")


def _empty_table(columns: tuple[str, ...]) -> pa.Table:
    import pyarrow as pa

    return pa.table({name: pa.array([], pa.string()) for name in columns})


def _json_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [key for key, _ in pairs]
    duplicated = sorted({key for key in keys if keys.count(key) > 1})
    if duplicated:
        raise ValueError(
            f"duplicated column names {', '.join(duplicated)}; rename them so each key is unique"
        )
    return dict(pairs)


def _non_blank_lines(path: Path) -> Iterator[tuple[int, str]]:
    with path.open(encoding="utf-8-sig") as f:
        for number, line in enumerate(f, start=1):
            if line.strip():
                yield number, line


def _jsonl_line(path: Path, index: int) -> str:
    """The line of the `index`-th record (blank lines hold none); looked up only for a message."""
    for position, (number, _) in enumerate(_non_blank_lines(path)):
        if position == index:
            return f"line {number}"
    return f"record {index + 1}"


def check_jsonl_lines(path: Path) -> None:
    """Raise the first line that is not a JSON object with unique keys (after a failed load)."""
    for number, line in _non_blank_lines(path):
        try:
            record = json.loads(line, object_pairs_hook=_json_object)
        except ValueError as err:
            raise DataError(f"{path}, line {number}: {err}; fix the line") from None
        if not isinstance(record, dict):
            raise DataError(f"{path}, line {number}: not a JSON object; write one object a line")


def read_jsonl(path: Path) -> Table:
    """One JSON object a line."""
    import datasets

    check_utf8(path)
    try:
        dataset = _load("json", path)
    except _Unreadable as err:
        if err.empty:
            return Table(path, _empty_table(()), str)
        check_jsonl_lines(path)
        raise DataError(
            f"{path} is not readable as JSON lines ({err.reason}); write one object a line with "
            "the same type in each column"
        ) from None
    mixed = {
        name for name, feature in dataset.features.items() if isinstance(feature, datasets.Json)
    }
    return Table(path, dataset.data.table, functools.partial(_jsonl_line, path), frozenset(mixed))


def read_json_records(path: Path) -> Table:
    """A JSON file holding one array of objects (KLUE's layout); a nested object's keys become
    dotted columns ("labels": {"label": 4.9} -> "labels.label"). Columns of mixed types are
    JSON-encoded, as in `read_jsonl`."""
    import pyarrow as pa

    check_utf8(path)
    try:
        records = json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as err:
        raise DataError(f"{path}, line {err.lineno}: {err.msg}; fix the JSON") from None
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise DataError(f"{path} is not a JSON array of objects; write [{{...}}, {{...}}]")
    rows = [dict(_flatten(record)) for record in records]
    names = list(dict.fromkeys(name for row in rows for name in row))
    columns, mixed = {}, set()
    for name in names:
        values = [row.get(name) for row in rows]
        try:
            columns[name] = pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            columns[name] = pa.array([None if v is None else json.dumps(v) for v in values])
            mixed.add(name)
    data = pa.table(columns) if names else _empty_table(())
    return Table(path, data, lambda i: f"record {i + 1}", frozenset(mixed))


def _flatten(record: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in record.items():
        if isinstance(value, dict) and value:
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def read_parquet(path: Path) -> Table:
    import pyarrow as pa
    import pyarrow.parquet as pq

    if path.stat().st_size == 0:
        raise DataError(f"{path} is empty (0 bytes); point the task at a file with examples")
    try:
        metadata = pq.read_metadata(path)
        _check_columns(path, metadata.schema.names)
        if metadata.num_rows == 0:  # datasets' reader fails on it ("BatchSize must be > 0")
            return Table(path, _empty_table(()), str)
        dataset = _load("parquet", path)
    except (pa.ArrowException, _Unreadable) as err:
        if isinstance(err, _Unreadable) and err.empty:
            return Table(path, _empty_table(()), str)
        reason = err.reason if isinstance(err, _Unreadable) else str(err)
        raise DataError(f"{path} is not a readable parquet file ({reason}); re-export it") from None
    return Table(path, dataset.data.table, lambda i: f"row {i + 1}")

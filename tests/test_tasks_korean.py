"""The Korean tasks: NSMC, KorSTS, KLUE-NLI and KLUE-STS, parsed from the shipped files
(../shared/data/korean, skipped where absent) and from small files written here in the same
layout; one tiny fine-tuning run scores a model on NSMC."""

from __future__ import annotations

import csv
import json
import unicodedata
from collections import Counter
from pathlib import Path

import pytest

from bertforge.config import TaskConfig
from bertforge.data.tasks import TASKS, Example, load_task
from bertforge.errors import ConfigError, DataError
from bertforge.pipeline.graph import Pipeline
from conftest import TINY, compose, copy_outputs, requires_shared_data

KOREAN = ("nsmc", "korsts", "klue_nli", "klue_sts")


def korean(name: str, data_dir: Path, **kwargs) -> object:
    return load_task(TaskConfig(name=name, data_dir=str(data_dir), **kwargs))


def is_hangul_syllable(char: str) -> bool:
    return "\uac00" <= char <= "\ud7a3"


def assert_hangul_kept(texts: list[str]) -> None:
    """Hangul arrives as precomposed syllables (NFC), never as conjoining jamo."""
    joined = "".join(texts)
    assert sum(map(is_hangul_syllable, joined)) > len(joined) // 3
    assert not any("\u1100" <= char <= "\u11ff" for char in joined)
    assert unicodedata.normalize("NFC", joined.replace("\uf933", "")) == joined.replace(
        "\uf933", ""
    )


# --- The shipped files -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def shipped() -> dict:
    root = requires_shared_data("korean")
    return {name: korean(name, root) for name in KOREAN}


def test_yaml_defaults_point_at_the_team_copy():
    for name in KOREAN:
        cfg = compose(f"task={name}")
        assert (cfg.task.name, cfg.task.data_dir) == (name, "../shared/data/korean")


def test_shipped_nsmc(shipped):
    task = shipped["nsmc"]
    assert (task.task_type, task.label_names, task.eval_split) == (
        "classification",
        ["negative", "positive"],
        "test",
    )
    sizes = {split: len(rows) for split, rows in task.splits.items()}
    assert sizes == {"train": 135022, "validation": 14978, "test": 50000}
    train_file = Counter(e.label for s in ("train", "validation") for e in task.splits[s])
    assert train_file == {0: 74783, 1: 75217}
    assert Counter(e.label for e in task.splits["test"]) == {0: 25217, 1: 24783}
    first = task.splits["train"][0]
    assert first.id == "9370331" and first.label == 0 and first.text_b is None
    assert first.text_a.startswith("아침 드라마 참 막장이넹요")
    ids = [e.id for rows in task.splits.values() for e in rows]
    assert len(set(ids)) == len(ids)  # review ids: no review in two splits
    assert_hangul_kept([e.text_a for e in task.splits["validation"]])


def test_shipped_korsts(shipped):
    task = shipped["korsts"]
    assert (task.task_type, task.label_names, task.num_labels, task.eval_split) == (
        "regression",
        None,
        1,
        "test",
    )
    assert {s: len(r) for s, r in task.splits.items()} == {
        "train": 5749,
        "validation": 1500,
        "test": 1379,
    }
    assert task.splits["train"][0] == Example(
        "비행기가 이륙하고 있다.", "비행기가 이륙하고 있다.", 5.0, "train-0"
    )
    scores = [e.label for rows in task.splits.values() for e in rows]
    assert min(scores) == 0.0 and max(scores) == 5.0
    assert_hangul_kept([e.text_a + e.text_b for e in task.splits["test"]])


def test_shipped_klue_nli(shipped):
    task = shipped["klue_nli"]
    assert task.label_names == ["entailment", "neutral", "contradiction"]
    assert {s: len(r) for s, r in task.splits.items()} == {
        "train": 2367,
        "validation": 330,
        "test": 303,
    }
    every = [e for rows in task.splits.values() for e in rows]
    assert Counter(e.label for e in every) == {0: 1000, 1: 1000, 2: 1000}
    assert len({e.id for e in every}) == 3000
    first = next(e for e in every if e.id == "klue-nli-v1_dev_00000")
    assert first.text_b == "어떤 방에서도 흡연은 금지됩니다." and first.label == 2  # contradiction
    assert_hangul_kept([e.text_a for e in every])


def test_shipped_klue_sts(shipped):
    task = shipped["klue_sts"]
    assert (task.task_type, task.eval_split) == ("regression", "test")
    assert {s: len(r) for s, r in task.splits.items()} == {
        "train": 417,
        "validation": 48,
        "test": 54,
    }
    every = [e for rows in task.splits.values() for e in rows]
    first = next(e for e in every if e.id == "klue-sts-v1_dev_00000")
    assert first.label == 4.9 and first.text_a == "무엇보다도 호스트분들이 너무 친절하셨습니다."
    assert min(e.label for e in every) == 0.0 and max(e.label for e in every) == 5.0
    assert_hangul_kept([e.text_a for e in every])


# --- The same layouts, written here ----------------------------------------------------------


def write_nsmc(root: Path, n: int = 40) -> Path:
    reviews = ["정말 재밌어요 최고", "지루하고 별로였다", "배우 연기가 좋았다", "시간 낭비"]
    for name, rows in (("train", n), ("test", n // 4)):
        lines = ["id\tdocument\tlabel"] + [
            f"{name}{i}\t{reviews[i % 4]} {i}\t{int(i % 4 in (0, 2))}" for i in range(rows)
        ]
        (root / f"nsmc_like_{name}.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def write_klue(root: Path, kind: str, n: int = 40) -> Path:
    labels = ["entailment", "neutral", "contradiction"]
    records = []
    for i in range(n):
        pair = {"premise": f"문장 {i}입니다.", "hypothesis": f"가설 {i}."}
        if kind == "nli":
            records.append({"guid": f"nli-{i}", **pair, "gold_label": labels[i % 3]})
        else:
            sentences = {"sentence1": pair["premise"], "sentence2": pair["hypothesis"]}
            scores = {"label": round(i % 6 * 0.9, 1), "binary-label": int(i % 6 > 2)}
            annotations = {"annotations": [1, "x"]}  # mixed types: kept out of the way
            records.append({"guid": f"sts-{i}", **sentences, "labels": scores, **annotations})
    (root / "KLUE").mkdir(exist_ok=True)
    path = root / "KLUE" / f"klue-{kind}-v1.1_dev.json"
    path.write_text(json.dumps(records, ensure_ascii=False, indent=2), encoding="utf-8")
    return path


def test_nsmc_layout_derives_a_fixed_validation_split(tmp_path):
    task = korean("nsmc", write_nsmc(tmp_path))
    assert list(task.splits) == ["train", "validation", "test"]
    train, validation = task.splits["train"], task.splits["validation"]
    assert len(train) + len(validation) == 40 and validation and len(task.splits["test"]) == 10
    assert task.splits["test"][0] == Example("정말 재밌어요 최고 0", None, 1, "test0")
    # The split follows each review's id, not its position: reversed rows, same split.
    path = tmp_path / "nsmc_like_train.tsv"
    header, *rows = path.read_text(encoding="utf-8").splitlines()
    path.write_text("\n".join([header, *reversed(rows)]) + "\n", encoding="utf-8")
    again = korean("nsmc", tmp_path)
    assert {e.id for e in again.splits["validation"]} == {e.id for e in validation}


def test_klue_nli_layout_derives_train_validation_test(tmp_path):
    write_klue(tmp_path, "nli", 60)
    task = korean("klue_nli", tmp_path)
    assert list(task.splits) == ["train", "validation", "test"] and task.eval_split == "test"
    assert sum(map(len, task.splits.values())) == 60 and all(task.splits.values())
    example = next(e for rows in task.splits.values() for e in rows if e.id == "nli-1")
    assert example == Example("문장 1입니다.", "가설 1.", 1, "nli-1")  # neutral


def test_klue_sts_reads_the_nested_label(tmp_path):
    write_klue(tmp_path, "sts")
    task = korean("klue_sts", tmp_path)
    every = {e.id: e for rows in task.splits.values() for e in rows}
    assert every["sts-3"] == Example("문장 3입니다.", "가설 3.", 2.7, "sts-3")
    assert task.num_labels == 1


def test_korsts_layout(tmp_path):
    header = ["genre", "filename", "year", "id", "score", "sentence1", "sentence2"]
    (tmp_path / "KorSTS").mkdir()
    for split in ("train", "dev", "test"):
        rows = [["main-news", "f", "2012", f"{i:04d}", f"{i}.0", f"문장 {i}", "다른 문장"]
                for i in range(3)]  # fmt: skip
        with open(tmp_path / "KorSTS" / f"sts-{split}.tsv", "w", encoding="utf-8") as f:
            csv.writer(f, delimiter="\t").writerows([header, *rows])
    task = korean("korsts", tmp_path)
    assert {s: [e.label for e in r] for s, r in task.splits.items()} == {
        s: [0.0, 1.0, 2.0] for s in ("train", "validation", "test")
    }


def test_missing_file_names_the_file_and_the_key(tmp_path):
    write_nsmc(tmp_path)
    (tmp_path / "nsmc_like_test.tsv").unlink()
    with pytest.raises(
        DataError, match=r"nsmc_like_test.tsv not found; task.data_dir=.* must hold"
    ):
        korean("nsmc", tmp_path)
    with pytest.raises(DataError, match=r"KLUE/klue-sts-v1.1_dev.json not found; task.data_dir="):
        korean("klue_sts", tmp_path)
    with pytest.raises(ConfigError, match=r"set task.data_dir=<dir> holding KorSTS/sts-train.tsv"):
        load_task(TaskConfig(name="korsts"))


def test_korean_tasks_are_not_on_the_hub():
    with pytest.raises(ConfigError, match=r"task=nsmc is not on the Hub.*task.source=local"):
        load_task(TaskConfig(name="nsmc", source="hub", data_dir="."))


def test_broken_json_and_labels_name_file_and_place(tmp_path):
    path = write_klue(tmp_path, "nli", 6)
    path.write_text(path.read_text(encoding="utf-8").replace("neutral", "maybe", 1), "utf-8")
    with pytest.raises(DataError, match=r"klue-nli-v1.1_dev.json, record 2: label 'maybe'"):
        korean("klue_nli", tmp_path)
    path.write_text('[{"guid": "a",\n "premise": }]', encoding="utf-8")
    with pytest.raises(DataError, match=r"klue-nli-v1.1_dev.json, line 2: Expecting value"):
        korean("klue_nli", tmp_path)
    path.write_text('{"guid": "a"}', encoding="utf-8")
    with pytest.raises(DataError, match=r"is not a JSON array of objects"):
        korean("klue_nli", tmp_path)


def test_registry_specs():
    assert {TASKS[n].task_type for n in ("korsts", "klue_sts")} == {"regression"}
    assert TASKS["klue_nli"].label_names == ("entailment", "neutral", "contradiction")


# --- Fine-tuning a tiny model ----------------------------------------------------------------


def test_tiny_model_fine_tunes_and_scores_on_nsmc(tiny_upstream, tmp_path):
    root = requires_shared_data("korean")
    outputs = copy_outputs(tiny_upstream, tmp_path / "outputs")
    cfg = compose(
        *TINY, "task=nsmc", f"task.data_dir={root}", "task.train_per_class=8", outputs=outputs
    )
    artifact = Pipeline(cfg).artifact("finetune")
    assert 0.0 <= artifact.metrics["test_accuracy"] <= 1.0 and "val_accuracy" in artifact.metrics
    with open(artifact.path / "predictions_seed42_test.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 48 and any(map(is_hangul_syllable, rows[0]["text"]))

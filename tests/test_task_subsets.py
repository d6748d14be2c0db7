"""Low-resource training subsets: task.train_per_class and task.max_train_examples, drawn by
task.subset_seed (never the run's seed); validation and test splits are left alone."""

from __future__ import annotations

from collections import Counter

import pytest

from bertforge.config import TaskConfig
from bertforge.data.tasks import load_task
from bertforge.errors import ConfigError, DataError
from conftest import compose


@pytest.fixture(scope="module")
def bbc():
    return load_task(TaskConfig(name="bbc_news"))


def bbc_subset(**kwargs):
    return load_task(TaskConfig(name="bbc_news", **kwargs))


def test_k_per_class_is_balanced_and_leaves_evaluation_splits_alone(bbc):
    task = bbc_subset(train_per_class=4)
    assert Counter(e.label for e in task.splits["train"]) == dict.fromkeys(range(5), 4)
    assert task.splits["validation"] == bbc.splits["validation"]
    assert task.splits["test"] == bbc.splits["test"]
    train = bbc.splits["train"]
    positions = [train.index(e) for e in task.splits["train"]]
    assert positions == sorted(positions)  # a subset of the training split, in its order


def ids(task) -> list[str]:
    return [e.id for e in task.splits["train"]]


def test_the_subset_seed_alone_picks_the_subset():
    assert ids(bbc_subset(train_per_class=4)) == ids(bbc_subset(train_per_class=4))
    assert ids(bbc_subset(train_per_class=4, subset_seed=1)) != ids(bbc_subset(train_per_class=4))
    # one seed: the small subset lies inside the large one (the same shuffle, cut shorter)
    assert set(ids(bbc_subset(train_per_class=4))) < set(ids(bbc_subset(train_per_class=20)))
    assert set(ids(bbc_subset(max_train_examples=30))) < set(ids(bbc_subset(max_train_examples=90)))
    # every run seed sees the same subset: the run's seed is no input of the task
    cfgs = [compose("task.train_per_class=4", f"seed={seed}").task for seed in (1, 2)]
    assert ids(load_task(cfgs[0])) == ids(load_task(cfgs[1]))


def test_max_train_examples_caps_the_train_split_only(bbc):
    task = bbc_subset(max_train_examples=50)
    assert len(task.splits["train"]) == 50
    assert len({e.label for e in task.splits["train"]}) == 5
    assert task.splits["test"] == bbc.splits["test"]
    assert len(bbc_subset(max_train_examples=10**6).splits["train"]) == len(bbc.splits["train"])
    assert TaskConfig(name="stsb", max_train_examples=100).max_train_examples == 100  # regression
    capped = bbc_subset(train_per_class=20, max_examples=10)  # the subset first, then the cap
    assert len(capped.splits["train"]) == 10 and len(capped.splits["test"]) == 10


def test_a_class_smaller_than_k_names_it(tmp_path):
    (tmp_path / "train.csv").write_text("text,label\n" + "a,pos\nb,pos\nc,neg\n")
    (tmp_path / "dev.csv").write_text("text,label\nd,pos\n")
    cfg = TaskConfig(
        name="local_files",
        train_file=str(tmp_path / "train.csv"),
        validation_file=str(tmp_path / "dev.csv"),
        text_columns=["text"],
        train_per_class=2,
    )
    with pytest.raises(DataError, match=r"train_per_class=2 .*class 'neg' has 1\); lower"):
        load_task(cfg)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(name="stsb", train_per_class=5), r"needs classes; task=stsb is regression"),
        (dict(name="korsts", train_per_class=5), r"task=korsts is regression"),
        (dict(train_per_class=5, max_train_examples=9), r"train_per_class or .* not both"),
        (dict(train_per_class=0), r"task.train_per_class=0 must be >= 1"),
        (dict(max_train_examples=-1), r"task.max_train_examples=-1 must be >= 1"),
        (dict(subset_seed=-1), r"task.subset_seed=-1 is outside"),
    ],
)
def test_bad_subset_keys_are_config_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        TaskConfig(**kwargs)

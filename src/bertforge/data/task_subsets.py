"""Low-resource training subsets: k labelled examples per class (`task.train_per_class`) or a
cap on the training split (`task.max_train_examples`), drawn with `task.subset_seed`.

The subset depends on the subset seed, never on the run's seed: every fine-tuning seed of a
comparison (pretrained vs random init, 5 seeds) trains on the same examples, so the seeds
measure the training's variance, not the draw's. Each class (or the whole split) is shuffled
once by the seed and its first k examples are kept: with one seed, the 20-per-class subset lies
inside the 100-per-class one. The kept examples stay in file order. Validation and test splits
are never touched.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from bertforge.checks import check_seed
from bertforge.data.tasks import Example, TaskData, get_task_spec
from bertforge.errors import ConfigError, DataError

if TYPE_CHECKING:
    from bertforge.config import TaskConfig


def check_subset_keys(cfg: TaskConfig) -> None:
    """The config checks of the caps and subsets (`TaskConfig.__post_init__`)."""
    for key in ("max_examples", "train_per_class", "max_train_examples"):
        if (value := getattr(cfg, key)) is not None and value < 1:
            raise ConfigError(f"task.{key}={value} must be >= 1 (or null for every example)")
    if cfg.train_per_class is not None and cfg.max_train_examples is not None:
        raise ConfigError("set task.train_per_class or task.max_train_examples, not both")
    regression = get_task_spec(cfg.name, cfg.task_type).task_type == "regression"
    if cfg.train_per_class is not None and regression:
        raise ConfigError(
            f"task.train_per_class needs classes; task={cfg.name} is regression: use "
            "task.max_train_examples"
        )
    check_seed("task.subset_seed", cfg.subset_seed)


def train_subset(task: TaskData, cfg: TaskConfig) -> list[Example]:
    """The training examples of `task` that `cfg.train_per_class` / `cfg.max_train_examples`
    keep (all of them when neither is set)."""
    rows = task.splits["train"]
    rng = np.random.default_rng(cfg.subset_seed)
    if cfg.train_per_class is not None:
        k = cfg.train_per_class  # a classification task (`check_subset_keys`)
        members: list[list[int]] = [[] for _ in range(task.num_labels)]
        for position, example in enumerate(rows):
            members[int(example.label)].append(position)
        short = [
            f"class {name!r} has {len(kept)}"
            for name, kept in zip(task.label_names or [], members, strict=True)
            if len(kept) < k
        ]
        if short:
            raise DataError(
                f"task.train_per_class={k} asks for more than task {task.name}'s training split "
                f"holds ({', '.join(short)}); lower task.train_per_class"
            )
        keep = [p for kept in members for p in np.asarray(kept)[rng.permutation(len(kept))[:k]]]
    else:
        keep = list(rng.permutation(len(rows))[: cfg.max_train_examples])
    return [rows[int(p)] for p in sorted(keep)]

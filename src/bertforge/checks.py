"""Value checks of the config schemas: each failure is one `ConfigError` line naming the key."""

from __future__ import annotations

import math
import re
from typing import Any

from bertforge.errors import ConfigError

MAX_SEED = 2**32 - 1  # numpy's and Lightning's seeds are 32-bit


def check_choice(key: str, value: Any, allowed: tuple[Any, ...] | list[Any]) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} is not one of {', '.join(map(str, allowed))}")


def check_positive(key: str, value: float) -> None:
    """`value` is a finite number above 0 (NaN and inf fail: `nan <= 0` is False)."""
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(f"{key}={value} must be a positive finite number")


def check_share(key: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"{key}={value} must lie in [0, 1] (a share of the steps)")


def check_seeds(key: str, seeds: list[int]) -> None:
    if not seeds:
        raise ConfigError(f"{key} is empty; give at least one seed, e.g. [42]")
    for seed in seeds:
        check_seed(key, seed)
    repeated = sorted({seed for seed in seeds if list(seeds).count(seed) > 1})
    if repeated:
        raise ConfigError(
            f"{key}={list(seeds)} repeats {', '.join(map(str, repeated))}; give each seed once "
            "(a repeated seed repeats the same run)"
        )


def check_seed(key: str, seed: int) -> None:
    if not 0 <= seed <= MAX_SEED:
        raise ConfigError(f"{key}={seed} is outside 0..{MAX_SEED}; use a 32-bit unsigned seed")


def check_regex(key: str, pattern: str) -> None:
    try:
        re.compile(pattern)
    except re.error as err:
        raise ConfigError(f"{key}={pattern!r} is not a regular expression ({err})") from None


def check_at_least(group: str, obj: Any, **least: int) -> None:
    """Each named field of `obj` is None or at least its given minimum."""
    for key, minimum in least.items():
        if (value := getattr(obj, key)) is not None and value < minimum:
            raise ConfigError(f"{group}.{key}={value} must be >= {minimum}")


def check_steps(key: str, steps: list[int], max_steps: int) -> None:
    """Optimizer steps within a run of `max_steps` steps."""
    if bad := [step for step in steps if not 1 <= step <= max_steps]:
        raise ConfigError(
            f"{key}={list(steps)} has {bad} outside 1..{max_steps} (the run's max_steps); "
            "pick optimizer steps within the run"
        )

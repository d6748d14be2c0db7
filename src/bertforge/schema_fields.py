"""How a config field enters the artifact hashes: the markers every schema module uses.

Every field is hashed unless marked `watch_only()`; a field marked `input_path()` names a file or
directory and is hashed by its content (`pipeline/stage.py` reads these markers).
"""

from __future__ import annotations

from dataclasses import MISSING, field
from typing import Any


def watch_only(default: Any = MISSING, *, default_factory: Any = MISSING) -> Any:
    """A field that changes how a run is watched or exported, never what it computes: it is
    left out of every artifact hash."""
    return field(default=default, default_factory=default_factory, metadata={"hashed": False})


def input_path(kind: str = "path", many: bool = False) -> Any:
    """A file, directory or glob that a stage reads (`kind` "path"), or an HF checkpoint that
    may also be a Hub name (`kind` "hf_model"): hashed by content, not by name. `many`: a list
    of them (default empty), each hashed by content."""
    default = {"default_factory": list} if many else {"default": None}
    return field(**default, metadata={"input": kind})

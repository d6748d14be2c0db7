"""What a stage is: its settings (the config slice it reads), its upstream and its builder.

A stage module (`bertforge/stages/<name>.py`) declares

    @dataclass
    class Settings:              # fields named like `Config`'s: the groups this stage reads
        corpus: CorpusConfig
        tokenizer: TokenizerConfig

    STAGE = Stage("tokenizer", Settings, build, summary=(...))

and `bertforge/stages/__init__.py` lists it in the graph. The pipeline hands `build` a
`BuildContext` with the stage's settings, its upstream artifacts and a directory to fill; the
settings are projected from the whole config (a field typed with a base class, such as
`ExampleConfig` for `pretrain`, receives that base class's fields only), so a body cannot read
what its hash does not cover. The hash is read off the settings: every field unless marked
watch-only, input paths by content (`config.watch_only`, `config.input_path`).
"""

from __future__ import annotations

import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

from bertforge.pipeline.store import Artifact

Fingerprint = Callable[[str, str, str], dict]  # (key, value, kind) -> fingerprint


@dataclass
class BuildContext:
    """What a stage's builder receives: where to write, what it reads, how to log."""

    stage: str
    hash: str
    path: Path  # the artifact directory to fill
    settings: Any  # the stage's Settings
    upstream: dict[str, Artifact]
    open_loggers: Callable[..., Any]  # (suffix="", resume_from=None) -> StageLoggers
    extra: dict[str, Any] = field(default_factory=dict)  # more manifest fields

    def loggers(self, suffix: str = "", resume_from: Path | None = None):
        """Loggers for one run of this stage (`suffix` tells several apart, e.g. "seed1");
        `resume_from`: a training directory whose last checkpoint names the W&B run to continue.
        """
        return self.open_loggers(self, suffix, resume_from)


def no_upstream(settings: Any) -> tuple[str, ...]:
    return ()


@dataclass(frozen=True)
class Stage:
    name: str
    settings: type  # a dataclass; its field names are `Config` attributes
    build: Callable[[BuildContext], Mapping[str, float]]
    upstream: Callable[[Any], tuple[str, ...]] = no_upstream  # stage names, from the settings
    select: Callable[[Any], Any] | None = None  # Config -> settings; None: by field names
    check: Callable[[Any], None] | None = None  # cheap start-up checks of the inputs
    distributed: bool = False  # the builder trains with every rank (DDP)
    summary: tuple[str, ...] = ()  # metrics the end-of-run table shows

    def settings_of(self, cfg: Any) -> Any:
        return self.select(cfg) if self.select else project(cfg, self.settings)


def project(source: Any, target: type) -> Any:
    """A `target` dataclass filled from `source`'s attributes of the same names; a field typed
    with a dataclass receives only that dataclass' fields (a base class' subset)."""
    hints = typing.get_type_hints(target)
    values = {}
    for f in fields(target):
        value = getattr(source, f.name)
        kind = hints[f.name]
        if is_dataclass(kind) and value is not None and type(value) is not kind:
            value = project(value, kind)
        values[f.name] = value
    return target(**values)


def hashed_view(obj: Any, fingerprint: Fingerprint, prefix: str = "") -> Any:
    """The part of `obj` that determines a result, as JSON-able data: fields marked watch-only
    (metadata `hashed: False`) are left out, input paths become their content fingerprints."""
    if is_dataclass(obj):
        view = {}
        for f in fields(obj):
            if not f.metadata.get("hashed", True):
                continue
            value, key = getattr(obj, f.name), f"{prefix}{f.name}"
            if f.metadata.get("input") and isinstance(value, list | tuple):  # input_path(many)
                view[f.name] = [
                    fingerprint(f"{key}[{i}]", v, f.metadata["input"]) for i, v in enumerate(value)
                ]
            elif f.metadata.get("input") and value is not None:
                view[f.name] = fingerprint(key, value, f.metadata["input"])
            else:
                view[f.name] = hashed_view(value, fingerprint, key + ".")
        return view
    if isinstance(obj, list | tuple):
        return [hashed_view(v, fingerprint, prefix) for v in obj]
    if isinstance(obj, Mapping):
        return {str(k): hashed_view(v, fingerprint, f"{prefix}{k}.") for k, v in obj.items()}
    return obj


def leaf_fields(schema: type, prefix: str = "", hashed: bool = True) -> dict[str, bool]:
    """{dotted path: whether it enters hashes} for every leaf field of the dataclass `schema`;
    the leaves of a watch-only group are watch-only too."""
    leaves = {}
    hints = typing.get_type_hints(schema)
    for f in fields(schema):
        path, counted = prefix + f.name, hashed and f.metadata.get("hashed", True)
        kind = _dataclass_in(hints[f.name])
        if kind is None:
            leaves[path] = counted
        else:
            leaves |= leaf_fields(kind, path + ".", counted)
    return leaves


def _dataclass_in(annotation: Any) -> type | None:
    """The dataclass in `annotation` (`X` or `X | None`), else None."""
    if is_dataclass(annotation):
        return annotation
    candidates = [a for a in typing.get_args(annotation) if is_dataclass(a)]
    return candidates[0] if candidates else None

"""Start-up checks of the command line: every override names a key or group option of the
schema, has the right type and a valid value, and `paths.outputs` is writable, all before Hydra
creates a run directory or anything heavy is imported. Bad input exits with one line
(`error: <what>; <fix>`) and status 2. Used by the entry points (cli.py) and sweep files."""

from __future__ import annotations

import dataclasses
import difflib
import errno
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

from bertforge.config import Config, to_config
from bertforge.errors import BertforgeError
from bertforge.pipeline.runs import register_resolvers

EXIT_BAD_INPUT = 2
CONF_DIR = Path(__file__).resolve().parents[3] / "conf"  # the entry points' config_path
# errno values of a write that the user can fix (permissions, read-only or full disk, quota)
WRITE_ERRNOS = {
    errno.EACCES: "set paths.outputs to a directory you can write to",
    errno.EPERM: "set paths.outputs to a directory you can write to",
    errno.EROFS: "set paths.outputs to a directory on a writable file system",
    errno.ENOSPC: "free disk space or set paths.outputs to a disk with room",
    errno.EDQUOT: "free disk space (quota) or set paths.outputs to a disk with room",
    errno.EFBIG: "the file size limit (ulimit -f) was reached; raise it or write less",
}
HYDRA_ONLY_GROUPS = ("experiment", "hparams_search")  # conf/ groups that only set other keys

register_resolvers()  # `${bertforge.unique:}` in conf/config.yaml, for every entry point


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(EXIT_BAD_INPUT)


def unknown_key_message(key: str, root: type = Config) -> str | None:
    """Why `key` (dotted, from a command-line override) is not a key the user may set, or None."""
    node: type = root
    parts = key.split(".")
    for depth, part in enumerate(parts):
        fields = {f.name: f for f in dataclasses.fields(node)}
        if part not in fields:
            where = ".".join(parts[:depth]) or "the top level"
            close = difflib.get_close_matches(part, fields, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            return (
                f"unknown config key '{key}'{hint}; keys under {where}: {', '.join(sorted(fields))}"
            )
        if source := fields[part].metadata.get("set_by"):
            return f"{key} is taken from {source}; remove the override {key}=..."
        field_type = fields[part].default_factory if depth < len(parts) - 1 else None
        if field_type is None or not dataclasses.is_dataclass(field_type):
            return None  # a leaf (or a non-dataclass container): Hydra checks the rest
        node = field_type
    return None


def unknown_option_message(group: str, value: str, conf_dir: Path = CONF_DIR) -> str | None:
    """Why `group=value` names no `conf/<group>/<value>.yaml` (value may be a sweep "a,b")."""
    options = sorted(p.stem for p in (conf_dir / group).glob("*.yaml"))
    if not options or "(" in value:  # not a group, or a sweep function such as choice(...)
        return None
    for option in value.split(","):
        if option not in options:
            return f"{group}={option} is not an option of the {group} group; choose one of " + (
                ", ".join(options)
            )
    return None


def check_overrides(
    argv: Sequence[str] | None = None,
    root: type = Config,
    conf_dir: Path = CONF_DIR,
    config_name: str = "config",
) -> None:
    """Fail fast, naming what is allowed, when an override names no config key or group
    option, has the wrong type or a bad value, or `paths.outputs` is not writable."""
    args = [a for a in (sys.argv[1:] if argv is None else argv) if not a.startswith("-")]
    config = composed_config(first_point(args, root, conf_dir), root, conf_dir, config_name)
    check_writable(Path(config.paths.outputs).expanduser())


def first_point(args: Sequence[str], root: type = Config, conf_dir: Path = CONF_DIR) -> list[str]:
    """The overrides of a (multi)run's first job, each checked: a sweep `k=a,b` becomes `k=a`."""
    parser = OverridesParser.create()
    first_values = []
    for arg in args:
        try:
            override = parser.parse_override(arg)
        except HydraException as exc:
            fail(
                f"cannot parse the override {arg!r} ({exc}); quote values with spaces as key='a b'"
            )
        key = override.key_or_group
        if not key.startswith("hydra") and key not in HYDRA_ONLY_GROUPS:
            raw = arg.split("=", 1)[1] if "=" in arg else ""
            message = unknown_option_message(key, raw, conf_dir) or unknown_key_message(key, root)
            if message:
                fail(message)
        if not override.is_sweep_override():
            first_values.append(arg)
        elif override.is_discrete_sweep():
            value = next(iter(override.sweep_string_iterator()))
            first_values.append(f"{'+' if override.is_add() else ''}{key}={value}")
    return first_values


def outputs_dir(args: Sequence[str]) -> Path:
    """`paths.outputs` as Hydra will resolve it for these overrides (quotes, interpolations)."""
    config = composed_config(first_point(args), Config, CONF_DIR, "config")
    return Path(config.paths.outputs).expanduser()


def composed_config(overrides: list[str], root: type, conf_dir: Path, config_name: str):
    """The typed config Hydra will compose from `overrides`; a bad one exits with one line."""
    try:
        with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
            return to_config(compose(config_name, overrides=overrides), root)
    except BertforgeError as exc:
        fail(str(exc))
    except (HydraException, OmegaConfBaseException) as exc:
        fail(omegaconf_message(exc))


def omegaconf_message(exc: BaseException) -> str:
    """One line from Hydra's / OmegaConf's multi-line composition errors, naming the key."""
    while exc.__cause__ is not None and not isinstance(exc, OmegaConfBaseException):
        exc = exc.__cause__
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    key = getattr(exc, "full_key", None)
    if key:
        return f"{key}: {first}; give a value of the type the schema declares (lists as [a,b])"
    return first


def check_writable(directory: Path) -> None:
    """Fail with the fix before Hydra creates its run directory in an unwritable place."""
    if directory.exists() and not directory.is_dir():
        fail(
            f"paths.outputs={directory} is a file, not a directory; set paths.outputs to a "
            "directory"
        )
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as exc:
        fixes = WRITE_ERRNOS | {
            errno.ENOTDIR: "set paths.outputs to a directory, not a file",
            errno.ENOENT: "set paths.outputs to a directory on a real file system",
            errno.EINVAL: "set paths.outputs to a directory on a real file system",
        }
        if exc.errno not in fixes:
            raise
        fail(f"paths.outputs={directory} is not writable ({exc.strerror}); {fixes[exc.errno]}")

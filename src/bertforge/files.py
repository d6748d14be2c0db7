"""Writing files so that readers see the whole file or none of it: the one atomic-write helper.

Every writer (artifacts, tokenizer files, embeddings, checkpoints, the metrics CSV) writes to
`.<name>.<pid>.tmp` beside its target, fsyncs it and renames it into place; a failure removes
the temporary file and leaves the previous target as it was. Temporary files of writers that
were killed (the pid is gone) are removed by `remove_dead_temp_files`.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def temporary_name(path: Path) -> Path:
    """Where `path` is written before it is renamed into place: the same directory (a rename
    across file systems is a copy, not atomic), a name that marks it as a leftover."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """Yield the temporary path to write (and close); on success fsync it, rename it over
    `path` and fsync the directory; on any failure (full disk, Ctrl-C) remove it and leave
    `path` untouched."""
    path = Path(path)
    tmp = temporary_name(path)
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_directory(path.parent)


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write `data` to a temporary file beside `path`, fsync it and rename it into place."""
    with replacing(path) as tmp, open(tmp, "wb") as f:
        f.write(data.encode("utf-8") if isinstance(data, str) else data)


def write_json_atomic(path: Path, obj: Any) -> None:
    write_atomic(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def remove_dead_temp_files(directory: Path, *names: str) -> None:
    """Remove `.<name>.<pid>.tmp` files (for each glob pattern in `names`) whose writer is
    gone: they were cut short by a kill and would stay beside a finished result forever.
    Those of a live process (another run writing the same directory) are kept."""
    for name in names:
        for tmp in Path(directory).glob(f".{name}.*.tmp"):
            pid = tmp.name.rsplit(".", 2)[-2]
            if pid.isdigit() and int(pid) != os.getpid() and not process_alive(int(pid)):
                tmp.unlink(missing_ok=True)


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True

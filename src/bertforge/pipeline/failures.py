"""What the entry points print when a run fails for a reason outside its input: a write the
file system refused (full, quota, size limit, read-only, permissions) or Ctrl-C.

    error: cannot write <file>: No space left on device; <mount> is full (0 B free of 20 MB),
    the file system of paths.outputs=<dir>: free space there or set paths.outputs to ...

The message names the file, the file system it is on (its mount point) with the space left
there, and the fix that matches that file system: paths.outputs when it holds the outputs,
TMPDIR when it is the temporary directory's and not the outputs', else the space itself.
"""

from __future__ import annotations

import contextlib
import errno
import os
import resource
import sys
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, NoReturn

from omegaconf.errors import OmegaConfBaseException

from bertforge.errors import BertforgeError
from bertforge.pipeline.overrides import fail, omegaconf_message
from bertforge.pipeline.stage import BuildContext

EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for Ctrl-C
FULL = {errno.ENOSPC: "full", errno.EDQUOT: "over your quota"}
DENIED = (errno.EACCES, errno.EPERM)
WRITE_ERRNOS = (*FULL, errno.EFBIG, *DENIED, errno.EROFS)
NOT_COMPLETE = "(the unfinished artifact is not marked complete)"


@contextlib.contextmanager
def one_line_failures(cfg: Any) -> Iterator[None]:
    """What an entry point's job raises, as the user sees it: bad input (ours, OmegaConf's) and
    a refused write as one line with exit status 2, Ctrl-C as one line with 130."""
    try:
        yield
    except BertforgeError as exc:
        fail(str(exc))
    except OmegaConfBaseException as exc:
        fail(omegaconf_message(exc))
    except OSError as exc:
        message = write_error_message(exc, configured_outputs(cfg))
        if message is None:
            raise
        fail(message)
    except KeyboardInterrupt as exc:
        exit_interrupted(exc, configured_outputs(cfg))


def configured_outputs(cfg: Any) -> Path | None:
    """`paths.outputs` of a composed config (DictConfig or dataclass), None if unreadable."""
    try:
        paths = cfg["paths"] if isinstance(cfg, Mapping) else cfg.paths
        outputs = paths["outputs"] if isinstance(paths, Mapping) else paths.outputs
        return Path(str(outputs)).expanduser().resolve() if outputs else None
    except Exception:  # an unresolvable interpolation must not hide the original error
        return None


def mount_point(path: Path) -> Path:
    """The mount point of the file system that holds `path` (or would, once created)."""
    path = Path(os.path.realpath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    while not os.path.ismount(path):
        path = path.parent
    return path


def space(path: Path) -> tuple[int, int]:
    """(bytes free to unprivileged users, total bytes) of the file system at `path`."""
    stat = os.statvfs(path)
    return stat.f_bavail * stat.f_frsize, stat.f_blocks * stat.f_frsize


def human_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.3g} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def _under(path: Path, directory: Path | None) -> bool:
    if directory is None:
        return False
    try:
        Path(os.path.realpath(path)).relative_to(os.path.realpath(directory))
    except ValueError:
        return False
    return True


def _fullest(candidates: list[Path]) -> Path:
    """Of several directories, the one whose file system has the smallest share free."""

    def share_free(path: Path) -> float:
        free, total = space(mount_point(path))
        return free / total if total else 0.0

    return min(candidates, key=share_free)


def write_error_message(
    exc: OSError, outputs: Path | None, tmpdir: Path | None = None
) -> str | None:
    """One line for an OSError of a write the user can fix, or None for any other error.

    `outputs`: paths.outputs; `tmpdir`: the temporary directory (default: tempfile's, i.e.
    $TMPDIR). Without a file name in the error (a failed write() names none), a full disk is
    looked for on the file systems of both and the fuller one is named."""
    if exc.errno not in WRITE_ERRNOS:
        return None
    tmpdir = Path(tmpdir or tempfile.gettempdir())
    if exc.filename is not None:
        target = Path(os.fsdecode(exc.filename))
        named = str(target)
    else:
        candidates = [p for p in (outputs, tmpdir) if p is not None]
        target = _fullest(candidates) if exc.errno in FULL else candidates[0]
        named = "a file"
    mount = mount_point(target)
    free, total = space(mount)
    on_outputs = outputs is not None and mount == mount_point(outputs)
    on_tmp = mount == mount_point(tmpdir)
    roles = [f"paths.outputs={outputs}"] if on_outputs else []
    roles += [f"the temporary directory TMPDIR={tmpdir}"] if on_tmp else []
    holds = f"the file system of {' and '.join(roles)}" if roles else "a file system"
    head = f"cannot write {named}: {exc.strerror or os.strerror(exc.errno)}; "

    if exc.errno in FULL:
        state = f"{mount} is {FULL[exc.errno]} ({human_bytes(free)} free of {human_bytes(total)})"
        fix = _fix_for_space(on_outputs, on_tmp, outputs)
        return f"{head}{state}, {holds}: free space there{fix} {NOT_COMPLETE}"
    if exc.errno == errno.EFBIG:
        limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
        if limit != resource.RLIM_INFINITY:
            why = f"the file size limit (ulimit -f) of {human_bytes(limit)} was reached"
            return f"{head}{why}; raise the limit (ulimit -f unlimited) {NOT_COMPLETE}"
        why = f"the file system at {mount} allows no larger file"
        return f"{head}{why}; set paths.outputs to a directory on another one {NOT_COMPLETE}"
    if exc.errno == errno.EROFS:
        head += f"{mount} is mounted read-only ({holds}); "
        inside_outputs, inside_tmp = on_outputs, on_tmp
    else:  # permissions are per directory
        inside_outputs = _under(target, outputs)
        inside_tmp = not inside_outputs and _under(target, tmpdir)
    if inside_outputs:
        fix = "set paths.outputs to a directory you can write to"
    elif inside_tmp:
        fix = "set TMPDIR to a directory you can write to"
    else:
        fix = f"make {target.parent} writable"
    return f"{head}{fix} {NOT_COMPLETE}"


def _fix_for_space(on_outputs: bool, on_tmp: bool, outputs: Path | None) -> str:
    if on_outputs and on_tmp:
        return " or set paths.outputs and TMPDIR to directories on a disk with room"
    if on_outputs:
        return " or set paths.outputs to a directory on a disk with room"
    if not on_tmp:
        return ""
    # only TMPDIR's file system is full: the outputs' disk may well have room
    suggestion = ""
    if outputs is not None:
        free, _ = space(mount_point(outputs))
        suggestion = f", e.g. TMPDIR={outputs / 'tmp'} ({human_bytes(free)} free there)"
    return f" or set TMPDIR to a directory on a disk with room{suggestion}"


def interrupt_message(exc: KeyboardInterrupt, outputs: Path | None) -> str:
    """`interrupted: <stage> stopped at step N; rerun the same command to resume from <ckpt>`.

    For an interrupt outside training (a `TrainingInterrupted` from bertforge.lit.trainer
    carries the step and checkpoint), the stage being built is named when it can be found."""
    from bertforge.lit.trainer import TrainingInterrupted

    if isinstance(exc, TrainingInterrupted):
        stage = _stage_of(exc.root_dir, outputs)
        where = f"{stage} stopped at step {exc.step}"
        if exc.checkpoint is None:
            return f"interrupted: {where} before its first checkpoint; nothing was saved yet, " + (
                "rerun the same command to start it again"
            )
        step = "" if exc.checkpoint_step is None else f" (step {exc.checkpoint_step})"
        return f"interrupted: {where}; rerun the same command to resume from {exc.checkpoint}{step}"
    stage = _stage_in_traceback(exc)
    where = f"{stage} stopped before it was complete" if stage else "stopped"
    return (
        f"interrupted: {where}; nothing of it was saved, rerun the same command to build it "
        "again (complete stages are reused)"
    )


def _stage_of(root_dir: Path, outputs: Path | None) -> str:
    """The stage whose artifact directory (`<outputs>/artifacts/<stage>/<hash>/...`) holds
    `root_dir`."""
    if outputs is not None:
        try:
            return Path(root_dir).resolve().relative_to(outputs / "artifacts").parts[0]
        except (ValueError, IndexError):
            pass
    return Path(root_dir).name


def _stage_in_traceback(exc: BaseException) -> str | None:
    """The stage of the innermost BuildContext on the interrupted call stack, if any."""
    stage, tb = None, exc.__traceback__
    while tb is not None:
        for value in tb.tb_frame.f_locals.values():
            if isinstance(value, BuildContext):
                stage = value.stage
        tb = tb.tb_next
    return stage


def exit_interrupted(exc: KeyboardInterrupt, outputs: Path | None) -> NoReturn:
    """Print `interrupt_message` on stderr and exit with status 130."""
    print(interrupt_message(exc, outputs), file=sys.stderr, flush=True)
    sys.exit(EXIT_INTERRUPTED)

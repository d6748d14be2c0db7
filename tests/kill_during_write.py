"""Run an entry point and SIGKILL it in the middle of writing an artifact file.

    python tests/kill_during_write.py <module>:<function or Class.method> <script> [overrides]

After the named writer returns, the newest file under `<paths.outputs>/artifacts` is cut to half
its size (a write the kernel had only partly done) and the process kills itself with SIGKILL:
no exception handler, `finally` or atexit hook runs, as when a scheduler or the OOM killer
ends a job. The override `paths.outputs=...` is required.
"""

from __future__ import annotations

import importlib
import os
import runpy
import signal
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def newest_file(root: Path) -> Path:
    files = [p for p in root.rglob("*") if p.is_file() and ".locks" not in p.parts]
    return max(files, key=lambda p: p.stat().st_mtime_ns)


def main() -> None:
    target, script, *overrides = sys.argv[1:]
    module_name, qualname = target.split(":")
    outputs = Path(next(o.split("=", 1)[1] for o in overrides if o.startswith("paths.outputs=")))
    owner = importlib.import_module(module_name)
    *parents, name = qualname.split(".")
    for parent in parents:
        owner = getattr(owner, parent)
    writer = getattr(owner, name)

    def write_then_die(*args, **kwargs):
        writer(*args, **kwargs)
        path = newest_file(outputs / "artifacts")
        os.truncate(path, path.stat().st_size // 2)
        print(f"killed after cutting {path}", file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)

    setattr(owner, name, write_then_die)
    sys.argv = [str(REPO / "pipelines" / script), *overrides]
    runpy.run_path(sys.argv[0], run_name="__main__")


if __name__ == "__main__":
    main()

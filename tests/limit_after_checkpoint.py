"""Run an entry point whose disk "fills up" once its first training checkpoint exists.

    python tests/limit_after_checkpoint.py <max bytes> <script> [overrides]

A thread waits for `<paths.outputs>/artifacts/*/*/checkpoints/last.ckpt`, then lowers the
process' file size limit (RLIMIT_FSIZE, as `ulimit -f` does) to `<max bytes>`, below the size of
a checkpoint: from then on the kernel refuses every write that would grow a file past it (EFBIG),
as a full disk refuses a write (ENOSPC). It prints `limited: <sha256 of last.ckpt>` on stderr:
the last checkpoint that could be written. The override `paths.outputs=...` is
required.
"""

from __future__ import annotations

import hashlib
import resource
import runpy
import signal
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def limit_once_checkpointed(outputs: Path, max_bytes: int) -> None:
    while not (found := list(outputs.glob("artifacts/*/*/checkpoints/last.ckpt"))):
        time.sleep(0.001)
    resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, max_bytes))
    digest = None  # a rename already under way may still land: wait until the file holds still
    while digest != (digest := hashlib.sha256(found[0].read_bytes()).hexdigest()):
        time.sleep(0.05)
    sys.stderr.write(f"limited: {digest}\n")  # one write: never split by the main thread's lines
    sys.stderr.flush()


def main() -> None:
    max_bytes, script, *overrides = sys.argv[1:]
    outputs = Path(next(o.split("=", 1)[1] for o in overrides if o.startswith("paths.outputs=")))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead
    watcher = threading.Thread(
        target=limit_once_checkpointed, args=(outputs, int(max_bytes)), daemon=True
    )
    watcher.start()
    sys.argv = [str(REPO / "pipelines" / script), *overrides]
    try:
        runpy.run_path(sys.argv[0], run_name="__main__")
    finally:  # a fast run can fail its next write before the watcher has printed the digest
        watcher.join(timeout=30)


if __name__ == "__main__":
    main()

"""The stage artifact store: one directory per (stage, hash of what determines the result).

    <root>/<stage>/<hash>/            the artifact; complete only once manifest.json exists
    <root>/<stage>/.locks/<hash>.lock a filelock held while the artifact is being built

The hash covers the config slice that determines a stage's result plus the hashes of its
upstream artifacts, never loggers, progress bars or paths. `manifest.json` is written last and
atomically (temp file, fsync, rename), so a killed build never leaves a directory that looks
complete; the next build under the lock sees no manifest and builds again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import platform
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from bertforge.errors import DataError
from bertforge.files import write_json_atomic
from bertforge.pipeline.distributed import global_rank, is_rank_zero
from bertforge.pipeline.runs import code_version

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
HASH_LENGTH = 12
TRACKED_PACKAGES = (
    "bertforge", "torch", "lightning", "tokenizers", "datasets", "transformers", "hydra-core",
    "wandb", "numpy",
)  # fmt: skip


@dataclass(frozen=True)
class Artifact:
    """A complete stage output: its directory and manifest."""

    stage: str
    hash: str
    path: Path
    manifest: dict[str, Any]
    reused: bool = False

    @property
    def metrics(self) -> dict[str, float]:
        return self.manifest.get("metrics", {})


@dataclass
class Build:
    """A build in progress, handed to the builder: where to write, and extra manifest fields."""

    stage: str
    hash: str
    path: Path
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. {"wandb_runs": [...]}


def config_hash(config: Mapping[str, Any], upstream: Mapping[str, str]) -> str:
    """A short, stable hash of a JSON-able config slice and upstream (stage -> hash) pairs."""
    payload = json.dumps({"config": config, "upstream": dict(upstream)}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:HASH_LENGTH]


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in TRACKED_PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    return versions


class ArtifactStore:
    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    def path_for(self, stage: str, hash_: str) -> Path:
        return self.root / stage / hash_

    def lookup(self, stage: str, hash_: str) -> Artifact | None:
        """The complete artifact for (stage, hash), or None. Without a manifest: None."""
        path = self.path_for(stage, hash_)
        try:
            manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
        except (FileNotFoundError, NotADirectoryError):
            return None
        except (json.JSONDecodeError, UnicodeDecodeError):
            manifest = None
        if not isinstance(manifest, dict) or manifest.get("hash") != hash_:
            log.warning("ignoring %s: its manifest is damaged; it will be rebuilt", path)
            return None
        return Artifact(stage, hash_, path, manifest, reused=True)

    def build(
        self,
        stage: str,
        config: Mapping[str, Any],
        upstream: Mapping[str, Artifact],
        builder: Callable[[Build], Mapping[str, float]],
        force: bool = False,
        lock_timeout: float = -1,
        distributed: bool = False,
    ) -> Artifact:
        """Reuse the complete artifact for this config, or build it under a lock.

        `builder(build)` writes its files into `build.path` and returns flat numeric metrics; the
        manifest is written after it returns. Concurrent callers with the same hash wait on the
        lock and then reuse what the first one built.

        Only global rank 0 builds and writes manifests. On other ranks a `distributed` stage
        (one whose builder trains with all ranks) runs its builder alongside rank 0 without lock
        or manifest; any other stage is waited for until rank 0 has completed it.
        """
        upstream_hashes = {name: art.hash for name, art in upstream.items()}
        hash_ = config_hash(config, upstream_hashes)
        if not force and (found := self.lookup(stage, hash_)):
            log.info("reusing %s artifact %s (%s)", stage, hash_, found.path)
            return found
        if not is_rank_zero():
            return self._follow_rank_zero(stage, hash_, upstream, builder, distributed)

        lock_dir = self.root / stage / ".locks"
        self._make_dir(lock_dir)
        lock = FileLock(lock_dir / f"{hash_}.lock", timeout=lock_timeout)
        with self._locked(lock, stage, hash_):
            if not force and (found := self.lookup(stage, hash_)):
                log.info("reusing %s artifact %s built concurrently", stage, hash_)
                return found
            path = self.path_for(stage, hash_)
            if force:  # start over; otherwise an interrupted build's files (last.ckpt) are kept
                shutil.rmtree(path, ignore_errors=True)
            self._make_dir(path)
            build = Build(stage, hash_, path)
            log.info("building %s artifact %s in %s", stage, hash_, path)
            started = time.perf_counter()
            metrics = dict(builder(build))
            manifest = {
                "stage": stage,
                "hash": hash_,
                "config": config,
                "upstream": upstream_hashes,
                "metrics": {k: float(v) for k, v in metrics.items()},
                "seconds": round(time.perf_counter() - started, 3),
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "versions": package_versions(),
                "code": code_version(),
                **build.extra,
            }
            write_json_atomic(path / MANIFEST, manifest)
        return Artifact(stage, hash_, path, manifest, reused=False)

    def _make_dir(self, path: Path) -> None:
        """mkdir -p, with a one-line error when a file stands where a directory must be."""
        try:
            path.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            blocker = next(p for p in (path, *path.parents) if p.exists() and not p.is_dir())
            raise DataError(
                f"{blocker} is a file where the artifact store needs a directory; move or "
                "delete it (or set paths.outputs to another directory)"
            ) from None

    @staticmethod
    @contextlib.contextmanager
    def _locked(lock: FileLock, stage: str, hash_: str):
        """Hold `lock`, saying so when another process holds it. It is an OS lock (flock): a
        killed holder's lock is released by the kernel, so a stale lock file never blocks."""
        try:
            lock.acquire(timeout=0)
        except Timeout:
            log.info("waiting for another process that is building %s %s", stage, hash_)
            lock.acquire()
        try:
            yield
        finally:
            lock.release()

    def _follow_rank_zero(self, stage, hash_, upstream, builder, distributed) -> Artifact:
        """Train alongside rank 0 (a distributed stage) or not, then wait until rank 0 has
        written the artifact: the next stage reads its files (a rank that went on at once
        read the pretrain artifact before rank 0 had written model_config.json)."""
        if distributed:
            path = self.path_for(stage, hash_)
            path.mkdir(parents=True, exist_ok=True)
            builder(Build(stage, hash_, path))
        log.info("rank %d waits for rank 0 to complete %s %s", global_rank(), stage, hash_)
        parent = os.getppid()
        while (found := self.lookup(stage, hash_)) is None:
            if os.getppid() != parent:  # the launching process (rank 0 or the agent) is gone
                raise DataError(f"rank 0 stopped before completing {stage} {hash_}; see its log")
            time.sleep(0.5)
        return found

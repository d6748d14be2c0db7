"""Content fingerprints of the files a stage reads: their identity in artifact hashes.

A file's fingerprint is its name and the SHA-256 of its bytes; a directory's or a glob's is the
SHA-256 of its files' relative names and digests. The absolute location never enters: the same
bytes copied elsewhere give the same fingerprint, and changed bytes a new one. Digests are
cached in a SQLite table keyed by (absolute path, size, mtime, inode), so an unchanged 10 GB
corpus is read once, not at every run (size and mtime are the fast pre-check, the digest the
identity).
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import os
import sqlite3
from pathlib import Path
from typing import Any

from bertforge.errors import DataError

HUB_NAME_HINT = "a Hub name is hashed by its name only; download it and pass its directory"


class Fingerprints:
    """Fingerprints with a digest cache in `cache_file` (None: no cache)."""

    def __init__(self, cache_file: Path | None = None) -> None:
        self.cache_file = cache_file
        self._db: sqlite3.Connection | None = None
        self.files_hashed = 0  # files whose bytes were read (cache misses), for tests and logs

    def _connection(self) -> sqlite3.Connection | None:
        if self.cache_file is None:
            return None
        if self._db is None:
            self.cache_file.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.cache_file, timeout=60, isolation_level=None)
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS digests (path TEXT PRIMARY KEY, size INTEGER, "
                "mtime_ns INTEGER, inode INTEGER, sha256 TEXT)"
            )
        return self._db

    def file_digest(self, path: Path) -> str:
        """SHA-256 of a file's bytes, from the cache while size, mtime and inode are unchanged."""
        path = path.resolve()
        stat = path.stat()
        key = (str(path), stat.st_size, stat.st_mtime_ns, stat.st_ino)
        db = self._connection()
        if db is not None:
            row = db.execute(
                "SELECT sha256 FROM digests WHERE path=? AND size=? AND mtime_ns=? AND inode=?",
                key,
            ).fetchone()
            if row:
                return row[0]
        sha = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                sha.update(chunk)
        digest = sha.hexdigest()
        self.files_hashed += 1
        if db is not None:
            with contextlib.suppress(sqlite3.OperationalError):  # a read-only cache still works
                db.execute("INSERT OR REPLACE INTO digests VALUES (?, ?, ?, ?, ?)", (*key, digest))
        return digest

    def of(self, key: str, value: str, kind: str = "path") -> dict[str, Any]:
        """The fingerprint of the config value `value` of `key`: a file, directory or glob
        (`kind` "path"), or an HF checkpoint directory or Hub name (`kind` "hf_model")."""
        path = Path(value).expanduser()
        if path.is_file():
            return {"file": path.name, "sha256": self.file_digest(path)}
        if path.is_dir():
            return self._files(sorted(p for p in path.rglob("*") if p.is_file()), path)
        if kind == "path" and glob.has_magic(value):
            matches = sorted(Path(p) for p in glob.glob(os.path.expanduser(value), recursive=True))
            matches = [p for p in matches if p.is_file()]
            if matches:
                base = Path(os.path.commonpath([p.parent for p in matches]))
                return self._files(matches, base)
            raise DataError(f"{key}={value} matches no files; check the glob pattern")
        if kind == "hf_model" and not value.startswith((".", "/", "~")) and value.count("/") <= 1:
            return {"hub": value, "note": HUB_NAME_HINT}
        raise DataError(
            f"{key}={value} does not exist; point {key} at an existing file or directory"
        )

    def _files(self, files: list[Path], base: Path) -> dict[str, Any]:
        lines = "".join(f"{p.relative_to(base).as_posix()}\t{self.file_digest(p)}\n" for p in files)
        return {"files": len(files), "sha256": hashlib.sha256(lines.encode()).hexdigest()}

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

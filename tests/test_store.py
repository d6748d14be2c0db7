"""The artifact store: hashing, reuse, atomic completion, locking across processes."""

from __future__ import annotations

import json
import multiprocessing
import time
from pathlib import Path

import pytest

from bertforge.pipeline.store import MANIFEST, ArtifactStore, config_hash


def counting_builder(calls: list):
    def build(ctx):
        calls.append(ctx.hash)
        (ctx.path / "result.txt").write_text("done")
        return {"score": 1}

    return build


def test_same_config_is_reused(tmp_path):
    store, calls = ArtifactStore(tmp_path), []
    first = store.build("stage", {"a": 1}, {}, counting_builder(calls))
    second = store.build("stage", {"a": 1}, {}, counting_builder(calls))
    assert len(calls) == 1
    assert not first.reused and second.reused
    assert second.path == first.path and second.metrics == {"score": 1.0}


def test_changed_config_or_upstream_gives_a_new_hash(tmp_path):
    store, calls = ArtifactStore(tmp_path), []
    up = store.build("up", {"x": 1}, {}, counting_builder(calls))
    other_up = store.build("up", {"x": 2}, {}, counting_builder(calls))
    a = store.build("down", {"a": 1}, {"up": up}, counting_builder(calls))
    b = store.build("down", {"a": 2}, {"up": up}, counting_builder(calls))
    c = store.build("down", {"a": 1}, {"up": other_up}, counting_builder(calls))
    assert len({a.hash, b.hash, c.hash}) == 3 and len(calls) == 5
    assert config_hash({"b": 1, "a": 2}, {}) == config_hash({"a": 2, "b": 1}, {})


def test_manifest_records_lineage_and_versions(tmp_path):
    store = ArtifactStore(tmp_path)
    up = store.build("up", {"x": 1}, {}, counting_builder([]))
    art = store.build("down", {"a": 1}, {"up": up}, counting_builder([]))
    manifest = json.loads((art.path / MANIFEST).read_text())
    assert manifest["stage"] == "down" and manifest["hash"] == art.hash
    assert manifest["config"] == {"a": 1} and manifest["upstream"] == {"up": up.hash}
    assert manifest["metrics"] == {"score": 1.0}
    assert {"created", "versions", "seconds"} <= set(manifest)
    assert "torch" in manifest["versions"] and "python" in manifest["versions"]


def test_directory_without_manifest_is_never_reused(tmp_path):
    store, calls = ArtifactStore(tmp_path), []
    art = store.build("stage", {"a": 1}, {}, counting_builder(calls))
    (art.path / MANIFEST).unlink()  # as if the build had been killed before completing
    assert store.lookup("stage", art.hash) is None
    rebuilt = store.build("stage", {"a": 1}, {}, counting_builder(calls))
    assert len(calls) == 2 and not rebuilt.reused


@pytest.mark.parametrize("text", ["[1, 2]", '"done"', "null", '{"stage": "stage", "ha', ""])
def test_damaged_or_non_object_manifest_is_rebuilt(tmp_path, text):
    """A manifest that is not a JSON object (a list, a string, cut short) used to raise an
    AttributeError traceback; it counts as absent: the artifact is rebuilt."""
    store, calls = ArtifactStore(tmp_path), []
    art = store.build("stage", {"a": 1}, {}, counting_builder(calls))
    (art.path / MANIFEST).write_text(text)
    assert store.lookup("stage", art.hash) is None
    rebuilt = store.build("stage", {"a": 1}, {}, counting_builder(calls))
    assert len(calls) == 2 and not rebuilt.reused
    assert json.loads((rebuilt.path / MANIFEST).read_text())["hash"] == art.hash


def test_failed_build_leaves_nothing_complete(tmp_path):
    store = ArtifactStore(tmp_path)

    def failing(ctx):
        (ctx.path / "half.bin").write_bytes(b"x")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        store.build("stage", {"a": 1}, {}, failing)
    (path,) = (tmp_path / "stage").glob("[0-9a-f]*")
    assert not (path / MANIFEST).exists()


def test_force_rebuilds_from_scratch(tmp_path):
    store, calls = ArtifactStore(tmp_path), []
    art = store.build("stage", {"a": 1}, {}, counting_builder(calls))
    (art.path / "stale.txt").write_text("old")
    again = store.build("stage", {"a": 1}, {}, counting_builder(calls), force=True)
    assert len(calls) == 2 and not again.reused and not (again.path / "stale.txt").exists()


def slow_build_in_process(root: str, log: str) -> None:
    def build(ctx):
        with open(log, "a") as f:
            f.write("built\n")
        time.sleep(1.0)
        return {}

    ArtifactStore(root).build("stage", {"shared": True}, {}, build)


def test_racing_processes_build_once(tmp_path):
    log = tmp_path / "builds.log"
    context = multiprocessing.get_context("spawn")
    procs = [
        context.Process(target=slow_build_in_process, args=(str(tmp_path / "store"), str(log)))
        for _ in range(3)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert log.read_text().count("built") == 1
    assert len(list(Path(tmp_path / "store" / "stage").glob("*/manifest.json"))) == 1

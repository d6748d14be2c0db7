"""Faults injected for real: a kill in the middle of writing each kind of artifact, processes
racing for the same missing stage, a lock left by a killed process, an unwritable output
directory, a full disk, damaged checkpoints. (Kills during training: test_resume.py.)"""

from __future__ import annotations

import csv
import errno
import hashlib
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from bertforge.errors import DataError
from conftest import REPO, TINY, child_env, run_entry_point, start_entry_point

pytestmark = pytest.mark.slow

MANIFEST = "manifest.json"
EXTRACT = [  # extract from the pretrained encoder: no fine-tuning upstream
    "extract.source=pretrain", "extract.words=[said]", "visualize.n_jobs=1",
    "visualize.compare_methods=false", "visualize.n_iter=250",
    "visualize.early_exaggeration_iter=100", "visualize.snapshots=[100]",
    "visualize.perplexity=10",
]  # fmt: skip


def ok(script: str, *overrides: str, timeout: float = 300) -> subprocess.CompletedProcess:
    result = run_entry_point(script, *TINY, *EXTRACT, *overrides, timeout=timeout)
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def manifests(outputs: Path, stage: str) -> list[Path]:
    return list((outputs / "artifacts" / stage).glob(f"*/{MANIFEST}"))


@pytest.fixture(scope="module")
def upstream(tmp_path_factory) -> Path:
    """tokenizer, pretrain_data, pretrain and extract artifacts, built once and copied."""
    outputs = tmp_path_factory.mktemp("upstream")
    ok("extract.py", f"paths.outputs={outputs}")
    return outputs


def copy_without(upstream: Path, target: Path, *stages: str) -> Path:
    shutil.copytree(upstream, target)
    for stage in stages:
        shutil.rmtree(target / "artifacts" / stage, ignore_errors=True)
    return target


# --- A kill in the middle of a write -------------------------------------------------------


def readable_tokenizer(artifact: Path) -> None:
    from tokenizers import Tokenizer

    assert Tokenizer.from_file(str(artifact / "tokenizer.json")).get_vocab_size() > 100


def readable_export(artifact: Path) -> None:
    from bertforge.hf import read_hf_checkpoint

    state_dict, config = read_hf_checkpoint(artifact / "hf")
    assert config.hidden_size == 128 and state_dict


def readable_embeddings(artifact: Path) -> None:
    from bertforge.analysis.embed import load_embeddings

    X, rows = load_embeddings(artifact / "sentences")
    assert len(X) == len(rows) > 0


def readable_figures(artifact: Path) -> None:
    from PIL import Image

    pngs = list(artifact.rglob("*.png"))
    assert pngs
    for png in pngs:
        with Image.open(png) as image:
            image.load()  # a cut PNG raises here


KILLS = {  # writer patched to die right after writing, the stage, how to read it back
    "tokenizer-save": ("bertforge.data.tokenizer:save_tokenizer", "tokenizer.py", "tokenizer",
                       readable_tokenizer, ("tokenizer", "pretrain_data", "pretrain", "extract")),
    "hf-export": ("bertforge.stages.pretrain:export_hf", "pretrain.py", "pretrain",
                  readable_export, ("pretrain", "extract")),
    "embeddings": ("bertforge.analysis.embed:_Output.commit", "extract.py", "extract",
                   readable_embeddings, ("extract",)),
    "figure": ("bertforge.analysis.layouts:save_figure", "visualize.py", "visualize",
               readable_figures, ()),
}  # fmt: skip


@pytest.mark.parametrize("kind", list(KILLS))
def test_kill_while_writing_leaves_nothing_complete_and_the_rerun_rebuilds(
    kind, upstream, tmp_path
):
    writer, script, stage, read_back, missing = KILLS[kind]
    outputs = copy_without(upstream, tmp_path / "outputs", *missing)
    overrides = [*TINY, *EXTRACT, f"paths.outputs={outputs}"]
    killed = subprocess.run(
        [sys.executable, str(REPO / "tests" / "kill_during_write.py"), writer, script, *overrides],
        capture_output=True, text=True, timeout=300, cwd=REPO, env=child_env(),
    )  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert "killed after cutting" in killed.stderr
    (partial,) = (outputs / "artifacts" / stage).glob("[0-9a-f]*")
    assert not (partial / MANIFEST).exists()  # a cut file, but nothing that looks complete
    assert list((outputs / "artifacts" / stage / ".locks").glob("*.lock"))  # the dead one's

    ok(script, f"paths.outputs={outputs}", timeout=240)  # the stale lock does not block
    (manifest,) = manifests(outputs, stage)
    read_back(manifest.parent)


# --- Races and locks -----------------------------------------------------------------------


def test_four_processes_build_a_missing_stage_once_and_the_others_reuse_it(tmp_path):
    outputs = tmp_path / "outputs"
    overrides = [*TINY, "trainer.num_threads=1", f"paths.outputs={outputs}"]
    processes = [start_entry_point("pretrain.py", *overrides, log=True) for _ in range(4)]
    logs = [p.communicate(timeout=600)[0] for p in processes]
    assert [p.returncode for p in processes] == [0, 0, 0, 0], [log[-2000:] for log in logs]
    text = "\n".join(logs)
    for stage in ("tokenizer", "pretrain_data", "pretrain"):
        assert text.count(f"building {stage} artifact") == 1, stage
        assert len(list((outputs / "artifacts" / stage).glob("[0-9a-f]*"))) == 1
        reused = text.count(f"reusing {stage} artifact")
        assert reused == 3, (stage, reused)
    assert "waiting for another process that is building" in text


def test_a_lock_held_by_a_killed_process_does_not_deadlock(tmp_path):
    """Hold a stage's lock in another process, SIGKILL it, then build: no waiting."""
    from filelock import FileLock

    from bertforge.pipeline.store import ArtifactStore, config_hash

    store = ArtifactStore(tmp_path)
    lock = tmp_path / "tokenizer" / ".locks" / f"{config_hash({'x': 1}, {})}.lock"
    lock.parent.mkdir(parents=True)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time, filelock; held = filelock.FileLock(sys.argv[1]);"
         " held.acquire(); print('held', flush=True); time.sleep(600)", str(lock)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(TimeoutError):  # while it lives, the lock is really held
        FileLock(lock, timeout=0.2).acquire()
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert lock.exists()  # the file stays behind; the kernel dropped the lock with the process
    artifact = store.build("tokenizer", {"x": 1}, {}, lambda ctx: {"m": 1.0}, lock_timeout=10)
    assert artifact.metrics == {"m": 1.0}


# --- Unwritable and full disks -------------------------------------------------------------


def without_root_override() -> list[str]:
    """A command prefix under which permission bits bind: for root, drop the capabilities
    that let it write anywhere (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH)."""
    if os.geteuid() != 0:
        return []
    if not shutil.which("setpriv"):
        pytest.skip("running as root without util-linux's setpriv: permissions cannot bind")
    caps = "-dac_override,-dac_read_search"
    return ["setpriv", f"--inh-caps={caps}", f"--bounding-set={caps}"]


def test_unwritable_output_directory_is_one_line_and_writes_nothing(tmp_path):
    readonly = tmp_path / "readonly"
    readonly.mkdir(mode=0o555)
    try:
        result = subprocess.run(
            [*without_root_override(), sys.executable, str(REPO / "pipelines" / "pretrain.py"),
             *TINY, f"paths.outputs={readonly / 'outputs'}"],
            capture_output=True, text=True, timeout=120, cwd=REPO,
        )  # fmt: skip
    finally:
        readonly.chmod(0o755)
    assert result.returncode == 2, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: paths.outputs=") and "not writable" in last, last
    assert "set paths.outputs to a directory you can write to" in last
    assert not list(readonly.iterdir())


def limit_file_size(max_bytes: int):
    def limit() -> None:  # in the child: a file may not grow past max_bytes, like a full disk
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, max_bytes))

    return limit


def test_full_disk_is_one_line_marks_nothing_complete_and_the_rerun_finishes(upstream, tmp_path):
    outputs = copy_without(upstream, tmp_path / "outputs", "pretrain", "extract")
    overrides = [*TINY, f"paths.outputs={outputs}", "logger=csv"]
    result = subprocess.run(
        [sys.executable, str(REPO / "pipelines" / "pretrain.py"), *overrides],
        capture_output=True, text=True, timeout=300, cwd=REPO,
        preexec_fn=limit_file_size(256 * 1024),  # the checkpoint (~3 MB) cannot be written
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: cannot write ") and "File too large" in last, last
    assert "not marked complete" in last
    assert not manifests(outputs, "pretrain")
    ok("pretrain.py", f"paths.outputs={outputs}", "logger=csv")
    assert manifests(outputs, "pretrain")


def metric_rows(artifact: Path) -> list[dict[str, str]]:
    with open(artifact / "logs" / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def steps_of(rows: list[dict[str, str]], column: str) -> list[int]:
    return [int(row["step"]) for row in rows if row.get(column)]


def test_a_full_disk_at_a_later_checkpoint_keeps_the_last_good_one_and_the_rerun_resumes(
    upstream, tmp_path
):
    """The disk refuses writes once the first checkpoint exists (the file size limit drops to
    1 MB, below a 7 MB checkpoint). The last good last.ckpt must survive whole, the rerun must
    resume from it, and metrics.csv must hold every step once."""
    outputs = copy_without(upstream, tmp_path / "outputs", "pretrain", "extract")
    overrides = [
        *TINY, f"paths.outputs={outputs}", "pretrain.max_steps=16",
        "pretrain.checkpoint_every_n_steps=2", "pretrain.val_check_interval=5",
        "trainer.log_every_n_steps=1", "trainer.num_threads=1",
    ]  # fmt: skip
    failed = subprocess.run(
        [sys.executable, str(REPO / "tests" / "limit_after_checkpoint.py"), str(10**6),
         "pretrain.py", *overrides],
        capture_output=True, text=True, timeout=300, cwd=REPO, env=child_env(),
    )  # fmt: skip
    assert failed.returncode == 2, failed.stderr[-3000:]
    (sha,) = re.findall(r"^limited: ([0-9a-f]{64})$", failed.stderr, re.MULTILINE)
    (artifact,) = (outputs / "artifacts" / "pretrain").glob("[0-9a-f]*")
    checkpoint = artifact / "checkpoints" / "last.ckpt"
    # the watcher thread prints its digest once the file holds still: before or after the error
    lines = failed.stderr.strip().splitlines()
    *_, last = (line for line in lines if not line.startswith("limited:"))
    assert last.startswith(f"error: cannot write {checkpoint}: File too large;"), last
    assert "file size limit (ulimit -f) of 1 MB" in last and "not marked complete" in last

    assert hashlib.sha256(checkpoint.read_bytes()).hexdigest() == sha  # the old one, whole
    assert sorted(p.name for p in checkpoint.parent.iterdir()) == ["last.ckpt"]  # no temp left
    resumed_from = torch.load(checkpoint, weights_only=True)["global_step"]
    assert 2 <= resumed_from < 16
    before = metric_rows(artifact)
    assert not manifests(outputs, "pretrain")

    ok("pretrain.py", *overrides[len(TINY) :])
    after = metric_rows(artifact)
    # resumed, not retrained: the rows before the checkpoint's step are the first run's own
    # (their tokens/s figures would differ in a new run); the later ones were logged again
    first = [row for row in before if int(row["step"]) < resumed_from]
    assert [{key: row[key] for key in before[0]} for row in after[: len(first)]] == first
    for column in ("train/loss", "val/loss"):
        steps = steps_of(after, column)
        assert len(steps) == len(set(steps)), (column, steps)
    assert steps_of(after, "train/loss") == list(range(16))


SAVE_THEN_LIMIT = """
import resource, signal, sys, torch
from bertforge.lit.trainer import save_atomically
path = sys.argv[1]
save_atomically({"w": torch.zeros(100_000)}, path)  # 400 kB: fits
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))  # the disk "fills up"
try:
    save_atomically({"w": torch.ones(100_000)}, path)
except OSError as err:
    print(err.errno, err.filename)
"""


def test_a_checkpoint_write_the_disk_refuses_leaves_the_previous_file_whole(tmp_path):
    path = tmp_path / "checkpoints" / "last.ckpt"
    result = subprocess.run(
        [sys.executable, "-c", SAVE_THEN_LIMIT, str(path)],
        capture_output=True, text=True, timeout=120, env=child_env(),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == [str(errno.EFBIG), str(path)]  # the OSError, naming it
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.zeros(100_000))
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]  # no temporary file left


def test_temporary_checkpoints_of_killed_writers_are_removed_by_the_next_save(tmp_path):
    from bertforge.lit.trainer import save_atomically

    path = tmp_path / "last.ckpt"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        for pid in (dead.pid, alive.pid):
            path.with_name(f".last.ckpt.{pid}.tmp").write_bytes(b"cut short")
        save_atomically({"step": 3}, path)
        names = sorted(p.name for p in tmp_path.iterdir())
    finally:
        alive.kill()
        alive.wait()
    assert names == [f".last.ckpt.{alive.pid}.tmp", "last.ckpt"]  # a live writer's file stays
    assert torch.load(path, weights_only=True) == {"step": 3}


KILLED_EXTRACTION = """
import os, signal, sys
from bertforge.analysis.embed import _Output
_Output(sys.argv[1], [0, 2], 10, 4)  # the layer memory maps exist under temporary names
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_killed_extractions_temporary_files_are_removed_by_the_next_build(tmp_path):
    from bertforge.analysis.embed import extract_sentence_embeddings, load_embeddings
    from bertforge.config import TokenizerConfig
    from bertforge.data.tokenizer import train_tokenizer
    from bertforge.model import BertConfig, BertModel

    out = tmp_path / "sentences"
    killed = subprocess.Popen([sys.executable, "-c", KILLED_EXTRACTION, str(out)], env=child_env())
    assert killed.wait(timeout=120) == -signal.SIGKILL
    left = sorted(p.name for p in out.iterdir())
    assert left == [f".layer_{i}.npy.{killed.pid}.tmp" for i in (0, 2)]
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    live_tmp = out / f".metadata.jsonl.{alive.pid}.tmp"  # another extraction still writing
    live_tmp.write_text("{}\n")

    texts = ["the bank raised rates", "a river bank", "fans watched the match"] * 4
    tokenizer = train_tokenizer(texts, TokenizerConfig(vocab_size=60, min_frequency=1))
    torch.manual_seed(0)
    bert = BertModel(BertConfig(vocab_size=tokenizer.get_vocab_size(), hidden_size=16,
                                num_hidden_layers=2, num_attention_heads=2,
                                intermediate_size=32, max_position_embeddings=32))  # fmt: skip
    try:
        extract_sentence_embeddings(
            bert, tokenizer, texts, out_dir=out, layers=[0, 2], max_seq_length=32, progress=False
        )
        names = sorted(p.name for p in out.iterdir())
    finally:
        alive.kill()
        alive.wait()
    assert names == [live_tmp.name, "embeddings.json", "layer_0.npy", "layer_2.npy",
                     "metadata.jsonl"]  # fmt: skip
    X, rows = load_embeddings(out)
    assert X.shape == (12, 16) and len(rows) == 12


# --- Damaged files from earlier runs -------------------------------------------------------


def test_damaged_last_checkpoint_is_set_aside_and_training_starts_over(tmp_path):
    from bertforge.lit.trainer import last_checkpoint

    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir()
    torch.save({"global_step": 3}, checkpoints / "last.ckpt")
    assert last_checkpoint(tmp_path) == checkpoints / "last.ckpt"
    data = (checkpoints / "last.ckpt").read_bytes()
    (checkpoints / "last.ckpt").write_bytes(data[: len(data) // 2])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert last_checkpoint(tmp_path) is None
    assert "training from the start" in str(caught[0].message)
    assert (checkpoints / "last.ckpt.damaged").exists()


def test_truncated_weights_of_a_complete_artifact_name_the_rebuild(upstream, tmp_path):
    from bertforge.artifacts import load_pretrained
    from bertforge.pipeline.store import Artifact

    (artifact,) = (upstream / "artifacts" / "pretrain").glob("[0-9a-f]*")
    damaged = shutil.copytree(artifact, tmp_path / "pretrain")
    weights = damaged / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(DataError, match=r"is truncated or damaged .*rerun pipelines/pretrain\.py"):
        load_pretrained(Artifact("pretrain", artifact.name, damaged, {}))

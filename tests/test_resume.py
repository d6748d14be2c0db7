"""SIGKILL a training run at random points; the same command resumes it to the same result.

A killed pretraining or fine-tuning build keeps `last.ckpt` (weights, optimizer, scheduler, step,
RNG states, data position, W&B run id). Rerunning the command continues from it, continues the
same W&B run and, on CPU, ends with exactly the weights of a run that was never interrupted.
"""

from __future__ import annotations

import csv
import json
import os
import random
import re
import shutil
import signal
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from bertforge.data.resumable import ResumableLoader
from bertforge.pipeline.store import MANIFEST
from conftest import TINY, kill_group, run_entry_point, start_entry_point

pytestmark = pytest.mark.slow

PRETRAIN_STEPS = 40  # three kills of a few steps each never reach the end (a step: ~5 ms)
PRETRAIN = [
    *TINY, f"pretrain.max_steps={PRETRAIN_STEPS}", "pretrain.val_check_interval=5",
    "pretrain.checkpoint_every_n_steps=1", "logger=wandb", "run_name=resume",
]  # fmt: skip
FINETUNE = [
    *TINY, "finetune.seeds=[1,2]", "finetune.max_steps=10", "finetune.max_epochs=2",
    "finetune.checkpoint_every_n_steps=1", "logger=wandb", "run_name=resume",
]  # fmt: skip


def checkpoint_writes(pattern: str, root: Path) -> int:
    """A number that changes whenever a `last.ckpt` under `root` is (re)written."""
    return sum(p.stat().st_mtime_ns for p in root.glob(pattern) if p.is_file())


def kill_after_checkpoints(script, overrides, root: Path, pattern: str, n: int, rng) -> None:
    """Start the command, wait for `n` more checkpoint writes, sleep a random moment, SIGKILL."""
    process = start_entry_point(script, *overrides)
    seen, last = 0, checkpoint_writes(pattern, root)
    deadline = time.monotonic() + 240
    try:
        while seen < n:
            assert process.poll() is None, f"finished before the kill: {process.stderr.read()}"
            assert time.monotonic() < deadline, "no checkpoint was written in time"
            time.sleep(0.01)
            if (now := checkpoint_writes(pattern, root)) != last:
                seen, last = seen + 1, now
        time.sleep(rng.uniform(0.0, 0.15))
    finally:
        kill_group(process)


def run_to_completion(script: str, overrides: list[str]) -> None:
    result = run_entry_point(script, *overrides)
    assert result.returncode == 0, result.stderr[-6000:]


def artifact_dir(outputs: Path, stage: str) -> Path:
    (path,) = (outputs / "artifacts" / stage).glob("[0-9a-f]*")
    return path


def assert_same_weights(a: Path, b: Path) -> None:
    ours, theirs = load_file(a), load_file(b)
    assert ours.keys() == theirs.keys()
    for name in ours:
        torch.testing.assert_close(ours[name], theirs[name], rtol=0, atol=0, msg=name)


def logged_steps(metrics_csv: Path, column: str) -> set[int]:
    with open(metrics_csv, newline="") as f:
        return {int(row["step"]) for row in csv.DictReader(f) if row.get(column)}


def offline_run_ids(outputs: Path, run_dir: str) -> list[str]:
    """The W&B run id of the offline run directory, and of every directory with that id."""
    run_id = Path(run_dir).name.rsplit("-", 1)[-1]
    return [p.name for p in (outputs / "wandb").glob(f"offline-run-*-{run_id}")]


@pytest.fixture(scope="module")
def upstream(tiny_upstream) -> Path:
    """Outputs with the tokenizer, pretraining data and a pretrained model to start from (the
    session's; copied, because WordPiece training is not deterministic: tokenizers#1794)."""
    return tiny_upstream


def copies(upstream: Path, *dirs: Path, without: str | None = None) -> tuple[Path, ...]:
    """Copies of the upstream outputs, leaving out the `without` stage's artifacts."""
    for directory in dirs:
        shutil.copytree(upstream, directory)
        if without:
            shutil.rmtree(directory / "artifacts" / without)
    return dirs


def test_killed_pretraining_resumes_to_the_uninterrupted_result(upstream, tmp_path):
    dirs = copies(upstream, tmp_path / "reference", tmp_path / "killed", without="pretrain")
    reference, killed = dirs
    run_to_completion("pretrain.py", [*PRETRAIN, f"paths.outputs={reference}"])
    overrides = [*PRETRAIN, f"paths.outputs={killed}"]
    rng = random.Random()
    pattern = "artifacts/pretrain/*/checkpoints/last.ckpt"
    kill_steps = []
    for _ in range(3):
        kill_after_checkpoints("pretrain.py", overrides, killed, pattern, rng.randint(1, 4), rng)
        (ckpt,) = killed.glob(pattern)
        kill_steps.append(torch.load(ckpt, weights_only=True, mmap=True)["global_step"])
    # progress is kept from kill to kill
    assert kill_steps == sorted(kill_steps) and kill_steps[-1] < PRETRAIN_STEPS, kill_steps
    assert not list(killed.glob(f"artifacts/pretrain/*/{MANIFEST}"))  # nothing looks complete
    run_to_completion("pretrain.py", overrides)

    ours, theirs = artifact_dir(killed, "pretrain"), artifact_dir(reference, "pretrain")
    assert_same_weights(ours / "model.safetensors", theirs / "model.safetensors")
    manifest = json.loads((ours / MANIFEST).read_text())
    expected = json.loads((theirs / MANIFEST).read_text())["metrics"]
    for key in ("val_loss_mlm", "val_mlm_accuracy", "val_loss_nsp", "steps"):
        assert manifest["metrics"][key] == pytest.approx(expected[key], abs=1e-6), key
    # no metric row was lost: every step the reference logged is in the resumed CSV
    ref_steps = logged_steps(theirs / "logs" / "metrics.csv", "train/loss")
    assert ref_steps <= logged_steps(ours / "logs" / "metrics.csv", "train/loss")
    # one W&B run, continued by every process that trained (3 killed + the last one)
    assert len(offline_run_ids(killed, manifest["wandb_runs"][0])) == 4


def test_killed_finetuning_resumes_every_seed_to_the_uninterrupted_result(upstream, tmp_path):
    reference, killed = copies(upstream, tmp_path / "reference", tmp_path / "killed")
    run_to_completion("finetune.py", [*FINETUNE, f"paths.outputs={reference}"])
    overrides = [*FINETUNE, f"paths.outputs={killed}"]
    rng = random.Random()
    pattern = "artifacts/finetune/*/training/seed*/checkpoints/last.ckpt"
    for n in (rng.randint(1, 12), rng.randint(1, 5)):  # of 20 steps over 2 seeds
        kill_after_checkpoints("finetune.py", overrides, killed, pattern, n, rng)
    assert not list(killed.glob(f"artifacts/finetune/*/{MANIFEST}"))
    run_to_completion("finetune.py", overrides)

    ours, theirs = artifact_dir(killed, "finetune"), artifact_dir(reference, "finetune")
    assert_same_weights(ours / "model.safetensors", theirs / "model.safetensors")
    assert_same_weights(ours / "hf" / "model.safetensors", theirs / "hf" / "model.safetensors")
    with open(ours / "results.csv") as a, open(theirs / "results.csv") as b:
        got, want = list(csv.DictReader(a)), list(csv.DictReader(b))
    assert [r["seed"] for r in got] == ["1", "2", "mean", "std", "ci95_low", "ci95_high"]
    for row, expected in zip(got, want, strict=True):
        for key in ("val_accuracy", "test_accuracy", "test_f1", "steps"):
            assert float(row[key]) == pytest.approx(float(expected[key]), abs=1e-9), (row, key)
    assert not (ours / "training").exists()  # per-seed checkpoints are removed once complete


def test_ctrl_c_says_where_pretraining_stopped_exits_130_and_the_rerun_resumes(upstream, tmp_path):
    """SIGINT to the process group (what Ctrl-C in a terminal sends, W&B's service included)
    once the first checkpoint exists: one line naming the step and the checkpoint, status 130,
    nothing marked complete; the same command then resumes from that checkpoint."""
    (outputs,) = copies(upstream, tmp_path / "outputs", without="pretrain")
    steps = 300  # long enough that the run cannot end before the signal arrives (a step: ~5 ms)
    overrides = [
        *TINY, f"pretrain.max_steps={steps}", "pretrain.val_check_interval=50",
        "pretrain.checkpoint_every_n_steps=2", "trainer.log_every_n_steps=1", "logger=wandb",
        "trainer.num_threads=1", f"paths.outputs={outputs}",
    ]  # fmt: skip
    process = start_entry_point("pretrain.py", *overrides)
    pattern = "artifacts/pretrain/*/checkpoints/last.ckpt"
    deadline = time.monotonic() + 240
    try:
        while not list(outputs.glob(pattern)):
            assert process.poll() is None, f"ended before a checkpoint: {process.stderr.read()}"
            assert time.monotonic() < deadline, "no checkpoint was written in time"
            time.sleep(0.01)
        os.killpg(process.pid, signal.SIGINT)
        _, stderr = process.communicate(timeout=120)
    finally:
        kill_group(process)
    assert process.returncode == 130, stderr[-3000:]
    last = stderr.strip().splitlines()[-1]
    match = re.fullmatch(
        r"interrupted: pretrain stopped at step (\d+); rerun the same command to resume from "
        r"(\S+) \(step (\d+)\)", last
    )  # fmt: skip
    assert match, last
    stopped, checkpoint, saved = int(match[1]), Path(match[2]), int(match[3])
    (artifact,) = (outputs / "artifacts" / "pretrain").glob("[0-9a-f]*")
    assert checkpoint == artifact / "checkpoints" / "last.ckpt"
    assert torch.load(checkpoint, weights_only=True)["global_step"] == saved
    assert 2 <= saved <= stopped < steps
    assert not (artifact / MANIFEST).exists()
    with open(artifact / "logs" / "metrics.csv", newline="") as f:
        before = [row for row in csv.DictReader(f) if int(row["step"]) < saved]

    run_to_completion("pretrain.py", overrides)
    assert (artifact / MANIFEST).exists()
    with open(artifact / "logs" / "metrics.csv", newline="") as f:
        after = list(csv.DictReader(f))
    # resumed: the rows before the checkpoint are the first process' (its tokens/s figures)
    assert [{key: row[key] for key in before[0]} for row in after[: len(before)]] == before
    logged = [int(row["step"]) for row in after if row["train/loss"]]
    assert len(logged) == len(set(logged)), logged  # no step twice
    # Lightning logs a step's row after the callbacks that ran at its end (the checkpoint):
    # a Ctrl-C between the two loses that one row, which the resumed run does not redo
    assert set(range(steps)) - set(logged) <= {saved - 1}, logged


def test_loader_state_is_the_next_batch_and_epochs_advance():
    def loader():
        return ResumableLoader(list(range(10)), 3, lambda rows, g: rows, seed=0)

    first = loader()
    it = iter(first)
    next(it), next(it)
    assert first.state_dict() == {"epoch": 0, "batches": 2}
    resumed = loader()
    resumed.load_state_dict(first.state_dict())
    assert list(resumed) == first.batches(0)[2:]  # continues with batch 2, then stops
    assert next(it) == first.batches(0)[2]  # the last batch: the position moves to epoch 1
    assert first.state_dict() == {"epoch": 1, "batches": 0}
    assert list(first) == first.batches(1) != first.batches(0)  # every epoch its own order
    assert len(first) == 3  # drop_last


def test_loader_shards_ranks_like_a_distributed_sampler():
    data = list(range(11))
    shards = [
        ResumableLoader(data, 5, lambda r, g: r, seed=3, rank=r, world_size=2) for r in [0, 1]
    ]
    seen = [i for shard in shards for batch in shard.batches(0) for i in batch]
    assert len(seen) == len(set(seen)) == 10  # drop_last: 11 -> 10, no example twice
    padded = [
        ResumableLoader(data, 4, lambda r, g: r, seed=3, rank=r, world_size=2, drop_last=False)
        for r in (0, 1)
    ]
    assert sorted({i for s in padded for b in s.batches(0) for i in b}) == data
    assert [len(s) for s in padded] == [2, 2]


def test_metrics_csv_keeps_every_step_once_across_a_cut_row_and_a_resume(tmp_path):
    """A killed process left steps 0-5, the last row cut short; the next one resumes from
    step 3: the file holds steps 0-7 once each, and a new column rewrites the header."""
    from bertforge.pipeline.tracking import AppendingCSVLogger

    first = AppendingCSVLogger(tmp_path, "logs", "")
    for step in range(6):
        first.log_metrics({"train/loss": 10.0 - step, "epoch": 0}, step=step)
    metrics = tmp_path / "logs" / "metrics.csv"
    os.truncate(metrics, metrics.stat().st_size - 4)  # the kill hit the last write

    resumed = AppendingCSVLogger(tmp_path, "logs", "")
    resumed.drop_steps_from(3)  # what ResumeState does when the fit resumes at step 3
    for step in range(3, 8):
        resumed.log_metrics({"train/loss": 20.0 - step, "epoch": 0}, step=step)
    resumed.log_metrics({"val/loss": 1.5, "epoch": 0}, step=7)
    with open(metrics, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows if r["train/loss"]] == list(range(8))
    assert [float(r["train/loss"]) for r in rows[:4]] == [10.0, 9.0, 8.0, 17.0]
    assert rows[-1] == {"epoch": "0", "step": "7", "train/loss": "", "val/loss": "1.5"}

    again = AppendingCSVLogger(tmp_path, "logs", "")  # no resume step given (no training):
    again.log_metrics({"train/loss": 0.5, "epoch": 0}, step=6)  # its first row's step counts
    with open(metrics, newline="") as f:
        assert [int(r["step"]) for r in csv.DictReader(f)] == [0, 1, 2, 3, 4, 5, 6]


def test_rng_states_survive_a_weights_only_checkpoint(tmp_path):
    import numpy as np

    from bertforge.lit.trainer import rng_states, set_rng_states

    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    np.random.normal()  # leaves a cached Gaussian in numpy's state
    torch.save({"states": rng_states()}, tmp_path / "rng.ckpt")
    expected = (random.random(), np.random.normal(), torch.rand(3).tolist())
    set_rng_states(torch.load(tmp_path / "rng.ckpt", weights_only=True)["states"])
    assert (random.random(), np.random.normal(), torch.rand(3).tolist()) == expected


def test_an_early_stop_decided_before_the_kill_holds_after_the_resume(tmp_path):
    """Early stopping decides at a validation's end, the checkpoint is written after it: the
    resumed fit must stop at once instead of training on to the next validation."""
    import lightning.pytorch as pl
    from lightning.pytorch.demos.boring_classes import BoringModel

    from bertforge.lit.trainer import ResumeState

    def trainer(callbacks):
        return pl.Trainer(
            max_steps=50, limit_val_batches=1, val_check_interval=5, check_val_every_n_epoch=None,
            callbacks=callbacks, default_root_dir=tmp_path, logger=False,
            enable_progress_bar=False, enable_model_summary=False,
        )  # fmt: skip

    class StopAtStep10(pl.Callback):
        def on_validation_end(self, trainer, pl_module):
            trainer.should_stop = trainer.should_stop or trainer.global_step == 10

    first = trainer([StopAtStep10(), ResumeState()])
    first.fit(BoringModel())
    assert first.global_step == 10
    first.save_checkpoint(tmp_path / "stopped.ckpt")
    resumed = trainer([ResumeState()])
    resumed.fit(BoringModel(), ckpt_path=tmp_path / "stopped.ckpt", weights_only=True)
    assert resumed.global_step == 10  # no step after the stop

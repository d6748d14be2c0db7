"""DDP on CPU (gloo) under Hydra: same global batch → same losses as one process; only rank 0
writes; every rank uses the one Hydra run directory."""

from __future__ import annotations

import json
import shutil

import pytest

from bertforge.pipeline.store import MANIFEST
from conftest import TINY, copy_outputs, run_entry_point
from wandb_offline import read_offline_run

DDP = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.precision=32-true"]
STEPS = ["pretrain.max_steps=8", "pretrain.global_batch_size=16", "pretrain.val_check_interval=8"]


@pytest.mark.xdist_group("ddp")  # one worker: DDP processes pick ports
@pytest.mark.slow
@pytest.mark.timeout(400)
def test_ddp_matches_single_process_and_only_rank_zero_writes(tiny_upstream, tmp_path):
    # Both runs start from the same tokenizer and example cache (WordPiece training is not
    # bit-reproducible, see README), so they differ only in how the batch is split.
    single = copy_outputs(tiny_upstream, tmp_path / "single")
    shutil.rmtree(single / "artifacts" / "pretrain")
    ddp = copy_outputs(single, tmp_path / "ddp")

    args = [*TINY, *STEPS, "logger=wandb", "run_name=ddp-test"]
    one = run_entry_point("pretrain.py", *args, f"paths.outputs={single}", timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    two = run_entry_point("pretrain.py", *args, *DDP, f"paths.outputs={ddp}", timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    assert "GLOBAL_RANK: 1" in two.stderr

    (m1,) = (single / "artifacts" / "pretrain").glob(f"*/{MANIFEST}")
    (m2,) = (ddp / "artifacts" / "pretrain").glob(f"*/{MANIFEST}")
    assert m1.parent.name == m2.parent.name  # the device count is not part of the hash
    a, b = json.loads(m1.read_text())["metrics"], json.loads(m2.read_text())["metrics"]
    assert a["steps"] == b["steps"] == 8
    for key in ("val_loss_mlm", "val_loss_nsp", "train_loss_first"):
        assert abs(a[key] - b[key]) < 0.15, (key, a[key], b[key])

    # One Hydra run directory, shared by both ranks; one W&B run (rank 0's) for the stage.
    (run_dir,) = (ddp / "runs").glob("*/*")
    assert {p.name for p in run_dir.glob("*.log")} == {"pretrain.log", "pretrain_rank1.log"}
    assert not (ddp / "multirun").exists()
    runs = [read_offline_run(p) for p in (ddp / "wandb").glob("offline-run-*")]
    built = [run["run"].job_type for run in runs if not run["config"].get("reused")]
    assert built == ["pretrain"]  # beside the short runs that record the reused upstream

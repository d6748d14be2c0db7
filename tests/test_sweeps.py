"""Hydra multiruns: parallel jobs through submitit share upstream stages, reruns skip what is
complete, Optuna gets its objective, and every sweep ends with a report."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bertforge.pipeline.report import JOB_FILE
from conftest import REPO, TINY, child_env
from wandb_offline import read_offline_run

STAGES = "stages=[tokenizer,pretrain,finetune]"


def multirun(tmp_path, *args: str, timeout: float = 600):
    command = [
        sys.executable, str(REPO / "pipelines" / "run.py"), "-m", *TINY, STAGES,
        f"paths.outputs={tmp_path / 'outputs'}", f"hydra.sweep.dir={tmp_path / 'sweep'}",
        "report_metrics=[pretrain/val_loss_mlm,finetune/eval_accuracy]", *args,
    ]  # fmt: skip
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=timeout, cwd=REPO, env=child_env()
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def job_records(tmp_path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((tmp_path / "sweep").glob(f"*/{JOB_FILE}"))]


def manifests(tmp_path, stage: str) -> list:
    return list((tmp_path / "outputs" / "artifacts" / stage).glob("*/manifest.json"))


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_parallel_submitit_jobs_build_shared_stages_once(tmp_path):
    multirun(
        tmp_path, "hydra/launcher=local", "pretrain.mask_rate=0.15,0.3", "finetune.lr=1e-3,2e-3",
        "logger=wandb", "trainer.num_threads=1",
    )  # fmt: skip
    records = job_records(tmp_path)
    assert len(records) == 4
    assert len(manifests(tmp_path, "tokenizer")) == 1
    assert len(manifests(tmp_path, "pretrain")) == 2
    assert len(manifests(tmp_path, "finetune")) == 4
    built = [r["stages"]["tokenizer"]["reused"] for r in records]
    assert built.count(False) == 1  # one job built it, three reused it (some after waiting)
    assert sum(not r["stages"]["pretrain"]["reused"] for r in records) == 2

    report = (tmp_path / "sweep" / "report.md").read_text()
    assert "pretrain.mask_rate=0.15" in report and "(n=1, no spread)" in report
    assert (tmp_path / "sweep" / "report.png").exists()

    groups = {
        read_offline_run(run)["run"].run_group
        for run in (tmp_path / "outputs" / "wandb").glob("offline-run-*")
    }
    assert len(groups) == 1 and groups.pop().startswith("sweep-")


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_rerunning_a_finished_sweep_reuses_everything(tmp_path):
    multirun(tmp_path, "finetune.lr=1e-3,2e-3")
    multirun(tmp_path, "finetune.lr=1e-3,2e-3")
    for record in job_records(tmp_path):
        assert all(stage["reused"] for stage in record["stages"].values())


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_optuna_search_optimises_the_finetuning_metric(tmp_path):
    multirun(
        tmp_path, "hparams_search=finetune_optuna", "hydra.sweeper.n_trials=3",
        "hydra.sweeper.sampler.n_startup_trials=2",
    )  # fmt: skip
    results = (tmp_path / "sweep" / "optimization_results.yaml").read_text()
    assert "best_value" in results and "finetune.lr" in results
    assert len(job_records(tmp_path)) == 3
    assert len(manifests(tmp_path, "pretrain")) == 1  # trials share the pretraining

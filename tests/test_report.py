"""Ablation reports from a sweep directory's job records."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bertforge.errors import DataError
from bertforge.pipeline.report import JOB_FILE, collect, write_report
from conftest import REPO


def fake_sweep(tmp_path, jobs):
    for i, (overrides, accuracy) in enumerate(jobs):
        job = tmp_path / str(i)
        job.mkdir()
        record = {
            "overrides": overrides,
            "stages": {"finetune": {"metrics": {"eval_accuracy": accuracy}}},
        }
        (job / JOB_FILE).write_text(json.dumps(record))
    return tmp_path


def test_jobs_are_grouped_by_setting_without_the_seed(tmp_path):
    sweep = fake_sweep(
        tmp_path,
        [
            (["finetune.init=pretrained", "seed=1"], 0.90),
            (["finetune.init=pretrained", "seed=2"], 0.80),
            (["finetune.init=random", "seed=1"], 0.50),
        ],
    )
    rows = {r.setting: r for r in collect(sweep, ["finetune/eval_accuracy"])}
    assert set(rows) == {"finetune.init=pretrained", "finetune.init=random"}
    assert rows["finetune.init=pretrained"].mean == pytest.approx(0.85)
    assert rows["finetune.init=pretrained"].std == pytest.approx(0.0707, abs=1e-4)
    assert rows["finetune.init=pretrained"].n == 2 and rows["finetune.init=random"].n == 1


def test_report_files_and_cli(tmp_path):
    sweep = fake_sweep(tmp_path, [(["seed=1"], 0.7), (["seed=2"], 0.9)])
    write_report(sweep, ["finetune/eval_accuracy"])
    assert "0.8000 ± 0.1414 (n=2)" in (sweep / "report.md").read_text()
    assert (sweep / "report.csv").read_text().startswith("setting,metric,mean,std,n")
    assert (sweep / "report.png").stat().st_size > 5000
    result = subprocess.run(
        [sys.executable, str(REPO / "pipelines" / "report.py"), str(sweep), "--metrics",
         "finetune/eval_accuracy"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0 and "(defaults)" in result.stdout


def test_empty_sweep_dir_names_the_fix(tmp_path):
    with pytest.raises(DataError, match="finished multirun"):
        collect(tmp_path, ["finetune/eval_accuracy"])
    result = subprocess.run(
        [sys.executable, str(REPO / "pipelines" / "report.py"), str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2 and result.stderr.startswith("error: ")

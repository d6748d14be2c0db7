"""Sweep reports: per-setting statistics and paired differences from job records, the files and
the figure, and the report a real multirun writes (and logs to W&B) when it ends."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from collections import Counter

import pytest
from scipy import stats

from bertforge.errors import DataError
from bertforge.pipeline.report import JOB_FILE, collect, report_figure, write_report
from conftest import REPO, TINY, child_env
from wandb_offline import read_offline_run

METRIC = "finetune/val_accuracy"


def fake_sweep(tmp_path, jobs):
    """Job directories 0..n-1, as a multirun leaves them, each with one accuracy."""
    for i, (overrides, accuracy) in enumerate(jobs):
        job = tmp_path / str(i)
        job.mkdir()
        record = {
            "overrides": overrides,
            "stages": {"finetune": {"metrics": {"val_accuracy": accuracy}}},
        }
        (job / JOB_FILE).write_text(json.dumps(record))
    return tmp_path


TWO_ARMS = [  # README's per-seed accuracies: MLM+NSP vs MLM only
    (["pretrain.objective=mlm_nsp", "seed=1"], 0.93),
    (["pretrain.objective=mlm_nsp", "seed=2"], 0.88),
    (["pretrain.objective=mlm_nsp", "seed=3"], 0.89),
    (["pretrain.objective=mlm_only", "seed=3"], 0.79),  # order within an arm does not matter
    (["pretrain.objective=mlm_only", "seed=1"], 0.81),
    (["pretrain.objective=mlm_only", "seed=2"], 0.81),
]


def test_jobs_are_grouped_by_setting_without_the_seed(tmp_path):
    sweep = fake_sweep(
        tmp_path,
        [
            (["finetune.init=pretrained", "seed=1"], 0.90),
            (["finetune.init=pretrained", "seed=2"], 0.80),
            (["finetune.init=random", "seed=1"], 0.50),
        ],
    )
    report = collect(sweep, [METRIC])
    rows = {r.setting: r for r in report.rows}
    assert report.settings == ["finetune.init=pretrained", "finetune.init=random"]
    assert rows["finetune.init=pretrained"].mean == pytest.approx(0.85)
    assert rows["finetune.init=pretrained"].std == pytest.approx(stats.tstd([0.9, 0.8]))
    ci = stats.ttest_1samp([0.9, 0.8], 0).confidence_interval()
    assert (rows["finetune.init=pretrained"].ci_low, rows["finetune.init=pretrained"].ci_high) == (
        pytest.approx((ci.low, ci.high))
    )
    single = rows["finetune.init=random"]
    assert (single.n, single.std, single.ci_low) == (1, None, None)
    md = write_report(sweep, [METRIC]) and (sweep / "report.md").read_text()
    assert "0.5000 (n=1, no spread)" in md and "0.5000 ±" not in md


def test_two_arms_get_the_paired_difference_and_a_verdict(tmp_path):
    sweep = fake_sweep(tmp_path, TWO_ARMS)
    report = write_report(sweep, [METRIC])
    (diff,) = report.differences[METRIC]
    assert report.reference == "pretrain.objective=mlm_nsp"
    assert (diff.arm, diff.paired, diff.n) == ("pretrain.objective=mlm_only", True, 3)
    expected = stats.ttest_rel([0.81, 0.81, 0.79], [0.93, 0.88, 0.89])  # paired on seeds 1, 2, 3
    assert diff.p_value == pytest.approx(expected.pvalue)
    assert diff.mean == pytest.approx(-0.0967, abs=1e-4)

    md = (sweep / "report.md").read_text()
    assert "(reference)" in md and "paired t-test" in md
    assert f"pretrain.objective=mlm_only − pretrain.objective=mlm_nsp: {diff.mean:+.3f}" in md
    assert f"p={diff.p_value:.2g}, n=3 pairs" in md

    rows = list(csv.DictReader((sweep / "report.csv").open()))
    assert [r["kind"] for r in rows] == ["setting", "setting", "difference"]
    assert rows[0]["ci_low"] and float(rows[2]["p_value"]) == pytest.approx(expected.pvalue)
    assert rows[2]["verdict"] == diff.verdict
    assert (sweep / "report.png").stat().st_size > 20_000


def test_more_arms_are_each_compared_with_the_first(tmp_path):
    jobs = [([f"tokenizer.vocab_size={v}", f"seed={s}"], a) for v, s, a in [
        (2000, 1, 0.80), (2000, 2, 0.82), (8000, 1, 0.85), (8000, 2, 0.86),
        (16000, 3, 0.88), (16000, 4, 0.90),
    ]]  # fmt: skip
    report = collect(fake_sweep(tmp_path, jobs), [METRIC])
    diffs = report.differences[METRIC]
    assert [d.arm for d in diffs] == ["tokenizer.vocab_size=8000", "tokenizer.vocab_size=16000"]
    assert {d.reference for d in diffs} == {"tokenizer.vocab_size=2000"}
    assert diffs[0].paired and not diffs[1].paired  # seeds 3, 4 do not match 1, 2: Welch
    welch = stats.ttest_ind([0.88, 0.90], [0.80, 0.82], equal_var=False)
    assert diffs[1].p_value == pytest.approx(welch.pvalue)
    assert "unpaired Welch" in diffs[1].verdict


def test_figure_text_stays_inside_its_axes_and_the_figure(tmp_path):
    jobs = [
        ([f"pretrain.objective={o}", "tokenizer.vocab_size=16000", f"seed={s}"], a)
        for o, s, a in [("mlm_nsp", 1, 0.9), ("mlm_nsp", 2, 0.8), ("mlm_only", 1, 0.7),
                        ("mlm_only", 2, 0.75), ("mlm_only_long_name", 1, 0.6)]
    ]  # fmt: skip
    fig = report_figure(collect(fake_sweep(tmp_path, jobs), [METRIC, "finetune/missing"]))
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    page = fig.bbox
    for ax in fig.axes:
        frame = ax.get_window_extent(renderer)
        for text in ax.texts:  # value labels: inside the axes, below the title
            box = text.get_window_extent(renderer)
            assert frame.x0 <= box.x0 and box.x1 <= frame.x1, text.get_text()
            assert frame.y0 <= box.y0 and box.y1 <= frame.y1, text.get_text()
        title = ax.title.get_window_extent(renderer)
        assert title.y0 >= frame.y1 - 1 and page.y1 >= title.y1
        for label in ax.get_xticklabels():  # not cut at the figure's edges
            box = label.get_window_extent(renderer)
            assert box.y0 >= page.y0 and box.x0 >= page.x0 and box.x1 <= page.x1


def test_difference_panels_show_the_zero_line(tmp_path):
    fig = report_figure(collect(fake_sweep(tmp_path, TWO_ARMS), [METRIC]))  # CI below zero
    settings, difference = fig.axes
    low, high = difference.get_ylim()
    assert low < -0.15 and high > 0.0  # the whole CI and the dashed zero line
    assert settings.get_ylim()[0] > 0.5  # the settings' panel does not stretch to zero


def test_report_cli(tmp_path):
    sweep = fake_sweep(tmp_path, [(["seed=1"], 0.7), (["seed=2"], 0.9)])
    result = subprocess.run(
        [sys.executable, str(REPO / "pipelines" / "report.py"), str(sweep), "--metrics", METRIC],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "`(defaults)` | 0.8000 ± 0.1414 [" in result.stdout
    assert (sweep / "report.csv").read_text().startswith("kind,setting,reference,metric,n,")


def test_empty_sweep_dir_names_the_fix(tmp_path):
    with pytest.raises(DataError, match="finished multirun"):
        collect(tmp_path, [METRIC])
    result = subprocess.run(
        [sys.executable, str(REPO / "pipelines" / "report.py"), str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2 and result.stderr.startswith("error: ")


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_real_multirun_ends_with_the_report_and_its_wandb_run(tmp_path):
    """The callback used to resolve the whole sweep config and die on `hydra.job.num`."""
    command = [
        sys.executable, str(REPO / "pipelines" / "run.py"), "-m", *TINY,
        "stages=[tokenizer,pretrain,finetune]", "logger=wandb", "trainer.num_threads=1",
        f"paths.outputs={tmp_path / 'outputs'}", f"hydra.sweep.dir={tmp_path / 'sweep'}",
        f"report_metrics=[pretrain/val_loss_mlm,{METRIC}]",
        "pretrain.mask_rate=0.15,0.3", "seed=1,2",
    ]  # fmt: skip
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=600, cwd=REPO, env=child_env()
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "raised" not in output, output[-3000:]

    sweep = tmp_path / "sweep"
    md = (sweep / "report.md").read_text()
    print(md)  # the report quoted in the hand-over
    assert "| `pretrain.mask_rate=0.15` (reference) |" in md and "(n=2)" in md
    assert md.count("pretrain.mask_rate=0.3 − pretrain.mask_rate=0.15:") == 2  # one per metric
    assert "n=2 pairs" in md
    rows = list(csv.DictReader((sweep / "report.csv").open()))
    assert sorted(r["kind"] for r in rows) == ["difference"] * 2 + ["setting"] * 4
    assert (sweep / "report.png").stat().st_size > 20_000

    dirs = sorted((tmp_path / "outputs" / "wandb").glob("offline-run-*"))
    runs = [read_offline_run(d) for d in dirs]
    reports = [r for r in runs if r["run"].job_type == "report"]
    kinds = Counter((r["run"].job_type, bool(r["config"].get("reused"))) for r in runs)
    assert kinds == {
        ("report", False): 1,
        ("tokenizer", False): 1,  # built by the first job,
        ("tokenizer", True): 3,  # and a short `reused` run in each other job's group
        ("pretrain_data", False): 2,  # built once per seed,
        ("pretrain_data", True): 2,  # reused by the other mask rate's jobs
        ("pretrain", False): 4,
        ("finetune", False): 4,
    }
    (report_run,) = reports
    assert {r["run"].run_group for r in runs} == {report_run["run"].run_group}
    logged = {key.split("/")[0] for step in report_run["history"] for key in step}
    assert {"report", "differences", "report_plot"} <= logged
    (run_dir,) = [d for d, r in zip(dirs, runs, strict=True) if r is report_run]
    (table,) = (run_dir / "files" / "media" / "table").glob("differences_*.table.json")
    logged_verdicts = [row[-1] for row in json.loads(table.read_text())["data"]]
    assert logged_verdicts == [r["verdict"] for r in rows if r["kind"] == "difference"]

"""Hydra multiruns: parallel jobs through submitit share upstream stages, reruns skip what is
complete, Optuna gets its objective, and every sweep ends with a report. W&B sweep files
(conf/sweeps): the same runs from `wandb agent` and from the offline Hydra translation."""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import subprocess
import sys
import textwrap
import time

import pytest
from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.utils import instantiate
from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

import bertforge.config  # noqa: F401  (registers config_schema for compose)
from bertforge.errors import ConfigError
from bertforge.pipeline.report import JOB_FILE
from bertforge.pipeline.sweeps import (
    check_extra_args,
    grid_overrides,
    load_sweep,
    offline_commands,
    sample_points,
    wandb_agent_job,
    wandb_sweep_config,
)
from conftest import REPO, TINY, child_env
from wandb_offline import read_offline_run

STAGES = "stages=[tokenizer,pretrain,finetune]"


def multirun(tmp_path, *args: str, timeout: float = 600):
    command = [
        sys.executable, str(REPO / "pipelines" / "run.py"), "-m", *TINY, STAGES,
        f"paths.outputs={tmp_path / 'outputs'}", f"hydra.sweep.dir={tmp_path / 'sweep'}",
        "report_metrics=[pretrain/val_loss_mlm,finetune/val_accuracy]", *args,
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


# --- W&B sweep files (conf/sweeps/*.yaml) and their offline Hydra translation ---------------


def sweep_file(tmp_path, text: str):
    path = tmp_path / "sweep.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def parsed(arg: str) -> tuple[str, str]:
    """(key, value) as Hydra parses `arg` (value as its repr, to compare and hash)."""
    override = OverridesParser.create().parse_override(arg)
    return override.get_key_element(), repr(override.value())


def hydra_value(arg: str) -> tuple[str, object]:
    override = OverridesParser.create().parse_override(arg)
    return override.get_key_element(), override.value()


def hydra_jobs(overrides: list[str]) -> set[frozenset]:
    """The jobs Hydra's basic sweeper makes of multirun overrides."""
    parser = OverridesParser.create()
    batches = BasicSweeper.split_arguments(parser.parse_overrides(overrides), None)
    return {frozenset(parsed(arg) for arg in job) for batch in batches for job in batch}


def agent_jobs(config: dict) -> set[frozenset]:
    """The arguments `wandb agent` gives our program (W&B's own code) at every grid point of
    the W&B sweep dict: the command's fixed items, then `${args_no_hyphens}`."""
    fixed = [c for c in config["command"] if not c.startswith("${")]
    names = list(config["parameters"])
    grids = [spec.get("values", [spec.get("value")]) for spec in config["parameters"].values()]
    jobs = set()
    for values in itertools.product(*grids):
        args = {name: {"value": value} for name, value in zip(names, values, strict=True)}
        agent = create_sweep_command_args({"args": args})["args_no_hyphens"]
        jobs.add(frozenset(parsed(a) for a in [*fixed, *agent]))
    return jobs


def test_shipped_sweeps_translate_to_the_same_runs_both_ways():
    extra = ["trainer.num_threads=1"]
    for path in sorted((REPO / "conf" / "sweeps").glob("*.yaml")):
        sweep = load_sweep(path)
        config = wandb_sweep_config(sweep, extra)
        assert (
            config["command"][-1] == "${args_no_hyphens}"
            and "trainer.num_threads=1" in (config["command"])
        )
        assert all(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.-]*", name) for name in config["parameters"])
        if sweep.method == "grid":
            offline = hydra_jobs([*sweep.fixed_args, *extra, *grid_overrides(sweep)])
            assert offline == agent_jobs(config)  # the same runs, the same values
            assert len(offline) == math.prod(len(p.values) for p in sweep.parameters)


def test_experiment_group_keys_survive_both_ways():
    sweep = load_sweep(REPO / "conf" / "sweeps" / "nsp_vs_mlm_only.yaml")
    assert grid_overrides(sweep) == [
        "+experiment=nsp_vs_mlm_only", "pretrain.objective=mlm_nsp,mlm_only", "seed=1,2,3",
    ]  # fmt: skip
    (command,) = offline_commands(sweep, ["paths.outputs=/tmp/x"])
    # the experiment's own sweep (objective x seeds in hydra.sweeper.params) is dropped
    assert "hydra.sweeper.params=null" in command
    assert any(a.startswith("hydra.sweep.dir=/tmp/x/sweeps/nsp_vs_mlm_only/") for a in command)
    # W&B's schema takes no '+' in parameter names: the constant rides in the command
    config = wandb_sweep_config(sweep)
    assert config["command"] == [
        "${env}", "${interpreter}", "${program}", "+experiment=nsp_vs_mlm_only",
        "${args_no_hyphens}",
    ]  # fmt: skip
    assert list(config["parameters"]) == ["pretrain.objective", "seed"]


def test_a_swept_plus_key_runs_offline_but_is_no_wandb_sweep(tmp_path):
    sweep = load_sweep(sweep_file(tmp_path, """
        method: grid
        parameters:
          +experiment: {values: [nsp_vs_mlm_only, mask_rate]}
          seed: {values: [1, 2]}
    """))  # fmt: skip
    assert grid_overrides(sweep) == ["+experiment=nsp_vs_mlm_only,mask_rate", "seed=1,2"]
    with pytest.raises(ConfigError, match=r"can only be a constant there; run this sweep with"):
        wandb_sweep_config(sweep)


def test_hydra_drops_the_experiment_sweep_and_the_callback_takes_its_switch():
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(
            "config",
            overrides=["+experiment=nsp_vs_mlm_only", "hydra.sweeper.params=null",
                       "+hydra.callbacks.report.wandb=false"],
            return_hydra_config=True,
        )  # fmt: skip
    assert cfg.hydra.sweeper.params is None
    assert instantiate(cfg.hydra.callbacks.report).wandb is False


RANDOM = """
    method: random
    run_cap: 6
    metric: {name: finetune/val_accuracy, goal: maximize}
    parameters:
      finetune.lr: {distribution: log_uniform_values, min: 1e-5, max: 1e-2}
      finetune.warmup_ratio: {distribution: uniform, min: 0.0, max: 0.2}
      finetune.max_epochs: {distribution: int_uniform, min: 1, max: 3}
      model: {values: [bert_tiny, bert_mini]}
      seed: {value: 7}
"""


def test_random_points_are_seeded_and_in_range(tmp_path):
    sweep = load_sweep(sweep_file(tmp_path, RANDOM))
    points = sample_points(sweep, 50, seed=3)
    assert points == sample_points(sweep, 50, seed=3)
    assert points != sample_points(sweep, 50, seed=4)
    values = [dict(map(hydra_value, point)) for point in points]
    assert all(1e-5 <= v["finetune.lr"] <= 1e-2 for v in values)
    assert (
        min(v["finetune.lr"] for v in values) < 1e-4 < 1e-3 < max(v["finetune.lr"] for v in values)
    )
    assert all(0.0 <= v["finetune.warmup_ratio"] <= 0.2 for v in values)
    assert {v["finetune.max_epochs"] for v in values} == {1, 2, 3}  # int_uniform includes max
    assert {v["model"] for v in values} == {"bert_tiny", "bert_mini"}
    assert {v["seed"] for v in values} == {7}

    commands = offline_commands(sweep, ["paths.outputs=/tmp/x"], seed=3)
    assert len(commands) == 6  # run_cap
    assert [c[-2:] for c in commands[:2]] == [
        ["hydra.sweep.subdir=0", "+hydra.callbacks.report.wandb=false"],
        ["hydra.sweep.subdir=1", "+hydra.callbacks.report.wandb=false"],
    ]
    assert commands[-1][-1] == "hydra.sweep.subdir=5"  # the last launch logs the report
    assert len({next(a for a in c if a.startswith("hydra.sweep.dir=")) for c in commands}) == 1
    assert commands[0][-2 - len(points[0]) : -2] == points[0]
    assert len(offline_commands(sweep, count=2)) == 2


@pytest.mark.parametrize(
    "text, message",
    [
        ("method: grid\nparameters: {seed: {values: [1, 2]", "not valid YAML"),
        ("method: hyperband\nparameters: {seed: {values: [1]}}", "is not one of grid, random"),
        ("method: grid\nparamaters: {seed: {values: [1]}}", "unknown key; allowed: name"),
        ("method: grid\nparameters: {seed: {values: [1]}}\n"
         "command: ['${env}', '${program}', '${args}']",
         "must contain ${args_no_hyphens}"),
        ("method: grid\nparameters: {finetune.lr: {min: 0.1, max: 0.2}}", "grid needs `values`"),
        ("method: grid\nparameters: {finetune.lrr: {values: [0.1]}}", "did you mean 'lr'"),
        ("method: grid\nparameters: {+experiment: {value: nsp}}", "not an option of the"),
        ("method: grid\nparameters: {model: {values: [bert_tiny, bert_huge]}}", "bert_huge is not"),
        ("method: grid\nparameters: {hparams_search: {value: finetune_optuna}}",
         "replaces the Hydra sweeper"),
        ("method: grid\nparameters: {run_name: {values: [a, null]}}", "null reaches Hydra"),
        ("method: grid\nparameters: {run_name: {values: ['a,b']}}", "would reach Hydra as None"),
        ("method: grid\nparameters: {run_name: {value: {a: 1}}}", "is not a Hydra value"),
        ("method: random\nparameters: {finetune.lr: {distribution: q_normal, min: 0, max: 1}}",
         "'q_normal' is not supported"),
        ("method: random\nparameters: {finetune.lr: {distribution: log_uniform_values, min: 0, "
         "max: 1}}", "needs min < max (and 0 < min"),
        ("method: bayes\nparameters: {finetune.lr: {min: 0.1, max: 0.2}}", "metric: give {name"),
        ("method: grid\nmetric: {name: val_accuracy, goal: maximize}\nparameters: "
         "{seed: {values: [1]}}", "is not '<stage>/<metric>'"),
        ("method: grid\nprogram: pipelines/train.py\nparameters: {seed: {values: [1]}}",
         "pipelines/train.py is not a file"),
    ],
)  # fmt: skip
def test_bad_sweep_files_fail_in_one_line(tmp_path, text, message):
    with pytest.raises(ConfigError) as info:
        load_sweep(sweep_file(tmp_path, text))
    assert message in str(info.value) and "\n" not in str(info.value)


def test_offline_limits_fail_in_one_line(tmp_path):
    bayes = load_sweep(sweep_file(tmp_path, RANDOM.replace("random", "bayes")))
    with pytest.raises(ConfigError, match=r"bayes needs the W&B service.*grid / random"):
        offline_commands(bayes)
    uncapped = load_sweep(sweep_file(tmp_path, RANDOM.replace("run_cap: 6", "")))
    with pytest.raises(ConfigError, match=r"needs run_cap .* or --count N"):
        offline_commands(uncapped)
    grid = load_sweep(REPO / "conf" / "sweeps" / "finetune_lr.yaml")
    with pytest.raises(ConfigError, match="seed is a parameter"):
        check_extra_args(grid, ["seed=3"])
    with pytest.raises(ConfigError, match=r"unknown config key 'trainer\.num_thread'"):
        check_extra_args(grid, ["trainer.num_thread=1"])


def test_sweep_cli_dry_run_and_errors(tmp_path):
    env = {**child_env(), "HOME": str(tmp_path)}  # no ~/.netrc: no W&B key
    env.pop("WANDB_API_KEY", None)

    def cli(*args):
        return subprocess.run(
            [sys.executable, str(REPO / "pipelines" / "sweep.py"), *args],
            capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env,
        )  # fmt: skip

    dry = cli(
        str(REPO / "conf/sweeps/nsp_vs_mlm_only.yaml"), "--dry-run", "--", "trainer.num_threads=1"
    )
    assert dry.returncode == 0, dry.stderr
    assert "- +experiment=nsp_vs_mlm_only\n- ${args_no_hyphens}" in dry.stdout
    assert "pretrain.objective=mlm_nsp,mlm_only seed=1,2,3" in dry.stdout
    online = cli(str(REPO / "conf/sweeps/finetune_lr.yaml"))
    assert online.returncode == 2 and "needs an API key" in online.stderr
    missing = cli("conf/sweeps/nope.yaml", "--offline")
    assert missing.returncode == 2 and missing.stderr.startswith("error: ")
    assert "finetune_lr.yaml" in missing.stderr and len(missing.stderr.splitlines()) == 1


def test_agent_job_keeps_the_agent_run_for_the_sweep_metric(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_SWEEP_ID", "sweep123")
    monkeypatch.setenv("WANDB_RUN_ID", "agentrun1")
    with wandb_agent_job() as job:
        assert "WANDB_RUN_ID" not in os.environ and "WANDB_SWEEP_ID" not in os.environ
        run_dir = job.finish({"finetune/val_accuracy": 0.75}, tmp_path, mode="offline")
    assert os.environ["WANDB_RUN_ID"] == "agentrun1"
    for _ in range(100):  # the W&B service may still be writing the file after finish()
        run = read_offline_run(run_dir)
        if run["run"] is not None and run["history"]:
            break
        time.sleep(0.1)
    assert run["run"].run_id == "agentrun1"
    assert any(step.get("finetune/val_accuracy") == 0.75 for step in run["history"])
    monkeypatch.delenv("WANDB_SWEEP_ID")
    with wandb_agent_job() as job:
        assert job is None


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_offline_sweep_runs_exactly_the_yaml_points(tmp_path):
    path = sweep_file(tmp_path, """
        method: grid
        metric: {name: finetune/val_accuracy, goal: maximize}
        parameters:
          +experiment: {value: nsp_vs_mlm_only}
          pretrain.objective: {values: [mlm_nsp, mlm_only]}
        command: ["${env}", "${interpreter}", "${program}",
                  "report_metrics=[finetune/val_accuracy]", "${args_no_hyphens}"]
    """)  # fmt: skip
    result = subprocess.run(
        [sys.executable, str(REPO / "pipelines" / "sweep.py"), str(path), "--offline", "--",
         *TINY, "trainer.num_threads=1", f"paths.outputs={tmp_path / 'outputs'}",
         f"hydra.sweep.dir={tmp_path / 'sweep'}"],
        capture_output=True, text=True, timeout=300, cwd=REPO, env=child_env(),
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 0 and "raised" not in output, output[-3000:]
    records = job_records(tmp_path)
    # 2 points; without hydra.sweeper.params=null the experiment's 3 seeds would make it 6
    assert len(records) == 2
    objectives = [o for r in records for o in r["overrides"] if o.startswith("pretrain.objective")]
    assert objectives == ["pretrain.objective=mlm_nsp", "pretrain.objective=mlm_only"]
    report = (tmp_path / "sweep" / "report.md").read_text()
    assert "pretrain.objective=mlm_only − pretrain.objective=mlm_nsp" in report


def test_the_sweep_project_reaches_the_stage_runs(tmp_path):
    sweep = load_sweep(sweep_file(tmp_path, """
        method: grid
        project: nsp-study
        parameters: {seed: {values: [1, 2]}}
    """))  # fmt: skip
    config = wandb_sweep_config(sweep)
    assert "project" not in config  # given to wandb.sweep(project=...) instead
    assert "logger.project=nsp-study" in config["command"]
    assert "logger.project=nsp-study" in offline_commands(sweep)[0]

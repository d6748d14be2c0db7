"""W&B sweeps that drive the Hydra pipeline, and the same sweep YAML as an offline Hydra multirun.

A sweep file (conf/sweeps/<name>.yaml) is a standard W&B sweep config whose parameter names are
Hydra override keys, `+experiment` included:

    program: pipelines/run.py
    method: grid                     # grid | random | bayes
    metric: {name: finetune/val_accuracy, goal: maximize}   # "<stage>/<metric>"
    parameters:
      +experiment: {value: nsp_vs_mlm_only}
      finetune.lr: {values: [5e-4, 1e-3]}
      finetune.warmup_ratio: {distribution: uniform, min: 0.0, max: 0.1}   # random/bayes only
    run_cap: 8                       # random/bayes: runs (offline: sampled points)
    command: [${env}, ${interpreter}, ${program}, ${args_no_hyphens}]

`wandb agent` passes each parameter as `key=value` (`${args_no_hyphens}`; `${args}` would give
Hydra `--key=value`), formatted with Python's `str`. `load_sweep` therefore checks, with Hydra's
own override parser, that every value reaches Hydra as itself (a null arrives as the string
"None", a dict does not parse) and that every key is a config key or group option.

Offline (`run_offline`) the same file runs here: grid as one `pipelines/run.py -m key=v1,v2 ...`;
random as `run_cap` points sampled with a seed, each launched as a one-job multirun into one
sweep directory (the last launch logs the report to W&B). Either way `hydra.sweeper.params=null`
drops the sweep an `+experiment` file declares, so the jobs are exactly the YAML's points, as
under `wandb agent`. Bayes needs the W&B service.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from bertforge.errors import ConfigError
from bertforge.pipeline.overrides import (
    CONF_DIR,
    outputs_dir,
    unknown_key_message,
    unknown_option_message,
)
from bertforge.pipeline.runs import wandb_api_key_present
from bertforge.stages import GRAPH

REPO = Path(__file__).resolve().parents[3]
METHODS = ("grid", "random", "bayes")
GOALS = ("maximize", "minimize")
AGENT_ARGS = "${args_no_hyphens}"
WANDB_NAME = r"[A-Za-z_][A-Za-z0-9_.-]*"  # parameter names W&B's sweep schema accepts
DEFAULT_COMMAND = ["${env}", "${interpreter}", "${program}", AGENT_ARGS]
TOP_KEYS = (
    "name", "description", "program", "method", "metric", "parameters", "command", "run_cap",
    "project", "entity", "early_terminate",
)  # fmt: skip
SPEC_KEYS = ("value", "values", "probabilities", "distribution", "min", "max")
DISTRIBUTIONS = ("constant", "categorical", "uniform", "int_uniform", "log_uniform_values")
REJECTED_KEYS = {
    "hparams_search": "a W&B sweep replaces the Hydra sweeper; drop hparams_search",
    "hydra": "Hydra settings are not sweep parameters; pass them after `--` to pipelines/sweep.py",
}
# Set by `wandb agent` in the processes it starts; see `wandb_agent_job`.
AGENT_ENV = ("WANDB_SWEEP_ID", "WANDB_RUN_ID", "WANDB_SWEEP_PARAM_PATH")


@dataclass(frozen=True)
class Parameter:
    key: str  # the Hydra override key, e.g. "finetune.lr", "+experiment", "model"
    distribution: str  # one of DISTRIBUTIONS
    values: tuple[Any, ...] = ()  # constant: one value; categorical: the choices
    probabilities: tuple[float, ...] | None = None
    low: float | None = None
    high: float | None = None


@dataclass(frozen=True)
class Sweep:
    path: Path
    name: str
    method: str
    metric: dict[str, str] | None
    parameters: tuple[Parameter, ...]
    program: str
    fixed_args: tuple[str, ...]  # the command's literal items: overrides every run gets
    run_cap: int | None
    raw: dict[str, Any]  # the file as loaded


def agent_arg(key: str, value: Any) -> str:
    """The argument `wandb agent` builds for one parameter under `${args_no_hyphens}`."""
    return f"{key}={value}"


def _fail(path: Path, where: str, message: str) -> ConfigError:
    return ConfigError(f"{path}: {where}: {message}")


def _check_value(path: Path, key: str, value: Any) -> None:
    """`value` must reach Hydra unchanged when `wandb agent` passes it as `key=value`."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    where = f"parameters.{key}"
    if value is None:
        raise _fail(path, where, "null reaches Hydra as the string 'None'; sweep other values")
    try:
        override = OverridesParser.create().parse_override(agent_arg(key, value))
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise _fail(path, where, f"{value!r} is not a Hydra value ({first})") from None
    parsed = None if override.is_sweep_override() else override.value()
    if parsed != value or type(parsed) is not type(value):
        raise _fail(
            path, where, f"{value!r} would reach Hydra as {parsed!r} (quote-free scalars or "
            "lists only; no commas, no dicts)",
        )  # fmt: skip


def check_key(key: str, values: Sequence[Any] = ()) -> str | None:
    """Why `key` (an override key, maybe `+group`) names nothing in conf/, or None."""

    bare = key.lstrip("+~").split("@", 1)[0]
    top = bare.split(".", 1)[0].split("/", 1)[0]
    if top in REJECTED_KEYS:
        return f"{key}: {REJECTED_KEYS[top]}"
    if (CONF_DIR / bare).is_dir() and "." not in bare:
        for value in values:
            message = unknown_option_message(bare, str(value))
            if message:
                return message
        return None
    return unknown_key_message(bare)


def _parameter(path: Path, key: str, spec: Any, method: str) -> Parameter:
    where = f"parameters.{key}"
    if not isinstance(spec, dict) or not spec:
        raise _fail(path, where, "give {value: x}, {values: [...]} or {distribution, min, max}")
    if "parameters" in spec:
        raise _fail(path, where, "nested parameters are not supported; use dotted Hydra keys")
    unknown = sorted(set(spec) - set(SPEC_KEYS))
    if unknown:
        raise _fail(path, where, f"unknown {', '.join(unknown)}; allowed: {', '.join(SPEC_KEYS)}")
    distribution = spec.get("distribution")
    if distribution is None:
        if "value" in spec:
            distribution = "constant"
        elif "values" in spec:
            distribution = "categorical"
        elif {"min", "max"} <= set(spec):
            ints = all(isinstance(spec[k], int) for k in ("min", "max"))
            distribution = "int_uniform" if ints else "uniform"
    if distribution not in DISTRIBUTIONS:
        raise _fail(
            path, where, f"distribution {distribution!r} is not supported; use one of "
            f"{', '.join(DISTRIBUTIONS)} (or value / values / min+max)",
        )  # fmt: skip
    if distribution == "constant":
        if "value" not in spec:
            raise _fail(path, where, "a constant needs `value: x`")
        values = (spec["value"],)
    elif distribution == "categorical":
        values = spec.get("values")
        if not isinstance(values, list) or not values:
            raise _fail(path, where, "`values` must be a non-empty list")
        values = tuple(values)
    else:
        if method == "grid":
            raise _fail(path, where, f"method grid needs `values`, not a {distribution} range")
        low, high = spec.get("min"), spec.get("max")
        if not all(isinstance(x, int | float) and not isinstance(x, bool) for x in (low, high)):
            raise _fail(path, where, f"{distribution} needs numeric `min` and `max`")
        if not low < high or (distribution == "log_uniform_values" and low <= 0):
            raise _fail(path, where, "needs min < max (and 0 < min for log_uniform_values)")
        if distribution == "int_uniform" and not (isinstance(low, int) and isinstance(high, int)):
            raise _fail(path, where, "int_uniform needs integer `min` and `max`")
        return Parameter(key, distribution, low=low, high=high)
    for value in values:
        _check_value(path, key, value)
    probabilities = spec.get("probabilities")
    if probabilities is not None:
        if len(probabilities) != len(values) or not math.isclose(sum(probabilities), 1.0):
            raise _fail(path, where, "`probabilities` must match `values` and sum to 1")
        probabilities = tuple(float(p) for p in probabilities)
    return Parameter(key, distribution, values, probabilities)


def load_sweep(path: Path | str) -> Sweep:
    """Read and check a sweep file; every problem is one ConfigError line naming the fix."""
    from omegaconf import OmegaConf

    path = Path(path)
    if not path.is_file():
        found = sorted(p.name for p in (REPO / "conf" / "sweeps").glob("*.yaml"))
        raise ConfigError(f"{path} is not a file; sweeps in conf/sweeps: {', '.join(found)}")
    try:  # OmegaConf's loader reads 5e-4 as a float (PyYAML alone: a string)
        raw = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0]
        raise ConfigError(f"{path}: not valid YAML ({first})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping with method, parameters, program")
    unknown = sorted(set(raw) - set(TOP_KEYS))
    if unknown:
        raise _fail(path, ", ".join(unknown), f"unknown key; allowed: {', '.join(TOP_KEYS)}")
    method = raw.get("method")
    if method not in METHODS:
        raise _fail(path, "method", f"{method!r} is not one of {', '.join(METHODS)}")
    metric = raw.get("metric")
    if metric is not None or method == "bayes":
        _check_metric(path, metric)
    program = raw.get("program", "pipelines/run.py")
    if not (REPO / program).is_file():
        raise _fail(path, "program", f"{program} is not a file (relative to the repository)")
    command = raw.get("command", DEFAULT_COMMAND)
    if not isinstance(command, list) or AGENT_ARGS not in command:
        raise _fail(
            path, "command", f"must contain {AGENT_ARGS} (Hydra takes key=value, not --key=value),"
            f" e.g. {DEFAULT_COMMAND}",
        )  # fmt: skip
    fixed = tuple(str(c) for c in command if not str(c).startswith("${"))
    fixed += tuple(_tracking_args(raw))
    for arg in fixed:
        key, eq, value = arg.partition("=")
        message = "not a key=value Hydra override" if not eq else check_key(key, [value])
        if message and not key.startswith(("hydra.", "hydra/")):
            raise _fail(path, f"command item {arg!r}", message)
    run_cap = raw.get("run_cap")
    if run_cap is not None and (not isinstance(run_cap, int) or run_cap < 1):
        raise _fail(path, "run_cap", f"{run_cap!r} is not a positive integer")
    params = raw.get("parameters")
    if not isinstance(params, dict) or not params:
        raise _fail(path, "parameters", "give at least one Hydra key, e.g. finetune.lr")
    parameters = tuple(_parameter(path, str(k), v, method) for k, v in params.items())
    for p in parameters:
        message = check_key(p.key, p.values)
        if message:
            raise _fail(path, f"parameters.{p.key}", message)
    return Sweep(path, str(raw.get("name", path.stem)), method, metric, parameters,
                 program, fixed, run_cap, raw)  # fmt: skip


def _tracking_args(raw: dict[str, Any]) -> list[str]:
    """The sweep's project/entity for the stage runs too (they name their project themselves,
    so the agent's WANDB_PROJECT would not reach them)."""
    return [f"logger.{k}={raw[k]}" for k in ("project", "entity") if raw.get(k)]


def _check_metric(path: Path, metric: Any) -> None:
    if not isinstance(metric, dict) or metric.get("goal") not in GOALS:
        raise _fail(path, "metric", f"give {{name: <stage>/<metric>, goal: {' | '.join(GOALS)}}}")
    stage, _, name = str(metric.get("name", "")).partition("/")
    if stage not in GRAPH or not name:
        raise _fail(
            path, "metric.name", f"{metric.get('name')!r} is not '<stage>/<metric>' with a stage "
            f"among {', '.join(GRAPH)}, e.g. finetune/val_accuracy",
        )  # fmt: skip


def check_extra_args(sweep: Sweep, extra: Sequence[str]) -> None:
    """Overrides given on the command line: known keys, and none that the sweep also sets."""
    swept = {p.key.lstrip("+~") for p in sweep.parameters}
    for arg in extra:
        key, eq, value = arg.partition("=")
        if not eq:
            raise ConfigError(f"{arg!r} is not a key=value Hydra override")
        if key.lstrip("+~") in swept:
            raise ConfigError(f"{key} is a parameter of {sweep.path}; drop {arg} or the parameter")
        if not key.startswith(("hydra.", "hydra/", "~")):
            message = check_key(key, [value])
            if message:
                raise ConfigError(message)


def wandb_sweep_config(sweep: Sweep, extra: Sequence[str] = ()) -> dict[str, Any]:
    """The dict for `wandb.sweep`: the file, with `extra` added to the command's fixed
    overrides (before the agent's arguments).

    W&B's sweep schema only takes parameter names matching WANDB_NAME; a constant such as
    `+experiment: {value: x}` therefore moves into the command as `+experiment=x` (the agent
    passes both the same way), and a swept `+key` cannot be a W&B sweep (ConfigError).
    """
    config = {k: v for k, v in sweep.raw.items() if k not in ("project", "entity")}
    config.setdefault("name", sweep.name)
    config["program"] = sweep.program
    parameters, fixed = {}, [*_tracking_args(sweep.raw), *extra]
    for p in sweep.parameters:
        if re.fullmatch(WANDB_NAME, p.key):
            parameters[p.key] = sweep.raw["parameters"][p.key]
        elif p.distribution == "constant":
            fixed.append(agent_arg(p.key, p.values[0]))
        else:
            raise _fail(
                sweep.path, f"parameters.{p.key}", f"W&B sweep parameter names must match "
                f"{WANDB_NAME}, so {p.key} can only be a constant there; run this sweep with "
                "--offline, or write one sweep file per value",
            )  # fmt: skip
    if not parameters:
        raise _fail(sweep.path, "parameters", "a W&B sweep needs one parameter without '+'")
    config["parameters"] = parameters
    command = list(sweep.raw.get("command", DEFAULT_COMMAND))
    command[command.index(AGENT_ARGS) : command.index(AGENT_ARGS)] = fixed
    config["command"] = command
    return config


def grid_overrides(sweep: Sweep) -> list[str]:
    """Hydra multirun overrides of a grid: `key=v1,v2` per parameter (constants `key=v`)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    overrides = []
    for p in sweep.parameters:
        override = f"{p.key}=" + ",".join(str(v) for v in p.values)
        if len(p.values) > 1:  # Hydra's basic sweeper must split it back into the same values
            points = list(parser.parse_override(override).sweep_string_iterator())
            back = [parser.parse_override(f"{p.key}={s}").value() for s in points]
            if back != list(p.values):
                raise _fail(sweep.path, f"parameters.{p.key}", f"{p.values} do not survive a "
                            f"Hydra sweep ({override} gives {back})")  # fmt: skip
        overrides.append(override)
    return overrides


def sample_points(sweep: Sweep, count: int, seed: int = 0) -> list[list[str]]:
    """`count` random points, each a list of `key=value` overrides as `wandb agent` passes
    them (with replacement, as W&B's random search)."""
    import numpy as np
    from scipy import stats

    rng = np.random.default_rng(seed)
    points = []
    for _ in range(count):
        point = []
        for p in sweep.parameters:
            if p.distribution in ("constant", "categorical"):
                value = p.values[rng.choice(len(p.values), p=p.probabilities)]
            elif p.distribution == "int_uniform":  # inclusive of max, as in W&B
                value = int(stats.randint(p.low, p.high + 1).rvs(random_state=rng))
            elif p.distribution == "uniform":
                value = float(stats.uniform(p.low, p.high - p.low).rvs(random_state=rng))
            else:  # log_uniform_values
                value = float(stats.loguniform(p.low, p.high).rvs(random_state=rng))
            point.append(agent_arg(p.key, value))
        points.append(point)
    return points


def offline_commands(
    sweep: Sweep,
    extra: Sequence[str] = (),
    count: int | None = None,
    seed: int = 0,
    sweep_dir: Path | None = None,
) -> list[list[str]]:
    """The `pipelines/run.py -m` command lines that run the sweep here (see the module doc)."""

    if sweep.method == "bayes":
        raise ConfigError(
            f"{sweep.path}: method bayes needs the W&B service (it picks points from results); "
            "create it online (pipelines/sweep.py without --offline), or use grid / random here"
        )
    base = [sys.executable, str(REPO / sweep.program), "-m", *sweep.fixed_args, *extra]
    base.append("hydra.sweeper.params=null")  # an +experiment's own sweep is not the YAML's
    if not any(a.startswith("hydra.sweep.dir=") for a in extra):
        if sweep_dir is None:  # W&B group of the jobs: sweep-<name>-<stamp>
            stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
            sweep_dir = outputs_dir([*sweep.fixed_args, *extra]) / "sweeps" / sweep.name / stamp
        base.append(f"hydra.sweep.dir={sweep_dir}")
    if sweep.method == "grid":
        return [[*base, *grid_overrides(sweep)]]
    count = count or sweep.run_cap
    if not count:
        raise ConfigError(
            f"{sweep.path}: method random needs run_cap (the number of runs) in the file, "
            "or --count N"
        )
    points = sample_points(sweep, count, seed)
    return [
        [*base, *point, f"hydra.sweep.subdir={i}"]
        + ([] if i == len(points) - 1 else ["+hydra.callbacks.report.wandb=false"])
        for i, point in enumerate(points)
    ]


def run_offline(commands: list[list[str]]) -> int:
    """Run the commands one after the other (stop at the first failure); their exit status.
    Each is `[sys.executable, <program>, args...]` (`offline_commands`): the interpreter is
    this one, never a program named by the sweep file."""
    import subprocess

    for command in commands:
        if command[0] != sys.executable:
            raise ValueError(f"not a command of offline_commands: {command[:2]}")
        status = subprocess.run([sys.executable, *command[1:]], cwd=REPO).returncode
        if status:
            return status
    return 0


def create_wandb_sweep(sweep: Sweep, extra: Sequence[str] = ()) -> str:
    """Create the sweep on the W&B service; returns `entity/project/id` for `wandb agent`."""
    from omegaconf import OmegaConf

    if not wandb_api_key_present():
        raise ConfigError(
            "creating a W&B sweep needs an API key (set WANDB_API_KEY or run `wandb login`); "
            "or run it here with --offline, or print it with --dry-run"
        )
    import wandb

    defaults = OmegaConf.load(REPO / "conf" / "logger" / "wandb.yaml")
    project = sweep.raw.get("project") or defaults.project
    entity = sweep.raw.get("entity")
    sweep_id = wandb.sweep(sweep=wandb_sweep_config(sweep, extra), project=project, entity=entity)
    return "/".join(x for x in (entity, project, sweep_id) if x)


@contextlib.contextmanager
def wandb_agent_job() -> Iterator[AgentJob | None]:
    """Inside a process that `wandb agent` started: hide the agent's run from the stage runs,
    and hand back an `AgentJob` whose `finish(metrics)` reports to the sweep. Yields None
    outside an agent.

    Each stage makes its own W&B run; with the agent's WANDB_RUN_ID in the environment they
    would all take the agent's run id (and the sweep would see them as its runs).
    """
    held = {key: os.environ.pop(key) for key in AGENT_ENV if key in os.environ}
    try:
        yield AgentJob(held) if "WANDB_SWEEP_ID" in held else None
    finally:
        os.environ.update(held)


@dataclass
class AgentJob:
    env: dict[str, str]

    def finish(self, metrics: dict[str, float], save_dir: Path, mode: str = "online") -> str:
        """Log `metrics` ("<stage>/<metric>" -> value) into the agent's run, which the sweep
        controller reads `metric.name` from. Returns the run's directory."""
        import wandb

        os.environ.update(self.env)
        Path(save_dir, "wandb").mkdir(parents=True, exist_ok=True)
        run = wandb.init(
            id=self.env["WANDB_RUN_ID"], dir=str(save_dir), job_type="sweep", mode=mode,
            reinit="create_new", settings=wandb.Settings(silent=True, console="off"),
        )  # fmt: skip
        run.log(dict(metrics))
        run.summary.update(dict(metrics))
        run_dir = str(Path(run.dir).parent)
        run.finish()
        return run_dir

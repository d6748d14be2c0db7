"""What the `pipelines/*.py` entry points share: start-up checks, error reporting, the summary.

Every entry point calls `check_overrides()` before `@hydra.main` runs: the command line is
parsed the way Hydra parses it, composed once (the first value of each sweep) and converted to
the typed config, so an unknown key, a wrong type or a bad value ends as one line (exit 2)
before Hydra creates a run directory.
"""

from __future__ import annotations

import dataclasses
import difflib
import errno
import logging
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from bertforge.config import Config, to_config
from bertforge.errors import BertforgeError
from bertforge.pipeline.distributed import (
    end_distributed_job,
    export_submitit_environment,
    is_rank_zero,
    launched_externally,
    patch_lightning_hydra_relaunch,
)
from bertforge.pipeline.failures import configured_outputs, exit_interrupted, write_error_message
from bertforge.pipeline.report import write_job_record
from bertforge.pipeline.runs import hydra_job, hydra_run_name, register_resolvers
from bertforge.pipeline.sweeps import wandb_agent_job

EXIT_BAD_INPUT = 2
CONF_DIR = Path(__file__).resolve().parents[3] / "conf"  # the entry points' config_path
# errno values of a write that the user can fix (permissions, read-only or full disk, quota)
WRITE_ERRNOS = {
    errno.EACCES: "set paths.outputs to a directory you can write to",
    errno.EPERM: "set paths.outputs to a directory you can write to",
    errno.EROFS: "set paths.outputs to a directory on a writable file system",
    errno.ENOSPC: "free disk space or set paths.outputs to a disk with room",
    errno.EDQUOT: "free disk space (quota) or set paths.outputs to a disk with room",
    errno.EFBIG: "the file size limit (ulimit -f) was reached; raise it or write less",
}
HYDRA_ONLY_GROUPS = ("experiment", "hparams_search")  # conf/ groups that only set other keys

register_resolvers()


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(EXIT_BAD_INPUT)


def unknown_key_message(key: str, root: type = Config) -> str | None:
    """Why `key` (dotted, from a command-line override) is not a key the user may set, or None."""
    node: type = root
    parts = key.split(".")
    for depth, part in enumerate(parts):
        fields = {f.name: f for f in dataclasses.fields(node)}
        if part not in fields:
            where = ".".join(parts[:depth]) or "the top level"
            close = difflib.get_close_matches(part, fields, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            return (
                f"unknown config key '{key}'{hint}; keys under {where}: {', '.join(sorted(fields))}"
            )
        if source := fields[part].metadata.get("set_by"):
            return f"{key} is taken from {source}; remove the override {key}=..."
        field_type = fields[part].default_factory if depth < len(parts) - 1 else None
        if field_type is None or not dataclasses.is_dataclass(field_type):
            return None  # a leaf (or a non-dataclass container): Hydra checks the rest
        node = field_type
    return None


def unknown_option_message(group: str, value: str, conf_dir: Path = CONF_DIR) -> str | None:
    """Why `group=value` names no `conf/<group>/<value>.yaml` (value may be a sweep "a,b")."""
    options = sorted(p.stem for p in (conf_dir / group).glob("*.yaml"))
    if not options or "(" in value:  # not a group, or a sweep function such as choice(...)
        return None
    for option in value.split(","):
        if option not in options:
            return f"{group}={option} is not an option of the {group} group; choose one of " + (
                ", ".join(options)
            )
    return None


def check_overrides(
    argv: Sequence[str] | None = None,
    root: type = Config,
    conf_dir: Path = CONF_DIR,
    config_name: str = "config",
) -> None:
    """Fail fast, naming what is allowed, when an override names no config key or group
    option, has the wrong type or a bad value, or `paths.outputs` is not writable."""
    args = [a for a in (sys.argv[1:] if argv is None else argv) if not a.startswith("-")]
    parser = OverridesParser.create()
    first_values = []
    for arg in args:
        try:
            override = parser.parse_override(arg)
        except HydraException as exc:
            fail(
                f"cannot parse the override {arg!r} ({exc}); quote values with spaces as key='a b'"
            )
        key = override.key_or_group
        if not key.startswith("hydra") and key not in HYDRA_ONLY_GROUPS:
            raw = arg.split("=", 1)[1] if "=" in arg else ""
            message = unknown_option_message(key, raw, conf_dir) or unknown_key_message(key, root)
            if message:
                fail(message)
        if not override.is_sweep_override():
            first_values.append(arg)
        elif override.is_discrete_sweep():
            value = next(iter(override.sweep_string_iterator()))
            first_values.append(f"{'+' if override.is_add() else ''}{key}={value}")
    config = composed_config(first_values, root, conf_dir, config_name)
    check_writable(Path(config.paths.outputs).expanduser())


def composed_config(overrides: list[str], root: type, conf_dir: Path, config_name: str):
    """The typed config Hydra will compose from `overrides`; a bad one exits with one line."""
    try:
        with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
            return to_config(compose(config_name, overrides=overrides), root)
    except BertforgeError as exc:
        fail(str(exc))
    except (HydraException, OmegaConfBaseException) as exc:
        fail(omegaconf_message(exc))


def omegaconf_message(exc: BaseException) -> str:
    """One line from Hydra's / OmegaConf's multi-line composition errors, naming the key."""
    while exc.__cause__ is not None and not isinstance(exc, OmegaConfBaseException):
        exc = exc.__cause__
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    key = getattr(exc, "full_key", None)
    if key:
        return f"{key}: {first}; give a value of the type the schema declares (lists as [a,b])"
    return first


def check_writable(directory: Path) -> None:
    """Fail with the fix before Hydra creates its run directory in an unwritable place."""
    if directory.exists() and not directory.is_dir():
        fail(
            f"paths.outputs={directory} is a file, not a directory; set paths.outputs to a "
            "directory"
        )
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as exc:
        fixes = WRITE_ERRNOS | {
            errno.ENOTDIR: "set paths.outputs to a directory, not a file",
            errno.ENOENT: "set paths.outputs to a directory on a real file system",
            errno.EINVAL: "set paths.outputs to a directory on a real file system",
        }
        if exc.errno not in fixes:
            raise
        fail(f"paths.outputs={directory} is not writable ({exc.strerror}); {fixes[exc.errno]}")


def objective(config: Config, results) -> float | None:
    """The value of `optimized_metric` ("<stage>/<metric>") for Hydra sweepers such as Optuna."""
    if not config.optimized_metric:
        return None
    stage, _, metric = config.optimized_metric.partition("/")
    metrics = {r.stage: r.artifact.metrics for r in results}
    if metric not in metrics.get(stage, {}):
        fail(
            f"optimized_metric={config.optimized_metric} was not produced; "
            f"{stage} has: {', '.join(sorted(metrics.get(stage, {}))) or 'nothing (not run)'}"
        )
    return metrics[stage][metric]


def run_pipeline(cfg: DictConfig, only: list[str] | None = None) -> float | None:
    """Convert the config, run the stages, print the summary; bad input exits with status 2.

    Returns the `optimized_metric` value (None when unset), which `@hydra.main` hands to sweepers.
    """
    # Lightning prints through its own handler; don't print its records twice via Hydra's.
    logging.getLogger("lightning.pytorch").propagate = False
    own_ranks = not launched_externally()  # ranks this process starts are ended with its job
    try:
        config = to_config(cfg)
        config.run_name = config.run_name or hydra_run_name()
        from bertforge.pipeline.graph import Pipeline  # Lightning & co. once the config is valid
        from bertforge.pipeline.tracking import resolve_wandb_mode

        if config.trainer.num_threads:
            # Oversubscribed cores make OpenMP threads spin: 2 threads per job with 2 jobs on
            # 2 cores ran a training step 10x slower than 1 thread per job (measured).
            import torch

            torch.set_num_threads(config.trainer.num_threads)

        patch_lightning_hydra_relaunch()
        export_submitit_environment()
        overrides, job = hydra_job()
        with wandb_agent_job() as agent:  # under `wandb agent`: stage runs stay apart from it
            results = Pipeline(config, overrides, job).run(only)
            if agent is not None and is_rank_zero():
                agent.finish(flat_metrics(results), Path(config.paths.outputs),
                             mode=resolve_wandb_mode(config.logger))  # fmt: skip
    except BertforgeError as exc:
        fail(str(exc))
    except OmegaConfBaseException as exc:
        fail(omegaconf_message(exc))
    except OSError as exc:
        message = write_error_message(exc, configured_outputs(cfg))
        if message is None:
            raise
        fail(message)
    except KeyboardInterrupt as exc:
        exit_interrupted(exc, configured_outputs(cfg))
    finally:
        if own_ranks:
            end_distributed_job()
    if not is_rank_zero():
        return None
    print_summary(results, Path(config.paths.outputs))
    record_job(results)
    return objective(config, results)


def flat_metrics(results) -> dict[str, float]:
    """{"<stage>/<metric>": value} of every stage result."""
    return {f"{r.stage}/{k}": v for r in results for k, v in r.artifact.metrics.items()}


def record_job(results) -> None:
    """Write `pipeline.json` into the Hydra job directory, for `pipelines/report.py`."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        hydra_cfg = HydraConfig.get()
        write_job_record(
            Path(hydra_cfg.runtime.output_dir), list(hydra_cfg.overrides.task), results
        )


def print_summary(results, outputs: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    from bertforge.stages import GRAPH

    table = Table(title="bertforge pipeline")
    for column in ("stage", "status", "seconds", "key metrics", "artifact"):
        table.add_column(column, overflow="fold")
    wandb_runs = []
    for r in results:
        metrics = r.artifact.metrics
        shown = [f"{k}={metrics[k]:.4g}" for k in GRAPH[r.stage].summary if k in metrics]
        status = "reused" if r.artifact.reused else "built"
        table.add_row(r.stage, status, f"{r.seconds:.1f}", "\n".join(shown), str(r.artifact.path))
        wandb_runs += [run for run in r.artifact.manifest.get("wandb_runs", []) if run]
    console = Console(width=160)
    console.print(table)
    if wandb_runs:
        console.print("W&B runs (upload offline ones with `wandb sync <directory>`):")
        for run in wandb_runs:
            console.print(f"  {run}")
    for r in results:
        for name, path in r.artifact.manifest.get("figures", {}).items():
            console.print(f"figure {name}: {path}")
    console.print(f"artifacts: {outputs / 'artifacts'}")

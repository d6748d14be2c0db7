"""What the `pipelines/*.py` entry points share: running the pipeline, error reporting, the
summary. Every entry point first calls `overrides.check_overrides()` (before `@hydra.main`): the
command line is parsed the way Hydra parses it, composed once (the first value of each sweep)
and converted to the typed config, so an unknown key, a wrong type or a bad value ends as one
line (exit 2) before Hydra creates a run directory.
"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig

from bertforge.config import Config, to_config
from bertforge.pipeline.distributed import (
    end_distributed_job,
    export_submitit_environment,
    is_rank_zero,
    launched_externally,
    patch_lightning_hydra_relaunch,
)
from bertforge.pipeline.failures import one_line_failures
from bertforge.pipeline.overrides import fail
from bertforge.pipeline.report import write_job_record
from bertforge.pipeline.runs import hydra_job, hydra_run_name
from bertforge.pipeline.sweeps import wandb_agent_job


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
        with one_line_failures(cfg):
            config = to_config(cfg)
            config.run_name = config.run_name or hydra_run_name()
            from bertforge.pipeline.graph import Pipeline  # Lightning & co. once it is valid
            from bertforge.pipeline.tracking import resolve_wandb_mode

            if config.trainer.num_threads:
                # Oversubscribed cores make OpenMP threads spin: 2 threads per job with 2 jobs
                # on 2 cores ran a training step 10x slower than 1 thread per job (measured).
                import torch

                torch.set_num_threads(config.trainer.num_threads)

            patch_lightning_hydra_relaunch()
            export_submitit_environment()
            overrides, job = hydra_job()
            with wandb_agent_job() as agent:  # under `wandb agent`: stage runs stay apart
                results = Pipeline(config, overrides, job).run(only)
                if agent is not None and is_rank_zero():
                    agent.finish(flat_metrics(results), Path(config.paths.outputs),
                                 mode=resolve_wandb_mode(config.logger))  # fmt: skip
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

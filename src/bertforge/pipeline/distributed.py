"""Ranks under Hydra: who may write, how Lightning re-launches ranks, and clean-up between jobs.

Lightning's DDP launcher starts ranks 1..N-1 by re-running the script. Under Hydra it re-uses
`sys.argv`, which inside a multirun holds `-m` and the whole sweep: the child would run every job
into a sweep directory of its own. `patch_lightning_hydra_relaunch` makes the child run exactly
the current job (its own overrides) in the current job's output directory. After a job whose
ranks we launched ourselves, `end_distributed_job` tears the process group and the launcher's
environment down, so the next job of a sequential sweep launches fresh ranks.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

LAUNCHER_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE", "RANK")


def global_rank() -> int:
    """This process' global rank from the launcher's environment (0 when not distributed)."""
    for key in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        if key in os.environ:
            rank = int(os.environ[key])
            if key == "LOCAL_RANK":  # Lightning's own launcher sets NODE_RANK + LOCAL_RANK only
                devices = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
                rank += int(os.environ.get("NODE_RANK", "0")) * devices
            return rank
    return 0


def is_rank_zero() -> bool:
    return global_rank() == 0


def launched_externally() -> bool:
    """True when torchrun, Slurm or a parent rank started this process as one of several."""
    return any(key in os.environ for key in ("RANK", "LOCAL_RANK")) or (
        int(os.environ.get("SLURM_NTASKS", "1")) > 1
    )


def _job_relaunch_command(local_rank: int) -> tuple[Sequence[str], str]:
    from hydra.core.hydra_config import HydraConfig

    hydra_cfg = HydraConfig.get()
    command = [sys.executable, os.path.abspath(sys.argv[0]), *hydra_cfg.overrides.task]
    command += [
        f"hydra.run.dir={hydra_cfg.runtime.output_dir}",
        f"hydra.job.name={hydra_cfg.job.name}_rank{local_rank}",
        "hydra.output_subdir=null",
    ]
    return command, os.getcwd()


def patch_lightning_hydra_relaunch() -> None:
    """Make Lightning re-launch ranks with this job's overrides into this job's directory."""
    from lightning.pytorch.strategies.launchers import subprocess_script

    subprocess_script._hydra_subprocess_cmd = _job_relaunch_command


def export_submitit_environment() -> None:
    """Under submitit with several tasks per job, expose them to Lightning as torch ranks."""
    try:
        import submitit

        if submitit.JobEnvironment().num_tasks > 1:
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    except (ImportError, RuntimeError):
        pass  # not inside a submitit job


def end_distributed_job() -> None:
    """Destroy the process group and forget the launcher's environment (rank 0, own launch)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    for key in LAUNCHER_ENV:
        os.environ.pop(key, None)

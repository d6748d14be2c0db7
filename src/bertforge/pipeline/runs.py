"""Names of pipeline runs and jobs, the code version every run records, W&B credentials."""

from __future__ import annotations

import contextlib
import functools
import netrc
import os
import subprocess
import uuid
from datetime import datetime
from importlib import metadata
from pathlib import Path

from omegaconf import OmegaConf


def unique_suffix() -> str:
    """Six characters that tell apart runs started in the same second (also in a sweep)."""
    return uuid.uuid4().hex[:6]


def register_resolvers() -> None:
    """`${bertforge.unique:}` for Hydra's run and sweep directories (conf/config.yaml): two
    runs started in the same second no longer share a directory or a W&B group."""
    if not OmegaConf.has_resolver("bertforge.unique"):
        OmegaConf.register_new_resolver("bertforge.unique", unique_suffix, use_cache=True)


def default_run_name() -> str:
    return f"run-{datetime.now():%Y%m%d-%H%M%S}-{unique_suffix()}"


def hydra_run_name() -> str | None:
    """The Hydra run or sweep directory as a name ("sweep-2026-11-29-12-00-00-3f2a1c")."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return None
    hydra_cfg = HydraConfig.get()
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    directory = Path(hydra_cfg.sweep.dir if multirun else hydra_cfg.runtime.output_dir)
    return "-".join(("sweep" if multirun else "run", directory.parent.name, directory.name))


def hydra_job() -> tuple[list[str], str]:
    """(this job's command-line overrides, its label inside a sweep: "job3", or "")."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return [], ""
    hydra_cfg = HydraConfig.get()
    label = f"job{hydra_cfg.job.num}" if hydra_cfg.mode == RunMode.MULTIRUN else ""
    return list(hydra_cfg.overrides.task), label


@functools.cache
def code_version() -> dict[str, str | None]:
    """The bertforge version and, in a git checkout, the commit and whether it had changes."""
    version = None
    with contextlib.suppress(metadata.PackageNotFoundError):
        version = metadata.version("bertforge")
    commit, dirty = None, None
    try:
        here = Path(__file__).parent
        run = functools.partial(subprocess.run, capture_output=True, text=True, timeout=5, cwd=here)
        head = run(["git", "rev-parse", "HEAD"])
        if head.returncode == 0:
            commit = head.stdout.strip()
            dirty = str(bool(run(["git", "status", "--porcelain", "--untracked-files=no"]).stdout))
    except (OSError, subprocess.TimeoutExpired):
        pass
    return {"version": version, "git_commit": commit, "git_dirty": dirty}


def wandb_api_key_present() -> bool:
    """A W&B API key in the environment or ~/.netrc (what `wandb login` writes)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False

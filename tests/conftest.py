"""Shared test set-up: offline environment, config composition, tiny overrides, shared data."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.update(
    HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", WANDB_MODE="offline", WANDB_SILENT="true"
)
if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs one pytest worker per core: one BLAS/OpenMP thread each (and in the
    # processes they start), or the workers' threads wait on each other (10x slower steps).
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(var, "1")

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
SHARED_DATA = REPO.parent / "shared" / "data"

# A pipeline that runs in seconds: few documents, small vocabulary, a handful of steps.
TINY = [
    "corpus.max_documents=120",
    "tokenizer.vocab_size=800",
    "pretrain.max_seq_length=64",
    "pretrain.max_steps=6",
    "pretrain.global_batch_size=8",
    "pretrain.val_check_interval=3",
    "pretrain.limit_val_batches=2",
    "pretrain.checkpoint_every_n_steps=3",
    "finetune.max_steps=6",
    "finetune.global_batch_size=8",
    "task.max_examples=48",
    "evolution.perplexity=10",  # t-SNE needs 3 x perplexity < the 48 texts
    "evolution.n_iter=300",
    "logger=csv",
    "trainer.enable_progress_bar=false",
    "trainer.log_every_n_steps=2",
]


def compose(*overrides: str, outputs: Path | None = None):
    """The typed Config for these overrides, as the entry points build it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from bertforge.config import to_config

    extra = [f"paths.outputs={outputs}"] if outputs is not None else []
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return to_config(hydra_compose("config", overrides=[*overrides, *extra]))


@pytest.fixture(scope="session")
def tiny_upstream(tmp_path_factory) -> Path:
    """TINY's tokenizer, pretraining examples and pretraining (logged to W&B offline), built
    once per test session. Tests that need them start from a copy (`tiny_outputs`): artifacts
    are found by hash and inputs by content, so the copies are reused as they are."""
    from bertforge.pipeline.graph import Pipeline

    outputs = tmp_path_factory.mktemp("tiny_upstream")
    Pipeline(compose(*TINY, "logger=wandb", "run_name=tiny", outputs=outputs)).run(["pretrain"])
    return outputs


@pytest.fixture
def tiny_outputs(tiny_upstream, tmp_path) -> Path:
    """A private copy of the session's tiny upstream artifacts, as `paths.outputs`."""
    return copy_outputs(tiny_upstream, tmp_path / "outputs")


def copy_outputs(source: Path, target: Path) -> Path:
    """Copy an outputs tree's artifacts (not its W&B runs, locks or caches) to `target`."""
    shutil.copytree(
        source / "artifacts", target / "artifacts", ignore=shutil.ignore_patterns(".locks")
    )
    return target


def child_env() -> dict[str, str]:
    """This environment minus WANDB_SERVICE: W&B runs started in the test process set it, and
    a child would attach to that process' W&B service instead of starting its own."""
    return {key: value for key, value in os.environ.items() if key != "WANDB_SERVICE"}


def run_entry_point(script: str, *overrides: str, timeout: float = 300):
    """Run `pipelines/<script>` in a subprocess; returns the CompletedProcess."""
    return subprocess.run(
        [sys.executable, str(REPO / "pipelines" / script), *overrides],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env=child_env(),
    )


def start_entry_point(script: str, *overrides: str, log: bool = False) -> subprocess.Popen:
    """Start `pipelines/<script>` in its own process group (see `kill_group`). Its stderr is
    piped; with `log`, stdout (Hydra's log lines) and stderr are piped together to stdout."""
    return subprocess.Popen(
        [sys.executable, str(REPO / "pipelines" / script), *overrides],
        stdout=subprocess.PIPE if log else subprocess.DEVNULL,
        stderr=subprocess.STDOUT if log else subprocess.PIPE,
        text=True,
        cwd=REPO,
        env=child_env(),
        start_new_session=True,
    )


def kill_group(process: subprocess.Popen) -> None:
    """SIGKILL the process and everything it started (no cleanup handlers run)."""
    import signal

    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)


def requires_shared_data(*parts: str) -> Path:
    """The path under ../shared/data, or skip the test (a user's fresh clone has none)."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent (../shared/data ships with the team's checkout only)")
    return path

"""What the `pipelines/*.py` entry points share: override checks, error reporting, the summary."""

from __future__ import annotations

import dataclasses
import difflib
import errno
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from bertforge.config import Config, to_config
from bertforge.pipeline.distributed import (
    end_distributed_job,
    export_submitit_environment,
    is_rank_zero,
    launched_externally,
    patch_lightning_hydra_relaunch,
)
from bertforge.errors import BertforgeError
from bertforge.pipeline.failures import configured_outputs, exit_interrupted, write_error_message

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
SUMMARY_METRICS = {
    "tokenizer": ("vocab_size", "unk_rate", "tokens_per_word", "train_seconds"),
    "pretrain_data": ("train_examples", "validation_examples", "mean_length"),
    "pretrain": (
        "val_loss_mlm", "val_mlm_accuracy", "val_loss_nsp", "val_nsp_accuracy",
        "train_loss_first", "train_loss_last", "tokens_per_s", "padding_share", "train_seconds",
    ),
    "finetune": (
        "eval_accuracy", "eval_accuracy_std", "eval_f1", "eval_f1_std", "eval_mcc",
        "eval_mcc_std", "eval_pearson", "eval_pearson_std", "eval_spearman",
        "eval_accuracy_matched", "eval_accuracy_mismatched", "train_seconds",
    ),
    "extract": ("sentences", "hidden_size", "sentences_per_s"),
    "visualize": (
        "trustworthiness", "knn_accuracy_2d", "knn_accuracy_hd", "silhouette_2d", "kl_divergence",
        "umap_knn_accuracy_2d", "pca_knn_accuracy_2d",
    ),
}  # fmt: skip


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(EXIT_BAD_INPUT)


def unknown_key_message(key: str, root: type = Config) -> str | None:
    """Why `key` (dotted, from a command-line override) is not in the `root` schema, or None."""
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
    argv: Sequence[str] | None = None, root: type = Config, conf_dir: Path = CONF_DIR
) -> None:
    """Fail fast, listing what is allowed, when a `key=value` override names no config key or
    no option of a config group."""
    args = sys.argv[1:] if argv is None else argv
    for arg in args:
        if arg.startswith(("-", "+", "~", "hydra.", "hydra/")) or "=" not in arg:
            continue
        key, value = arg.split("=", 1)
        key = key.split("@", 1)[0]
        if key in HYDRA_ONLY_GROUPS:
            continue
        message = unknown_option_message(key, value, conf_dir) or unknown_key_message(key, root)
        if message:
            fail(message)
    check_writable(outputs_dir(args, conf_dir))


def outputs_dir(args: Sequence[str], conf_dir: Path = CONF_DIR) -> Path:
    """`paths.outputs` as the command line (last override) or conf/config.yaml sets it."""
    overrides = [a.split("=", 1)[1] for a in args if a.startswith("paths.outputs=")]
    if overrides:
        return Path(overrides[-1]).expanduser()
    from omegaconf import OmegaConf

    return Path(str(OmegaConf.load(conf_dir / "config.yaml").paths.outputs)).expanduser()


def check_writable(directory: Path) -> None:
    """Fail with the fix before Hydra creates its run directory in an unwritable place."""
    import tempfile

    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as exc:
        fixes = WRITE_ERRNOS | {errno.ENOTDIR: "set paths.outputs to a directory, not a file"}
        if exc.errno not in fixes:
            raise
        fail(f"paths.outputs={directory} is not writable ({exc.strerror}); {fixes[exc.errno]}")


def hydra_run_name() -> str | None:
    """The Hydra run or sweep directory as a name ("multirun-2026-11-29-12-00-00")."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return None
    hydra_cfg = HydraConfig.get()
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    directory = Path(hydra_cfg.sweep.dir if multirun else hydra_cfg.runtime.output_dir)
    return "-".join(("sweep" if multirun else "run", directory.parent.name, directory.name))


def objective(config: Config, results) -> float | None:
    """The value of `optimized_metric` ("<stage>/<metric>") for Hydra sweepers such as Optuna."""
    if not config.optimized_metric:
        return None
    stage, _, metric = config.optimized_metric.partition("/")
    metrics = {r.stage: r.artifact.metrics for r in results}
    if metric not in metrics.get(stage, {}):
        fail(
            f"optimized_metric={config.optimized_metric} was not produced; "
            f"{stage} has: {', '.join(sorted(metrics.get(stage, {})))}"
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
        from bertforge.pipeline.graph import Pipeline  # heavy imports only once the config is valid

        if config.trainer.num_threads:
            # Oversubscribed cores make OpenMP threads spin: 2 threads per job with 2 jobs on
            # 2 cores ran a training step 10x slower than 1 thread per job (measured).
            import torch

            torch.set_num_threads(config.trainer.num_threads)

        patch_lightning_hydra_relaunch()
        export_submitit_environment()
        results = Pipeline(config).run(only)
    except BertforgeError as exc:
        fail(str(exc))
    except OmegaConfBaseException as exc:
        fail(str(exc).splitlines()[0])
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


def record_job(results) -> None:
    """Write `pipeline.json` into the Hydra job directory, for `pipelines/report.py`."""
    from hydra.core.hydra_config import HydraConfig

    from bertforge.pipeline.report import write_job_record

    if HydraConfig.initialized():
        hydra_cfg = HydraConfig.get()
        write_job_record(
            Path(hydra_cfg.runtime.output_dir), list(hydra_cfg.overrides.task), results
        )


def print_summary(results, outputs: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="bertforge pipeline")
    for column in ("stage", "status", "seconds", "key metrics", "artifact"):
        table.add_column(column, overflow="fold")
    wandb_runs = []
    for r in results:
        metrics = r.artifact.metrics
        shown = [f"{k}={metrics[k]:.4g}" for k in SUMMARY_METRICS.get(r.stage, ()) if k in metrics]
        status = "reused" if r.artifact.reused else "built"
        table.add_row(r.stage, status, f"{r.seconds:.1f}", "\n".join(shown), str(r.artifact.path))
        wandb_runs += [run for run in r.artifact.manifest.get("wandb_runs", []) if run]
    console = Console(width=160)
    console.print(table)
    if wandb_runs:
        console.print("W&B runs (offline ones upload with `wandb sync <dir>`):")
        for run in wandb_runs:
            console.print(f"  {run}")
    for r in results:
        for name, path in r.artifact.manifest.get("figures", {}).items():
            console.print(f"figure {name}: {path}")
    console.print(f"artifacts: {outputs / 'artifacts'}")

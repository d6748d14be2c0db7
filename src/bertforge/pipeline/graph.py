"""The stage graph: one method per stage, each resolving its upstream through the artifact store.

    tokenizer ──► pretrain_data ──► pretrain ──► finetune ──► extract ──► visualize
        └────────────────────────────┴─────────────┘

Every stage hashes the config slice that determines its result (plus upstream hashes), reuses a
complete artifact with that hash, or builds it under a lock. Asking for `pretrain` alone builds
a missing tokenizer first; `force=true` rebuilds only the stages that were asked for.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from bertforge.config import STAGES, Config
from bertforge.errors import DataError
from bertforge.pipeline.store import Artifact, ArtifactStore, BuildContext
from bertforge.pipeline.tracking import StageLoggers

log = logging.getLogger(__name__)

# Keys of `pretrain` that change how a run is watched, not what it computes.
PRETRAIN_UNHASHED = (
    "val_check_interval", "limit_val_batches", "checkpoint_every_n_steps", "micro_batch_size",
    "num_workers",
)  # fmt: skip
DISTRIBUTED_STAGES = ("pretrain", "finetune")  # their builders train with every rank
VISUALIZE_UNHASHED = ("n_jobs",)
FINETUNE_UNHASHED = (
    "micro_batch_size", "num_workers", "sample_predictions", "export", "checkpoint_every_n_steps",
)  # fmt: skip
PRETRAIN_DATA_KEYS = ("objective", "max_seq_length", "short_seq_prob", "dupe_factor")


@dataclass(frozen=True)
class StageResult:
    stage: str
    artifact: Artifact
    seconds: float


def default_run_name() -> str:
    return datetime.now().strftime("run-%Y%m%d-%H%M%S")


class Pipeline:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.outputs = Path(cfg.paths.outputs)
        self.store = ArtifactStore(self.outputs / "artifacts")
        self.group = cfg.logger.group or cfg.run_name or default_run_name()
        self.results: dict[str, StageResult] = {}
        self.forced: set[str] = set()  # with force=true: the stages asked for, not upstream

    def run(self, stages: list[str] | None = None) -> list[StageResult]:
        """Run the requested stages (default: `cfg.stages`) in graph order."""
        wanted = stages or self.cfg.stages
        self.forced = set(wanted) if self.cfg.force else set()
        for stage in STAGES:
            if stage in wanted:
                getattr(self, stage)()
        return [self.results[s] for s in self.results if s in wanted]

    # -- plumbing ---------------------------------------------------------------------------

    def _build(self, stage: str, config: dict, upstream: dict[str, Artifact], builder) -> Artifact:
        if stage in self.results:
            return self.results[stage].artifact
        started = time.perf_counter()
        artifact = self.store.build(
            stage,
            config,
            upstream,
            builder,
            force=stage in self.forced,
            distributed=stage in DISTRIBUTED_STAGES,
        )
        self.results[stage] = StageResult(stage, artifact, time.perf_counter() - started)
        return artifact

    def _loggers(
        self, ctx: BuildContext, config: dict[str, Any], suffix: str = "", resume_from=None
    ) -> StageLoggers:
        """Loggers for a run of this stage; `resume_from`: the training directory whose last
        checkpoint names the W&B run to continue (an interrupted build resuming)."""
        from bertforge.lit.trainer import checkpoint_run_id

        loggers = StageLoggers(
            self.cfg.logger,
            stage=ctx.stage,
            group=self.group,
            artifact_dir=ctx.path,
            outputs=self.outputs,
            config={"stage_hash": ctx.hash, "seed": self.cfg.seed, **config},
            run_suffix=suffix,
            resume_id=checkpoint_run_id(resume_from) if resume_from else None,
        )
        ctx.extra.setdefault("wandb_runs", []).append(loggers.wandb_run_path)
        return loggers

    # -- stages -----------------------------------------------------------------------------

    def tokenizer(self) -> Artifact:
        config = {"corpus": asdict(self.cfg.corpus), "tokenizer": asdict(self.cfg.tokenizer)}
        return self._build("tokenizer", config, {}, lambda ctx: self._train_tokenizer(ctx, config))

    def _train_tokenizer(self, ctx: BuildContext, config: dict) -> dict[str, float]:
        from bertforge.data.corpus import load_documents
        from bertforge.data.tokenizer import save_tokenizer, tokenizer_metrics, train_tokenizer

        train, held_out = split_texts(load_documents(self.cfg.corpus))
        with self._loggers(ctx, config) as loggers:
            started = time.perf_counter()
            tokenizer = train_tokenizer(train, self.cfg.tokenizer)
            seconds = time.perf_counter() - started
            save_tokenizer(tokenizer, ctx.path)
            metrics = tokenizer_metrics(tokenizer, held_out) | {
                "train_seconds": seconds,
                "train_documents": len(train),
                "train_megabytes": sum(len(t.encode()) for t in train) / 1e6,
            }
            loggers.log_metrics({f"tokenizer/{k}": v for k, v in metrics.items()})
            loggers.log_artifact(ctx.path, f"tokenizer-{ctx.hash}", "tokenizer")
        return metrics

    def pretrain_data(self) -> Artifact:
        tokenizer = self.tokenizer()
        config = {
            "corpus": asdict(self.cfg.corpus),
            "seed": self.cfg.seed,
            **{key: getattr(self.cfg.pretrain, key) for key in PRETRAIN_DATA_KEYS},
        }
        return self._build(
            "pretrain_data",
            config,
            {"tokenizer": tokenizer},
            lambda ctx: self._build_pretrain_data(ctx, tokenizer),
        )

    def _build_pretrain_data(self, ctx: BuildContext, tokenizer_artifact: Artifact) -> dict:
        from bertforge.data.corpus import load_documents
        from bertforge.data.pretraining import write_pretraining_examples

        return write_pretraining_examples(
            load_documents(self.cfg.corpus),
            tokenizer_dir=tokenizer_artifact.path,
            out_dir=ctx.path,
            cfg=self.cfg.pretrain,
            seed=self.cfg.seed,
        )

    def pretrain(self) -> Artifact:
        tokenizer = self.tokenizer()
        data = self.pretrain_data()
        pretrain = {
            k: v for k, v in asdict(self.cfg.pretrain).items() if k not in PRETRAIN_UNHASHED
        }
        config = {
            "model": asdict(self.cfg.model),
            "pretrain": pretrain,
            "precision": self.cfg.trainer.precision,
            "seed": self.cfg.seed,
        }
        return self._build(
            "pretrain",
            config,
            {"tokenizer": tokenizer, "pretrain_data": data},
            lambda ctx: self._pretrain(ctx, config),
        )

    def _pretrain(self, ctx: BuildContext, config: dict) -> dict[str, float]:
        from bertforge.stages.pretrain import run_pretraining

        with self._loggers(ctx, config, resume_from=ctx.path) as loggers:
            return run_pretraining(self.cfg, ctx, loggers)

    def finetune(self) -> Artifact:
        from bertforge.stages.finetune import run_finetuning

        f = self.cfg.finetune
        finetune = {k: v for k, v in asdict(f).items() if k not in FINETUNE_UNHASHED}
        config = {
            "task": asdict(self.cfg.task),
            "finetune": finetune,
            "precision": self.cfg.trainer.precision,
        }
        upstream: dict[str, Artifact] = {}
        if f.init == "pretrained":
            upstream = {"tokenizer": self.tokenizer(), "pretrain": self.pretrain()}
        elif f.init == "random":
            upstream = {"tokenizer": self.tokenizer()}
            config["model"] = asdict(self.cfg.model)
        return self._build(
            "finetune",
            config,
            upstream,
            lambda ctx: run_finetuning(
                self.cfg, ctx, lambda suffix, work_dir: self._loggers(ctx, config, suffix, work_dir)
            ),
        )

    def _encoder_upstream(self) -> dict[str, Artifact]:
        """The artifacts holding the model that `extract.source` names."""
        source = self.cfg.extract.source
        if source == "finetune":
            return {"finetune": self.finetune()}
        if source == "pretrain":
            return {"tokenizer": self.tokenizer(), "pretrain": self.pretrain()}
        return {}

    def extract(self) -> Artifact:
        from bertforge.stages.extract import run_extraction

        e = self.cfg.extract
        config: dict[str, Any] = {"extract": asdict(e)}
        if e.dataset == "task":
            config["task"] = asdict(self.cfg.task)
        else:
            config["corpus"] = asdict(self.cfg.corpus)
        return self._build(
            "extract", config, self._encoder_upstream(), lambda ctx: run_extraction(self.cfg, ctx)
        )

    def visualize(self) -> Artifact:
        from bertforge.stages.visualize import run_visualization

        v = {k: x for k, x in asdict(self.cfg.visualize).items() if k not in VISUALIZE_UNHASHED}
        config = {"visualize": v, "seed": self.cfg.seed}
        upstream = {"extract": self.extract(), **self._encoder_upstream()}

        def build(ctx: BuildContext) -> dict[str, float]:
            with self._loggers(ctx, config) as loggers:
                return run_visualization(self.cfg, ctx, loggers)

        return self._build("visualize", config, upstream, build)


def split_texts(documents) -> tuple[list[str], list[str]]:
    """Training texts and held-out texts (validation/test documents, else the last 5%)."""
    train = [d.text for d in documents if d.split == "train"]
    held_out = [d.text for d in documents if d.split != "train"]
    if not train:
        raise DataError("the corpus has no documents in its training split; add more documents")
    if not held_out:
        n = max(1, len(train) // 20)
        train, held_out = (train[:-n], train[-n:]) if len(train) > n else (train, train)
    return train, held_out

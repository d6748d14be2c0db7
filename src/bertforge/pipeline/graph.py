"""The pipeline: resolves each stage through the artifact store, upstream first.

A stage's artifact hash covers its settings (every field not marked watch-only; input paths by
content, see `pipeline/fingerprint.py`) and the hashes of its upstream artifacts. A complete
artifact with that hash is reused; otherwise the stage builds it under a lock. Asking for
`pretrain` alone builds a missing tokenizer first; `force=true` rebuilds only the stages that
were asked for. Before anything builds, every needed stage's inputs are fingerprinted and its
cheap checks run, so a missing task file fails in the first second, not after pretraining.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bertforge.config import Config
from bertforge.errors import ConfigError
from bertforge.lit.trainer import checkpoint_run_id
from bertforge.pipeline.distributed import is_rank_zero
from bertforge.pipeline.fingerprint import Fingerprints
from bertforge.pipeline.runs import code_version, default_run_name
from bertforge.pipeline.stage import BuildContext, Stage, hashed_view
from bertforge.pipeline.store import Artifact, ArtifactStore, Build, config_hash
from bertforge.pipeline.tracking import StageLoggers
from bertforge.stages import GRAPH

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StageResult:
    stage: str
    artifact: Artifact
    seconds: float


class Pipeline:
    def __init__(
        self, cfg: Config, overrides: list[str] = (), job: str = "", graph: dict = GRAPH
    ) -> None:
        """`overrides`: the command line's, for W&B tags; `job`: this job's label inside a
        sweep ("job3"), so that run names stay unique in the sweep's group."""
        self.cfg = cfg
        self.graph: dict[str, Stage] = graph
        self.outputs = Path(cfg.paths.outputs)
        self.store = ArtifactStore(self.outputs / "artifacts")
        self.fingerprints = Fingerprints(self.outputs / "cache" / "fingerprints.sqlite")
        self.group = cfg.logger.group or cfg.run_name or default_run_name()
        self.overrides, self.job = list(overrides), job
        self.results: dict[str, StageResult] = {}
        self.forced: set[str] = set()  # with force=true: the stages asked for, not upstream
        self._settings: dict[str, Any] = {}
        self._hashed: dict[str, dict] = {}
        self._inputs: dict[str, dict] = {}

    # -- what a run needs ---------------------------------------------------------------------

    def wanted(self, stages: list[str] | None = None) -> list[str]:
        """The stages asked for (default `cfg.stages`, else every stage), in graph order."""
        asked = stages or self.cfg.stages or list(self.graph)
        unknown = [name for name in asked if name not in self.graph]
        if unknown:
            raise ConfigError(
                f"stages={list(asked)} names {', '.join(unknown)}, not a stage; choose from "
                f"{', '.join(self.graph)}"
            )
        return [name for name in self.graph if name in asked]

    def needed(self, names: list[str]) -> list[str]:
        """`names` and everything upstream of them, in graph order."""
        found: set[str] = set()

        def visit(name: str) -> None:
            if name not in found:
                found.add(name)
                for up in self.graph[name].upstream(self.settings(name)):
                    visit(up)

        for name in names:
            visit(name)
        return [name for name in self.graph if name in found]

    def settings(self, name: str) -> Any:
        if name not in self._settings:
            self._settings[name] = self.graph[name].settings_of(self.cfg)
        return self._settings[name]

    def hashed(self, name: str) -> dict:
        """What determines stage `name`'s result (its artifact hash, before upstream hashes)."""
        if name not in self._hashed:
            inputs: dict[str, dict] = {}

            def fingerprint(key: str, value: str, kind: str) -> dict:
                inputs[key] = {"path": str(value), **self.fingerprints.of(key, value, kind)}
                return {k: v for k, v in inputs[key].items() if k != "path"}

            self._hashed[name] = hashed_view(self.settings(name), fingerprint)
            self._inputs[name] = inputs
        return self._hashed[name]

    def check(self, names: list[str]) -> None:
        """Fail before any build: fingerprint every needed stage's inputs (a missing file is a
        one-line error) and run the stages' cheap checks."""
        for name in self.needed(names):
            self.hashed(name)
            if self.graph[name].check is not None:
                self.graph[name].check(self.settings(name))

    # -- running --------------------------------------------------------------------------------

    def run(self, stages: list[str] | None = None) -> list[StageResult]:
        """Build or reuse the requested stages (and what they need) in graph order."""
        wanted = self.wanted(stages)
        self.forced = set(wanted) if self.cfg.force else set()
        self.check(wanted)
        for name in wanted:
            self.artifact(name)
        return [self.results[name] for name in wanted]

    def artifact(self, name: str) -> Artifact:
        """Stage `name`'s complete artifact: reused, or built after its upstream."""
        if name in self.results:
            return self.results[name].artifact
        stage, settings = self.graph[name], self.settings(name)
        upstream = {up: self.artifact(up) for up in stage.upstream(settings)}
        config = self.hashed(name)
        started = time.perf_counter()

        def builder(build: Build) -> dict[str, float]:
            build.extra["inputs"] = self._inputs[name]
            ctx = BuildContext(
                name, build.hash, build.path, settings, upstream, self._open_loggers, build.extra
            )
            return dict(stage.build(ctx))

        artifact = self.store.build(
            name,
            config,
            upstream,
            builder,
            force=name in self.forced,
            distributed=stage.distributed,
        )
        self.results[name] = StageResult(name, artifact, time.perf_counter() - started)
        if artifact.reused:
            self._record_reuse(artifact, upstream)
        return artifact

    def artifact_hash(self, name: str) -> str:
        """The hash of stage `name`'s artifact (its upstream resolved first), built or not."""
        upstream = self.graph[name].upstream(self.settings(name))
        return config_hash(self.hashed(name), {up: self.artifact(up).hash for up in upstream})

    # -- tracking -------------------------------------------------------------------------------

    def lineage(self, name: str) -> list[str]:
        """`name` and every stage upstream of it, in graph order."""
        return self.needed([name])

    def run_config(self, name: str) -> dict[str, Any]:
        """What a W&B run of stage `name` records: the resolved settings of every stage that
        determines its result, the artifact hashes, the command line and the code version."""
        config: dict[str, Any] = {}
        for stage in self.lineage(name):
            _merge(config, asdict(self.settings(stage)))
        hashes = {s: self.results[s].artifact.hash for s in self.lineage(name) if s in self.results}
        return config | {
            "artifacts": {s: f"{s}-{h}" for s, h in hashes.items()},
            "overrides": self.overrides,
            "code": code_version(),
            "job": self.job,
        }

    def _open_loggers(
        self, ctx: BuildContext, suffix: str = "", resume_from: Path | None = None, **extra
    ) -> StageLoggers:
        config = self.run_config(ctx.stage) | {"stage_hash": ctx.hash, **extra}
        config["artifacts"][ctx.stage] = f"{ctx.stage}-{ctx.hash}"
        loggers = StageLoggers(
            self.cfg.logger,
            stage=ctx.stage,
            group=self.group,
            name="-".join(part for part in (self.job, ctx.stage, suffix) if part),
            artifact_dir=ctx.path,
            outputs=self.outputs,
            config=config,
            tags=self.overrides,
            run_suffix=suffix,
            resume_id=checkpoint_run_id(resume_from) if resume_from else None,
            uses=[f"{a.stage}-{a.hash}" for a in ctx.upstream.values()],
        )
        ctx.extra.setdefault("wandb_runs", []).append(loggers.wandb_run_path)
        return loggers

    def _record_reuse(self, artifact: Artifact, upstream: dict[str, Artifact]) -> None:
        """A short W&B run (job_type = the stage, reused=true) with the reused artifact's
        metrics, so that every arm of a sweep is in its group even when nothing was built."""
        if self.cfg.logger.backend != "wandb" or not is_rank_zero():
            return
        ctx = BuildContext(
            artifact.stage, artifact.hash, artifact.path, self.settings(artifact.stage),
            upstream, self._open_loggers, {},
        )  # fmt: skip
        with self._open_loggers(
            ctx, "reused", reused=True, artifact_path=str(artifact.path)
        ) as run:
            run.log_summary({f"{artifact.stage}/{k}": v for k, v in artifact.metrics.items()})
            run.use_artifact(f"{artifact.stage}-{artifact.hash}")


def _merge(into: dict, new: dict) -> None:
    """Deep-merge `new` into `into` (a stage reading part of a group adds to the whole)."""
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value

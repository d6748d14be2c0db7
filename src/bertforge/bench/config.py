"""Typed schema of `python pipelines/benchmark.py` (primary config `conf/benchmark.yaml`).

It is registered with Hydra's ConfigStore as `benchmark_schema`, apart from the pipeline's
`Config`: a misspelt `benchmark.*` key fails while Hydra composes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig

from bertforge.checks import check_choice
from bertforge.config import PathsConfig, PretrainConfig, TokenizerConfig, to_config
from bertforge.errors import ConfigError

SUITES = ("tokenizer", "pretokenize", "pretrain", "experiments", "dataloader", "tsne")
EXPERIMENTS = (
    "masked_mlm", "combined", "unpad", "prune_last_layer", "fast_dropout", "fused_qkv",
    "length_bucketing", "adamw", "threads", "compile", "bf16",
)  # fmt: skip
PRECISIONS = ("auto", "32-true", "bf16-mixed")


@dataclass
class PretrainCase:
    """One pretraining-step comparison: a `conf/model/<model>.yaml` preset at one shape."""

    model: str = "bert_mini"
    seq_len: int = 128  # max_seq_length of the NSP examples (batches pad to their longest row)
    batch_size: int = 32
    device: str = "cpu"  # cpu | cuda (cuda cases are skipped, with a note, without a GPU)

    def __post_init__(self) -> None:
        check_choice("benchmark case device", self.device, ("cpu", "cuda"))
        if self.seq_len < 8 or self.batch_size < 1:
            raise ConfigError(
                f"benchmark case {self.model}: seq_len={self.seq_len} must be >= 8 and "
                f"batch_size={self.batch_size} >= 1"
            )


def default_cases() -> list[PretrainCase]:
    return [
        PretrainCase("bert_tiny", 128, 32, "cpu"),
        PretrainCase("bert_mini", 128, 32, "cpu"),
        PretrainCase("bert_small", 128, 32, "cpu"),
        PretrainCase("bert_base", 128, 64, "cuda"),
        PretrainCase("bert_base", 512, 16, "cuda"),
    ]


@dataclass
class BenchmarkConfig:
    suites: list[str] = field(default_factory=lambda: list(SUITES))
    cases: list[PretrainCase] = field(default_factory=default_cases)
    steps: int = 10  # timed training steps per implementation (the median is reported)
    warmup: int = 2  # untimed steps before them
    precision: str = "auto"  # auto: 32-true on CPU, bf16-mixed on CUDA
    # Optimisations, each measured against its baseline on `experiment_case` (same batches).
    experiments: list[str] = field(
        default_factory=lambda: [
            "masked_mlm",
            "combined",
            "unpad",
            "prune_last_layer",
            "fast_dropout",
            "fused_qkv",
            "length_bucketing",
            "adamw",
            "bf16",
            "threads",
        ]
    )
    experiment_case: PretrainCase = field(default_factory=PretrainCase)
    bucket_window: int = 64  # length bucketing: batches per window sorted by length
    # Data: the embedded BBC News corpus (train split), as the pipeline builds it.
    max_documents: int | None = None  # first N documents only (quick runs)
    # The pipeline's own stage settings (not copies): the tokenizer, and pretraining's data and
    # optimiser settings (max_seq_length comes from each case, the schedule is not used).
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    tokenizer_repeats: int = 2  # tokenizer trainings per implementation (median)
    dataloader_batches: int = 30
    tsne_sizes: list[int] = field(default_factory=lambda: [2000])
    tsne_dims: list[int] = field(default_factory=lambda: [64])
    threads: int | None = None  # torch.set_num_threads before measuring; null: torch's default
    peak_tflops: float | None = None  # dense bf16 peak of the device for MFU; null: look it up

    def __post_init__(self) -> None:
        for suite in self.suites:
            check_choice("benchmark.suites", suite, SUITES)
        for name in self.experiments:
            check_choice("benchmark.experiments", name, EXPERIMENTS)
        check_choice("benchmark.precision", self.precision, PRECISIONS)
        if self.steps < 1 or self.warmup < 0:
            raise ConfigError("benchmark.steps must be >= 1 and benchmark.warmup >= 0")
        if self.max_documents is not None and self.max_documents < 2:
            raise ConfigError("benchmark.max_documents must be >= 2 (NSP pairs need two)")
        for key in ("tokenizer_repeats", "dataloader_batches", "bucket_window"):
            if getattr(self, key) < 1:
                raise ConfigError(f"benchmark.{key} must be >= 1")


@dataclass
class BenchmarkRunConfig:
    seed: int = 0
    paths: PathsConfig = field(default_factory=PathsConfig)
    benchmark: BenchmarkConfig = field(default_factory=BenchmarkConfig)


def register_configs() -> None:
    ConfigStore.instance().store(name="benchmark_schema", node=BenchmarkRunConfig)


def to_benchmark_config(cfg: DictConfig | BenchmarkRunConfig) -> BenchmarkRunConfig:
    """Hydra's composed DictConfig as the typed `BenchmarkRunConfig` (runs `__post_init__`)."""
    return to_config(cfg, BenchmarkRunConfig)


register_configs()

"""Typed config schemas, registered with Hydra's ConfigStore; the one home of every default.

`conf/config.yaml` starts its defaults list with `config_schema`, so every YAML file merges onto
these dataclasses: a misspelt key or a wrongly typed value fails while Hydra composes. The YAML
files only say what an option changes (tests/test_config.py checks that none repeats a default).
The entry points convert the composed DictConfig once (`to_config`); nothing below them sees a
DictConfig. Value checks that types cannot express live in `__post_init__` (`ConfigError`).

What enters a stage's artifact hash is read off these fields (`pipeline/stage.py`): every field
is hashed unless marked `watch_only()` (it changes how a run is watched, not what it computes);
a field marked `input_path()` names a file or directory and is hashed by its content (markers in
`schema_fields.py`). The analysis stages' schemas live in `analysis_config.py`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from bertforge.analysis_config import EvolutionConfig, ExtractConfig, ProbeConfig, VisualizeConfig
from bertforge.checks import (
    check_choice,
    check_positive,
    check_regex,
    check_seed,
    check_seeds,
    check_share,
    check_steps,
)
from bertforge.data.task_subsets import check_subset_keys
from bertforge.data.tasks import TASKS  # the task registry names the tasks
from bertforge.errors import ConfigError
from bertforge.model import BertConfig
from bertforge.schema_fields import input_path, watch_only

__all__ = [
    "EvolutionConfig",
    "ExtractConfig",
    "ProbeConfig",
    "VisualizeConfig",
    "input_path",
    "watch_only",
]


@dataclass
class PathsConfig:
    outputs: str = "outputs"  # every file a run writes goes below this directory


@dataclass
class CorpusConfig:
    """Pretraining text. `source` is set by the chosen `corpus=` group option; text files
    (`path`, `extra_paths`) are read as `format` says."""

    source: str = "embedded"  # embedded | text_files | hf_dataset
    path: str | None = input_path()  # text_files: file, directory or glob; hf_dataset: local
    name: str | None = None  # hf_dataset: dataset name on the Hub
    config_name: str | None = None
    split: str = "train"
    text_column: str = "text"  # hf_dataset; format=lines: the column of a .tsv / .csv file
    max_documents: int | None = None  # keep only the first N documents (quick runs)
    # Text files added to any source (each a file, directory or glob, read like corpus.path)
    extra_paths: list[str] = input_path(many=True)
    format: str = "documents"  # documents: a file or blank-line block each | lines: a line each
    document_marker: str | None = None  # documents: a regex; matching lines start a document

    def __post_init__(self) -> None:
        check_choice("corpus.source", self.source, ("embedded", "text_files", "hf_dataset"))
        check_choice("corpus.format", self.format, ("documents", "lines"))
        if self.source == "text_files" and not self.path:
            raise ConfigError("corpus=text_files needs corpus.path=<file, directory or glob>")
        if self.source == "hf_dataset" and not (self.name or self.path):
            raise ConfigError("corpus=hf_dataset needs corpus.name=<dataset> or corpus.path=<dir>")
        if self.max_documents is not None and self.max_documents < 1:
            raise ConfigError("corpus.max_documents must be >= 1 (or null for all documents)")
        if self.document_marker is not None:
            check_regex("corpus.document_marker", self.document_marker)
            if self.format == "lines":
                raise ConfigError("corpus.document_marker is for corpus.format=documents")


SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


@dataclass
class TokenizerConfig:
    source: str = "train"  # train (WordPiece on the corpus) | hf (tokenizer.hf_model's own)
    hf_model: str | None = input_path("hf_model")  # source=hf: checkpoint dir (or Hub name)
    vocab_size: int = 8000  # this and the keys below: source=train only
    min_frequency: int = 2
    lowercase: bool = True
    strip_accents: bool = True  # removes combining marks only: Hangul syllables stay whole
    unicode_normalization: str = "NFC"  # NFC | NFKC | none
    limit_alphabet: int = 1000

    def __post_init__(self) -> None:
        check_choice("tokenizer.source", self.source, ("train", "hf"))
        if self.source == "hf" and not self.hf_model:
            raise ConfigError("tokenizer.source=hf needs tokenizer.hf_model=<checkpoint dir>")
        if self.vocab_size <= len(SPECIAL_TOKENS):
            raise ConfigError(
                f"tokenizer.vocab_size={self.vocab_size} leaves no room beside the "
                f"{len(SPECIAL_TOKENS)} special tokens; use a value above {len(SPECIAL_TOKENS)}"
            )
        if self.min_frequency < 1:
            raise ConfigError("tokenizer.min_frequency must be >= 1")
        check_choice(
            "tokenizer.unicode_normalization", self.unicode_normalization, ("NFC", "NFKC", "none")
        )


@dataclass
class ExampleConfig:
    """How the corpus becomes pretraining examples: the part of `pretrain` that determines the
    pretrain_data artifact (`PretrainConfig` adds the training keys under the same group)."""

    objective: str = "mlm_nsp"  # mlm_nsp (BERT's two objectives) | mlm_only (single segments)
    max_seq_length: int = 128  # tokens per example, [CLS] and [SEP] included
    short_seq_prob: float = 0.1  # share of examples with a shorter random target length
    dupe_factor: int = 2  # passes over the corpus with different NSP pairings
    # Characters tokenised at a time while building the examples: bounds that step's memory
    # (~300 bytes a character in flight); the examples are the same for any value.
    tokenize_chunk_chars: int = watch_only(100_000)

    def __post_init__(self) -> None:
        check_choice("pretrain.objective", self.objective, ("mlm_nsp", "mlm_only"))
        if self.max_seq_length < 8:
            raise ConfigError(
                f"pretrain.max_seq_length={self.max_seq_length} is too short for "
                "[CLS] A [SEP] B [SEP]; use at least 8"
            )
        check_share("pretrain.short_seq_prob", self.short_seq_prob)
        for key in ("dupe_factor", "tokenize_chunk_chars"):
            if getattr(self, key) < 1:
                raise ConfigError(f"pretrain.{key}={getattr(self, key)} must be >= 1")


@dataclass
class PretrainConfig(ExampleConfig):
    init: str = "random"  # random (shape: model.*) | hf: continue pretraining pretrain.hf_model
    hf_model: str | None = input_path("hf_model")  # init=hf: its shape, weights and MLM/NSP heads
    mask_rate: float = 0.15  # share of tokens that become MLM targets (80/10/10)
    max_steps: int = 600
    global_batch_size: int = 32  # examples per optimizer step, whatever the device count
    lr: float = 2e-3  # peak learning rate
    # linear: linear warmup, linear decay to 0 | trapezoidal (warmup-stable-decay): linear
    # warmup, constant, linear decay to 0 over the last decay_ratio of the steps | one_cycle:
    # torch's OneCycleLR (cosine rise from lr/25 over the warmup, cosine fall to lr/25e4)
    lr_schedule: str = "linear"
    warmup_ratio: float = 0.06  # share of the steps spent warming up
    decay_ratio: float = 0.2  # trapezoidal: share of the steps spent decaying
    weight_decay: float = 0.01  # not on biases and LayerNorm
    adam_betas: tuple[float, float] = (0.9, 0.98)
    adam_eps: float = 1e-6
    gradient_clip_val: float = 1.0
    # > 0: batches of similar length, drawn from shuffled windows of this many batches (less
    # padding: +15-18 % tokens/s for bert_mini on CPU, benchmark). 0: plain shuffled batches.
    length_bucket_window: int = 0
    snapshot_steps: list[int] = field(default_factory=list)  # encoder saved here (`evolution`)
    val_check_interval: int = watch_only(100)  # steps between validations
    limit_val_batches: int = watch_only(20)  # validation batches per validation
    checkpoint_every_n_steps: int = watch_only(100)  # last.ckpt to resume a killed run from
    micro_batch_size: int | None = watch_only(None)  # per device and step; None: global / world
    num_workers: int = watch_only(0)  # DataLoader workers (they never change the batches)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 < self.mask_rate < 1.0:
            raise ConfigError(
                f"pretrain.mask_rate={self.mask_rate} must lie strictly between 0 and 1 "
                "(BERT uses 0.15)"
            )
        for key in ("max_steps", "global_batch_size", "val_check_interval"):
            if getattr(self, key) < 1:
                raise ConfigError(f"pretrain.{key}={getattr(self, key)} must be >= 1")
        if self.length_bucket_window < 0:
            raise ConfigError(
                f"pretrain.length_bucket_window={self.length_bucket_window} must be >= 0 "
                "(0: no length bucketing)"
            )
        check_positive("pretrain.lr", self.lr)
        check_share("pretrain.warmup_ratio", self.warmup_ratio)
        check_share("pretrain.decay_ratio", self.decay_ratio)
        check_choice(
            "pretrain.lr_schedule", self.lr_schedule, ("linear", "trapezoidal", "one_cycle")
        )
        if self.lr_schedule == "trapezoidal" and self.warmup_ratio + self.decay_ratio > 1:
            raise ConfigError(
                f"pretrain.warmup_ratio={self.warmup_ratio} + pretrain.decay_ratio="
                f"{self.decay_ratio} exceed the whole run (1); lower one of them"
            )
        check_choice("pretrain.init", self.init, ("random", "hf"))
        if self.init == "hf" and not self.hf_model:
            raise ConfigError("pretrain.init=hf needs pretrain.hf_model=<checkpoint dir>")
        check_steps("pretrain.snapshot_steps", self.snapshot_steps, self.max_steps)


@dataclass
class TaskConfig:
    """A GLUE-style fine-tuning task; `name` is set by the chosen `task=` group option."""

    name: str = "bbc_news"  # one of bertforge.data.tasks.TASKS (= the files in conf/task/)
    source: str = "local"  # GLUE only: local (task.data_dir) | hub (nyu-mll/glue)
    data_dir: str | None = input_path()  # GLUE root (<TASK>/train.tsv ...), Korean tasks' dir
    hub_name: str = "nyu-mll/glue"
    train_file: str | None = input_path()  # local_files: csv / tsv / jsonl / parquet
    validation_file: str | None = input_path()
    test_file: str | None = input_path()
    text_columns: list[str] = field(default_factory=list)  # local_files: one or two columns
    label_column: str = "label"
    task_type: str = "classification"  # local_files: classification | regression
    label_names: list[str] | None = None  # local_files: given, or discovered from train
    max_examples: int | None = None  # cap every split, rows evenly spread (quick runs, tests)
    # Low-resource fine-tuning: k training examples per class (classification), or a cap on the
    # train split alone; drawn with subset_seed, so that every run seed trains on the same subset
    train_per_class: int | None = None
    max_train_examples: int | None = None
    subset_seed: int = 0

    def __post_init__(self) -> None:
        check_choice("task.name", self.name, tuple(TASKS))
        check_choice("task.source", self.source, ("local", "hub"))
        check_choice("task.task_type", self.task_type, ("classification", "regression"))
        if self.name == "local_files" and not (self.train_file and self.validation_file):
            raise ConfigError(
                "task=local_files needs task.train_file=<file> and task.validation_file=<file>"
            )
        if self.name == "local_files" and len(self.text_columns) not in (1, 2):
            raise ConfigError(
                "task=local_files needs task.text_columns=[col] or [col_a,col_b] (one or two)"
            )
        check_subset_keys(self)


@dataclass
class FinetuneConfig:
    """One run per seed; early stopping and the best checkpoint on the task's main validation
    metric; that checkpoint is evaluated once on the task's test (or, for GLUE, dev) split.
    For an HF checkpoint such as MiniLM-L6 or BERT-base use lr ~5e-5 and max_epochs ~3."""

    init: str = "pretrained"  # pretrained (our pretrain artifact) | hf (finetune.hf_model) | random
    hf_model: str | None = input_path("hf_model")  # checkpoint directory, or a Hub name online
    seeds: list[int] | None = None  # one fresh run per seed; None: [the run's seed]
    max_epochs: int = 6
    max_steps: int = -1  # > 0 caps the steps of each seed's run (quick runs, tests)
    global_batch_size: int = 32
    lr: float = 1e-3  # peak learning rate; linear warmup, then linear decay to 0
    weight_decay: float = 0.01  # not on biases and LayerNorm
    warmup_ratio: float = 0.1  # share of the steps spent warming up
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    gradient_clip_val: float = 1.0
    max_seq_length: int = 128  # tokens incl. [CLS]/[SEP]; pairs trim the longer segment first
    early_stopping_patience: int = 2  # validations without a better score before stopping
    # Dropout of the fine-tuned model (hidden and attention); None: the encoder's own. Lets a
    # recipe pretrain without dropout (Cramming) and fine-tune with BERT's 0.1
    dropout: float | None = None
    micro_batch_size: int | None = watch_only(None)  # per device and step; accumulates
    num_workers: int = watch_only(0)
    sample_predictions: int = watch_only(32)  # rows of the W&B sample-prediction table
    checkpoint_every_n_steps: int | None = watch_only(None)  # last.ckpt; None: every epoch
    export: bool = watch_only(True)  # write an HF BertForSequenceClassification directory

    def __post_init__(self) -> None:
        check_choice("finetune.init", self.init, ("pretrained", "hf", "random"))
        if self.init == "hf" and not self.hf_model:
            raise ConfigError(
                "finetune.init=hf needs finetune.hf_model=<local dir or hub name of a BERT model>"
            )
        if self.seeds is not None:
            check_seeds("finetune.seeds", self.seeds)
        if self.max_epochs < 1 and self.max_steps < 1:
            raise ConfigError("set finetune.max_epochs >= 1 or finetune.max_steps >= 1")
        if self.global_batch_size < 1:
            raise ConfigError("finetune.global_batch_size must be >= 1")
        if self.max_seq_length < 4:
            raise ConfigError(f"finetune.max_seq_length={self.max_seq_length} must be >= 4")
        if self.dropout is not None and not 0.0 <= self.dropout < 1.0:
            raise ConfigError(
                f"finetune.dropout={self.dropout} must lie in [0, 1) (or null: the encoder's)"
            )
        check_positive("finetune.lr", self.lr)
        check_share("finetune.warmup_ratio", self.warmup_ratio)


@dataclass
class TrainerConfig:
    """Where and how training runs. Only `precision` changes results (it is hashed); the
    device count does not: batches are global (`*.global_batch_size`)."""

    accelerator: str = watch_only("cpu")
    devices: Any = watch_only(1)
    num_nodes: int = watch_only(1)
    strategy: str = watch_only("auto")
    precision: str = "32-true"
    num_threads: int | None = watch_only(None)  # CPU threads per process; 1 for parallel jobs
    enable_progress_bar: bool = watch_only(True)
    progress_refresh_rate: int = watch_only(10)  # redraw every N steps (each redraw costs)
    log_every_n_steps: int = watch_only(10)

    def __post_init__(self) -> None:
        check_choice(
            "trainer.precision",
            self.precision,
            ("32-true", "32", "bf16-mixed", "16-mixed", "bf16-true", "64-true"),
        )
        if self.num_threads is not None and self.num_threads < 1:
            raise ConfigError(
                f"trainer.num_threads={self.num_threads} must be >= 1 (or null: torch's default)"
            )


@dataclass
class LoggerConfig:
    """Experiment tracking. CSV metrics are written in every case."""

    backend: str = "wandb"  # wandb | csv | tensorboard | none
    project: str = "bertforge"
    entity: str | None = None
    mode: str = "offline"  # offline | online (online needs WANDB_API_KEY or a login)
    group: str | None = None  # default: the pipeline run's name
    tags: list[str] = field(default_factory=list)
    log_artifacts: bool = True
    init_timeout: float = 30.0  # seconds to wait for the W&B service before going offline
    # W&B's system-metric sampling and console capture: off, since on 2 CPU cores they cost up
    # to half a small model's throughput (README, "Every run complete in W&B"); on for GPU runs.
    system_metrics: bool = False
    console: bool = False

    def __post_init__(self) -> None:
        check_choice("logger.backend", self.backend, ("wandb", "csv", "tensorboard", "none"))
        check_choice("logger.mode", self.mode, ("offline", "online", "disabled"))


@dataclass
class Config:
    stages: list[str] | None = watch_only(None)  # None: every stage of the graph
    seed: int = 42
    force: bool = watch_only(False)  # rebuild the selected stages even if complete
    run_name: str | None = watch_only(None)  # the pipeline run (W&B group); default: Hydra's
    optimized_metric: str | None = watch_only(None)  # "<stage>/<metric>" returned to sweepers
    report_metrics: list[str] = watch_only(  # "<stage>/<metric>" columns of a sweep report
        default_factory=lambda: ["pretrain/val_loss_mlm", "finetune/test_accuracy"]
    )
    paths: PathsConfig = watch_only(default_factory=PathsConfig)
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    model: BertConfig = field(default_factory=BertConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    extract: ExtractConfig = field(default_factory=ExtractConfig)
    visualize: VisualizeConfig = field(default_factory=VisualizeConfig)
    evolution: EvolutionConfig = field(default_factory=EvolutionConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = watch_only(default_factory=LoggerConfig)

    def __post_init__(self) -> None:
        if self.stages is not None and not self.stages:
            raise ConfigError(
                "stages=[] leaves nothing to do; name a stage, e.g. stages=[tokenizer]"
            )
        check_seed("seed", self.seed)
        if self.finetune.seeds is None:
            self.finetune.seeds = [self.seed]
        self.model.check_length("pretrain.max_seq_length", self.pretrain.max_seq_length)
        if self.pretrain.init == "hf" and self.tokenizer.source != "hf":
            raise ConfigError(
                "pretrain.init=hf needs the checkpoint's own tokenizer, not a trained one: add "
                f"tokenizer.source=hf tokenizer.hf_model={self.pretrain.hf_model}"
            )
        if self.optimized_metric:
            self._check_optimized_metric(self.optimized_metric)

    def _check_optimized_metric(self, name: str) -> None:
        """`optimized_metric` is a validation metric of a stage this run can produce: sweepers
        select on it, and selecting on a test split would invalidate the test numbers."""
        stage, _, metric = name.partition("/")
        if not metric:
            raise ConfigError(
                f"optimized_metric={name} is not '<stage>/<metric>'; e.g. "
                "optimized_metric=finetune/val_accuracy"
            )
        if metric.startswith("test_"):
            raise ConfigError(
                f"optimized_metric={name} selects on the test split; optimise a validation "
                f"metric instead, e.g. optimized_metric={stage}/val_{metric.removeprefix('test_')}"
            )
        if stage == "pretrain" and "nsp" in metric and self.pretrain.objective == "mlm_only":
            raise ConfigError(
                f"optimized_metric={name} is a next-sentence-prediction metric, which "
                "pretrain.objective=mlm_only does not produce; use pretrain.objective=mlm_nsp "
                "or an MLM metric, e.g. optimized_metric=pretrain/val_loss_mlm"
            )


def register_configs() -> None:
    ConfigStore.instance().store(name="config_schema", node=Config)


def to_config(cfg: DictConfig | Any, schema: type = Config) -> Any:
    """Convert Hydra's composed DictConfig into the typed `schema` (runs every `__post_init__`).

    Hydra's own node is dropped before anything is resolved: it holds interpolations (such as
    `hydra.job.num`) that only exist inside a running job."""
    if isinstance(cfg, schema):
        return cfg
    container = OmegaConf.to_container(cfg, resolve=False)
    container.pop("hydra", None)
    resolved = OmegaConf.to_container(OmegaConf.create(container), resolve=True)
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), resolved))


register_configs()

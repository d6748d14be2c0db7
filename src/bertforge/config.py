"""Typed config schemas, registered with Hydra's ConfigStore.

`conf/config.yaml` starts its defaults list with `config_schema`, so every YAML file merges onto
these dataclasses: a misspelt key or a wrongly typed value fails while Hydra composes. The entry
points convert the composed DictConfig once (`to_config`); nothing below them sees a DictConfig.
Value checks that types cannot express live in `__post_init__` and raise `ConfigError`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from bertforge.errors import ConfigError

STAGES = ("tokenizer", "pretrain", "finetune", "extract", "visualize")


def check_choice(key: str, value: Any, allowed: tuple[Any, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} is not one of {', '.join(map(str, allowed))}")


@dataclass
class PathsConfig:
    outputs: str = "outputs"  # every file a run writes goes below this directory


@dataclass
class CorpusConfig:
    """Pretraining text. `source` is set by the chosen `corpus=` group option."""

    source: str = "embedded"  # embedded | text_files | hf_dataset
    path: str | None = None  # text_files: file, directory or glob; hf_dataset: local path
    name: str | None = None  # hf_dataset: dataset name on the hub (or a local directory)
    config_name: str | None = None
    split: str = "train"
    text_column: str = "text"
    max_documents: int | None = None  # keep only the first N documents (quick runs)

    def __post_init__(self) -> None:
        check_choice("corpus.source", self.source, ("embedded", "text_files", "hf_dataset"))
        if self.source == "text_files" and not self.path:
            raise ConfigError("corpus=text_files needs corpus.path=<file, directory or glob>")
        if self.source == "hf_dataset" and not (self.name or self.path):
            raise ConfigError("corpus=hf_dataset needs corpus.name=<dataset> or corpus.path=<dir>")
        if self.max_documents is not None and self.max_documents < 1:
            raise ConfigError("corpus.max_documents must be >= 1 (or null for all documents)")


SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


@dataclass
class TokenizerConfig:
    vocab_size: int = 8000
    min_frequency: int = 2
    lowercase: bool = True
    strip_accents: bool = True  # removes combining marks only: Hangul syllables stay whole
    unicode_normalization: str = "NFC"  # NFC | NFKC | none
    limit_alphabet: int = 1000

    def __post_init__(self) -> None:
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
class ModelConfig:
    """Encoder shape (Turc et al. presets in conf/model/). The vocabulary size comes from the
    tokenizer artifact."""

    name: str = "bert_tiny"
    hidden_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 2
    intermediate_size: int = 512
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    layer_norm_eps: float = 1e-12
    initializer_range: float = 0.02

    def __post_init__(self) -> None:
        for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size"):
            if getattr(self, key) < 1:
                raise ConfigError(f"model.{key}={getattr(self, key)} must be >= 1")
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(
                f"model.hidden_size={self.hidden_size} is not divisible by "
                f"model.num_attention_heads={self.num_attention_heads}; choose a hidden size "
                "that is a multiple of the head count"
            )


@dataclass
class PretrainConfig:
    objective: str = "mlm_nsp"  # mlm_nsp | mlm_only
    mask_rate: float = 0.15
    max_seq_length: int = 128
    short_seq_prob: float = 0.1  # share of examples with a shorter random target length
    dupe_factor: int = 2  # passes over the corpus with different NSP pairings
    max_steps: int = 600
    global_batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    adam_betas: tuple[float, float] = (0.9, 0.98)
    adam_eps: float = 1e-6
    gradient_clip_val: float = 1.0
    # > 0: batches of similar length, drawn from shuffled windows of this many batches (less
    # padding: +15-18 % tokens/s for bert_mini on CPU, benchmark). 0: plain shuffled batches.
    length_bucket_window: int = 0
    # Below: how the run is watched, not what it computes (left out of the artifact hash).
    val_check_interval: int = 100
    limit_val_batches: int = 20
    checkpoint_every_n_steps: int = 100
    micro_batch_size: int | None = None  # per device and step; None: global / world size
    num_workers: int = 0
    # Characters of text tokenised at a time while building the examples: bounds that step's
    # memory (~300 bytes a character in flight); the examples are the same for any value.
    tokenize_chunk_chars: int = 100_000

    def __post_init__(self) -> None:
        check_choice("pretrain.objective", self.objective, ("mlm_nsp", "mlm_only"))
        if not 0.0 < self.mask_rate < 1.0:
            raise ConfigError(
                f"pretrain.mask_rate={self.mask_rate} must lie strictly between 0 and 1 "
                "(BERT uses 0.15)"
            )
        if self.max_seq_length < 8:
            raise ConfigError(
                f"pretrain.max_seq_length={self.max_seq_length} is too short for "
                "[CLS] A [SEP] B [SEP]; use at least 8"
            )
        for key in ("max_steps", "global_batch_size", "dupe_factor", "tokenize_chunk_chars"):
            if getattr(self, key) < 1:
                raise ConfigError(f"pretrain.{key} must be >= 1")
        if self.length_bucket_window < 0:
            raise ConfigError(
                f"pretrain.length_bucket_window={self.length_bucket_window} must be >= 0 "
                "(0: no length bucketing)"
            )
        if self.lr <= 0:
            raise ConfigError(f"pretrain.lr={self.lr} must be positive")


TASK_NAMES = (
    "bbc_news",
    "cola",
    "sst2",
    "mrpc",
    "stsb",
    "qqp",
    "mnli",
    "qnli",
    "rte",
    "wnli",
    "local_files",
)


@dataclass
class TaskConfig:
    """A GLUE-style fine-tuning task; `name` is set by the chosen `task=` group option."""

    name: str = "bbc_news"
    source: str = "local"  # GLUE only: local (task.data_dir) | hub (nyu-mll/glue)
    data_dir: str | None = None  # GLUE root holding <TASK>/train.tsv and <TASK>/dev.tsv
    hub_name: str = "nyu-mll/glue"
    train_file: str | None = None  # local_files: csv / tsv / jsonl / parquet
    validation_file: str | None = None
    test_file: str | None = None
    text_columns: list[str] = field(default_factory=list)  # local_files: one or two columns
    label_column: str = "label"
    task_type: str = "classification"  # local_files: classification | regression
    label_names: list[str] | None = None  # local_files: given, or discovered from train
    max_examples: int | None = None  # cap every split, rows evenly spread (quick runs, tests)

    def __post_init__(self) -> None:
        check_choice("task.name", self.name, TASK_NAMES)
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
        if self.max_examples is not None and self.max_examples < 1:
            raise ConfigError(
                f"task.max_examples={self.max_examples} must be >= 1 (or null for every example)"
            )


@dataclass
class FinetuneConfig:
    init: str = "pretrained"  # pretrained (our pretrain artifact) | hf (finetune.hf_model) | random
    hf_model: str | None = None  # local directory or hub name of an HF BERT checkpoint
    seeds: list[int] = field(default_factory=lambda: [42])
    max_epochs: int = 6
    max_steps: int = -1  # > 0 caps the steps of each seed's run (quick runs, tests)
    global_batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    gradient_clip_val: float = 1.0
    max_seq_length: int = 128
    early_stopping_patience: int = 2
    # Below: how the run is watched and what is exported, not what it computes (unhashed).
    micro_batch_size: int | None = None  # per device and step; None: global / world size
    num_workers: int = 0
    sample_predictions: int = 32  # rows of the W&B sample-prediction table
    checkpoint_every_n_steps: int | None = None  # last.ckpt to resume from; None: every epoch
    export: bool = True  # write an HF BertForSequenceClassification directory

    def __post_init__(self) -> None:
        check_choice("finetune.init", self.init, ("pretrained", "hf", "random"))
        if self.init == "hf" and not self.hf_model:
            raise ConfigError(
                "finetune.init=hf needs finetune.hf_model=<local dir or hub name of a BERT model>"
            )
        if not self.seeds:
            raise ConfigError("finetune.seeds is empty; give at least one seed, e.g. [42]")
        repeated = sorted({seed for seed in self.seeds if list(self.seeds).count(seed) > 1})
        if repeated:
            raise ConfigError(
                f"finetune.seeds={list(self.seeds)} repeats {', '.join(map(str, repeated))}; "
                "give each seed once (a repeated seed repeats the same run)"
            )
        if self.max_epochs < 1 and self.max_steps < 1:
            raise ConfigError("set finetune.max_epochs >= 1 or finetune.max_steps >= 1")
        if self.global_batch_size < 1:
            raise ConfigError("finetune.global_batch_size must be >= 1")
        if self.max_seq_length < 4:
            raise ConfigError(f"finetune.max_seq_length={self.max_seq_length} must be >= 4")


@dataclass
class ExtractConfig:
    source: str = "finetune"  # finetune | pretrain (our artifacts) | hf (extract.hf_model)
    hf_model: str | None = None
    dataset: str = "task"  # task (a split of `task`) | corpus (documents of `corpus`)
    split: str = "test"
    pooling: str = "cls"  # cls | mean (padding-aware)
    layers: list[int] = field(default_factory=lambda: [-1])
    words: list[str] = field(default_factory=list)  # token-level contextual embeddings
    max_examples: int | None = None
    max_seq_length: int = 128
    batch_size: int = 64

    def __post_init__(self) -> None:
        check_choice("extract.source", self.source, ("finetune", "pretrain", "hf"))
        check_choice("extract.dataset", self.dataset, ("task", "corpus"))
        check_choice("extract.pooling", self.pooling, ("cls", "mean"))
        if self.source == "hf" and not self.hf_model:
            raise ConfigError("extract.source=hf needs extract.hf_model=<dir or hub name>")
        if not self.layers:
            raise ConfigError("extract.layers is empty; give at least one layer, e.g. [-1]")
        if self.max_seq_length < 4:
            raise ConfigError(
                f"extract.max_seq_length={self.max_seq_length} leaves no room for text beside "
                "[CLS] and [SEP]; use at least 4"
            )
        if self.batch_size < 1:
            raise ConfigError(f"extract.batch_size={self.batch_size} must be >= 1")
        if self.max_examples is not None and self.max_examples < 1:
            raise ConfigError(
                f"extract.max_examples={self.max_examples} must be >= 1 (or null for every text)"
            )


@dataclass
class VisualizeConfig:
    method: str = "tsne"  # tsne | umap | pca
    tsne_backend: str = "opentsne"  # opentsne | sklearn
    perplexity: float = 30.0
    learning_rate: float | None = None  # None: openTSNE's / sklearn's "auto" (N / 12)
    n_iter: int = 750
    early_exaggeration: float = 12.0
    early_exaggeration_iter: int = 250
    init: str = "pca"  # pca | random
    dof: float = 1.0  # Student-t degrees of freedom in 2-D: 1 is t-SNE, large -> SNE-like
    snapshots: list[int] = field(default_factory=lambda: [250, 500])
    compare_dof: list[float] = field(default_factory=lambda: [1.0, 10.0, 100.0])
    compare_methods: bool = True  # the t-SNE | UMAP | PCA panel
    umap_n_neighbors: int = 15
    umap_min_dist: float = 0.1
    layer: int = -1  # which extracted layer to lay out
    knn_k: int = 10
    quality_max_points: int = 5000  # quality numbers on a fixed subsample beyond this
    n_jobs: int = 2
    attention_sentences: list[str] = field(
        default_factory=lambda: [
            "I like to watch football on the weekend.",
            "The bank raised interest rates to fight inflation.",
        ]
    )

    def __post_init__(self) -> None:
        check_choice("visualize.method", self.method, ("tsne", "umap", "pca"))
        check_choice("visualize.tsne_backend", self.tsne_backend, ("opentsne", "sklearn"))
        check_choice("visualize.init", self.init, ("pca", "random"))
        if self.perplexity <= 0:
            raise ConfigError(f"visualize.perplexity={self.perplexity} must be positive")
        if self.dof <= 0:
            raise ConfigError(f"visualize.dof={self.dof} must be positive (1 is t-SNE)")
        if self.knn_k < 1:
            raise ConfigError(
                f"visualize.knn_k={self.knn_k} must be >= 1: the quality numbers compare each "
                "point's k nearest neighbours (10 is usual)"
            )
        if self.umap_n_neighbors < 2:
            raise ConfigError(
                f"visualize.umap_n_neighbors={self.umap_n_neighbors} must be >= 2 (15 is usual)"
            )
        if self.n_iter <= self.early_exaggeration_iter:
            raise ConfigError(
                f"visualize.n_iter={self.n_iter} counts all updates, the "
                f"early_exaggeration_iter={self.early_exaggeration_iter} included; make it larger"
            )
        late = [s for s in self.snapshots if not 0 < s <= self.n_iter]
        if late:
            raise ConfigError(
                f"visualize.snapshots={list(self.snapshots)} has {late} outside 1..n_iter="
                f"{self.n_iter}; pick update counts within the run"
            )
        if self.tsne_backend == "sklearn":
            fix = "or use visualize.tsne_backend=opentsne"
            if self.dof != 1:
                raise ConfigError(f"sklearn's TSNE has no dof; set visualize.dof=1 {fix}")
            if self.snapshots:
                raise ConfigError(
                    f"sklearn's TSNE gives no snapshots; set visualize.snapshots=[] {fix}"
                )
            if self.early_exaggeration_iter != 250:
                raise ConfigError(
                    "sklearn's TSNE exaggerates for 250 updates; set "
                    f"visualize.early_exaggeration_iter=250 {fix}"
                )


@dataclass
class TrainerConfig:
    accelerator: str = "cpu"
    devices: Any = 1
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str = "32-true"
    num_threads: int | None = None  # CPU threads per process; 1 for jobs running side by side
    enable_progress_bar: bool = True
    progress_refresh_rate: int = 10  # redraw every N steps: drawing every step costs throughput
    log_every_n_steps: int = 10

    def __post_init__(self) -> None:
        check_choice(
            "trainer.precision",
            self.precision,
            ("32-true", "32", "bf16-mixed", "16-mixed", "bf16-true", "64-true"),
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

    def __post_init__(self) -> None:
        check_choice("logger.backend", self.backend, ("wandb", "csv", "tensorboard", "none"))
        check_choice("logger.mode", self.mode, ("offline", "online", "disabled"))


@dataclass
class Config:
    stages: list[str] = field(default_factory=lambda: list(STAGES))
    seed: int = 42
    force: bool = False  # rebuild the selected stages even if a complete artifact exists
    run_name: str | None = None  # names the pipeline run (W&B group); default: Hydra's run dir
    optimized_metric: str | None = None  # "<stage>/<metric>" returned to sweepers (Optuna)
    report_metrics: list[str] = field(  # "<stage>/<metric>" columns of a multirun's report
        default_factory=lambda: ["pretrain/val_loss_mlm", "finetune/eval_accuracy"]
    )
    paths: PathsConfig = field(default_factory=PathsConfig)
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    extract: ExtractConfig = field(default_factory=ExtractConfig)
    visualize: VisualizeConfig = field(default_factory=VisualizeConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)

    def __post_init__(self) -> None:
        for stage in self.stages:
            check_choice("stages", stage, STAGES)
        if self.optimized_metric:
            self._check_optimized_metric(self.optimized_metric)
        if self.pretrain.max_seq_length > self.model.max_position_embeddings:
            raise ConfigError(
                f"pretrain.max_seq_length={self.pretrain.max_seq_length} exceeds "
                f"model.max_position_embeddings={self.model.max_position_embeddings}; "
                "lower the sequence length or raise the position table"
            )

    def _check_optimized_metric(self, name: str) -> None:
        """`optimized_metric` names a stage's metric that this config's run can produce."""
        stage, _, metric = name.partition("/")
        if stage not in STAGES or not metric:
            raise ConfigError(
                f"optimized_metric={name} is not '<stage>/<metric>' with a stage among "
                f"{', '.join(STAGES)}; e.g. optimized_metric=finetune/eval_accuracy"
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
    """Convert Hydra's composed DictConfig into the typed `schema` (runs every `__post_init__`)."""
    if isinstance(cfg, schema):
        return cfg
    # Hydra's own node is not part of the schema.
    container = OmegaConf.to_container(cfg, resolve=True)
    container.pop("hydra", None)
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), container))


register_configs()

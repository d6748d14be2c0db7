"""Typed config schemas, registered with Hydra's ConfigStore; the one home of every default.

`conf/config.yaml` starts its defaults list with `config_schema`, so every YAML file merges onto
these dataclasses: a misspelt key or a wrongly typed value fails while Hydra composes. The YAML
files only say what an option changes (tests/test_config.py checks that none repeats a default).
The entry points convert the composed DictConfig once (`to_config`); nothing below them sees a
DictConfig. Value checks that types cannot express live in `__post_init__` (`ConfigError`).

What enters a stage's artifact hash is read off these fields (`pipeline/hashing.py`): every field
is hashed unless marked `watch_only()` (it changes how a run is watched, not what it computes);
a field marked `input_path()` names a file or directory and is hashed by its content.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from bertforge.checks import check_choice, check_positive, check_seed, check_seeds, check_share
from bertforge.data.tasks import TASKS  # the task registry names the tasks
from bertforge.errors import ConfigError
from bertforge.model import BertConfig


def watch_only(default: Any = MISSING, *, default_factory: Any = MISSING) -> Any:
    """A field that changes how a run is watched or exported, never what it computes: it is
    left out of every artifact hash."""
    return field(default=default, default_factory=default_factory, metadata={"hashed": False})


def input_path(kind: str = "path") -> Any:
    """A file, directory or glob that a stage reads (`kind` "path"), or an HF checkpoint that
    may also be a Hub name (`kind` "hf_model"): hashed by content, not by name."""
    return field(default=None, metadata={"input": kind})


@dataclass
class PathsConfig:
    outputs: str = "outputs"  # every file a run writes goes below this directory


@dataclass
class CorpusConfig:
    """Pretraining text. `source` is set by the chosen `corpus=` group option."""

    source: str = "embedded"  # embedded | text_files | hf_dataset
    path: str | None = input_path()  # text_files: file, directory or glob; hf_dataset: local
    name: str | None = None  # hf_dataset: dataset name on the Hub
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
    mask_rate: float = 0.15  # share of tokens that become MLM targets (80/10/10)
    max_steps: int = 600
    global_batch_size: int = 32  # examples per optimizer step, whatever the device count
    lr: float = 2e-3  # peak learning rate; linear warmup, then linear decay to 0
    weight_decay: float = 0.01  # not on biases and LayerNorm
    warmup_ratio: float = 0.06  # share of the steps spent warming up
    adam_betas: tuple[float, float] = (0.9, 0.98)
    adam_eps: float = 1e-6
    gradient_clip_val: float = 1.0
    # > 0: batches of similar length, drawn from shuffled windows of this many batches (less
    # padding: +15-18 % tokens/s for bert_mini on CPU, benchmark). 0: plain shuffled batches.
    length_bucket_window: int = 0
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


@dataclass
class TaskConfig:
    """A GLUE-style fine-tuning task; `name` is set by the chosen `task=` group option."""

    name: str = "bbc_news"  # one of bertforge.data.tasks.TASKS (= the files in conf/task/)
    source: str = "local"  # GLUE only: local (task.data_dir) | hub (nyu-mll/glue)
    data_dir: str | None = input_path()  # GLUE root holding <TASK>/train.tsv, <TASK>/dev.tsv
    hub_name: str = "nyu-mll/glue"
    train_file: str | None = input_path()  # local_files: csv / tsv / jsonl / parquet
    validation_file: str | None = input_path()
    test_file: str | None = input_path()
    text_columns: list[str] = field(default_factory=list)  # local_files: one or two columns
    label_column: str = "label"
    task_type: str = "classification"  # local_files: classification | regression
    label_names: list[str] | None = None  # local_files: given, or discovered from train
    max_examples: int | None = None  # cap every split, rows evenly spread (quick runs, tests)

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
        if self.max_examples is not None and self.max_examples < 1:
            raise ConfigError(
                f"task.max_examples={self.max_examples} must be >= 1 (or null for every example)"
            )


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
        check_positive("finetune.lr", self.lr)
        check_share("finetune.warmup_ratio", self.warmup_ratio)


@dataclass
class ExtractConfig:
    """Embeddings of a task split (or of corpus documents) from the fine-tuned model
    (source=pretrain: the pretrained one; source=hf + hf_model=<dir>: any HF BERT)."""

    source: str = "finetune"  # finetune | pretrain (our artifacts) | hf (extract.hf_model)
    hf_model: str | None = input_path("hf_model")
    dataset: str = "task"  # task (a split of `task`) | corpus (documents of `corpus`)
    split: str = "test"
    pooling: str = "cls"  # cls | mean (padding-aware)
    layers: list[int] = field(default_factory=lambda: [-1])  # 0 = embeddings, -1 = last layer
    words: list[str] = field(default_factory=lambda: ["bank", "game", "market"])  # a vector each
    max_examples: int | None = None
    max_seq_length: int = 128
    batch_size: int = watch_only(64)

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
    """t-SNE (openTSNE) and the lecture's comparisons: snapshots after 250/500 updates, the
    Student-t degrees of freedom (1 = t-SNE, large = SNE-like), and t-SNE | UMAP | PCA."""

    method: str = "tsne"  # tsne | umap | pca
    tsne_backend: str = "opentsne"  # opentsne (FFT/Barnes-Hut, multi-threaded) | sklearn
    perplexity: float = 30.0
    learning_rate: float | None = None  # None: openTSNE's / sklearn's "auto" (N / 12)
    n_iter: int = 750  # all updates, the early-exaggeration phase included
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
    n_jobs: int = watch_only(2)
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
        check_positive("visualize.perplexity", self.perplexity)
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
            self._check_sklearn()

    def _check_sklearn(self) -> None:
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
class ProbeConfig:
    """Per-layer linear probes on frozen embeddings (stage `probe`, see analysis/probe.py)."""

    models: list[str] = field(default_factory=lambda: ["pretrained", "random", "finetuned"])
    split: str = "validation"  # the held-out split scored; the probes are fit on train
    pooling: str = "mean"  # mean (padding-aware) | cls (at layer 0 the same vector for all)
    C: float = 1.0  # inverse L2 strength of the logistic regression
    max_iter: int = 2000
    max_train_examples: int | None = 2000  # evenly spread over train; None: all of them
    max_seq_length: int = 128

    def __post_init__(self) -> None:
        for model in self.models:
            check_choice("probe.models", model, ("pretrained", "random", "finetuned"))
        if not self.models or len(set(self.models)) < len(self.models):
            raise ConfigError(f"probe.models={list(self.models)}: name each model once")
        check_choice("probe.pooling", self.pooling, ("cls", "mean"))
        check_positive("probe.C", self.C)
        if self.split == "train":
            raise ConfigError(
                "probe.split=train is what the probes fit; use probe.split=validation"
            )
        for key, least in (("max_iter", 1), ("max_train_examples", 10), ("max_seq_length", 4)):
            if getattr(self, key) is not None and getattr(self, key) < least:
                raise ConfigError(f"probe.{key}={getattr(self, key)} must be >= {least}")


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

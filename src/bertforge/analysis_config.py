"""Typed schemas of the analysis stages: extract, visualize, evolution and probe.

Part of the one home of every default (`bertforge.config` assembles them into `Config`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bertforge.checks import check_at_least, check_choice, check_positive
from bertforge.errors import ConfigError
from bertforge.schema_fields import input_path, watch_only


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
class EvolutionConfig:
    """A `task` split embedded at each `pretrain.snapshot_steps` step and the final model."""

    split: str = "test"
    max_examples: int | None = None  # texts, evenly spread over the split; None: all
    pooling: str = "mean"  # mean | cls (untrained [CLS] without NSP or fine-tuning)
    layer: int = -1  # 0 = embedding output, -1 = last layer
    align: str = "procrustes"  # rotate each snapshot onto the last before placing it | none
    perplexity: float = 30.0
    n_iter: int = 750  # t-SNE updates of the last snapshot's map, 250 of them exaggerated
    knn_k: int = 10  # k-NN label accuracy, cross-validated in the full space
    words: list[str] = field(default_factory=lambda: ["bank", "game", "record"])
    senses_file: str | None = input_path()  # csv word,sentence,sense: silhouette by sense
    batch_size: int = watch_only(64)
    n_jobs: int = watch_only(2)

    def __post_init__(self) -> None:
        check_choice("evolution.pooling", self.pooling, ("cls", "mean"))
        check_choice("evolution.align", self.align, ("procrustes", "none"))
        check_positive("evolution.perplexity", self.perplexity)
        check_at_least("evolution", self, max_examples=4, knn_k=1, n_iter=251)


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

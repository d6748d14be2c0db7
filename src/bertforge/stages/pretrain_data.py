"""Stage `pretrain_data`: the corpus as tokenised BERT examples ([CLS] A [SEP] B [SEP]), saved
once as Arrow and memory-mapped by every pretraining run that shares them."""

from __future__ import annotations

from dataclasses import dataclass

from bertforge.config import CorpusConfig, ExampleConfig
from bertforge.data.corpus import load_documents
from bertforge.data.pretraining import write_pretraining_examples
from bertforge.pipeline.stage import BuildContext, Stage


@dataclass
class Settings:
    corpus: CorpusConfig
    pretrain: ExampleConfig  # objective, max_seq_length, short_seq_prob, dupe_factor
    seed: int


def build(ctx: BuildContext) -> dict[str, float]:
    s: Settings = ctx.settings
    with ctx.loggers() as loggers:  # a run of its own: the example statistics, in the lineage
        metrics = write_pretraining_examples(
            load_documents(s.corpus),
            tokenizer_dir=ctx.upstream["tokenizer"].path,
            out_dir=ctx.path,
            cfg=s.pretrain,
            seed=s.seed,
        )
        loggers.log_metrics({f"pretrain_data/{k}": v for k, v in metrics.items()})
    return metrics


STAGE = Stage(
    "pretrain_data",
    Settings,
    build,
    upstream=lambda s: ("tokenizer",),
    summary=("train_examples", "validation_examples", "mean_length"),
)

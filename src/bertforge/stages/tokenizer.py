"""Stage `tokenizer`: a WordPiece vocabulary trained on the corpus' training documents, or
(`tokenizer.source=hf`) an HF checkpoint's own tokenizer, measured on the same documents."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from bertforge.artifacts import hf_tokenizer
from bertforge.config import CorpusConfig, TokenizerConfig
from bertforge.data.corpus import load_documents, split_texts
from bertforge.data.tokenizer import save_tokenizer, tokenizer_metrics, train_tokenizer
from bertforge.pipeline.stage import BuildContext, Stage

log = logging.getLogger(__name__)


@dataclass
class Settings:
    corpus: CorpusConfig
    tokenizer: TokenizerConfig


def build(ctx: BuildContext) -> dict[str, float]:
    s: Settings = ctx.settings
    train, held_out = split_texts(load_documents(s.corpus))
    with ctx.loggers() as loggers:
        started = time.perf_counter()
        if s.tokenizer.source == "hf":
            tokenizer = hf_tokenizer(s.tokenizer.hf_model, "tokenizer.hf_model")
            log.info(
                "tokenizer.source=hf: the tokenizer of %s (%d tokens); tokenizer.vocab_size and "
                "the other training keys are not used",
                s.tokenizer.hf_model, tokenizer.get_vocab_size(),
            )  # fmt: skip
            trained = {}
        else:
            tokenizer = train_tokenizer(train, s.tokenizer)
            trained = {
                "train_documents": len(train),
                "train_megabytes": sum(len(t.encode()) for t in train) / 1e6,
            }
        seconds = time.perf_counter() - started
        save_tokenizer(tokenizer, ctx.path)
        metrics = tokenizer_metrics(tokenizer, held_out) | {"train_seconds": seconds} | trained
        loggers.log_metrics({f"tokenizer/{k}": v for k, v in metrics.items()})
        loggers.log_artifact(ctx.path, f"tokenizer-{ctx.hash}", "tokenizer")
    return metrics


STAGE = Stage(
    "tokenizer",
    Settings,
    build,
    summary=("vocab_size", "unk_rate", "tokens_per_word", "train_seconds"),
)

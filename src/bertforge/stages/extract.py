"""Stage `extract`: embeddings of a task split or of corpus documents, streamed to disk: one
vector per text per layer, and one per occurrence of each of `extract.words`."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from bertforge.analysis.embed import extract_sentence_embeddings, extract_word_embeddings
from bertforge.artifacts import SENTENCES, WORDS, encoder_of, encoder_record, hf_encoder
from bertforge.config import CorpusConfig, ExtractConfig, TaskConfig
from bertforge.data.corpus import load_documents
from bertforge.data.tasks import load_task, split_of, spread
from bertforge.errors import DataError
from bertforge.pipeline.stage import BuildContext, Stage

log = logging.getLogger(__name__)


@dataclass
class Settings:
    extract: ExtractConfig
    task: TaskConfig | None  # extract.dataset=task
    corpus: CorpusConfig | None  # extract.dataset=corpus


def select(cfg) -> Settings:
    task = cfg.extract.dataset == "task"
    return Settings(cfg.extract, cfg.task if task else None, None if task else cfg.corpus)


def upstream(s: Settings) -> tuple[str, ...]:
    return () if s.extract.source == "hf" else (s.extract.source,)


def texts_to_embed(s: Settings) -> tuple[list[str], list[str] | None, list[dict[str, Any]]]:
    """(texts, second segments or None, metadata rows with label and split)."""
    e = s.extract
    if s.task is not None:
        task = load_task(s.task)
        examples = split_of(task, e.split, "extract.split", e.max_examples)
        names = task.label_names
        texts = [x.text_a for x in examples]
        pairs = [x.text_b or "" for x in examples] if any(x.text_b for x in examples) else None
        labels = [names[x.label] if names else x.label for x in examples]
        ids = [x.id for x in examples]
    else:
        docs = [d for d in load_documents(s.corpus) if d.split == e.split]
        docs = spread(docs, e.max_examples) if e.max_examples else docs
        texts, pairs = [d.text for d in docs], None
        labels, ids = [d.label for d in docs], [d.id for d in docs]
    if not texts:
        source = "task" if s.task is not None else "corpus"
        raise DataError(
            f"extract.split={e.split} of the {source} is empty; choose another extract.split"
        )
    rows = [{"id": i, "label": y, "split": e.split} for i, y in zip(ids, labels, strict=True)]
    return texts, pairs, rows


def build(ctx: BuildContext) -> dict[str, float]:
    s: Settings = ctx.settings
    e = s.extract
    model_artifact = next(iter(ctx.upstream.values()), None)
    encoder = (
        encoder_of(model_artifact) if model_artifact else hf_encoder(e.hf_model, "extract.hf_model")
    )
    encoder.bert.config.check_length("extract.max_seq_length", e.max_seq_length)
    if encoder.trained_length and e.max_seq_length > encoder.trained_length:
        log.warning(
            "extract.max_seq_length=%d exceeds the %d positions the model was pretrained on; "
            "positions beyond it carry untrained embeddings",
            e.max_seq_length,
            encoder.trained_length,
        )
    texts, pairs, rows = texts_to_embed(s)
    common = {"layers": e.layers, "batch_size": e.batch_size, "max_seq_length": e.max_seq_length}
    sentences = extract_sentence_embeddings(
        encoder.bert, encoder.tokenizer, texts, out_dir=ctx.path / SENTENCES, pooling=e.pooling,
        text_pairs=pairs, metadata=rows, **common,
    )  # fmt: skip
    ctx.extra |= encoder_record(model_artifact, e.hf_model) | {"model_name": encoder.name}
    metrics = {
        "sentences": sentences["n"],
        "hidden_size": sentences["hidden_size"],
        "sentences_per_s": sentences["sentences_per_s"],
        "truncated": sentences["n_truncated"],
    }
    if e.words:
        words = extract_word_embeddings(
            encoder.bert, encoder.tokenizer, texts, e.words, out_dir=ctx.path / WORDS,
            metadata=rows, **common,
        )  # fmt: skip
        metrics |= {f"occurrences_{word}": count for word, count in words["counts"].items()}
    with ctx.loggers() as loggers:
        loggers.log_metrics({f"extract/{k}": v for k, v in metrics.items()})
    return metrics


STAGE = Stage(
    "extract",
    Settings,
    build,
    upstream=upstream,
    select=select,
    summary=("sentences", "hidden_size", "sentences_per_s"),
)

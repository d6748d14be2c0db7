"""The extract stage's work: pick the model and the texts, then stream embeddings to disk."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer
from torch import nn

from bertforge.config import Config
from bertforge.analysis.embed import as_bert, extract_sentence_embeddings, extract_word_embeddings
from bertforge.errors import DataError
from bertforge.pipeline.store import BuildContext

log = logging.getLogger(__name__)

SENTENCES = "sentences"  # sub-directories of the extract artifact
WORDS = "words"


@dataclass
class Encoder:
    bert: nn.Module
    tokenizer: Tokenizer
    name: str  # for figure titles, e.g. "bert_tiny fine-tuned on bbc_news"
    trained_length: int | None = None  # positions beyond this were never trained


def load_encoder(cfg: Config, upstream: dict) -> Encoder:
    """The encoder `extract.source` names: our fine-tuned or pretrained model, or an HF one."""
    from bertforge.data.tokenizer import load_tokenizer

    source = cfg.extract.source
    if source == "finetune":
        from bertforge.stages.finetune import load_finetuned

        path = upstream["finetune"].path
        model, _, _ = load_finetuned(path)
        name = f"{cfg.finetune.init} {model_name(cfg)} fine-tuned on {cfg.task.name}"
        trained = None if cfg.finetune.init == "hf" else cfg.pretrain.max_seq_length
        return Encoder(as_bert(model), load_tokenizer(path), name, trained)
    if source == "pretrain":
        from bertforge.stages.pretrain import load_pretrained

        model, _ = load_pretrained(upstream["pretrain"].path)
        tokenizer = load_tokenizer(upstream["tokenizer"].path)
        name = f"pretrained {cfg.model.name}"
        return Encoder(as_bert(model), tokenizer, name, cfg.pretrain.max_seq_length)
    from bertforge.data.finetuning import load_checkpoint_tokenizer
    from bertforge.stages.finetune import resolve_hf_model
    from bertforge.hf import load_hf_checkpoint

    directory = resolve_hf_model(cfg.extract.hf_model)
    model, _ = load_hf_checkpoint(directory, target="base")
    return Encoder(model, load_checkpoint_tokenizer(directory), Path(str(directory)).name)


def model_name(cfg: Config) -> str:
    return Path(cfg.finetune.hf_model).name if cfg.finetune.init == "hf" else cfg.model.name


def texts_to_embed(cfg: Config) -> tuple[list[str], list[str] | None, list[dict[str, Any]]]:
    """(texts, second segments or None, metadata rows with label and split)."""
    e = cfg.extract
    if e.dataset == "task":
        from bertforge.data.tasks import load_task, spread

        task = load_task(cfg.task)
        if e.split not in task.splits:
            raise DataError(
                f"extract.split={e.split} is not a split of task {task.name}; "
                f"choose one of {', '.join(task.splits)}"
            )
        examples = task.splits[e.split]
        examples = spread(examples, e.max_examples) if e.max_examples else examples
        names = task.label_names
        texts = [x.text_a for x in examples]
        pairs = [x.text_b or "" for x in examples] if any(x.text_b for x in examples) else None
        labels = [names[x.label] if names else x.label for x in examples]
        ids = [x.id for x in examples]
    else:
        from bertforge.data.corpus import load_documents
        from bertforge.data.tasks import spread

        docs = [d for d in load_documents(cfg.corpus) if d.split == e.split]
        docs = spread(docs, e.max_examples) if e.max_examples else docs
        texts, pairs = [d.text for d in docs], None
        labels, ids = [d.label for d in docs], [d.id for d in docs]
    if not texts:
        raise DataError(
            f"extract.split={e.split} of the {e.dataset} is empty; choose another extract.split"
        )
    rows = [{"id": i, "label": y, "split": e.split} for i, y in zip(ids, labels, strict=True)]
    return texts, pairs, rows


def run_extraction(cfg: Config, ctx: BuildContext) -> dict[str, float]:
    e = cfg.extract
    encoder = load_encoder(cfg, ctx.upstream)
    if encoder.trained_length and e.max_seq_length > encoder.trained_length:
        log.warning(
            "extract.max_seq_length=%d exceeds the %d positions the model was pretrained on; "
            "positions beyond it carry untrained embeddings",
            e.max_seq_length,
            encoder.trained_length,
        )
    texts, pairs, rows = texts_to_embed(cfg)
    sentences = extract_sentence_embeddings(
        encoder.bert,
        encoder.tokenizer,
        texts,
        out_dir=ctx.path / SENTENCES,
        pooling=e.pooling,
        layers=e.layers,
        batch_size=e.batch_size,
        max_seq_length=e.max_seq_length,
        text_pairs=pairs,
        metadata=rows,
    )
    ctx.extra["model_name"] = encoder.name
    metrics = {
        "sentences": sentences["n"],
        "hidden_size": sentences["hidden_size"],
        "sentences_per_s": sentences["sentences_per_s"],
        "truncated": sentences["n_truncated"],
    }
    if e.words:
        words = extract_word_embeddings(
            encoder.bert,
            encoder.tokenizer,
            texts,
            e.words,
            out_dir=ctx.path / WORDS,
            layers=e.layers,
            batch_size=e.batch_size,
            max_seq_length=e.max_seq_length,
            metadata=rows,
        )
        metrics |= {f"occurrences_{word}": count for word, count in words["counts"].items()}
    return metrics

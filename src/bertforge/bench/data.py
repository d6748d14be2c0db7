"""The benchmark's data: BBC News text, tokenizer training, the NSP example cache, batches.

Everything is built as the pipeline builds it (`train_tokenizer`, `write_pretraining_examples`,
`PretrainingDataModule`), so the sequence lengths, and hence the padding, are those of real text.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch

from bertforge.bench.config import BenchmarkConfig
from bertforge.config import SPECIAL_TOKENS, PretrainConfig, TokenizerConfig
from bertforge.data.corpus import load_bbc_news
from bertforge.data.pretraining import (
    MaskedLanguageModelingCollator,
    PretrainingDataModule,
    special_ids_of,
    write_pretraining_examples,
)
from bertforge.data.tokenizer import train_tokenizer


def load_texts(cfg: BenchmarkConfig):
    """(all documents, train-split texts) of the embedded BBC News corpus."""
    documents = load_bbc_news()
    if cfg.max_documents is not None:
        documents = documents[: cfg.max_documents]
    return documents, [d.text for d in documents if d.split == "train"]


def train_raw_tokenizer(texts: list[str], cfg: TokenizerConfig):
    """The stock `tokenizers` BERT WordPiece pipeline with the same settings as ours."""
    from tokenizers.implementations import BertWordPieceTokenizer

    tok = BertWordPieceTokenizer(
        clean_text=True,
        handle_chinese_chars=True,
        strip_accents=cfg.strip_accents,
        lowercase=cfg.lowercase,
    )
    tok.train_from_iterator(
        texts,
        vocab_size=cfg.vocab_size,
        min_frequency=cfg.min_frequency,
        limit_alphabet=cfg.limit_alphabet,
        special_tokens=list(SPECIAL_TOKENS),
        show_progress=False,
        wordpieces_prefix="##",
    )
    return tok


def bench_tokenizer(texts: list[str], cfg: BenchmarkConfig):
    """Train ours and the raw pipeline, interleaved; returns (row, our trained tokenizer)."""
    tok_cfg = cfg.tokenizer
    megabytes = sum(len(t.encode("utf-8")) for t in texts) / 1e6
    seconds: dict[str, list[float]] = {"ours": [], "raw": []}
    ours = None
    for _ in range(cfg.tokenizer_repeats):
        started = time.perf_counter()
        ours = train_tokenizer(texts, tok_cfg)
        seconds["ours"].append(time.perf_counter() - started)
        started = time.perf_counter()
        raw = train_raw_tokenizer(texts, tok_cfg)
        seconds["raw"].append(time.perf_counter() - started)
    ours_s, raw_s = statistics.median(seconds["ours"]), statistics.median(seconds["raw"])
    row = {
        "megabytes": megabytes,
        "documents": len(texts),
        "vocab_size": ours.get_vocab_size(),
        "ours_seconds": ours_s,
        "raw_seconds": raw_s,
        "ours_mb_per_s": megabytes / ours_s,
        "raw_mb_per_s": megabytes / raw_s,
        "ratio": raw_s / ours_s,
        "raw_vocab_size": raw.get_vocab_size(),
        "repeats": cfg.tokenizer_repeats,
    }
    return row, ours


def pretrain_data_config(cfg: BenchmarkConfig, seq_len: int) -> PretrainConfig:
    return replace(cfg.pretrain, max_seq_length=seq_len)


def build_example_cache(documents, tokenizer_dir: Path, out_dir: Path, cfg, seq_len, seed):
    """Write the Arrow example cache for `seq_len`, timed: returns the pre-tokenisation row."""
    started = time.perf_counter()
    stats = write_pretraining_examples(
        documents,
        tokenizer_dir=tokenizer_dir,
        out_dir=out_dir,
        cfg=pretrain_data_config(cfg, seq_len),
        seed=seed,
    )
    seconds = time.perf_counter() - started
    examples = stats["train_examples"] + stats["validation_examples"]
    return {
        "seq_len": seq_len,
        "documents": len(documents),
        "examples": examples,
        "seconds": seconds,
        "examples_per_s": examples / seconds,
        "train_tokens": stats["train_tokens"],
        "mean_length": stats["mean_length"],
        "padding_share_at_max_length": 1 - stats["mean_length"] / seq_len,
    }


def make_datamodule(data_dir: Path, tokenizer, cfg: BenchmarkConfig, batch_size: int, **kwargs):
    collator = MaskedLanguageModelingCollator(
        special_ids_of(tokenizer), tokenizer.get_vocab_size(), cfg.pretrain.mask_rate
    )
    data = PretrainingDataModule(data_dir, collator, batch_size, **kwargs)
    data.setup("fit")
    return data


def draw_batches(data, n: int) -> list[dict[str, torch.Tensor]]:
    """The first `n` batches of the shuffled train loader (cycling if the epoch is shorter)."""
    batches: list[dict[str, torch.Tensor]] = []
    loader = data.train_dataloader()  # its order and masks follow from the datamodule's seed
    while len(batches) < n:
        for batch in loader:
            batches.append(batch)
            if len(batches) == n:
                break
    return batches


def padding_share(batches) -> float:
    real = sum(int(b["attention_mask"].sum()) for b in batches)
    return 1 - real / sum(b["attention_mask"].numel() for b in batches)


def bench_dataloader(data, n: int) -> dict[str, float]:
    """Batches/s of the train loader, collation (masking) included, after its first batch."""
    train = data.train_dataloader()
    loader = iter(train)
    next(loader)
    seconds, count = [], 0
    for _ in range(n):
        started = time.perf_counter()
        try:
            next(loader)
        except StopIteration:
            loader = iter(train)
            continue
        seconds.append(time.perf_counter() - started)
        count += 1
    per_batch = statistics.median(seconds)
    return {"batches": count, "ms_per_batch": 1000 * per_batch, "batches_per_s": 1 / per_batch}

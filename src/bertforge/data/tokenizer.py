"""WordPiece tokenizer (BERT style) built, trained, saved and measured with HF `tokenizers`.

The normalizer is Korean-safe: BERT's own accent stripping decomposes Hangul syllables into
jamo, so accents are stripped between an explicit decomposition and a re-composition instead.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from tokenizers import (
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)

from bertforge.config import SPECIAL_TOKENS, TokenizerConfig
from bertforge.errors import DataError
from bertforge.files import write_atomic

PAD, UNK, CLS, SEP, MASK = SPECIAL_TOKENS
TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
VOCAB_FILE = "vocab.txt"


def _normalizer(cfg: TokenizerConfig) -> normalizers.Normalizer:
    steps = [
        normalizers.BertNormalizer(
            clean_text=True, handle_chinese_chars=True, strip_accents=False, lowercase=False
        )
    ]
    if cfg.lowercase:
        steps.append(normalizers.Lowercase())
    compatibility = cfg.unicode_normalization == "NFKC"
    if cfg.strip_accents:
        # Decompose, drop combining marks, re-compose: é -> e, while Hangul jamo (letters, not
        # marks) survive and become syllables again. Re-composition happens even with "none".
        steps += [
            normalizers.NFKD() if compatibility else normalizers.NFD(),
            normalizers.StripAccents(),
            normalizers.NFKC() if compatibility else normalizers.NFC(),
        ]
    elif cfg.unicode_normalization != "none":
        steps.append(normalizers.NFKC() if compatibility else normalizers.NFC())
    return normalizers.Sequence(steps)


def build_tokenizer(cfg: TokenizerConfig) -> Tokenizer:
    """An untrained WordPiece pipeline: normalizer, BERT pre-tokenizer, [CLS]/[SEP] template."""
    tok = Tokenizer(models.WordPiece(unk_token=UNK, continuing_subword_prefix="##"))
    tok.normalizer = _normalizer(cfg)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    # The trainer puts the special tokens first, in SPECIAL_TOKENS order.
    add_bert_template(tok, SPECIAL_TOKENS.index(CLS), SPECIAL_TOKENS.index(SEP))
    return tok


def add_bert_template(tok: Tokenizer, cls_id: int, sep_id: int) -> None:
    """[CLS] A [SEP] (B [SEP], segment 1) around every encoding; WordPiece decoding."""
    tok.post_processor = processors.TemplateProcessing(
        single=f"{CLS} $A {SEP}",
        pair=f"{CLS} $A {SEP} $B:1 {SEP}:1",
        special_tokens=[(CLS, cls_id), (SEP, sep_id)],
    )
    tok.decoder = decoders.WordPiece(prefix="##")


def train_tokenizer(texts: Iterable[str], cfg: TokenizerConfig) -> Tokenizer:
    """Train the WordPiece vocabulary on `texts` ([PAD]=0, [UNK]=1, [CLS]=2, [SEP]=3, [MASK]=4)."""
    tok = build_tokenizer(cfg)
    trainer = trainers.WordPieceTrainer(
        vocab_size=cfg.vocab_size,
        min_frequency=cfg.min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        limit_alphabet=cfg.limit_alphabet,
        continuing_subword_prefix="##",
        show_progress=False,
    )
    length = len(texts) if hasattr(texts, "__len__") else None
    tok.train_from_iterator(texts, trainer=trainer, length=length)
    if tok.get_vocab_size() <= len(SPECIAL_TOKENS):
        raise DataError("the tokenizer saw no text to learn a vocabulary from; check the corpus")
    return tok


def special_token_ids(tok: Tokenizer) -> dict[str, int]:
    """Ids of the special tokens, e.g. {"[PAD]": 0, ...}."""
    ids = {token: tok.token_to_id(token) for token in SPECIAL_TOKENS}
    missing = [token for token, token_id in ids.items() if token_id is None]
    if missing:
        raise DataError(
            f"the tokenizer lacks {', '.join(missing)}; rebuild the tokenizer stage with force=true"
        )
    return ids


def save_tokenizer(tok: Tokenizer, out_dir: Path) -> None:
    """Write tokenizer.json, vocab.txt and the `transformers` side files to `out_dir`.

    tokenizer.json is written last, so its presence means the save finished.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    vocab = sorted(tok.get_vocab(with_added_tokens=True).items(), key=lambda item: item[1])
    write_atomic(out_dir / VOCAB_FILE, "".join(f"{token}\n" for token, _ in vocab))
    special = {
        "pad_token": PAD,
        "unk_token": UNK,
        "cls_token": CLS,
        "sep_token": SEP,
        "mask_token": MASK,
    }
    write_atomic(out_dir / "special_tokens_map.json", json.dumps(special, indent=2) + "\n")
    write_atomic(out_dir / TOKENIZER_CONFIG, json.dumps(_tokenizer_config(), indent=2) + "\n")
    write_atomic(out_dir / TOKENIZER_FILE, tok.to_str(pretty=True))


def _tokenizer_config() -> dict:
    """What `transformers.AutoTokenizer` needs beside tokenizer.json."""
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_input_names": ["input_ids", "token_type_ids", "attention_mask"],
        "pad_token": PAD,
        "unk_token": UNK,
        "cls_token": CLS,
        "sep_token": SEP,
        "mask_token": MASK,
    }


def write_model_max_length(export_dir: Path, model_max_length: int) -> None:
    """Record in `<export_dir>/tokenizer_config.json` how many tokens the exported model takes
    (its max_position_embeddings), so that `transformers` truncates to it: without it,
    `pipeline(...)(long_text, truncation=True)` keeps every token and the model fails at the
    first position past its table. Keys already in the file are kept; a smaller
    model_max_length already there (an HF checkpoint's own) stays."""
    path = Path(export_dir) / TOKENIZER_CONFIG
    config = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else _tokenizer_config()
    current = config.get("model_max_length")
    if not isinstance(current, int) or not 0 < current <= model_max_length:
        config["model_max_length"] = model_max_length
    write_atomic(path, json.dumps(config, indent=2) + "\n")


def load_tokenizer(dir_or_file: Path) -> Tokenizer:
    """Load tokenizer.json from a tokenizer directory (or the file itself)."""
    path = Path(dir_or_file)
    if path.is_dir():
        path = path / TOKENIZER_FILE
    try:
        return Tokenizer.from_file(str(path))
    except Exception:  # the bindings raise a bare Exception for unreadable or invalid JSON
        raise DataError(
            f"{path} is missing or corrupt; rebuild the tokenizer stage with force=true"
        ) from None


def tokenizer_metrics(tok: Tokenizer, texts: list[str]) -> dict[str, float]:
    """Vocabulary size, [UNK] share of tokens and WordPiece tokens per pre-tokenized word,
    measured on (held-out) `texts` without special tokens."""
    unk_id = tok.token_to_id(UNK)
    tokens = unks = words = 0
    for encoding in tok.encode_batch(texts, add_special_tokens=False):
        tokens += len(encoding.ids)
        unks += encoding.ids.count(unk_id)
        words += len({word for word in encoding.word_ids if word is not None})
    if not words:
        raise DataError("no held-out text to measure the tokenizer on; the corpus split is empty")
    return {
        "vocab_size": float(tok.get_vocab_size()),
        "unk_rate": unks / tokens,
        "tokens_per_word": tokens / words,
    }

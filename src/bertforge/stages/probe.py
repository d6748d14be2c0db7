"""Stage `probe`: a linear probe per layer of each model in `probe.models`, fit on the task's
train split and scored on `probe.split` (analysis/probe.py). Where does the model keep what
the task needs, and did pretraining put it there?

- `pretrained`: the pretrain artifact's encoder;
- `random`: the same architecture freshly initialised with the run's seed (and our tokenizer);
- `finetuned`: the finetune artifact's model (its first seed), fine-tuned on this task.

The artifact holds probe.csv/.json (model, layer, metric, held-out and train score, n_train,
n_val) and probe.png (one curve per model against the layer, with the majority-class line).
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from bertforge.analysis.embed import extract_sentence_embeddings
from bertforge.analysis.probe import (
    COLUMNS,
    LayerScore,
    best_layers,
    chance_level,
    check_probe_labels,
    plot_probe_curves,
    probe_layers,
    write_probe_results,
)
from bertforge.artifacts import Encoder, encoder_of, tokenizer_of
from bertforge.config import ProbeConfig, TaskConfig
from bertforge.data.tasks import Example, TaskData, load_task, spread
from bertforge.data.tokenizer import PAD
from bertforge.errors import DataError
from bertforge.model import BertConfig, BertModel
from bertforge.pipeline.stage import BuildContext, Stage

log = logging.getLogger(__name__)

UPSTREAM = {"pretrained": "pretrain", "random": "tokenizer", "finetuned": "finetune"}
BATCH_SIZE = 64  # texts per forward pass (speed only, as extract.batch_size)


@dataclass
class Settings:
    probe: ProbeConfig
    task: TaskConfig
    model: BertConfig | None  # probe.models has random: the architecture it initialises
    seed: int | None  # probe.models has random: its initialisation seed


def select(cfg) -> Settings:
    random = "random" in cfg.probe.models
    return Settings(
        cfg.probe, cfg.task, cfg.model if random else None, cfg.seed if random else None
    )


def upstream(s: Settings) -> tuple[str, ...]:
    return tuple(dict.fromkeys(UPSTREAM[model] for model in s.probe.models))


@dataclass
class ProbeData:
    task: TaskData
    train: list[Example]
    held_out: list[Example]


def probe_data(s: Settings, task: TaskData) -> ProbeData:
    """The train examples (at most `probe.max_train_examples`, evenly spread) and the held-out
    split; DataError when the split is unknown or too small to probe."""
    p = s.probe
    if p.split not in task.splits or "train" not in task.splits:
        raise DataError(
            f"probe.split={p.split} is not a split of task {task.name}; choose one of "
            f"{', '.join(x for x in task.splits if x != 'train')}"
        )
    train = task.splits["train"]
    train = spread(train, p.max_train_examples) if p.max_train_examples else train
    held_out = task.splits[p.split]
    check_probe_labels(_labels(train), _labels(held_out), task.task_type)
    return ProbeData(task, train, held_out)


def _labels(examples: list[Example]) -> np.ndarray:
    return np.asarray([x.label for x in examples])


def random_encoder(s: Settings, tokenizer_artifact) -> Encoder:
    """`s.model` with our tokenizer's vocabulary, initialised from the run's seed (the global
    random state is left as it was)."""
    tokenizer = tokenizer_of(tokenizer_artifact)
    vocab = {"vocab_size": tokenizer.get_vocab_size(), "pad_token_id": tokenizer.token_to_id(PAD)}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(s.seed)
        bert = BertModel(replace(s.model, **vocab))
    return Encoder(bert, tokenizer, f"random {s.model.name}")


def encoder_for(model: str, ctx: BuildContext) -> Encoder:
    artifact = ctx.upstream[UPSTREAM[model]]
    return random_encoder(ctx.settings, artifact) if model == "random" else encoder_of(artifact)


def layer_vectors(
    encoder: Encoder, data: ProbeData, p: ProbeConfig, work_dir: Path
) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray]]:
    """({layer: train vectors}, {layer: held-out vectors}) for every layer 0..L, through the
    extraction code (written to `work_dir`, read back into memory)."""
    encoder.bert.config.check_length("probe.max_seq_length", p.max_seq_length)
    if encoder.trained_length and p.max_seq_length > encoder.trained_length:
        log.warning(
            "probe.max_seq_length=%d exceeds the %d positions %s was pretrained on",
            p.max_seq_length, encoder.trained_length, encoder.name,
        )  # fmt: skip
    examples = data.train + data.held_out
    pairs = [x.text_b or "" for x in examples] if any(x.text_b for x in examples) else None
    n_layers = encoder.bert.config.num_hidden_layers + 1
    result = extract_sentence_embeddings(
        encoder.bert, encoder.tokenizer, [x.text_a for x in examples], out_dir=work_dir,
        pooling=p.pooling, layers=list(range(n_layers)), batch_size=BATCH_SIZE,
        max_seq_length=p.max_seq_length, text_pairs=pairs,
    )  # fmt: skip
    n = len(data.train)
    train, held_out = {}, {}
    for layer in range(n_layers):
        X = np.load(result["paths"][layer])
        train[layer], held_out[layer] = X[:n], X[n:]
    return train, held_out


def build(ctx: BuildContext) -> dict[str, float]:
    s: Settings = ctx.settings
    p = s.probe
    data = probe_data(s, _checked.pop(_task_key(s.task), None) or load_task(s.task))
    task_type = data.task.task_type
    y_train, y_val = _labels(data.train), _labels(data.held_out)
    scores: list[LayerScore] = []
    names = {}
    work = ctx.path / "embeddings"  # scratch: a killed build's is replaced, a finished one's gone
    shutil.rmtree(work, ignore_errors=True)
    try:
        for model in p.models:
            encoder = encoder_for(model, ctx)
            names[model] = encoder.name
            train, held_out = layer_vectors(encoder, data, p, work / model)
            scores += probe_layers(
                model, train, y_train, held_out, y_val, task_type=task_type, C=p.C,
                max_iter=p.max_iter,
            )  # fmt: skip
    finally:
        shutil.rmtree(work, ignore_errors=True)
    unconverged = [f"{x.model} layer {x.layer}" for x in scores if not x.converged]
    if unconverged:
        log.warning(
            "the probes of %s stopped at probe.max_iter=%d before converging; raise "
            "probe.max_iter or lower probe.C", ", ".join(unconverged), p.max_iter,
        )  # fmt: skip

    chance = chance_level(y_train, y_val, task_type)
    metric = scores[0].metric
    about = {
        "task": data.task.name, "split": p.split, "metric": metric, "pooling": p.pooling,
        "C": p.C, "models": names, "n_train": len(y_train), "n_val": len(y_val),
    }  # fmt: skip
    write_probe_results(scores, ctx.path, chance, about)
    title = (
        f"linear probe per layer · task {data.task.name}, {p.split} split "
        f"(fit on {len(y_train)} train, scored on {len(y_val)}) · {p.pooling} pooling"
    )
    figure = plot_probe_curves(scores, chance, ctx.path / "probe.png", title, names)
    metrics = best_layers(scores) | {
        "chance": chance, "n_train": len(y_train), "n_val": len(y_val),
        "unconverged": len(unconverged),
    }  # fmt: skip
    table = [[getattr(score, c) for c in COLUMNS] for score in scores]
    with ctx.loggers() as loggers:
        loggers.log_image("probe/curves", figure)
        loggers.log_table("probe/layers", list(COLUMNS), table)
        loggers.log_summary({f"probe/{k}": v for k, v in metrics.items()})
    ctx.extra["figures"] = {"probe": str(figure)}
    ctx.extra["probe"] = about
    return metrics


# The task parsed by `check` at start-up, handed to this run's build (parsed once, not twice).
_checked: dict[str, TaskData] = {}


def _task_key(task: TaskConfig) -> str:
    return json.dumps(asdict(task), sort_keys=True, default=str)


def check(s: Settings) -> None:
    """At start-up: the split exists and holds enough examples to probe (a task capped to a
    handful of examples fails now, not after pretraining). The hub is left to the build."""
    _checked.clear()
    if s.task.source != "hub":
        task = load_task(s.task)
        probe_data(s, task)
        _checked[_task_key(s.task)] = task


STAGE = Stage(
    "probe",
    Settings,
    build,
    upstream=upstream,
    select=select,
    check=check,
    summary=(
        "pretrained_best", "pretrained_best_layer", "random_best", "random_best_layer",
        "finetuned_best", "finetuned_best_layer", "pretrained_last", "random_last",
        "finetuned_last", "chance",
    ),
)  # fmt: skip

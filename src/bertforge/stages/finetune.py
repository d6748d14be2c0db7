"""The fine-tuning stage's work: starting weights, one run per seed, results over seeds, export.

Each seed trains a fresh model (early stopping and the best checkpoint on the task's main
validation metric), then evaluates that best checkpoint on the task's eval split(s). The artifact
holds `results.csv` / `results.md` (every seed, mean ± std), per-seed predictions and confusion
matrices, and the first seed's best model: our weights (`load_finetuned`) and, with
`finetune.export`, a `transformers` BertForSequenceClassification directory `hf/`.
"""

from __future__ import annotations

import csv
import json
import math
import random
import shutil
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import lightning.pytorch as pl
import matplotlib
import numpy as np
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from safetensors.torch import save_model
from tokenizers import Tokenizer

from bertforge.config import Config
from bertforge.data.finetuning import FinetuningDataModule, load_checkpoint_tokenizer
from bertforge.errors import ConfigError
from bertforge.hf import export_hf, load_hf_state_dict, read_hf_checkpoint
from bertforge.lit.finetune import FinetuningModule
from bertforge.lit.trainer import batch_plan, last_checkpoint, make_trainer, world_size
from bertforge.model import BertConfig, BertForSequenceClassification
from bertforge.stages.pretrain import (
    MODEL_CONFIG,
    TOKENIZER_FILES,
    WEIGHTS,
    bert_config_for,
    load_artifact_model,
    load_pretrained,
)
from bertforge.pipeline.store import BuildContext, write_json_atomic
from bertforge.data.tasks import TaskData, load_task, main_metric, metric_postfix
from bertforge.data.tokenizer import PAD, load_tokenizer
from bertforge.pipeline.tracking import StageLoggers

matplotlib.use("Agg")
import matplotlib.pyplot as plt

LABELS = "labels.json"
SEED_RESULT = "result.json"  # in a seed's training directory once the seed is complete
WANDB_NAMES = {"tokenizer": "tokenizer", "pretrain": "bert"}  # upstream W&B artifacts
HF_FILES = [  # what a hub snapshot needs: config, weights, tokenizer
    "config.json", "model.safetensors", "pytorch_model.bin", *TOKENIZER_FILES,
]  # fmt: skip


@dataclass
class StartingPoint:
    """Where every seed starts: the model config, encoder weights (None: random) and tokenizer."""

    config: BertConfig
    encoder: dict[str, torch.Tensor] | None  # BertForSequenceClassification names, no head
    tokenizer: Tokenizer
    tokenizer_dir: Path  # its files are copied into the exports

    def new_model(self) -> BertForSequenceClassification:
        """A fresh model; what `encoder` leaves out is initialised from the current seed."""
        model = BertForSequenceClassification(self.config)
        if self.encoder is not None:
            model.load_state_dict(self.encoder, strict=False)
        return model


def resolve_hf_model(name: str) -> Path:
    """A local checkpoint directory, or the snapshot of Hub repo `name` (cached or downloaded)."""
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    if path.is_absolute() or name.startswith((".", "~")) or name.count("/") > 1:
        raise ConfigError(
            f"finetune.hf_model={name} is not a directory; give the local directory of a BERT "
            "checkpoint (config.json, model.safetensors and tokenizer.json or vocab.txt)"
        )
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(name, allow_patterns=HF_FILES))
    except Exception as err:  # offline, unknown repo, no network: each raises its own type
        reason = (str(err).splitlines() or [type(err).__name__])[0][:200]
        raise ConfigError(
            f"finetune.hf_model={name} is not a local directory and cannot be fetched from the "
            f"Hugging Face Hub ({reason}); download the checkpoint and pass its local directory"
        ) from None


def starting_point(cfg: Config, ctx: BuildContext, task: TaskData) -> StartingPoint:
    """Our pretrained encoder, an HF checkpoint, or a random model, with a head for `task`."""
    head = {
        "num_labels": task.num_labels,
        "problem_type": "regression" if task.task_type == "regression" else "classification",
    }
    if cfg.finetune.init == "hf":
        directory = resolve_hf_model(cfg.finetune.hf_model)
        state_dict, config = read_hf_checkpoint(directory)
        config = replace(config, **head)
        classifier = state_dict.get("classifier.weight")
        if classifier is not None and classifier.shape[0] != task.num_labels:  # another task's
            state_dict = {k: v for k, v in state_dict.items() if not k.startswith("classifier.")}
        probe = BertForSequenceClassification(config)
        fresh = load_hf_state_dict(probe, state_dict)
        encoder = {k: v for k, v in probe.state_dict().items() if k not in fresh}
        return StartingPoint(config, encoder, load_checkpoint_tokenizer(directory), directory)

    tokenizer_dir = ctx.upstream["tokenizer"].path
    tokenizer = load_tokenizer(tokenizer_dir)
    if cfg.finetune.init == "pretrained":
        pretrained, config = load_pretrained(ctx.upstream["pretrain"].path)
        encoder = {f"bert.{k}": v for k, v in pretrained.bert.state_dict().items()}
    else:
        config = bert_config_for(cfg, tokenizer.get_vocab_size(), tokenizer.token_to_id(PAD))
        encoder = None
    return StartingPoint(replace(config, **head), encoder, tokenizer, tokenizer_dir)


def run_finetuning(
    cfg: Config, ctx: BuildContext, open_loggers: Callable[[str, Path], StageLoggers]
) -> dict[str, float]:
    """Fine-tune once per seed into `ctx.path`; return eval metrics as mean and std over seeds.

    Under DDP every rank trains and evaluates; rank 0 alone writes (other ranks return {}).
    """
    f = cfg.finetune
    task = load_task(cfg.task)
    if f.global_batch_size > (n := len(task.splits["train"])):
        raise ConfigError(
            f"finetune.global_batch_size={f.global_batch_size} exceeds the {n} training examples "
            f"of task {task.name}; lower finetune.global_batch_size (or raise task.max_examples)"
        )
    start = starting_point(cfg, ctx, task)
    if f.max_seq_length > start.config.max_position_embeddings:
        raise ConfigError(
            f"finetune.max_seq_length={f.max_seq_length} exceeds the model's "
            f"max_position_embeddings={start.config.max_position_embeddings}; lower it"
        )
    micro_batch, accumulate = batch_plan(
        f.global_batch_size, cfg.trainer, f.micro_batch_size, "finetune"
    )
    data = FinetuningDataModule(task, start.tokenizer, f.max_seq_length, micro_batch, f.num_workers)
    lineage = [f"{WANDB_NAMES[a.stage]}-{a.hash}:latest" for a in ctx.upstream.values()]
    rows = []
    for seed in f.seeds:
        work_dir = ctx.path / "training" / f"seed{seed}"
        finished = work_dir / SEED_RESULT
        if finished.is_file():  # done before this build was interrupted
            rows.append(dict(json.loads(finished.read_text())))
            continue
        with open_loggers(f"seed{seed}", work_dir) as loggers:
            run = train_seed(cfg, ctx, task, start, data, accumulate, seed, loggers, work_dir)
            if run is None:  # not rank 0
                continue
            model, outputs, row = run
            rows.append(row)
            report_predictions(task, outputs, seed, ctx.path, f.sample_predictions, loggers)
            if seed == f.seeds[0]:  # the first seed's model is the one kept
                save_finetuned(model, task, ctx.path)
                start.tokenizer.save(str(ctx.path / "tokenizer.json"))  # for extraction
                if f.export:
                    export_finetuned(model, task, start, ctx.path / "hf")
                    loggers.log_artifact(ctx.path / "hf", f"finetuned-{ctx.hash}", "model", lineage)
            if seed == f.seeds[-1]:  # the summary goes into the last seed's run
                summary = write_results(rows, task, ctx.path, f.init)
                loggers.log_metrics({f"results/{k}": v for k, v in summary.items()})
                if loggers.wandb is not None:
                    loggers.wandb.log_table("results", *results_table(rows))
            write_json_atomic(finished, list(row.items()))  # complete: skipped when resuming
            shutil.rmtree(work_dir / "checkpoints")  # GBs for big models; the model is saved
    if not rows:
        return {}
    summary = write_results(rows, task, ctx.path, f.init)  # also when resumed after the last seed
    shutil.rmtree(ctx.path / "training")
    return summary | {"train_seconds": sum(r["train_seconds"] for r in rows), "seeds": len(rows)}


def train_seed(
    cfg: Config,
    ctx: BuildContext,
    task: TaskData,
    start: StartingPoint,
    data: FinetuningDataModule,
    accumulate: int,
    seed: int,
    loggers: StageLoggers,
    work_dir: Path,
) -> tuple[BertForSequenceClassification, dict[str, torch.Tensor], dict[str, float]] | None:
    """Train one seed in `work_dir` (resuming from its last checkpoint if an interrupted build
    left one), reload its best checkpoint and evaluate it on the eval split(s).

    Returns (best model, outputs per eval split, results row) on rank 0, None on other ranks.
    """
    f = cfg.finetune
    pl.seed_everything(seed, workers=True, verbose=False)
    data.seed = seed
    for logger in loggers.loggers:
        logger.log_hyperparams({"seed": seed})
    rank_examples = math.ceil(len(task.splits["train"]) / world_size(cfg.trainer))
    batches_per_epoch = math.ceil(rank_examples / data.batch_size)
    steps_per_epoch = math.ceil(batches_per_epoch / accumulate)
    total_steps = steps_per_epoch * f.max_epochs if f.max_epochs >= 1 else f.max_steps
    if f.max_steps > 0:
        total_steps = min(total_steps, f.max_steps)
    module = FinetuningModule(
        start.new_model(),
        task,
        lr=f.lr,
        weight_decay=f.weight_decay,
        adam_betas=tuple(f.adam_betas),
        adam_eps=f.adam_eps,
        warmup_steps=round(f.warmup_ratio * total_steps),
        total_steps=total_steps,
    )
    monitor = "val/" + main_metric(task.name, task.task_type)
    best = ModelCheckpoint(
        work_dir, "best", monitor=monitor, mode="max", save_top_k=1, save_weights_only=True
    )
    # A correlation of constant early predictions is NaN: count it as no improvement, go on.
    patience = f.early_stopping_patience
    stop = EarlyStopping(monitor, patience=patience, mode="max", check_finite=False)
    trainer = make_trainer(
        cfg.trainer,
        root_dir=work_dir,
        loggers=loggers.loggers,
        max_steps=f.max_steps,
        max_epochs=f.max_epochs if f.max_epochs >= 1 else -1,
        # in batches: after every epoch, and at max_steps
        val_check_interval=min(batches_per_epoch, total_steps * accumulate),
        gradient_clip_val=f.gradient_clip_val,
        accumulate_grad_batches=accumulate,
        checkpoint_every_n_steps=f.checkpoint_every_n_steps,
        callbacks=[best, stop],
    )
    started = time.perf_counter()
    trainer.fit(module, datamodule=data, ckpt_path=last_checkpoint(work_dir), weights_only=True)
    seconds = time.perf_counter() - started

    checkpoint = torch.load(best.best_model_path, map_location="cpu", weights_only=True)
    module.load_state_dict(checkpoint["state_dict"])
    module.to(trainer.strategy.root_device)
    # Under DDP every rank evaluates the whole split: torchmetrics gathers the ranks' states at
    # compute(), and identical copies leave every metric unchanged.
    metrics, outputs = {}, {}
    for split in task.eval_splits:
        split_metrics, outputs[split] = module.evaluate(data.loader(split), split)
        metrics |= split_metrics
    if not trainer.is_global_zero:
        return None
    loggers.log_metrics({f"eval/{k}": v for k, v in metrics.items()}, step=trainer.global_step)
    row = {"seed": seed, **metrics, "steps": trainer.global_step, "train_seconds": seconds}
    return module.model, outputs, row


# --- Predictions ---------------------------------------------------------------------------


def prediction_rows(task: TaskData, split: str, outputs: torch.Tensor) -> tuple[list, list]:
    """(columns, rows) pairing each example with its prediction; `outputs` are class
    probabilities (N, C) or scores (N,)."""
    examples = task.splits[split]
    texts = [e.text_a if e.text_b is None else f"{e.text_a} [SEP] {e.text_b}" for e in examples]
    if task.task_type == "regression":
        scores = outputs.tolist()
        rows = [
            [e.id, t, e.label, round(s, 4)] for e, t, s in zip(examples, texts, scores, strict=True)
        ]
        return ["id", "text", "gold", "predicted"], rows
    names = task.label_names
    confidence, predicted = outputs.max(-1)
    rows = [
        [e.id, t, names[e.label], names[p], round(c, 4)]
        for e, t, p, c in zip(examples, texts, predicted.tolist(), confidence.tolist(), strict=True)
    ]
    return ["id", "text", "gold", "predicted", "confidence"], rows


def plot_confusion_matrix(
    gold: list[int], predicted: list[int], label_names: list[str], path: Path, title: str
) -> None:
    """Counts of (gold row, predicted column), labelled, with the number in every cell."""
    n = len(label_names)
    counts = np.zeros((n, n), dtype=int)
    np.add.at(counts, (gold, predicted), 1)
    fig, ax = plt.subplots(figsize=(2.5 + 0.9 * n, 2 + 0.9 * n))
    ax.imshow(counts, cmap="Blues")
    ax.set_xticks(range(n), label_names, rotation=45, ha="right")
    ax.set_yticks(range(n), label_names)
    for i in range(n):
        for j in range(n):
            dark = counts[i, j] > counts.max() / 2
            ax.text(j, i, counts[i, j], ha="center", va="center", color="w" if dark else "k")
    ax.set_xlabel("predicted")
    ax.set_ylabel("gold")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def report_predictions(
    task: TaskData,
    outputs_per_split: dict[str, torch.Tensor],
    seed: int,
    out_dir: Path,
    sample_size: int,
    loggers: StageLoggers,
) -> None:
    """Per eval split: `predictions_seed<N>.csv` (every row), a W&B table of a sample, and for
    classification `confusion_matrix_seed<N>.png` (MNLI: `_matched` / `_mismatched` names)."""
    for split, outputs in outputs_per_split.items():
        postfix = metric_postfix(task.name, split)
        columns, rows = prediction_rows(task, split, outputs)
        with open(out_dir / f"predictions_seed{seed}{postfix}.csv", "w", newline="") as f:
            csv.writer(f).writerows([columns, *rows])
        if loggers.wandb is not None:
            sample = random.Random(seed).sample(rows, min(sample_size, len(rows)))
            loggers.wandb.log_table(key=f"eval/predictions{postfix}", columns=columns, data=sample)
        if task.task_type == "classification":
            png = out_dir / f"confusion_matrix_seed{seed}{postfix}.png"
            gold = [e.label for e in task.splits[split]]
            predicted = outputs.argmax(-1).tolist()
            title = f"{task.name} {split}, seed {seed}"
            plot_confusion_matrix(gold, predicted, task.label_names, png, title)
            loggers.log_image(f"eval/confusion_matrix{postfix}", png)


# --- Results over seeds --------------------------------------------------------------------


RUN_COLUMNS = ("steps", "train_seconds")  # what each seed's row holds beside the metrics


def results_table(rows: list[dict]) -> tuple[list[str], list[list]]:
    """(columns, rows): one row per seed, then the mean and the sample std (0 for one seed)."""
    columns = list(rows[0])
    table = [[str(row["seed"]), *(row[c] for c in columns[1:])] for row in rows]
    values = [[row[c] for row in rows] for c in columns[1:]]
    table.append(["mean", *(statistics.fmean(v) for v in values)])
    table.append(["std", *(statistics.stdev(v) if len(v) > 1 else 0.0 for v in values)])
    return columns, table


def write_results(rows: list[dict], task: TaskData, out_dir: Path, init: str) -> dict[str, float]:
    """`results.csv` and `results.md`; returns `eval_<metric>` (mean) and `eval_<metric>_std`."""
    columns, table = results_table(rows)
    with open(out_dir / "results.csv", "w", newline="") as f:
        csv.writer(f).writerows([columns, *table])
    *per_seed, (_, *means), (_, *stds) = table
    n = len(per_seed)

    def cell(column: str, value: float) -> str:
        return f"{value:.0f}" if column in RUN_COLUMNS else f"{value:.4f}"

    def line(first: str, cells: list[str]) -> str:
        return "| " + " | ".join([first, *cells]) + " |"

    named = list(zip(columns[1:], means, stds, strict=True))
    lines = [
        f"# {task.name}: fine-tuned from init={init}, {n} seed{'s' * (n > 1)}",
        "",
        line("seed", columns[1:]),
        "|" + "---:|" * len(columns),
        *(line(seed, [cell(c, v) for c, v in zip(columns[1:], vs, strict=True)])
          for seed, *vs in per_seed),
        line(f"mean ± std (n={n})", [f"{cell(c, m)} ± {cell(c, sd)}" for c, m, sd in named]),
        "",
        f"Metrics of the best checkpoint (by validation {main_metric(task.name, task.task_type)})"
        f" on the {' and '.join(task.eval_splits)} split; std is the sample standard deviation.",
    ]  # fmt: skip
    (out_dir / "results.md").write_text("\n".join(lines) + "\n")
    return {
        key: value
        for c, mean, std in named
        if c not in RUN_COLUMNS
        for key, value in ((f"eval_{c}", mean), (f"eval_{c}_std", std))
    }


# --- Saving and loading the fine-tuned model -----------------------------------------------


def save_finetuned(model: BertForSequenceClassification, task: TaskData, out_dir: Path) -> None:
    """Our weights, config and label names, for `load_finetuned`."""
    save_model(model, str(out_dir / WEIGHTS))
    (out_dir / MODEL_CONFIG).write_text(json.dumps(asdict(model.config), indent=2))
    labels = {"task": task.name, "task_type": task.task_type, "label_names": task.label_names}
    (out_dir / LABELS).write_text(json.dumps(labels, indent=2))


def load_finetuned(artifact_dir: Path) -> tuple[BertForSequenceClassification, BertConfig, list]:
    """(model, config, label names or None for regression) from a finetune artifact."""
    artifact_dir = Path(artifact_dir)
    model, config = load_artifact_model(
        artifact_dir, BertForSequenceClassification, "pipelines/finetune.py"
    )
    labels = json.loads((artifact_dir / LABELS).read_text())
    return model, config, labels["label_names"]


def export_finetuned(
    model: BertForSequenceClassification, task: TaskData, start: StartingPoint, out_dir: Path
) -> None:
    """An HF BertForSequenceClassification directory with label names and tokenizer files."""
    export_hf(model, model.config, out_dir)
    if task.label_names:
        config_file = out_dir / "config.json"
        config = json.loads(config_file.read_text())
        config["id2label"] = dict(enumerate(task.label_names))
        config["label2id"] = {name: i for i, name in enumerate(task.label_names)}
        config_file.write_text(json.dumps(config, indent=2) + "\n")
    for name in TOKENIZER_FILES:
        if (start.tokenizer_dir / name).is_file():
            shutil.copy2(start.tokenizer_dir / name, out_dir / name)
    if not (out_dir / "tokenizer.json").is_file():  # a checkpoint with vocab.txt only
        start.tokenizer.save(str(out_dir / "tokenizer.json"))

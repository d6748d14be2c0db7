"""Stage `finetune`: a task head on our pretrained encoder, an HF checkpoint or a random one.

Each seed trains a fresh model; early stopping and the best checkpoint follow the task's main
validation metric. That checkpoint is then scored once on every reported split: the validation
split(s) (`val_<metric>`; for GLUE, whose test labels are not public, this is the dev set) and,
where the task has a labelled test split, the test split (`test_<metric>`), which nothing is
ever selected on. The artifact holds results over seeds (`results.md`/`.csv`: n, mean, std,
95% CI), per-seed predictions and confusion matrices, and the first seed's model (ours, and
with `finetune.export` a transformers BertForSequenceClassification in `hf/`).
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from tokenizers import Tokenizer

from bertforge.analysis.results import report_predictions, results_table, write_results
from bertforge.artifacts import (
    HF_DIR,
    TOKENIZER_FILES,
    load_pretrained,
    model_record,
    save_model,
    tokenizer_of,
)
from bertforge.config import FinetuneConfig, TaskConfig, TrainerConfig
from bertforge.data.finetuning import FinetuningDataModule, load_checkpoint_tokenizer
from bertforge.data.tasks import TaskData, load_task, main_metric
from bertforge.data.tokenizer import PAD, write_model_max_length
from bertforge.errors import ConfigError
from bertforge.files import write_json_atomic
from bertforge.hf import (
    export_hf,
    hf_export_refusal,
    load_hf_state_dict,
    read_hf_checkpoint,
    resolve_hf_model,
)
from bertforge.lit.finetune import FinetuningModule
from bertforge.lit.trainer import batch_plan, last_checkpoint, make_trainer, world_size
from bertforge.model import BertConfig, BertForSequenceClassification
from bertforge.pipeline.optuna_pruning import OptunaPruning
from bertforge.pipeline.stage import BuildContext, Stage

SEED_RESULT = "result.json"  # in a seed's training directory once the seed is complete


@dataclass
class Settings:
    task: TaskConfig
    finetune: FinetuneConfig
    model: BertConfig | None  # init=random only: the architecture to initialise
    trainer: TrainerConfig  # precision is hashed; devices and the rest are not


def select(cfg) -> Settings:
    model = cfg.model if cfg.finetune.init == "random" else None
    return Settings(cfg.task, cfg.finetune, model, cfg.trainer)


def upstream(s: Settings) -> tuple[str, ...]:
    return {"pretrained": ("pretrain",), "random": ("tokenizer",), "hf": ()}[s.finetune.init]


@dataclass
class StartingPoint:
    """Where every seed starts: the model config, encoder weights (None: random) and tokenizer."""

    config: BertConfig
    encoder: dict[str, torch.Tensor] | None  # BertForSequenceClassification names, no head
    tokenizer: Tokenizer
    tokenizer_dir: Path  # its files are copied into the export
    name: str  # for titles: "pretrained bert_tiny", "all-MiniLM-L6-v2", "random bert_tiny"
    trained_length: int | None  # positions the encoder was trained on (None: unknown)

    def new_model(self) -> BertForSequenceClassification:
        """A fresh model; what `encoder` leaves out is initialised from the current seed."""
        model = BertForSequenceClassification(self.config)
        if self.encoder is not None:
            model.load_state_dict(self.encoder, strict=False)
        return model


def starting_point(ctx: BuildContext, task: TaskData) -> StartingPoint:
    """Our pretrained encoder, an HF checkpoint, or a random model, with a head for `task`."""
    s: Settings = ctx.settings
    overrides = {
        "num_labels": task.num_labels,
        "problem_type": "regression" if task.task_type == "regression" else "classification",
    }
    if (dropout := s.finetune.dropout) is not None:  # else the encoder's own
        overrides |= {"hidden_dropout_prob": dropout, "attention_probs_dropout_prob": dropout}
    if s.finetune.init == "hf":
        directory = resolve_hf_model(s.finetune.hf_model)
        state_dict, config = read_hf_checkpoint(directory)
        config = replace(config, **overrides)
        classifier = state_dict.get("classifier.weight")
        if classifier is not None and classifier.shape[0] != task.num_labels:  # another task's
            state_dict = {k: v for k, v in state_dict.items() if not k.startswith("classifier.")}
        probe = BertForSequenceClassification(config)
        fresh = load_hf_state_dict(probe, state_dict)
        encoder = {k: v for k, v in probe.state_dict().items() if k not in fresh}
        tokenizer = load_checkpoint_tokenizer(directory)
        return StartingPoint(config, encoder, tokenizer, directory, directory.name, None)
    if s.finetune.init == "pretrained":
        artifact = ctx.upstream["pretrain"]
        pretrained, config = load_pretrained(artifact)
        encoder = {f"bert.{k}": v for k, v in pretrained.bert.state_dict().items()}
        record = artifact.manifest.get("model", {})
        name, trained = record.get("name", config.name), record.get("trained_length")
        tokenizer_dir = artifact.path / HF_DIR
    else:
        artifact = ctx.upstream["tokenizer"]
        tokenizer = tokenizer_of(artifact)
        vocab = {
            "vocab_size": tokenizer.get_vocab_size(),
            "pad_token_id": tokenizer.token_to_id(PAD),
        }
        config, encoder = replace(s.model, **vocab), None
        name, trained, tokenizer_dir = f"random {s.model.name}", None, artifact.path
    tokenizer = tokenizer_of(artifact)
    return StartingPoint(
        replace(config, **overrides), encoder, tokenizer, tokenizer_dir, name, trained
    )


def report_splits(task: TaskData) -> dict[str, str]:
    """{split: metric prefix} of the splits the best checkpoint is scored on: validation
    split(s) as `val_`, a labelled test split as `test_` (scored once, never selected on)."""
    splits = {split: "val_" for split in task.splits if split.startswith("validation")}
    return splits | ({"test": "test_"} if "test" in task.splits else {})


def build(ctx: BuildContext) -> dict[str, float]:
    """Fine-tune once per seed into `ctx.path`; metrics as mean, std and CI over seeds.

    Under DDP every rank trains and evaluates; rank 0 alone writes (other ranks return {}).
    """
    s: Settings = ctx.settings
    f = s.finetune
    task = _checked_tasks.pop(_task_key(s.task), None) or load_task(s.task)
    if f.global_batch_size > (n := len(task.splits["train"])):
        raise ConfigError(
            f"finetune.global_batch_size={f.global_batch_size} exceeds the {n} training examples "
            f"of task {task.name}; lower finetune.global_batch_size (or raise task.max_examples)"
        )
    start = starting_point(ctx, task)
    start.config.check_length("finetune.max_seq_length", f.max_seq_length)
    micro_batch, accumulate = batch_plan(
        f.global_batch_size, s.trainer, f.micro_batch_size, "finetune"
    )
    data = FinetuningDataModule(task, start.tokenizer, f.max_seq_length, micro_batch, f.num_workers)
    rows = []
    for seed in f.seeds:
        work_dir = ctx.path / "training" / f"seed{seed}"
        finished = work_dir / SEED_RESULT
        if finished.is_file():  # done before this build was interrupted
            rows.append(dict(json.loads(finished.read_text())))
            continue
        with ctx.loggers(f"seed{seed}", work_dir) as loggers:
            run = train_seed(s, task, start, data, accumulate, seed, loggers, work_dir)
            if run is None:  # not rank 0
                continue
            model, outputs, row = run
            rows.append(row)
            report_predictions(task, outputs, seed, ctx.path, f.sample_predictions, loggers)
            if seed == f.seeds[0]:  # the first seed's model is the one kept
                keep_model(model, task, start, ctx.path, f.export)
                if (ctx.path / HF_DIR).is_dir():  # exported
                    loggers.log_artifact(ctx.path / HF_DIR, f"finetune-{ctx.hash}", "model")
            if seed == f.seeds[-1]:  # the summary goes into the last seed's run
                summary = write_results(rows, task.name, start.name, ctx.path)
                loggers.log_summary({f"results/{k}": v for k, v in summary.items()})
                loggers.log_table("results", *results_table(rows))
            write_json_atomic(finished, list(row.items()))  # complete: skipped when resuming
            shutil.rmtree(work_dir / "checkpoints")  # GBs for big models; the model is saved
    if not rows:
        return {}
    summary = write_results(rows, task.name, start.name, ctx.path)  # also after a resume
    shutil.rmtree(ctx.path / "training")
    ctx.extra |= model_record(f"{start.name} fine-tuned on {task.name}", start.trained_length)
    return summary | {"train_seconds": sum(r["train_seconds"] for r in rows), "seeds": len(rows)}


def train_seed(
    s: Settings,
    task: TaskData,
    start: StartingPoint,
    data: FinetuningDataModule,
    accumulate: int,
    seed: int,
    loggers,
    work_dir: Path,
) -> tuple[BertForSequenceClassification, dict[str, torch.Tensor], dict[str, float]] | None:
    """Train one seed in `work_dir` (resuming from its last checkpoint if an interrupted build
    left one), reload its best checkpoint and score it on the reported splits.

    Returns (best model, outputs per reported split, results row) on rank 0, None elsewhere.
    """
    f = s.finetune
    pl.seed_everything(seed, workers=True, verbose=False)
    data.seed = seed
    loggers.log_hyperparams({"seed": seed})
    rank_examples = math.ceil(len(task.splits["train"]) / world_size(s.trainer))
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
    stop = EarlyStopping(
        monitor, patience=f.early_stopping_patience, mode="max", check_finite=False
    )
    trainer = make_trainer(
        s.trainer,
        root_dir=work_dir,
        loggers=loggers.loggers,
        max_steps=f.max_steps,
        max_epochs=f.max_epochs if f.max_epochs >= 1 else -1,
        # in batches: after every epoch, and at max_steps
        val_check_interval=min(batches_per_epoch, total_steps * accumulate),
        gradient_clip_val=f.gradient_clip_val,
        accumulate_grad_batches=accumulate,
        checkpoint_every_n_steps=f.checkpoint_every_n_steps,
        callbacks=[best, stop, OptunaPruning(monitor, "max", report=seed == f.seeds[0])],
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
    for split, prefix in report_splits(task).items():
        split_metrics, outputs[split] = module.evaluate(data.loader(split), split)
        metrics |= {prefix + name: value for name, value in split_metrics.items()}
    if not trainer.is_global_zero:
        return None
    loggers.log_metrics(
        {k.replace("_", "/", 1): v for k, v in metrics.items()}, step=trainer.global_step
    )  # val/..., test/...
    row = {"seed": seed, **metrics, "steps": trainer.global_step, "train_seconds": seconds}
    return module.model, outputs, row


def keep_model(
    model: BertForSequenceClassification,
    task: TaskData,
    start: StartingPoint,
    out_dir: Path,
    export: bool,
) -> None:
    """Our weights, label names and tokenizer; with `export`, an HF directory `hf/` with label
    names and the tokenizer files."""
    labels = {"task": task.name, "task_type": task.task_type, "label_names": task.label_names}
    save_model(model, out_dir, labels)
    start.tokenizer.save(str(out_dir / "tokenizer.json"))  # for extraction
    if not export:
        return
    if reason := hf_export_refusal(model.config):
        logging.getLogger(__name__).warning("finetune.export skipped: %s", reason)
        return
    hf_dir = out_dir / HF_DIR
    export_hf(model, model.config, hf_dir)
    if task.label_names:
        config_file = hf_dir / "config.json"
        config = json.loads(config_file.read_text())
        config["id2label"] = dict(enumerate(task.label_names))
        config["label2id"] = {name: i for i, name in enumerate(task.label_names)}
        config_file.write_text(json.dumps(config, indent=2) + "\n")
    for name in TOKENIZER_FILES:
        if (start.tokenizer_dir / name).is_file():
            shutil.copy2(start.tokenizer_dir / name, hf_dir / name)
    if not (hf_dir / "tokenizer.json").is_file():  # a checkpoint with vocab.txt only
        start.tokenizer.save(str(hf_dir / "tokenizer.json"))
    write_model_max_length(hf_dir, model.config.max_position_embeddings)


# The task parsed by `check` at start-up, handed to this run's build (parsed once, not twice;
# a later run parses its files again, so an edited file is never served from here).
_checked_tasks: dict[str, TaskData] = {}


def _task_key(task: TaskConfig) -> str:
    return json.dumps(asdict(task), sort_keys=True, default=str)


def check(s: Settings) -> None:
    """At start-up, before any stage builds: the task's files parse, have the configured
    columns and valid labels (a wrong `task.text_columns` used to surface only after the
    tokenizer and pretraining had run). The hub is left to the build (a download)."""
    _checked_tasks.clear()
    if s.task.source != "hub":
        _checked_tasks[_task_key(s.task)] = load_task(s.task)


STAGE = Stage(
    "finetune",
    Settings,
    build,
    upstream=upstream,
    select=select,
    check=check,
    distributed=True,
    summary=(
        "val_accuracy", "val_f1", "val_mcc", "val_pearson", "val_spearman",
        "val_accuracy_matched", "val_accuracy_mismatched", "test_accuracy", "test_f1",
        "test_mcc", "test_pearson", "train_seconds",
    ),
)  # fmt: skip

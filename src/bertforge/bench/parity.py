"""Reference parity for fine-tuning: our `finetune` stage against `transformers.Trainer` +
`BertForSequenceClassification`, on the same HF checkpoint, examples, hyper-parameters and seeds.

Ours is the pipeline's stage (artifact built or reused; per-seed dev scores from `results.csv`).
The reference takes every setting from `cfg.finetune` (lr, batch, AdamW, warmup steps, linear
decay, clipping, total steps, length, seeds), validates and checkpoints at the same intervals
(every epoch and at `max_steps`), stops early with the same patience and reloads the best
checkpoint on the task's main validation metric, as our stage does. Both sides are scored by
`data.task_metrics` on the same split; the reference tokenises with the checkpoint's
`AutoTokenizer` (pairs truncated longest-first, like ours) and the report says whether its token
ids equal ours.

Writes `<paths.outputs>/parity/<task>.{json,md}`. Finished reference seeds are kept (and reused)
in `parity/reference/<finetune artifact hash>-transformers<version>/`; delete it to rerun them.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import shutil
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import torch

from bertforge.analysis.stats import compare, format_p, format_value, summarize
from bertforge.config import Config
from bertforge.data.finetuning import encode_examples, load_checkpoint_tokenizer
from bertforge.data.task_metrics import build_metrics
from bertforge.data.tasks import TaskData, load_task, main_metric, metric_postfix
from bertforge.errors import ConfigError
from bertforge.files import write_atomic, write_json_atomic
from bertforge.hf import resolve_hf_model
from bertforge.lit.trainer import batch_plan, world_size
from bertforge.pipeline.graph import Pipeline

log = logging.getLogger(__name__)

# Published GLUE dev results of MiniLM-L6-H384 (Wang et al. 2020), in points.
PUBLISHED = {"rte": ("accuracy", 68.8), "mrpc": ("f1", 88.9), "cola": ("mcc", 47.5),
             "sst2": ("accuracy", 91.5)}  # fmt: skip
PUBLISHED_NAME = "published MiniLM-L6-H384"
TOLERANCE = 0.01  # "within 1 point" on metrics in [0, 1]
SIDES = ("ours", "reference")
PRECISION = {"32": {}, "32-true": {}, "bf16-mixed": {"bf16": True}, "16-mixed": {"fp16": True}}
# Where the reference is not a copy of our training loop (independent by design).
DIFFERENCES = [
    "warmup: the same integer number of steps, round(warmup_ratio x total steps); during it our "
    "factor is (step+1)/(warmup+1), the Trainer's step/warmup (its first step has lr 0)",
    "optimizer: both torch AdamW; ours is fused on CUDA only, the Trainer's default "
    "`adamw_torch_fused` also on CPU (same update up to float rounding)",
    "weight decay: ours on every parameter with >= 2 dims, the Trainer's on every parameter but "
    "biases and LayerNorm; for BERT both are the matrices and embeddings",
    "random streams: the head's initialisation, dropout masks and the training order come from "
    "the same seed but different generators, so runs pair by seed, they are not replicas",
    "time: ours is Lightning's fit() (training, validation, checkpoints), the reference's is "
    "Trainer.train() (the same work); final scoring of the best checkpoint is excluded",
]
MID_EPOCH = (
    "validation: ours validates at epoch ends (and at max_steps only within the first epoch), "
    "so its last {} steps are never scored; the Trainer also evaluates at step {}"
)


def check(cfg: Config) -> None:
    if cfg.finetune.init != "hf":
        raise ConfigError(
            "parity compares fine-tuning of an HF checkpoint; set finetune.init=hf "
            "finetune.hf_model=<checkpoint dir>"
        )
    try:
        import accelerate  # noqa: F401  (transformers.Trainer needs it)
    except ImportError:
        raise ConfigError(
            "the reference side needs `accelerate` (transformers.Trainer); pip install "
            "'accelerate>=1.1' (it is in the dev extra)"
        ) from None
    if cfg.trainer.precision not in PRECISION:
        raise ConfigError(f"parity runs trainer.precision {', '.join(PRECISION)}; not the others")
    if torch.cuda.device_count() > 1 and cfg.trainer.accelerator != "cpu":
        raise ConfigError("the reference runs on one device; set CUDA_VISIBLE_DEVICES=<one GPU>")


def metric_names(task: TaskData) -> list[str]:
    """The validation split's reported metrics, main metric first (MRPC: f1, accuracy)."""
    post = metric_postfix(task.name, "validation")
    names = [m + post for m in task.spec.metrics]
    main = main_metric(task.name, task.task_type)
    return [main, *(n for n in names if n != main)]


def total_steps(cfg: Config, n_train: int) -> tuple[int, int]:
    """(optimizer steps per epoch, total steps) as `stages/finetune.train_seed` plans them."""
    f = cfg.finetune
    micro, accumulate = batch_plan(f.global_batch_size, cfg.trainer, f.micro_batch_size, "finetune")
    batches = math.ceil(math.ceil(n_train / world_size(cfg.trainer)) / micro)
    per_epoch = math.ceil(batches / accumulate)
    total = per_epoch * f.max_epochs if f.max_epochs >= 1 else f.max_steps
    return per_epoch, min(total, f.max_steps) if f.max_steps > 0 else total


# --- ours --------------------------------------------------------------------------------------


def run_ours(cfg: Config) -> tuple[dict, dict]:
    """The finetune stage through the Pipeline: ({seed: {metric: value, seconds, steps}}, info)."""
    pipeline = Pipeline(cfg)
    artifact = pipeline.run(["finetune"])[0].artifact
    with open(artifact.path / "results.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    seeds = {}
    for row in rows:
        if row["seed"].isdigit():  # not the mean/std/CI rows
            values = {k[len("val_") :]: float(v) for k, v in row.items() if k.startswith("val_")}
            seeds[int(row["seed"])] = values | {
                "seconds": float(row["train_seconds"]),
                "steps": int(float(row["steps"])),
            }
    info = {"artifact": str(artifact.path), "hash": artifact.hash, "reused": artifact.reused}
    return seeds, info


# --- reference ---------------------------------------------------------------------------------


def encode(tokenizer, task: TaskData, split: str, max_length: int) -> list[dict]:
    examples = task.splits[split]
    texts_b = [e.text_b for e in examples]
    enc = tokenizer(
        [e.text_a for e in examples], None if texts_b[0] is None else texts_b,
        truncation="longest_first", max_length=max_length,
    )  # fmt: skip
    return [
        {"input_ids": enc["input_ids"][i], "token_type_ids": enc["token_type_ids"][i],
         "attention_mask": enc["attention_mask"][i], "labels": e.label}
        for i, e in enumerate(examples)
    ]  # fmt: skip


def input_check(cfg: Config, task: TaskData, model_dir: Path, encoded: dict) -> dict:
    """How many examples the reference tokenises differently from our stage."""
    ours_tok = load_checkpoint_tokenizer(model_dir)
    differ = total = 0
    for split, rows in encoded.items():
        ours = encode_examples(ours_tok, task.splits[split], cfg.finetune.max_seq_length)
        for a, b in zip(ours, rows, strict=True):
            total += 1
            differ += (a["input_ids"], a["token_type_ids"]) != (b["input_ids"], b["token_type_ids"])
    return {"examples": total, "different_token_ids": differ}


def metrics_fn(task: TaskData):
    """`compute_metrics` for the Trainer: our task metrics on the validation split."""

    def compute(eval_pred) -> dict[str, float]:
        logits = torch.as_tensor(eval_pred.predictions).float()
        labels = torch.as_tensor(eval_pred.label_ids)
        if task.task_type == "regression":
            preds, labels = logits.reshape(-1), labels.float()
        else:
            preds, labels = logits.argmax(-1), labels.long()
        metrics = build_metrics(task, split="validation")
        metrics.update(preds, labels)
        return {k: v.item() for k, v in metrics.compute().items()}

    return compute


def train_reference(
    cfg: Config, task: TaskData, model_dir: Path, tokenizer, encoded: dict, seed: int, work: Path
) -> dict:
    """One seed of transformers.Trainer fine-tuning: {metric: value, seconds, steps}."""
    import transformers as tf

    f = cfg.finetune
    per_epoch, steps = total_steps(cfg, len(task.splits["train"]))
    micro = f.micro_batch_size or f.global_batch_size
    main = main_metric(task.name, task.task_type)
    regression = task.task_type == "regression"
    tf.set_seed(seed)  # the new head's initialisation follows the seed
    model = tf.BertForSequenceClassification.from_pretrained(
        model_dir, num_labels=task.num_labels, ignore_mismatched_sizes=True,
        problem_type="regression" if regression else "single_label_classification",
    )  # fmt: skip
    interval = min(per_epoch, steps)  # ours validates every epoch and at max_steps
    args = tf.TrainingArguments(
        output_dir=str(work), seed=seed, data_seed=seed, max_steps=steps,
        per_device_train_batch_size=micro, per_device_eval_batch_size=micro,
        gradient_accumulation_steps=f.global_batch_size // micro,
        learning_rate=f.lr, weight_decay=f.weight_decay, adam_beta1=f.adam_betas[0],
        adam_beta2=f.adam_betas[1], adam_epsilon=f.adam_eps, max_grad_norm=f.gradient_clip_val,
        lr_scheduler_type="linear", warmup_steps=round(f.warmup_ratio * steps),
        eval_strategy="steps", eval_steps=interval, save_strategy="steps", save_steps=interval,
        save_total_limit=1, save_only_model=True, load_best_model_at_end=True,
        metric_for_best_model=main, greater_is_better=True,
        logging_strategy="steps", logging_steps=cfg.trainer.log_every_n_steps,
        report_to="none", disable_tqdm=not cfg.trainer.enable_progress_bar,
        use_cpu=cfg.trainer.accelerator == "cpu" or not torch.cuda.is_available(),
        dataloader_num_workers=f.num_workers, **PRECISION[cfg.trainer.precision],
    )  # fmt: skip
    trainer = tf.Trainer(
        model=model, args=args, train_dataset=encoded["train"],
        eval_dataset=encoded["validation"], processing_class=tokenizer,
        data_collator=tf.DataCollatorWithPadding(tokenizer), compute_metrics=metrics_fn(task),
        callbacks=[tf.EarlyStoppingCallback(early_stopping_patience=f.early_stopping_patience)],
    )  # fmt: skip
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    scores = trainer.evaluate()  # the best checkpoint, reloaded at the end of train()
    values = {k[len("eval_") :]: float(v) for k, v in scores.items() if k.startswith("eval_")}
    keep = set(metric_names(task))
    run = {"seconds": seconds, "steps": trainer.state.global_step}
    return {k: v for k, v in values.items() if k in keep} | run


def run_reference(cfg: Config, task: TaskData, cache: Path, work_root: Path) -> tuple[dict, dict]:
    """Every seed of the reference (finished seeds in `cache` are reused): (seeds, info)."""
    from transformers import AutoTokenizer

    model_dir = resolve_hf_model(cfg.finetune.hf_model)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    length = cfg.finetune.max_seq_length
    encoded = {split: encode(tokenizer, task, split, length) for split in ("train", "validation")}
    info = {"tokenizer": type(tokenizer).__name__} | input_check(cfg, task, model_dir, encoded)
    if info["different_token_ids"]:
        n, total = info["different_token_ids"], info["examples"]
        log.warning("the reference tokenises %d of %d examples differently from ours", n, total)
    seeds = {}
    cache.mkdir(parents=True, exist_ok=True)
    for seed in cfg.finetune.seeds:
        done = cache / f"seed{seed}.json"
        if done.is_file():
            seeds[seed] = json.loads(done.read_text())
            continue
        work = Path(tempfile.mkdtemp(prefix=f"{task.name}-seed{seed}-", dir=work_root))
        try:
            seeds[seed] = train_reference(cfg, task, model_dir, tokenizer, encoded, seed, work)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        write_json_atomic(done, seeds[seed])
    return seeds, info


# --- report ------------------------------------------------------------------------------------


def summarise(task: str, metrics: list[str], ours: dict, reference: dict) -> dict:
    """Per metric: each side's n, mean, 95% CI and the paired difference ours - reference."""
    out = {}
    for metric in metrics:
        a = {s: v[metric] for s, v in ours.items() if metric in v}
        b = {s: v[metric] for s, v in reference.items() if metric in v}
        if not a or not b:
            continue
        diff = compare(a, b, "ours", "reference")
        published = PUBLISHED.get(task)
        out[metric] = {
            "ours": asdict(summarize(list(a.values()))),
            "reference": asdict(summarize(list(b.values()))),
            "difference": asdict(diff) | {"test": diff.test, "verdict": diff.verdict},
            "within_1_point": abs(diff.mean) <= TOLERANCE,
            "published": published[1] / 100 if published and published[0] == metric else None,
        }
    return out


def merge(results: list[dict]) -> dict:
    """One report from parity runs that differ only in their seeds (e.g. one seed per process,
    side by side on a machine's cores): the seeds of all, the statistics over all of them."""
    first = results[0]

    def same(r: dict) -> tuple:
        settings = {k: v for k, v in r["settings"].items() if k != "seeds"}
        return r["task"], r["model"], settings, r["env"]["transformers"]

    for r in results[1:]:
        if same(r) != same(first):
            raise ConfigError("parity reports to merge must differ only in finetune.seeds")
    sides = {
        side: {int(s): v for r in results for s, v in r[side]["seeds"].items()} for side in SIDES
    }
    merged = json.loads(json.dumps(first))
    merged["settings"]["seeds"] = sorted(sides["ours"])
    for side in SIDES:
        merged[side]["seeds"] = sides[side]
        merged[side]["wall_seconds"] = sum(r[side]["wall_seconds"] for r in results)
    merged["ours"]["artifact"] = [r["ours"]["artifact"] for r in results]
    merged["summary"] = summarise(first["task"], list(first["summary"]), *sides.values())
    return merged


def cell(value: float | None, digits: int = 4) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def interval(low: float | None, high: float | None, fmt=format_value) -> str:
    return "" if low is None else f" [{fmt(low)}, {fmt(high)}]"


def ci(s: dict) -> str:
    return f"{s['mean']:.4f}{interval(s['ci_low'], s['ci_high'], '{:.4f}'.format)} (n={s['n']})"


def markdown(result: dict) -> str:
    metrics = list(result["summary"])
    seeds = sorted(set(result["ours"]["seeds"]) | set(result["reference"]["seeds"]), key=int)
    hp = result["settings"]
    lines = [
        f"# Fine-tuning parity on {result['task']}: {result['model']}",
        "",
        "ours = bertforge `finetune` stage; reference = transformers "
        f"{result['env']['transformers']} Trainer + BertForSequenceClassification. Same "
        "checkpoint, examples and seeds; "
        f"lr {hp['lr']}, batch {hp['global_batch_size']}, {hp['total_steps']} steps max "
        f"({hp['steps_per_epoch']}/epoch), warmup {hp['warmup_steps']}, weight decay "
        f"{hp['weight_decay']}, clip {hp['gradient_clip_val']}, length {hp['max_seq_length']}, "
        f"patience {hp['early_stopping_patience']}; {result['env']['device']}, "
        f"{result['env']['threads']} thread(s). Dev scores of the best checkpoint.",
        "",
        "| seed | "
        + " | ".join(f"{side} {m}" for m in metrics for side in SIDES)
        + " | ours steps | reference steps | ours s | reference s |",
        "|---" * (1 + 2 * len(metrics) + 4) + "|",
    ]
    for seed in seeds:
        o, r = result["ours"]["seeds"].get(seed, {}), result["reference"]["seeds"].get(seed, {})
        cells = [cell(side.get(m)) for m in metrics for side in (o, r)]
        cells += [str(o.get("steps", "–")), str(r.get("steps", "–"))]
        cells += [cell(o.get("seconds"), 1), cell(r.get("seconds"), 1)]
        lines.append(f"| {seed} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"| metric | ours mean [95% CI] | reference mean [95% CI] | ours − reference [95% CI] "
        f"| p | within 1 point | {PUBLISHED_NAME} |",
        "|---|---|---|---|---|---|---|",
    ]
    for m, s in result["summary"].items():
        d = s["difference"]
        p = "–" if d["p_value"] is None else format_p(d["p_value"])
        lines.append(
            f"| {m} | {ci(s['ours'])} | {ci(s['reference'])} | "
            f"{format_value(d['mean'], signed=True)}{interval(d['ci_low'], d['ci_high'])} | {p} | "
            f"{'yes' if s['within_1_point'] else 'no'} | {cell(s['published'], 3)} |"
        )
    lines += ["", *(f"- {s['difference']['verdict']}" for s in result["summary"].values())]
    inputs = result["reference"]["inputs"]
    lines += [
        f"- token ids: the reference's differ from ours on {inputs['different_token_ids']} of "
        f"{inputs['examples']} train+dev examples ({inputs['tokenizer']})",
        f"- ours: artifact {result['ours']['artifact']} "
        f"({'reused' if result['ours']['reused'] else 'built'}; seconds are from its build)",
        "",
        "Known differences between the two loops:",
        "",
        *(f"- {d}" for d in result["differences"]),
    ]
    return "\n".join(lines) + "\n"


def environment(cfg: Config) -> dict:
    import lightning
    import transformers

    cuda = cfg.trainer.accelerator != "cpu" and torch.cuda.is_available()
    return {
        "torch": torch.__version__, "transformers": transformers.__version__,
        "lightning": lightning.__version__, "threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name(0) if cuda else "CPU",
        "precision": cfg.trainer.precision,
    }  # fmt: skip


def run_parity(cfg: Config) -> tuple[dict, Path]:
    """Run both sides, write `<paths.outputs>/parity/<task>.{json,md}`; (result, md path)."""
    import transformers

    check(cfg)
    if cfg.trainer.num_threads:
        torch.set_num_threads(cfg.trainer.num_threads)
    logging.getLogger("lightning.pytorch").propagate = False
    out_dir = Path(cfg.paths.outputs) / "parity"
    out_dir.mkdir(parents=True, exist_ok=True)
    task = load_task(cfg.task)
    per_epoch, steps = total_steps(cfg, len(task.splits["train"]))
    f = cfg.finetune
    watch = ("init", "num_workers", "sample_predictions", "checkpoint_every_n_steps", "export")
    settings = {k: v for k, v in asdict(f).items() if k not in watch}
    warmup = round(f.warmup_ratio * steps)
    settings |= {"steps_per_epoch": per_epoch, "total_steps": steps, "warmup_steps": warmup}

    mid = f.max_steps > 0 and steps > per_epoch and steps % per_epoch  # ends mid-epoch
    started = time.perf_counter()
    ours, ours_info = run_ours(cfg)
    ours_wall = time.perf_counter() - started
    cache = out_dir / "reference" / f"{ours_info['hash']}-transformers{transformers.__version__}"
    started = time.perf_counter()
    reference, ref_info = run_reference(cfg, task, cache, out_dir)
    ref_wall = time.perf_counter() - started

    result = {
        "task": task.name,
        "model": f.hf_model,
        "settings": settings,
        "env": environment(cfg),
        "ours": ours_info | {"seeds": ours, "wall_seconds": ours_wall},
        "reference": {"seeds": reference, "inputs": ref_info, "wall_seconds": ref_wall},
        "summary": summarise(task.name, metric_names(task), ours, reference),
        "published": PUBLISHED.get(task.name),
        "differences": DIFFERENCES + ([MID_EPOCH.format(steps % per_epoch, steps)] if mid else []),
    }
    write_json_atomic(out_dir / f"{task.name}.json", result)
    md = out_dir / f"{task.name}.md"
    write_atomic(md, markdown(json.loads(json.dumps(result, default=str))))
    return result, md

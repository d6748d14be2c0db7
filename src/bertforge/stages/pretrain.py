"""Stage `pretrain`: MLM (+ NSP) pretraining, then our weights, an HF export and loss curves.

`pretrain.init=hf` continues the pretraining of an HF BERT checkpoint on this corpus (domain
adaptation, like transformers' run_mlm.py): the model's shape, encoder and whatever of the MLM
and NSP heads (and pooler) the checkpoint has come from it; what it lacks starts fresh.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, replace

import lightning.pytorch as pl
from tokenizers import Tokenizer

from bertforge.analysis.figures import plot_training_curves
from bertforge.artifacts import (
    HF_DIR,
    SNAPSHOTS,
    TOKENIZER_FILES,
    hf_tokenizer,
    model_record,
    save_model,
    tokenizer_of,
)
from bertforge.config import PretrainConfig, TrainerConfig
from bertforge.data.pretraining import (
    MaskedLanguageModelingCollator,
    PretrainingDataModule,
    special_ids_of,
)
from bertforge.data.tokenizer import write_model_max_length
from bertforge.errors import ConfigError
from bertforge.hf import (
    export_hf,
    hf_export_refusal,
    load_hf_state_dict,
    read_hf_checkpoint,
    resolve_hf_model,
)
from bertforge.lit.pretrain import PretrainingModule
from bertforge.lit.snapshots import EncoderSnapshots
from bertforge.lit.trainer import batch_plan, last_checkpoint, make_trainer
from bertforge.model import BertConfig, num_parameters
from bertforge.pipeline.stage import BuildContext, Stage

log = logging.getLogger(__name__)
FRESH = {  # our names -> what an HF checkpoint may lack
    "mlm.": "MLM head (cls.predictions.*)",
    "nsp.": "NSP head (cls.seq_relationship.*)",
    "bert.pooler.": "pooler",
}


@dataclass
class Settings:
    model: BertConfig | None  # init=random only: the architecture to initialise
    pretrain: PretrainConfig
    trainer: TrainerConfig  # precision is hashed; devices and the rest are not
    seed: int


def select(cfg) -> Settings:
    model = cfg.model if cfg.pretrain.init == "random" else None
    return Settings(model, cfg.pretrain, cfg.trainer, cfg.seed)


def checkpoint_start(p: PretrainConfig, tokenizer: Tokenizer) -> tuple[BertConfig, dict]:
    """The config and HF state dict of `pretrain.hf_model`, whose own tokenizer `tokenizer`
    (the tokenizer artifact) must be: another vocabulary would feed its rows other words."""
    directory = resolve_hf_model(p.hf_model, "pretrain.hf_model")
    state_dict, config = read_hf_checkpoint(directory)
    if tokenizer.get_vocab() != hf_tokenizer(p.hf_model, "pretrain.hf_model").get_vocab():
        raise ConfigError(
            f"pretrain.init=hf: the tokenizer is not pretrain.hf_model={p.hf_model}'s own; set "
            f"tokenizer.source=hf tokenizer.hf_model={p.hf_model}"
        )
    config.check_length("pretrain.max_seq_length", p.max_seq_length)
    log.info(
        "pretrain.init=hf: the model is %s's (L%d/H%d/A%d, %d tokens); model.* is not used",
        p.hf_model, config.num_hidden_layers, config.hidden_size, config.num_attention_heads,
        config.vocab_size,
    )  # fmt: skip
    return config, state_dict


def build(ctx: BuildContext) -> dict[str, float]:
    """Pretrain into `ctx.path`, resuming from its last.ckpt if a run was interrupted."""
    s: Settings = ctx.settings
    p = s.pretrain
    pl.seed_everything(s.seed, workers=True, verbose=False)
    tokenizer_artifact = ctx.upstream["tokenizer"]
    tokenizer = tokenizer_of(tokenizer_artifact)
    special = special_ids_of(tokenizer)
    if p.init == "hf":
        bert_config, state_dict = checkpoint_start(p, tokenizer)
        bert_config = replace(bert_config, pad_token_id=special.pad)
    else:
        bert_config = replace(
            s.model, vocab_size=tokenizer.get_vocab_size(), pad_token_id=special.pad
        )
    module = PretrainingModule.from_config(
        bert_config,
        objective=p.objective,
        lr=p.lr,
        weight_decay=p.weight_decay,
        adam_betas=tuple(p.adam_betas),
        adam_eps=p.adam_eps,
        warmup_steps=round(p.warmup_ratio * p.max_steps),
        max_steps=p.max_steps,
        lr_schedule=p.lr_schedule,
        decay_steps=round(p.decay_ratio * p.max_steps),
    )
    if p.init == "hf":
        fresh = load_hf_state_dict(module.model, state_dict, require_heads=False)
        lacks = [name for prefix, name in FRESH.items() if any(k.startswith(prefix) for k in fresh)]
        if lacks:
            log.info(
                "pretrain.init=hf: %s has no %s: they start fresh", p.hf_model, " and ".join(lacks)
            )
    collator = MaskedLanguageModelingCollator(special, tokenizer.get_vocab_size(), p.mask_rate)
    micro_batch, accumulate = batch_plan(
        p.global_batch_size, s.trainer, p.micro_batch_size, "pretrain"
    )
    data = PretrainingDataModule(
        ctx.upstream["pretrain_data"].path,
        collator,
        micro_batch,
        p.num_workers,
        length_bucket_window=p.length_bucket_window,
        seed=s.seed,
    )
    snapshots = [step for step in p.snapshot_steps if step < p.max_steps]  # final model: the last
    with ctx.loggers(resume_from=ctx.path) as loggers:
        trainer = make_trainer(
            s.trainer,
            root_dir=ctx.path,
            loggers=loggers.loggers,
            max_steps=p.max_steps,
            val_check_interval=min(p.val_check_interval, p.max_steps),
            limit_val_batches=p.limit_val_batches,
            gradient_clip_val=p.gradient_clip_val,
            accumulate_grad_batches=accumulate,
            checkpoint_every_n_steps=p.checkpoint_every_n_steps,
            callbacks=[EncoderSnapshots(ctx.path / SNAPSHOTS, snapshots)] if snapshots else [],
        )
        trainer.fit(module, datamodule=data, ckpt_path=last_checkpoint(ctx.path), weights_only=True)
        final = trainer.validate(module, datamodule=data, verbose=False)[0]
        if not trainer.is_global_zero:
            return {}

        save_model(module.model, ctx.path)
        export_dir = ctx.path / HF_DIR
        if reason := hf_export_refusal(bert_config):  # hf/ then holds the tokenizer only
            export_dir.mkdir(parents=True, exist_ok=True)
            log.warning("no HF export: %s", reason)
        else:
            export_hf(module.model, bert_config, export_dir)
        for name in TOKENIZER_FILES:
            shutil.copy2(tokenizer_artifact.path / name, export_dir / name)
        write_model_max_length(export_dir, bert_config.max_position_embeddings)
        curves = plot_training_curves(
            loggers.csv_path, ctx.path / "loss_curves.png",
            title=f"pretraining {bert_config.name} ({p.objective})",
        )  # fmt: skip
        loggers.log_image("pretrain/loss_curves", ctx.path / "loss_curves.png")
        loggers.log_artifact(export_dir, f"bert-{ctx.hash}", "model")
    ctx.extra |= model_record(f"pretrained {bert_config.name}", p.max_seq_length)
    metrics = {key.replace("/", "_"): value for key, value in final.items()}
    return (
        metrics
        | curves
        | {
            "parameters": num_parameters(module.model),
            "steps": trainer.global_step,
            # every rank sees as many tokens as rank 0, on average
            "tokens_per_s": module.tokens_seen
            * trainer.world_size
            / max(module.train_seconds, 1e-9),
            "train_seconds": module.train_seconds,
            "padding_share": 1 - module.tokens_seen / max(module.padded_tokens_seen, 1),
        }
    )


STAGE = Stage(
    "pretrain",
    Settings,
    build,
    upstream=lambda s: ("tokenizer", "pretrain_data"),
    select=select,
    distributed=True,
    summary=(
        "val_loss_mlm", "val_mlm_accuracy", "val_loss_nsp", "val_nsp_accuracy",
        "train_loss_first", "train_loss_last", "tokens_per_s", "padding_share", "train_seconds",
    ),
)  # fmt: skip

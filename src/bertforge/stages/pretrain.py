"""The pretraining stage's work: data, module, trainer, then weights, HF export and curves."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import lightning.pytorch as pl
from safetensors.torch import save_model

from bertforge.config import Config
from bertforge.data.pretraining import (
    MaskedLanguageModelingCollator,
    PretrainingDataModule,
    special_ids_of,
)
from bertforge.errors import DataError
from bertforge.hf import export_hf
from bertforge.lit.pretrain import PretrainingModule
from bertforge.lit.trainer import batch_plan, last_checkpoint, make_trainer
from bertforge.model import BertConfig, num_parameters
from bertforge.analysis.figures import plot_training_curves
from bertforge.pipeline.store import BuildContext
from bertforge.data.tokenizer import load_tokenizer
from bertforge.pipeline.tracking import StageLoggers

WEIGHTS = "model.safetensors"
MODEL_CONFIG = "model_config.json"
TOKENIZER_FILES = (
    "tokenizer.json", "vocab.txt", "special_tokens_map.json", "tokenizer_config.json"
)  # fmt: skip


def bert_config_for(cfg: Config, vocab_size: int, pad_token_id: int) -> BertConfig:
    m = cfg.model
    return BertConfig(
        vocab_size=vocab_size,
        hidden_size=m.hidden_size,
        num_hidden_layers=m.num_hidden_layers,
        num_attention_heads=m.num_attention_heads,
        intermediate_size=m.intermediate_size,
        max_position_embeddings=m.max_position_embeddings,
        type_vocab_size=m.type_vocab_size,
        hidden_dropout_prob=m.hidden_dropout_prob,
        attention_probs_dropout_prob=m.attention_probs_dropout_prob,
        layer_norm_eps=m.layer_norm_eps,
        initializer_range=m.initializer_range,
        pad_token_id=pad_token_id,
    )


def run_pretraining(cfg: Config, ctx: BuildContext, loggers: StageLoggers) -> dict[str, float]:
    """Pretrain into `ctx.path` (resuming from its last.ckpt if a run was interrupted)."""
    p = cfg.pretrain
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    tokenizer_dir = ctx.upstream["tokenizer"].path
    tokenizer = load_tokenizer(tokenizer_dir)
    special = special_ids_of(tokenizer)
    bert_config = bert_config_for(cfg, tokenizer.get_vocab_size(), special.pad)
    module = PretrainingModule.from_config(
        bert_config,
        objective=p.objective,
        lr=p.lr,
        weight_decay=p.weight_decay,
        adam_betas=tuple(p.adam_betas),
        adam_eps=p.adam_eps,
        warmup_steps=round(p.warmup_ratio * p.max_steps),
        max_steps=p.max_steps,
    )
    collator = MaskedLanguageModelingCollator(special, bert_config.vocab_size, p.mask_rate)
    micro_batch, accumulate = batch_plan(
        p.global_batch_size, cfg.trainer, p.micro_batch_size, "pretrain"
    )
    data = PretrainingDataModule(
        ctx.upstream["pretrain_data"].path,
        collator,
        micro_batch,
        p.num_workers,
        length_bucket_window=p.length_bucket_window,
        seed=cfg.seed,
    )
    trainer = make_trainer(
        cfg.trainer,
        root_dir=ctx.path,
        loggers=loggers.loggers,
        max_steps=p.max_steps,
        val_check_interval=min(p.val_check_interval, p.max_steps),
        limit_val_batches=p.limit_val_batches,
        gradient_clip_val=p.gradient_clip_val,
        accumulate_grad_batches=accumulate,
        checkpoint_every_n_steps=p.checkpoint_every_n_steps,
    )
    trainer.fit(module, datamodule=data, ckpt_path=last_checkpoint(ctx.path), weights_only=True)
    final = trainer.validate(module, datamodule=data, verbose=False)[0]
    if not trainer.is_global_zero:
        return {}

    save_model(module.model, str(ctx.path / WEIGHTS))
    (ctx.path / MODEL_CONFIG).write_text(json.dumps(bert_config.__dict__, indent=2))
    export_dir = ctx.path / "hf"
    export_hf(module.model, bert_config, export_dir)
    for name in TOKENIZER_FILES:
        shutil.copy2(tokenizer_dir / name, export_dir / name)
    curves = plot_training_curves(loggers.csv_path, ctx.path / "loss_curves.png")
    loggers.log_image("pretrain/loss_curves", ctx.path / "loss_curves.png")
    loggers.log_artifact(
        export_dir,
        f"bert-{ctx.hash}",
        "model",
        uses=[f"tokenizer-{ctx.upstream['tokenizer'].hash}:latest"],
    )

    metrics = {key.replace("/", "_"): value for key, value in final.items()}
    metrics |= curves
    metrics |= {
        "parameters": num_parameters(module.model),
        "steps": trainer.global_step,
        # every rank sees as many tokens as rank 0, on average
        "tokens_per_s": module.tokens_seen * trainer.world_size / max(module.train_seconds, 1e-9),
        "train_seconds": module.train_seconds,
        "padding_share": 1 - module.tokens_seen / max(module.padded_tokens_seen, 1),
    }
    return metrics


def load_artifact_model(artifact_dir: Path, model_class, rebuild: str):
    """(model, BertConfig) from our weights and config in an artifact directory; a damaged
    file is a DataError that says how to rebuild the artifact (`rebuild`: its entry point)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_model

    artifact_dir = Path(artifact_dir)
    fix = f"delete {artifact_dir} or rerun {rebuild} with force=true to rebuild it"
    try:
        config = BertConfig(**json.loads((artifact_dir / MODEL_CONFIG).read_text()))
    except (OSError, json.JSONDecodeError, TypeError) as err:
        raise DataError(
            f"{artifact_dir / MODEL_CONFIG} is missing or damaged ({err}); {fix}"
        ) from None
    model = model_class(config)
    try:
        load_model(model, str(artifact_dir / WEIGHTS))
    except (OSError, SafetensorError, RuntimeError) as err:
        reason = str(err).splitlines()[0][:120]
        raise DataError(
            f"{artifact_dir / WEIGHTS} is truncated or damaged ({reason}); {fix}"
        ) from None
    return model, config


def load_pretrained(artifact_dir: Path):
    """(BertForPreTraining, BertConfig) from a pretrain artifact directory."""
    from bertforge.model import BertForPreTraining

    return load_artifact_model(artifact_dir, BertForPreTraining, "pipelines/pretrain.py")

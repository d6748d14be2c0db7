"""Continued pretraining (`pretrain.init=hf`) with the checkpoint's own tokenizer
(`tokenizer.source=hf`), and the pretraining learning-rate schedules."""

from __future__ import annotations

import json
import logging
import math
import shutil

import pytest
import torch
from tokenizers import Tokenizer

from bertforge.artifacts import tokenizer_of
from bertforge.config import PretrainConfig
from bertforge.errors import ConfigError
from bertforge.lit.optim import lr_factor
from bertforge.pipeline.graph import Pipeline
from bertforge.stages.pretrain import checkpoint_start
from conftest import TINY, compose


@pytest.fixture(scope="module")
def tiny_hf(tiny_upstream, tmp_path_factory):
    """The session's tiny pretrained model as an HF BertForPreTraining directory (with its
    tokenizer), copied out of the artifact store."""
    export = next((tiny_upstream / "artifacts" / "pretrain").glob("*/hf"))
    return shutil.copytree(export, tmp_path_factory.mktemp("checkpoint") / "tiny_bert")


def hf_overrides(checkpoint, init: str = "hf") -> list[str]:
    return [
        *TINY, "pretrain.max_steps=3", "pretrain.val_check_interval=3",
        "trainer.log_every_n_steps=1", "tokenizer.source=hf", f"tokenizer.hf_model={checkpoint}",
        f"pretrain.init={init}", f"pretrain.hf_model={checkpoint}",
    ]  # fmt: skip


def first_train_loss(pretrain_dir) -> float:
    """The first logged training loss of a pretrain artifact (its CSV log, step 0)."""
    import csv

    (log,) = pretrain_dir.rglob("metrics.csv")
    rows = [row for row in csv.DictReader(log.open()) if row.get("train/loss")]
    return float(min(rows, key=lambda row: int(row["step"]))["train/loss"])


def test_continued_pretraining_starts_below_random_init(tiny_hf, tmp_path, caplog):
    """The issue's Done-when: an HF checkpoint loads, and its first loss on the same batches is
    below a random init's; the tokenizer artifact is the checkpoint's own."""
    outputs = tmp_path / "outputs"
    with caplog.at_level(logging.INFO, logger="bertforge"):
        continued = Pipeline(compose(*hf_overrides(tiny_hf), outputs=outputs))
        continued.run(["pretrain"])
    assert "the model is" in caplog.text and "model.* is not used" in caplog.text
    assert "start fresh" not in caplog.text  # our export has both heads and the pooler
    scratch = Pipeline(compose(*hf_overrides(tiny_hf, "random"), outputs=outputs))
    scratch.run(["pretrain"])
    # the same tokenizer and examples (so the same batches), reused
    assert scratch.results["pretrain_data"].artifact.reused

    tokenizer = tokenizer_of(continued.results["tokenizer"].artifact)
    own = Tokenizer.from_file(str(tiny_hf / "tokenizer.json"))
    assert tokenizer.get_vocab() == own.get_vocab()
    hf_loss = first_train_loss(continued.results["pretrain"].artifact.path)
    random_loss = first_train_loss(scratch.results["pretrain"].artifact.path)
    print(f"first loss: continued {hf_loss:.3f}, random init {random_loss:.3f}")
    assert hf_loss < random_loss - 0.05, (hf_loss, random_loss)
    chance = math.log(tokenizer.get_vocab_size()) + math.log(2)  # MLM + NSP at chance
    assert math.isclose(random_loss, chance, abs_tol=0.2)
    assert (continued.results["pretrain"].artifact.path / "hf" / "model.safetensors").is_file()
    continued.run(["finetune"])  # the continued model fine-tunes like any pretrained one
    assert continued.results["finetune"].artifact.metrics["seeds"] == 1


def test_checkpoint_tokenizer_loses_its_truncation_and_padding(tiny_hf, tmp_path):
    """sentence-transformers' tokenizer.json truncates and pads to 128 tokens; the tokenizer
    artifact must not (long documents would lose all but their first 128 tokens)."""
    checkpoint = shutil.copytree(tiny_hf, tmp_path / "st_like")
    config = json.loads((checkpoint / "tokenizer.json").read_text())
    config["truncation"] = {"max_length": 8, "strategy": "LongestFirst", "stride": 0,
                            "direction": "Right"}  # fmt: skip
    (checkpoint / "tokenizer.json").write_text(json.dumps(config))
    pipeline = Pipeline(compose(*hf_overrides(checkpoint), outputs=tmp_path / "outputs"))
    pipeline.run(["tokenizer"])
    artifact = pipeline.results["tokenizer"].artifact
    assert tokenizer_of(artifact).truncation is None
    assert artifact.metrics["vocab_size"] == len(
        Tokenizer.from_file(str(tiny_hf / "tokenizer.json")).get_vocab()
    )


def test_a_trained_tokenizer_with_init_hf_is_refused_at_start_up(tiny_hf):
    with pytest.raises(ConfigError, match=f"tokenizer.source=hf tokenizer.hf_model={tiny_hf}$"):
        compose(*TINY, "pretrain.init=hf", f"pretrain.hf_model={tiny_hf}")


def test_another_checkpoints_tokenizer_is_refused(tiny_hf):
    other = Tokenizer.from_file(str(tiny_hf / "tokenizer.json"))
    other.add_tokens(["zzzunseen"])
    settings = PretrainConfig(init="hf", hf_model=str(tiny_hf), max_seq_length=64)
    with pytest.raises(ConfigError, match=f"set tokenizer.source=hf tokenizer.hf_model={tiny_hf}"):
        checkpoint_start(settings, other)
    config, _ = checkpoint_start(settings, Tokenizer.from_file(str(tiny_hf / "tokenizer.json")))
    assert config.hidden_size == 128  # the checkpoint's shape (bert_tiny's)


# --- learning-rate schedules ------------------------------------------------------------------


def factors(schedule: str, warmup: int, total: int, decay: int = 0) -> list[float]:
    factor = lr_factor(schedule, warmup, total, decay)
    return [factor(step) for step in range(total + 1)]


def test_linear_schedule_is_unchanged():
    f = factors("linear", 10, 100)
    assert f[0] == pytest.approx(1 / 11) and f[9] == pytest.approx(10 / 11)
    assert f[10] == 1.0 and f[55] == pytest.approx(0.5) and f[100] == 0.0


def test_trapezoidal_warms_up_holds_then_decays_over_the_last_share():
    f = factors("trapezoidal", 10, 100, decay=20)
    assert f[0] == pytest.approx(1 / 11) and f[9] == pytest.approx(10 / 11)
    assert f[10:81] == [1.0] * 71  # stable until the decay starts at step 80
    assert f[90] == pytest.approx(0.5) and f[99] == pytest.approx(0.05) and f[100] == 0.0
    # decaying over everything after the warmup is the linear schedule
    assert factors("trapezoidal", 10, 100, decay=90) == pytest.approx(factors("linear", 10, 100))


@pytest.mark.parametrize(("warmup", "total"), [(10, 100), (30, 100)])
def test_one_cycle_is_torchs_one_cycle_lr(warmup, total):
    from bertforge.lit.optim import configure_adamw

    model = torch.nn.Linear(2, 2)
    scheduler = configure_adamw(
        model, lr=2.0, weight_decay=0.0, betas=(0.9, 0.98), eps=1e-6, warmup_steps=warmup,
        total_steps=total, schedule="one_cycle",
    )["lr_scheduler"]["scheduler"]  # fmt: skip
    assert isinstance(scheduler, torch.optim.lr_scheduler.OneCycleLR)
    lrs = []
    for _ in range(total):
        lrs.append(scheduler.get_last_lr()[0])
        scheduler.optimizer.step()
        scheduler.step()
    assert lrs[0] == pytest.approx(2.0 / 25) and max(lrs) == pytest.approx(2.0, rel=1e-3)
    assert lrs.index(max(lrs)) == warmup - 1 and lrs[-1] == pytest.approx(2.0 / 25e4)
    with pytest.raises(ValueError, match="no factor for schedule 'one_cycle'"):
        lr_factor("one_cycle", warmup, total)  # torch's scheduler, never a silent linear one


def test_the_schedule_reaches_the_optimizer():
    from bertforge.lit.pretrain import PretrainingModule
    from bertforge.model import BertConfig

    module = PretrainingModule.from_config(
        BertConfig(vocab_size=50), lr=1.0, warmup_steps=2, max_steps=10,
        lr_schedule="trapezoidal", decay_steps=4,
    )  # fmt: skip
    scheduler = module.configure_optimizers()["lr_scheduler"]["scheduler"]
    lrs = []
    for _ in range(10):
        lrs.append(scheduler.get_last_lr()[0])
        scheduler.optimizer.step()
        scheduler.step()
    assert lrs == pytest.approx([1 / 3, 2 / 3, 1, 1, 1, 1, 1, 0.75, 0.5, 0.25])

"""Smoke test of the fine-tuning parity benchmark (ours vs transformers.Trainer) on a tiny HF
checkpoint and a tiny local task: both sides train, score in [0, 1] and reach the report."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from conftest import compose

WORDS = [
    *("good", "bad", "great", "awful", "movie", "film", "plot", "acting"),
    *("was", "is", "the", "a", "very", "not", "fun", "boring"),
]


def tiny_checkpoint(directory: Path) -> Path:
    """A 2-layer, 32-wide BERT saved by transformers, with a WordPiece tokenizer.json."""
    import transformers

    from bertforge.data.finetuning import wordpiece_from_vocab

    directory.mkdir()
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n")
    wordpiece_from_vocab(directory / "vocab.txt", lowercase=True).save(
        str(directory / "tokenizer.json")
    )
    config = transformers.BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    transformers.BertModel(config).save_pretrained(directory)
    return directory


def tiny_task(directory: Path) -> tuple[Path, Path]:
    """Sentence pairs labelled pos/neg: 32 for training, 16 for validation."""
    rng = random.Random(0)

    def write(path: Path, n: int) -> Path:
        rows = ["a,b,label"]
        for i in range(n):
            label = "pos" if i % 2 else "neg"
            word = rng.choice(["good", "great", "fun"] if i % 2 else ["bad", "awful", "boring"])
            rows.append(f"the movie was {word},{' '.join(rng.sample(WORDS, 5))},{label}")
        path.write_text("\n".join(rows) + "\n")
        return path

    return write(directory / "train.csv", 32), write(directory / "dev.csv", 16)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_parity_smoke(tmp_path):
    pytest.importorskip("accelerate", reason="transformers.Trainer needs accelerate (dev extra)")
    from bertforge.bench.parity import merge, run_parity
    from bertforge.errors import ConfigError

    model = tiny_checkpoint(tmp_path / "model")
    train, dev = tiny_task(tmp_path)
    cfg = compose(
        "task=local_files",
        f"task.train_file={train}",
        f"task.validation_file={dev}",
        "task.text_columns=[a,b]",
        "finetune.init=hf",
        f"finetune.hf_model={model}",
        "finetune.max_steps=4",
        "finetune.global_batch_size=8",
        "finetune.seeds=[1]",
        "finetune.max_seq_length=32",
        "finetune.lr=1e-3",
        "logger=csv",
        "trainer.enable_progress_bar=false",
        "trainer.num_threads=1",
        outputs=tmp_path / "outputs",
    )
    result, md = run_parity(cfg)

    for side in ("ours", "reference"):
        scores = result[side]["seeds"][1]
        assert 0.0 <= scores["accuracy"] <= 1.0 and 0.0 <= scores["f1"] <= 1.0
        assert scores["steps"] == 4
    assert result["reference"]["inputs"]["different_token_ids"] == 0
    assert result["settings"]["total_steps"] == 4 and result["settings"]["warmup_steps"] == 0
    assert list(result["summary"]) == ["accuracy", "f1"]

    saved = json.loads((md.with_suffix(".json")).read_text())
    assert saved["task"] == "local_files" and md.name == "local_files.md"
    text = md.read_text()
    assert "| seed | ours accuracy | reference accuracy | ours f1 | reference f1 |" in text
    assert "too few runs for a test" in text  # one seed: no t-test
    assert not list((tmp_path / "outputs" / "parity").glob("local_files-seed*"))  # tmp removed

    again, _ = run_parity(cfg)  # both sides reused: the same numbers
    assert again["ours"]["reused"]
    assert again["reference"]["seeds"] == result["reference"]["seeds"]

    # Seeds run as separate processes merge into one report (here: the same run as "seed 2").
    other = json.loads(json.dumps(saved).replace('"1": {', '"2": {'))
    merged = merge([saved, other])
    assert sorted(merged["ours"]["seeds"]) == [1, 2] and merged["settings"]["seeds"] == [1, 2]
    assert merged["summary"]["accuracy"]["ours"]["n"] == 2
    assert merged["summary"]["accuracy"]["difference"]["n"] == 2
    other["settings"]["lr"] = 1.0
    with pytest.raises(ConfigError, match=r"differ only in finetune\.seeds"):
        merge([saved, other])


def test_parity_needs_an_hf_checkpoint(tmp_path):
    from bertforge.bench.parity import run_parity
    from bertforge.errors import ConfigError

    with pytest.raises(ConfigError, match=r"finetune\.init=hf finetune\.hf_model="):
        run_parity(compose("logger=csv", outputs=tmp_path))
    assert not (tmp_path / "artifacts").exists()  # refused before anything was built

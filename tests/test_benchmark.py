"""The benchmark harness: a smoke run of every suite (no timing assertions), its config schema,
the variants it measures (they must compute the same thing) and the length-bucketing sampler."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import CONF, REPO, run_entry_point

PRETRAIN_KEYS = {
    "model", "device", "seq_len", "batch_size", "ours_tokens_per_s", "transformers_tokens_per_s",
    "ours_all_tokens_per_s", "transformers_all_tokens_per_s", "ratio", "ours_peak_mem_mb",
    "transformers_peak_mem_mb", "padding_share", "ours_tflops", "ours_mfu",
    "parity_max_abs_diff",
}  # fmt: skip
POSITIVE = [k for k in PRETRAIN_KEYS if k.endswith(("per_s", "mem_mb", "tflops")) or k == "ratio"]


def compose_benchmark(*overrides: str):
    from hydra import compose, initialize_config_dir

    from bertforge.bench.config import to_benchmark_config

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return to_benchmark_config(compose("benchmark", overrides=list(overrides)))


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    from bertforge.bench.run import run_benchmark

    outputs = tmp_path_factory.mktemp("outputs")
    cfg = compose_benchmark("benchmark=smoke", f"paths.outputs={outputs}")
    run_benchmark(cfg, CONF)
    return outputs / "benchmark"


def test_smoke_run_writes_json_with_documented_keys(smoke):
    result = json.loads((smoke / "benchmark.json").read_text())
    assert {"pretrain", "env", "experiments", "tokenizer", "pretokenize", "dataloader"} <= set(
        result
    )
    (row,) = result["pretrain"]
    assert set(row) >= PRETRAIN_KEYS
    assert row["model"] == "bert_tiny" and row["seq_len"] == 32 and row["batch_size"] == 4
    assert all(row[k] > 0 for k in POSITIVE), {k: row[k] for k in POSITIVE}
    assert row["parity_max_abs_diff"] < 1e-4  # the two models really hold the same weights
    assert {"torch", "threads", "device_name", "cpu_model", "date"} <= set(result["env"])
    assert result["flops_formula"].startswith("6*L*(4*H^2 + 2*H*I)*n")

    experiments = {e["name"]: e for e in result["experiments"]}
    assert set(experiments) == {
        "masked_mlm", "combined", "unpad", "prune_last_layer", "fast_dropout", "fused_qkv",
        "length_bucketing", "adamw",
    }  # fmt: skip
    for e in experiments.values():
        assert e["variants"][0]["speedup"] == 1.0
        assert all(v["tokens_per_s"] > 0 for v in e["variants"])
    assert result["tokenizer"]["ours_mb_per_s"] > 0 and result["tokenizer"]["raw_mb_per_s"] > 0
    assert result["pretokenize"][0]["examples_per_s"] > 0
    assert all(v["batches_per_s"] > 0 for v in result["dataloader"]["loaders"])


def test_smoke_run_writes_markdown_table(smoke):
    text = (smoke / "benchmark.md").read_text()
    assert "| model | device |" in text and "| bert_tiny | cpu" in text
    assert "## Optimisations" in text and "## Tokenizer training" in text


def test_cuda_cases_are_skipped_with_a_note_on_cpu(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("has CUDA")
    from bertforge.bench.run import run_benchmark

    cfg = compose_benchmark(
        "benchmark=smoke",
        "benchmark.suites=[pretrain]",
        "benchmark.cases=[{model: bert_base, seq_len: 128, batch_size: 2, device: cuda}]",
        f"paths.outputs={tmp_path}",
    )
    result = run_benchmark(cfg, CONF)
    assert result["pretrain"] == []
    assert any("no CUDA device" in note for note in result["notes"])


def test_tsne_suite_calls_benchmark_tsne(tmp_path, monkeypatch):
    import bertforge.bench.run
    from bertforge.bench.run import run_benchmark

    calls = []

    def fake(sizes, dims, seed):
        calls.append((sizes, dims, seed))
        return [{"n": sizes[0], "dim": dims[0], "backend": "opentsne", "seconds": 1.5}]

    cfg = compose_benchmark(
        "benchmark=smoke", "benchmark.suites=[tsne]", "benchmark.tsne_sizes=[300]",
        "benchmark.tsne_dims=[16]", f"paths.outputs={tmp_path}",
    )  # fmt: skip
    monkeypatch.setattr(bertforge.bench.run, "benchmark_tsne", fake)
    result = run_benchmark(cfg, CONF)
    assert calls == [((300,), (16,), 0)] and result["tsne"][0]["seconds"] == 1.5
    assert "| 300 | 16 | opentsne | 1.5 |" in (tmp_path / "benchmark" / "benchmark.md").read_text()


def test_schema_rejects_bad_values_and_keys():
    from bertforge.errors import ConfigError

    with pytest.raises(ConfigError, match=r"benchmark\.experiments"):
        compose_benchmark("benchmark.experiments=[warp_speed]")
    proc = run_entry_point("benchmark.py", "benchmark.stepz=3", timeout=60)
    assert proc.returncode == 2
    assert "unknown config key 'benchmark.stepz' (did you mean 'steps'?)" in proc.stderr


def test_default_config_composes():
    cfg = compose_benchmark()
    assert [c.model for c in cfg.benchmark.cases][:3] == ["bert_tiny", "bert_mini", "bert_small"]
    assert (REPO / "conf" / "benchmark" / "default.yaml").is_file()


def test_separate_qkv_variant_computes_the_same_model():
    from bertforge.bench.steps import with_separate_qkv
    from bertforge.lit.pretrain import PretrainingModule
    from bertforge.model import BertConfig

    cfg = BertConfig(vocab_size=50, hidden_size=32, num_attention_heads=4, intermediate_size=64)
    module = PretrainingModule.from_config(cfg).eval()
    split = with_separate_qkv(module).eval()
    ids = torch.randint(5, 50, (2, 7))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    masked = torch.zeros_like(mask, dtype=torch.bool)
    masked[:, 2] = masked[0, 6] = True
    for positions in (None, masked):  # padded; unpadded with the last layer pruned
        with torch.no_grad():
            a = module.model(ids, attention_mask=mask, masked_positions=positions)
            b = split.model(ids, attention_mask=mask, masked_positions=positions)
        torch.testing.assert_close(a.mlm_logits, b.mlm_logits)
        torch.testing.assert_close(a.nsp_logits, b.nsp_logits)


def test_model_flag_variants_compute_the_same_model():
    from bertforge.bench.steps import with_model_flags
    from bertforge.lit.pretrain import PretrainingModule
    from bertforge.model import BertConfig

    cfg = BertConfig(vocab_size=50, hidden_size=32, num_attention_heads=4, intermediate_size=64)
    module = PretrainingModule.from_config(cfg).eval()
    before = with_model_flags(module, unpad=False, prune_last_layer=False, fast_dropout=False)
    assert not before.model.config.unpad and module.model.config.unpad
    before.eval()
    ids = torch.randint(5, 50, (3, 8))
    mask = torch.ones_like(ids)
    mask[1, 5:] = mask[2, 3:] = 0
    masked = torch.zeros_like(mask, dtype=torch.bool)
    masked[:, 1] = masked[0, 7] = True
    with torch.no_grad():
        a = module.model(ids, attention_mask=mask, masked_positions=masked)
        b = before.model(ids, attention_mask=mask, masked_positions=masked)
    torch.testing.assert_close(a.mlm_logits, b.mlm_logits)
    torch.testing.assert_close(a.nsp_logits, b.nsp_logits)


def test_length_bucketed_loader_batches_similar_lengths_and_covers_each_once():
    from bertforge.data.resumable import ResumableLoader

    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(5, 129, (1000,), generator=g).tolist()

    def loader():
        return ResumableLoader(
            list(range(1000)), 10, lambda rows, g: rows, seed=1, lengths=lengths, bucket_window=20
        )

    batches = loader().batches(0)
    assert len(batches) == len(loader()) == 100 and all(len(b) == 10 for b in batches)
    assert sorted(i for b in batches for i in b) == list(range(1000))
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches) / 100
    assert spread < 15  # random batches of 10 from 5..128 spread ~100
    assert loader().batches(0) == batches != loader().batches(1)  # seeded by (seed, epoch)

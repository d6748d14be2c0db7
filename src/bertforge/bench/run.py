"""`run_benchmark`: every suite in order, then `benchmark.json` + `benchmark.md`."""

from __future__ import annotations

import copy
import json
import logging
import os
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
from omegaconf import OmegaConf

from bertforge.analysis.layouts import benchmark_tsne
from bertforge.bench import data as bdata
from bertforge.bench import steps as bsteps
from bertforge.bench.config import BenchmarkConfig, BenchmarkRunConfig, PretrainCase
from bertforge.bench.report import environment, markdown
from bertforge.data.pretraining import special_ids_of
from bertforge.data.tokenizer import save_tokenizer, train_tokenizer
from bertforge.errors import ConfigError
from bertforge.files import write_atomic
from bertforge.model import BertConfig

log = logging.getLogger(__name__)


def model_config(name: str, conf_dir: Path, vocab_size: int, pad_token_id: int) -> BertConfig:
    """The `conf/model/<name>.yaml` preset as a BertConfig for this vocabulary."""
    path = Path(conf_dir) / "model" / f"{name}.yaml"
    if not path.is_file():
        presets = sorted(p.stem for p in path.parent.glob("*.yaml"))
        raise ConfigError(f"benchmark case model={name}: no {path}; use one of {presets}")
    preset = OmegaConf.merge(OmegaConf.structured(BertConfig), OmegaConf.load(path))
    return replace(OmegaConf.to_object(preset), vocab_size=vocab_size, pad_token_id=pad_token_id)


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision == "auto":
        return "bf16-mixed" if device.type == "cuda" else "32-true"
    return precision


def to_device(batches, device: torch.device):
    return [{k: v.to(device) for k, v in b.items()} for b in batches]


class Benchmark:
    """Holds the shared data (tokenizer, example caches, batches) while the suites run."""

    def __init__(self, cfg: BenchmarkRunConfig, conf_dir: Path, work: Path) -> None:
        self.cfg, self.b, self.conf_dir, self.work = cfg, cfg.benchmark, Path(conf_dir), work
        self.result: dict = {"env": environment(), "notes": []}
        self.tokenizer = None
        self.caches: dict[int, Path] = {}
        self.step_ms: dict[tuple, float] = {}  # (model, seq_len, batch_size, device) -> ours

    def note(self, text: str) -> None:
        log.info(text)
        self.result["notes"].append(text)

    # ------------------------------------------------------------------------- data

    def prepare(self) -> None:
        self.documents, texts = bdata.load_texts(self.b)
        if "tokenizer" in self.b.suites:
            self.result["tokenizer"], self.tokenizer = bdata.bench_tokenizer(texts, self.b)
        else:
            self.tokenizer = train_tokenizer(texts, self.b.tokenizer)
        save_tokenizer(self.tokenizer, self.work / "tokenizer")

    def cache(self, seq_len: int) -> Path:
        """The Arrow example cache at `seq_len`, built (and timed) on first use."""
        if seq_len not in self.caches:
            path = self.work / f"examples-{seq_len}"
            row = bdata.build_example_cache(
                self.documents, self.work / "tokenizer", path, self.b, seq_len, self.cfg.seed
            )
            self.result.setdefault("pretokenize", []).append(row)
            self.caches[seq_len] = path
        return self.caches[seq_len]

    def batches(self, case: PretrainCase, n: int, device: torch.device, bucket: int = 0):
        data = bdata.make_datamodule(
            self.cache(case.seq_len), self.tokenizer, self.b, case.batch_size,
            length_bucket_window=bucket, seed=self.cfg.seed,
        )  # fmt: skip
        return to_device(bdata.draw_batches(data, n), device)

    def device_for(self, case: PretrainCase) -> torch.device | None:
        if case.device == "cuda" and not torch.cuda.is_available():
            return None
        return torch.device(case.device)

    def bert_config(self, case: PretrainCase) -> BertConfig:
        pad = special_ids_of(self.tokenizer).pad
        return model_config(case.model, self.conf_dir, self.tokenizer.get_vocab_size(), pad)

    # ------------------------------------------------------------------------- suites

    def pretrain_case(self, case: PretrainCase) -> dict | None:
        device = self.device_for(case)
        if device is None:
            self.note(f"skipped {case.model} seq {case.seq_len} on cuda: no CUDA device")
            return None
        b = self.b
        precision = resolve_precision(b.precision, device)
        config = self.bert_config(case)
        batches = self.batches(case, b.warmup + b.steps, device)
        ours, hf = bsteps.build_pair(config, device, self.cfg.seed)
        parity = parity_max_abs_diff(ours, hf, batches[0])
        opt_ours, opt_hf = bsteps.adamw(ours.model, b.pretrain), bsteps.adamw(hf, b.pretrain)
        steps = {
            "ours": bsteps.ours_step(ours, opt_ours, precision),
            "transformers": bsteps.hf_step(hf, opt_hf, precision),
        }
        with bsteps.OtherProcessesCpu() as others:
            seconds = bsteps.time_interleaved(steps, batches, b.warmup, device)
        tp = {name: bsteps.throughput(s, batches) for name, s in seconds.items()}
        memory = {
            "ours": bsteps.peak_memory_mb(ours.model, opt_ours, steps["ours"], batches[-1], device),
            "transformers": bsteps.peak_memory_mb(
                hf, opt_hf, steps["transformers"], batches[-1], device
            ),
        }
        timed = batches[b.warmup :]
        flops = statistics.median(
            bsteps.step_flops(config, batch) / s
            for batch, s in zip(timed, seconds["ours"], strict=True)
        )
        hf_flops = statistics.median(
            bsteps.step_flops(config, batch) / s
            for batch, s in zip(timed, seconds["transformers"], strict=True)
        )
        device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
        peak = bsteps.peak_tflops(device_name, b.peak_tflops)  # CPU: only a configured one
        self.step_ms[(case.model, case.seq_len, case.batch_size, case.device)] = tp["ours"][
            "step_ms"
        ]
        row = {
            "model": case.model,
            "device": device_name
            if device.type == "cuda"
            else f"cpu ({torch.get_num_threads()} threads)",
            "precision": precision,
            "seq_len": case.seq_len,
            "batch_size": case.batch_size,
            "steps": b.steps,
            "padding_share": bdata.padding_share(timed),
            "masked_share": sum(int(x["masked_positions"].sum()) for x in timed)
            / sum(int(x["attention_mask"].sum()) for x in timed),
            "ours_tokens_per_s": tp["ours"]["tokens_per_s"],
            "transformers_tokens_per_s": tp["transformers"]["tokens_per_s"],
            "ours_all_tokens_per_s": tp["ours"]["all_tokens_per_s"],
            "transformers_all_tokens_per_s": tp["transformers"]["all_tokens_per_s"],
            "ratio": tp["ours"]["tokens_per_s"] / tp["transformers"]["tokens_per_s"],
            "ours_step_ms": tp["ours"]["step_ms"],
            "transformers_step_ms": tp["transformers"]["step_ms"],
            "ours_peak_mem_mb": memory["ours"],
            "transformers_peak_mem_mb": memory["transformers"],
            "ours_tflops": flops / 1e12,
            "transformers_tflops": hf_flops / 1e12,
            "peak_tflops": peak,
            "ours_mfu": None if peak is None else flops / (peak * 1e12),
            "transformers_mfu": None if peak is None else hf_flops / (peak * 1e12),
            "parity_max_abs_diff": parity,
            "parameters": sum(p.numel() for p in ours.model.parameters()),
            "others_cpu_share": others.share,  # CPU other processes used meanwhile
        }
        log.info("pretrain %s", row)
        return row

    def experiments(self) -> None:
        case, b = self.b.experiment_case, self.b
        device = self.device_for(case)
        if device is None:
            self.note("skipped the optimisation experiments: experiment_case needs CUDA")
            return
        batches = self.batches(case, b.warmup + b.steps, device)
        base, _ = bsteps.build_pair(self.bert_config(case), device, self.cfg.seed)
        results = []
        for name in b.experiments:
            if name == "threads" and device.type != "cpu":
                continue
            variants, extra = self.variants(name, base, case, device, batches)
            steps = {label: step for label, (step, _) in variants.items()}
            used = {label: data for label, (_, data) in variants.items()}
            with bsteps.OtherProcessesCpu() as others:
                seconds = bsteps.time_interleaved(steps, used, b.warmup, device)
            rows = [{"variant": v, **bsteps.throughput(s, used[v])} for v, s in seconds.items()]
            for row in rows:
                row["speedup"] = row["tokens_per_s"] / rows[0]["tokens_per_s"]
                if name == "length_bucketing":
                    row["padding_share"] = bdata.padding_share(used[row["variant"]])
            results.append(
                {
                    "name": name,
                    "baseline": rows[0]["variant"],
                    "variants": rows,
                    "others_cpu_share": others.share,  # CPU other processes used meanwhile
                }
                | extra
            )
            log.info("experiment %s %s", name, rows)
        self.result["experiment_case"] = OmegaConf.to_container(OmegaConf.structured(case))
        self.result["experiments"] = results

    def variants(self, name: str, base, case: PretrainCase, device: torch.device, batches):
        """{label: (step, batches)} of experiment `name`, baseline first, and extra results.

        Every variant trains its own copy of `base` (same initial weights)."""
        b = self.b
        precision = resolve_precision(b.precision, device)

        def step(module=None, impl="default", precision=precision, **kwargs):
            module = copy.deepcopy(base) if module is None else module
            return bsteps.ours_step(
                module, bsteps.adamw(module.model, b.pretrain, impl), precision, **kwargs
            )

        extra = {}
        if name == "masked_mlm":
            variants = {
                "MLM logits at masked positions (ours)": step(),
                "MLM logits at all positions, then gathered": step(full_mlm=True),
            }
        elif name == "combined":
            before = dict(unpad=False, prune_last_layer=False, fast_dropout=False)
            variants = {
                "unpad + prune_last_layer + fast_dropout (ours)": step(),
                "none of them (padded, full last layer, bernoulli_ dropout)": step(
                    bsteps.with_model_flags(base, **before)
                ),
            }
        elif name == "unpad":  # the last layer unpruned in both: pruning needs unpadding
            unpruned = bsteps.with_model_flags(base, prune_last_layer=False)
            variants = {
                "token-wise layers skip padding (ours; last layer not pruned)": step(unpruned),
                "padded (B, T) throughout": step(bsteps.with_model_flags(base, unpad=False)),
            }
        elif name == "prune_last_layer":
            variants = {
                "last layer only at [CLS] and masked positions (ours)": step(),
                "last layer at every real token": step(
                    bsteps.with_model_flags(base, prune_last_layer=False)
                ),
            }
        elif name == "fast_dropout":
            variants = {
                "keep masks from 32-bit random integers (ours)": step(),
                "bernoulli_ masks (torch.nn.Dropout)": step(
                    bsteps.with_model_flags(base, fast_dropout=False)
                ),
            }
        elif name == "fused_qkv":
            variants = {
                "fused QKV Linear(H, 3H) (ours)": step(),
                "three Linear(H, H)": step(bsteps.with_separate_qkv(base)),
            }
        elif name == "length_bucketing":
            bucketed = self.batches(case, len(batches), device, bucket=b.bucket_window)
            return {
                "random batches (default)": (step(), batches),
                f"length-bucketed (window {b.bucket_window} batches)": (step(), bucketed),
            }, extra
        elif name == "adamw":
            default = "fused" if device.type == "cuda" else "for-loop"
            impls = [default] + [i for i in ("for-loop", "foreach", "fused") if i != default]
            variants = {
                impl + (" (lit/optim.py default)" if impl == default else ""): step(impl=impl)
                for impl in impls
            }
        elif name == "threads":
            threads = torch.get_num_threads()
            variants = {
                f"{threads} threads (default)": step(),
                "1 thread": with_threads(1, step()),
            }
        elif name == "compile":
            compiled = copy.deepcopy(base)
            compiled.model = torch.compile(compiled.model)
            variants = {"eager": step(), "torch.compile": step(compiled)}
            started = time.perf_counter()  # the first call compiles; not in the timings
            variants["torch.compile"](batches[0])
            extra["compile_seconds"] = time.perf_counter() - started
        elif name == "bf16":
            other = "bf16-mixed" if precision == "32-true" else "32-true"
            variants = {
                f"{precision} (default on {device.type})": step(),
                other: step(precision=other),
            }
        else:  # the schema allows no other names
            raise ConfigError(f"unknown experiment {name}")
        return {label: (fn, batches) for label, fn in variants.items()}, extra

    def dataloader(self) -> None:
        case, b = self.b.experiment_case, self.b
        key = (case.model, case.seq_len, case.batch_size, case.device)
        loaders = []
        for label, bucket in (("random (default)", 0), ("length-bucketed", b.bucket_window)):
            data = bdata.make_datamodule(
                self.cache(case.seq_len), self.tokenizer, b, case.batch_size,
                length_bucket_window=bucket, seed=self.cfg.seed,
            )  # fmt: skip
            loaders.append(
                {
                    "loader": label,
                    **bdata.bench_dataloader(data, b.dataloader_batches),
                }
            )
        step_ms = self.step_ms.get(key)
        if step_ms is None:
            self.note("dataloader: no pretrain case matches experiment_case; step time unknown")
        for row in loaders:
            row["share_of_step"] = (
                row["ms_per_batch"] / (row["ms_per_batch"] + step_ms) if step_ms else None
            )
        self.result["dataloader"] = {
            "case": OmegaConf.to_container(OmegaConf.structured(case)),
            "num_workers": 0,
            "ours_step_ms": step_ms,
            "ours_steps_per_s": 1000 / step_ms if step_ms else None,
            "loaders": loaders,
        }

    def tsne(self) -> None:
        self.result["tsne"] = benchmark_tsne(
            sizes=tuple(self.b.tsne_sizes), dims=tuple(self.b.tsne_dims), seed=self.cfg.seed
        )


def with_threads(n: int, step):
    def run(batch):
        before = torch.get_num_threads()
        torch.set_num_threads(n)
        try:
            step(batch)
        finally:
            torch.set_num_threads(before)

    return run


@torch.no_grad()
def parity_max_abs_diff(ours, hf, batch) -> float:
    """Largest |difference| of MLM (masked positions) and NSP logits, eval mode, fp32."""
    ours.eval(), hf.eval()
    masked = batch["masked_positions"]
    a = ours.model(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"], masked)
    r = hf(
        input_ids=batch["input_ids"],
        token_type_ids=batch["token_type_ids"],
        attention_mask=batch["attention_mask"].long(),
    )
    ours.train(), hf.train()
    return max(
        (a.mlm_logits - r.prediction_logits[masked]).abs().max().item(),
        (a.nsp_logits - r.seq_relationship_logits).abs().max().item(),
    )


def run_benchmark(cfg: BenchmarkRunConfig, conf_dir: Path) -> dict:
    """Run the configured suites; write `<paths.outputs>/benchmark/benchmark.{json,md}`."""
    b: BenchmarkConfig = cfg.benchmark
    threads = torch.get_num_threads()
    torch.set_num_threads(b.threads or threads)
    try:
        return _run(cfg, conf_dir)
    finally:
        torch.set_num_threads(threads)


def _run(cfg: BenchmarkRunConfig, conf_dir: Path) -> dict:
    b = cfg.benchmark
    out_dir = Path(cfg.paths.outputs) / "benchmark"
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir, prefix="work-") as work:
        bench = Benchmark(cfg, conf_dir, Path(work))
        result = bench.result
        result["config"] = OmegaConf.to_container(OmegaConf.structured(b))
        result["flops_formula"] = bsteps.FLOPS_FORMULA
        bench.prepare()
        if "pretrain" in b.suites:
            rows = [bench.pretrain_case(case) for case in b.cases]
            result["pretrain"] = [row for row in rows if row is not None]
        if "experiments" in b.suites and b.experiments:
            bench.experiments()
        if "dataloader" in b.suites:
            bench.dataloader()
        if "pretokenize" in b.suites:
            bench.cache(b.experiment_case.seq_len)
        else:
            result.pop("pretokenize", None)
    if "tsne" in b.suites:
        bench.tsne()
    result["env"]["load_average_end"] = list(os.getloadavg())
    busy = [
        r
        for r in result.get("pretrain", []) + result.get("experiments", [])
        if r["others_cpu_share"] and r["others_cpu_share"] > 0.1
    ]
    if busy:
        bench.note(
            f"{len(busy)} measurements ran while other processes used over 10% of the CPUs "
            "(column 'others'): OpenMP threads then wait on each other and timings collapse; "
            "rerun on a quiet machine"
        )
    write_atomic(out_dir / "benchmark.json", json.dumps(result, indent=2) + "\n")
    write_atomic(out_dir / "benchmark.md", markdown(result))
    return result

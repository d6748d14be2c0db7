"""The benchmark's environment record and its markdown rendering."""

from __future__ import annotations

import os
import platform
from collections.abc import Callable
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import torch


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def environment() -> dict:
    cuda = torch.cuda.is_available()
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": _version("transformers"),
        "tokenizers": _version("tokenizers"),
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "mkl": torch.backends.mkl.is_available(),
        "mkldnn": torch.backends.mkldnn.is_available(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "MKL_NUM_THREADS": os.environ.get("MKL_NUM_THREADS"),
        "cuda_device": torch.cuda.get_device_name() if cuda else None,
        "device_name": torch.cuda.get_device_name() if cuda else cpu_model(),
        "load_average_start": list(os.getloadavg()),
    }


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.0f}" if value >= 1000 else f"{value:.{digits}g}"
    return str(value)


def _pct(share: float | None) -> str | None:
    return None if share is None else f"{100 * share:.1f}%"


def _table(columns: dict[str, Callable[[dict], Any]], rows: list[dict]) -> list[str]:
    """Markdown table: one column per (header, row -> value)."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(get(row)) for get in columns.values()) + " |")
    return [*lines, ""]


def _key(name: str) -> Callable[[dict], Any]:
    return lambda row: row.get(name)


PRETRAIN_COLUMNS = {
    "model": _key("model"),
    "device": _key("device"),
    "precision": _key("precision"),
    "seq": _key("seq_len"),
    "batch": _key("batch_size"),
    "padding": lambda r: _pct(r["padding_share"]),
    "ours tok/s": _key("ours_tokens_per_s"),
    "HF tok/s": _key("transformers_tokens_per_s"),
    "ratio": lambda r: f"{r['ratio']:.2f}x",
    "ours all tok/s": _key("ours_all_tokens_per_s"),
    "HF all tok/s": _key("transformers_all_tokens_per_s"),
    "ours MB": _key("ours_peak_mem_mb"),
    "HF MB": _key("transformers_peak_mem_mb"),
    "ours TFLOP/s": _key("ours_tflops"),
    "MFU": lambda r: _pct(r["ours_mfu"]),
    "others": lambda r: _pct(r.get("others_cpu_share")),
}
EXPERIMENT_COLUMNS = {
    "experiment": _key("name"),
    "variant": _key("variant"),
    "tok/s": _key("tokens_per_s"),
    "step ms": _key("step_ms"),
    "speed-up": lambda r: f"{r['speedup']:.2f}x",
    "padding": lambda r: _pct(r.get("padding_share")),
    "others": lambda r: _pct(r.get("others_cpu_share")),
}
TOKENIZER_COLUMNS = {
    "MB of text": _key("megabytes"),
    "ours s": _key("ours_seconds"),
    "raw s": _key("raw_seconds"),
    "ours MB/s": _key("ours_mb_per_s"),
    "raw BertWordPieceTokenizer MB/s": _key("raw_mb_per_s"),
    "ratio": lambda r: f"{r['ratio']:.2f}x",
}
PRETOKENIZE_COLUMNS = {
    "seq": _key("seq_len"),
    "documents": _key("documents"),
    "examples": _key("examples"),
    "seconds": _key("seconds"),
    "examples/s": _key("examples_per_s"),
    "padding at max length": lambda r: _pct(r["padding_share_at_max_length"]),
}
LOADER_COLUMNS = {
    "loader": _key("loader"),
    "batches/s": _key("batches_per_s"),
    "ms/batch": _key("ms_per_batch"),
    "ours step ms": _key("ours_step_ms"),
    "loader share of a step": lambda r: _pct(r["share_of_step"]),
}


def markdown(result: dict) -> str:
    env = result["env"]
    load = env["load_average_start"][0], env.get("load_average_end", [float("nan")])[0]
    lines = [
        "# bertforge benchmark",
        "",
        f"{env['date']} · {env['device_name']} · torch {env['torch']} · transformers "
        f"{env['transformers']} · {env['threads']} threads · 1-min load average "
        f"{load[0]:.2f} at start, {load[1]:.2f} at end",
        "",
    ]
    if result.get("pretrain"):
        lines += [
            "## Pretraining step: ours vs transformers.BertForPreTraining (sdpa)",
            "",
            "Step = forward + MLM/NSP loss + backward + AdamW; same weights, batches and "
            "precision, interleaved, median of the timed steps. tok/s counts non-padding "
            "tokens, all tok/s padded ones; ratio = ours / transformers; MB = weights + AdamW "
            "state + the step's peak torch allocations; others = share of all CPUs that other "
            "processes used during the timed steps (above ~10%, timings are unreliable).",
            "",
            *_table(PRETRAIN_COLUMNS, result["pretrain"]),
            f"FLOPs (TFLOP/s, MFU): {result['flops_formula']}.",
            "",
        ]
    if result.get("experiments"):
        case = result["experiment_case"]
        rows = [
            {"name": e["name"], "others_cpu_share": e["others_cpu_share"], **v}
            for e in result["experiments"]
            for v in e["variants"]
        ]
        lines += [
            "## Optimisations (each against its baseline: the first row of its group)",
            "",
            f"Our step on {case['model']}, seq {case['seq_len']}, batch {case['batch_size']}, "
            f"{case['device']}; same batches, interleaved; speed-up in non-padding tokens/s.",
            "",
            *_table(EXPERIMENT_COLUMNS, rows),
        ]
    if result.get("tokenizer"):
        lines += ["## Tokenizer training (WordPiece, same text and settings)", ""]
        lines += _table(TOKENIZER_COLUMNS, [result["tokenizer"]])
    if result.get("pretokenize"):
        lines += ["## Pre-tokenisation (tokenise + NSP examples + Arrow cache)", ""]
        lines += _table(PRETOKENIZE_COLUMNS, result["pretokenize"])
    if result.get("dataloader"):
        d = result["dataloader"]
        lines += ["## Data loading vs training (PretrainingDataModule train loader, 0 workers)", ""]
        rows = [{**row, "ours_step_ms": d["ours_step_ms"]} for row in d["loaders"]]
        lines += _table(LOADER_COLUMNS, rows)
    if result.get("tsne"):
        lines += ["## t-SNE backends (bertforge.analysis.layouts.benchmark_tsne)", ""]
        lines += _table({k: _key(k) for k in result["tsne"][0]}, result["tsne"])
    if result.get("notes"):
        lines += ["## Notes", "", *[f"- {note}" for note in result["notes"]], ""]
    return "\n".join(lines)

"""Timing full pretraining steps: ours against `transformers.BertForPreTraining`, and variants.

A step is forward + MLM/NSP loss + backward + AdamW step, on the same batches, interleaved in one
process (implementation order alternates every step), warm-up steps untimed, median reported.
"""

from __future__ import annotations

import copy
import itertools
import os
import statistics
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import replace

import torch
import torch.nn.functional as F

from bertforge.config import PretrainConfig
from bertforge.hf import bert_config_to_hf_dict, our_state_dict_to_hf
from bertforge.lit.optim import adamw_param_groups, configure_adamw
from bertforge.lit.pretrain import PretrainingModule
from bertforge.model import BertConfig, SelfAttention

Batch = dict[str, torch.Tensor]
StepFn = Callable[[Batch], None]

# Dense bf16 peak TFLOP/s by device-name fragment, most specific first (vendor datasheets).
PEAK_BF16_TFLOPS = (
    ("H100 PCIe", 756.0),
    ("H100", 989.0),
    ("H200", 989.0),
    ("GH200", 989.0),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("A10G", 70.0),
    ("L4", 121.0),
    ("4090", 165.0),
)
FLOPS_FORMULA = (
    "6*L*(4*H^2 + 2*H*I)*n + 12*L*H*T*n + 6*(H^2 + H*V)*m + 6*(H^2 + 2*H)*B per step, with "
    "n non-padding tokens, T the padded length, m masked positions, B sequences: matmul FLOPs of "
    "forward + backward (3x forward) for the encoder, attention scores and values, the MLM head "
    "at masked positions only and pooler + NSP; padding and elementwise work are not counted"
)


def peak_tflops(device_name: str, override: float | None) -> float | None:
    """Configured peak, else the table's for a CUDA device name; None for CPUs."""
    if override is not None:
        return override
    if device_name == "cpu":
        return None
    return next((peak for key, peak in PEAK_BF16_TFLOPS if key in device_name), None)


def step_flops(cfg: BertConfig, batch: Batch) -> float:
    """Model FLOPs of one training step (see FLOPS_FORMULA)."""
    B, T = batch["input_ids"].shape
    n = float(batch["attention_mask"].sum())
    m = float(batch["masked_positions"].sum())
    L, H, V = cfg.num_hidden_layers, cfg.hidden_size, cfg.vocab_size
    inner = cfg.intermediate_size
    encoder = 6 * L * (4 * H * H + 2 * H * inner) * n + 12 * L * H * T * n
    return encoder + 6 * (H * H + H * V) * m + 6 * (H * H + 2 * H) * B


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast_for(device: torch.device, precision: str):
    if precision == "bf16-mixed":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


# ----------------------------------------------------------------------------- models and steps


def build_pair(cfg: BertConfig, device: torch.device, seed: int):
    """Our PretrainingModule and an HF BertForPreTraining (SDPA) with identical weights."""
    import transformers

    torch.manual_seed(seed)
    ours = PretrainingModule.from_config(cfg, objective="mlm_nsp").to(device).train()
    hf_cfg = transformers.BertConfig(**bert_config_to_hf_dict(cfg), attn_implementation="sdpa")
    hf = transformers.BertForPreTraining(hf_cfg)
    hf.load_state_dict(our_state_dict_to_hf(ours.model.state_dict()), strict=True)
    hf = hf.to(device).train()
    decoder = hf.cls.predictions.decoder.weight
    assert decoder.data_ptr() == hf.bert.embeddings.word_embeddings.weight.data_ptr(), "untied"
    return ours, hf


def adamw(
    model: torch.nn.Module, cfg: PretrainConfig, impl: str = "default"
) -> torch.optim.Optimizer:
    """The optimiser of our training step (lit/optim.py) with the pretrain stage's settings;
    `impl` forces for-loop/foreach/fused."""
    opt = dict(lr=cfg.lr, betas=tuple(cfg.adam_betas), eps=cfg.adam_eps)
    if impl == "default":
        return configure_adamw(
            model, weight_decay=cfg.weight_decay, warmup_steps=0, total_steps=1, **opt
        )["optimizer"]
    flags = {"for-loop": dict(foreach=False), "foreach": dict(foreach=True)}
    kwargs = flags.get(impl, dict(fused=True))
    groups = adamw_param_groups(model, cfg.weight_decay)
    return torch.optim.AdamW(groups, **opt, **kwargs)


def ours_step(module: PretrainingModule, opt, precision: str, full_mlm: bool = False) -> StepFn:
    """Our training step's maths: `PretrainingModule.losses` (MLM logits at masked positions)."""
    device = next(module.parameters()).device

    def losses(batch: Batch) -> torch.Tensor:
        if not full_mlm:
            return module.losses(batch)["loss"]
        out = module.model(  # vocabulary logits at every position, then the masked ones
            batch["input_ids"], batch["token_type_ids"], batch["attention_mask"]
        )
        masked = batch["masked_positions"]
        mlm = F.cross_entropy(out.mlm_logits[masked].float(), batch["mlm_labels"][masked])
        return mlm + F.cross_entropy(out.nsp_logits.float(), batch["next_sentence_label"])

    def step(batch: Batch) -> None:
        with autocast_for(device, precision):
            loss = losses(batch)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def hf_step(model, opt, precision: str) -> StepFn:
    """The standard HF step: labels -100 on unmasked positions, logits at every position."""
    device = next(model.parameters()).device

    def step(batch: Batch) -> None:
        with autocast_for(device, precision):
            out = model(
                input_ids=batch["input_ids"],
                token_type_ids=batch["token_type_ids"],
                attention_mask=batch["attention_mask"].long(),
                labels=batch["mlm_labels"],
                next_sentence_label=batch["next_sentence_label"],
            )
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


class SeparateQKVAttention(SelfAttention):
    """Our attention with three query/key/value projections (as in HF), for the fused-QKV
    experiment; starts from the fused layer's weights."""

    def __init__(self, fused: SelfAttention) -> None:
        torch.nn.Module.__init__(self)
        self.n_head, self.attn_dropout, self.proj = fused.n_head, fused.attn_dropout, fused.proj
        self.probs_dropout = fused.probs_dropout
        H = fused.proj.in_features
        self.q, self.k, self.v = (torch.nn.Linear(H, H) for _ in range(3))
        with torch.no_grad():
            for linear, w, b in zip(
                (self.q, self.k, self.v),
                fused.qkv.weight.chunk(3),
                fused.qkv.bias.chunk(3),
                strict=True,
            ):
                linear.weight.copy_(w)
                linear.bias.copy_(b)
        self.to(fused.qkv.weight.device)

    def forward(self, x, mask, output_attentions=False, unpadded=None, rows=None):
        q, k, v = self.q(x if rows is None else x[rows]), self.k(x), self.v(x)
        if unpadded is not None:  # as SelfAttention.forward
            at = None if rows is None else unpadded.index[rows]
            q, k, v = unpadded.pad(q, at), unpadded.pad(k), unpadded.pad(v)
        y, probs = self.attend(q, k, v, mask, output_attentions)
        if unpadded is not None:
            y = unpadded.unpad(y, at)
        return self.proj(y), probs


def with_model_flags(module: PretrainingModule, **flags) -> PretrainingModule:
    """A copy of `module` (same weights) whose model config has `flags` replaced."""
    config = replace(module.model.config, **flags)
    other = PretrainingModule.from_config(config, objective="mlm_nsp")
    other.load_state_dict(module.state_dict())
    return other.to(next(module.parameters()).device).train()


def with_separate_qkv(module: PretrainingModule) -> PretrainingModule:
    module = copy.deepcopy(module)
    for layer in module.model.bert.layers:
        layer.attn = SeparateQKVAttention(layer.attn)
    return module


# ----------------------------------------------------------------------------- measuring


def _busy_cpu_seconds() -> float | None:
    """CPU seconds all processes have spent busy since boot (Linux /proc/stat), else None."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            ticks = [int(v) for v in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # minus idle, iowait


class OtherProcessesCpu:
    """Share of all cores that *other* processes kept busy while the block ran (0 = none,
    1 = every core): the load average would count this benchmark's own threads too."""

    share: float | None = None

    def __enter__(self) -> OtherProcessesCpu:
        self._busy, self._own, self._wall = (
            _busy_cpu_seconds(), sum(os.times()[:2]), time.perf_counter()
        )  # fmt: skip
        return self

    def __exit__(self, *exc) -> None:
        busy = _busy_cpu_seconds()
        if busy is None or self._busy is None:
            return
        own = sum(os.times()[:2]) - self._own
        wall = time.perf_counter() - self._wall
        self.share = max(0.0, (busy - self._busy - own) / (wall * (os.cpu_count() or 1)))


def time_interleaved(
    steps: dict[str, StepFn],
    batches: dict[str, list[Batch]] | list[Batch],
    warmup: int,
    device: torch.device,
) -> dict[str, list[float]]:
    """Seconds per timed step of each implementation; they alternate order every step.

    `batches` is one list for all, or one list per implementation (same length).
    """
    names = list(steps)
    per_impl = batches if isinstance(batches, dict) else dict.fromkeys(names, batches)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for i in range(len(per_impl[names[0]])):
        for name in names if i % 2 == 0 else reversed(names):
            sync(device)
            started = time.perf_counter()
            steps[name](per_impl[name][i])
            sync(device)
            if i >= warmup:
                seconds[name].append(time.perf_counter() - started)
    return seconds


def throughput(seconds: list[float], batches: list[Batch]) -> dict[str, float]:
    """Median non-padding and all (padded) tokens/s and step time over the timed steps."""
    timed = batches[len(batches) - len(seconds) :]
    real = [float(b["attention_mask"].sum()) / s for b, s in zip(timed, seconds, strict=True)]
    every = [b["attention_mask"].numel() / s for b, s in zip(timed, seconds, strict=True)]
    return {
        "tokens_per_s": statistics.median(real),
        "all_tokens_per_s": statistics.median(every),
        "step_ms": 1000 * statistics.median(seconds),
    }


def static_bytes(model: torch.nn.Module, opt: torch.optim.Optimizer) -> int:
    """Parameters (tied ones once) + optimiser state."""
    params = {p.data_ptr(): p.numel() * p.element_size() for p in model.parameters()}
    state = [
        t.numel() * t.element_size()
        for s in opt.state.values()
        for t in s.values()
        if torch.is_tensor(t)
    ]
    return sum(params.values()) + sum(state)


def peak_step_bytes(step: StepFn, batch: Batch, device: torch.device) -> int:
    """Peak memory allocated by torch during one step above the level before it.

    CUDA: the caching allocator's peak. CPU: the running sum of the profiler's allocation
    records (RSS is too coarse: freed blocks stay mapped).
    """
    if device.type == "cuda":
        sync(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        step(batch)
        sync(device)
        return torch.cuda.max_memory_allocated(device) - before
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step(batch)
    records = sorted(
        (e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
        key=lambda e: e.start_ns(),
    )
    running = itertools.accumulate((e.nbytes() for e in records), initial=0)
    return max(running)


def peak_memory_mb(model, opt, step: StepFn, batch: Batch, device: torch.device) -> float:
    """Static (weights + AdamW state) + peak step memory (activations, gradients, temporaries)."""
    return (static_bytes(model, opt) + peak_step_bytes(step, batch, device)) / 2**20

"""Kernel speed against problem size, for the plots: the four headline kernels beside their baselines.

Each sweep runs one case of `bench_kernels` (its kernel, baseline and byte/FLOP counts) on inputs
built for a range of sizes: softmax columns, prefill tokens, decode context length, sampling
vocabulary. Rates are achieved GB/s (memory-bound kernels, least traffic) or TFLOP/s (prefill
attention). Without a GPU the sizes are tiny and the kernels run in the Triton interpreter: the
code paths run, the numbers mean nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from benchmarks import bench_kernels as bk

Inputs = dict[str, Any]


def _softmax(cols: int, dtype: torch.dtype) -> Inputs:
    return {"x": bk._randn(4096 if bk.ON_GPU else 4, cols, dtype=dtype, scale=3.0)}


def _prefill(tokens: int, dtype: torch.dtype) -> Inputs:
    q_heads, kv_heads, head_dim = (32, 8, 128) if bk.ON_GPU else (4, 1, 64)

    def build(dtype: torch.dtype, check: bool) -> Inputs:
        return {"q": bk._randn(tokens, q_heads, head_dim, dtype=dtype), "k": bk._randn(tokens, kv_heads, head_dim, dtype=dtype),
                "v": bk._randn(tokens, kv_heads, head_dim, dtype=dtype),
                "cu": torch.tensor([0, tokens], dtype=torch.int32, device=bk.DEVICE), "max_len": tokens}

    return bk._with_repeated_kv(build)(dtype, False)


def _decode(context: int, dtype: torch.dtype) -> Inputs:
    batch, q_heads, kv_heads, head_dim, block_size = (64, 32, 4, 128, 16) if bk.ON_GPU else (2, 8, 1, 64, 16)
    blocks = -(-context // block_size)
    cache_shape = (batch * blocks, block_size, kv_heads, head_dim)
    return {"q": bk._randn(batch, q_heads, head_dim, dtype=dtype), "k_cache": bk._randn(*cache_shape, dtype=dtype),
            "v_cache": bk._randn(*cache_shape, dtype=dtype),
            "table": torch.randperm(batch * blocks, device=bk.DEVICE).to(torch.int32).view(batch, blocks),
            "seqlens": torch.full((batch,), context, dtype=torch.int32, device=bk.DEVICE)}


def _sampling(vocab: int, dtype: torch.dtype) -> Inputs:
    batch = 128 if bk.ON_GPU else 4
    device = bk.DEVICE
    return {"logits": bk._randn(batch, vocab, dtype=dtype, scale=3.0),
            "temperature": torch.full((batch,), 0.8, device=device),
            "top_k": torch.full((batch,), 50, dtype=torch.int32, device=device),
            "top_p": torch.full((batch,), 0.9, device=device), "min_p": torch.zeros(batch, device=device),
            "seeds": torch.randint(0, 2**62, (batch,), device=device)}


@dataclass(frozen=True)
class Sweep:
    name: str  # the summary key it illustrates
    case: str  # the bench_kernels case whose kernel, baseline and work counts it uses
    size_label: str
    gpu_sizes: tuple[int, ...]
    cpu_sizes: tuple[int, ...]
    build: Callable[[int, torch.dtype], Inputs]
    dtype: torch.dtype  # on the GPU; the interpreter runs float16 (float32 for the sampler)


SWEEPS = (
    Sweep("softmax", "softmax", "columns", (1024, 4096, 16384, 65536, 131072), (64, 700),
          _softmax, torch.bfloat16),
    Sweep("prefill_attention", "prefill_attention_causal_8k_h128_gqa4", "tokens (causal, one sequence)",
          (1024, 2048, 4096, 8192, 16384), (16, 40), _prefill, torch.bfloat16),
    Sweep("paged_decode_attention", "paged_decode_b64_ctx4k_gqa8", "context length",
          (512, 2048, 8192, 32768), (32, 100), _decode, torch.bfloat16),
    Sweep("sampling", "sample_top_k_top_p_b128_v128k", "vocabulary (top-k 50, top-p 0.9)",
          (32000, 65536, 128256, 262144), (100, 1000), _sampling, torch.float32),
)


def _case(name: str) -> bk.Case:
    return next(case for case in bk.CASES if case.name == name)


def run_sweep(sweep: Sweep) -> dict[str, Any]:
    """Per size: fastllm's and the baseline's milliseconds and rates (GB/s, or TFLOP/s for attention)."""
    case = _case(sweep.case)
    dtype = sweep.dtype if bk.ON_GPU or sweep.dtype == torch.float32 else torch.float16
    unit = "TFLOP/s" if case.flops is not None else "GB/s"
    points = []
    for size in sweep.gpu_sizes if bk.ON_GPU else sweep.cpu_sizes:
        inputs = sweep.build(size, dtype)
        work = case.flops(inputs) / 1e12 if case.flops is not None else case.bytes(inputs) / 1e9
        fastllm_ms = bk._median_ms(lambda: case.kernel(inputs))
        baseline_ms = bk._median_ms(lambda: case.baseline(inputs))
        points.append({"size": size, "fastllm_ms": fastllm_ms, "baseline_ms": baseline_ms,
                       "fastllm_rate": work / fastllm_ms * 1e3, "baseline_rate": work / baseline_ms * 1e3})
        del inputs
        if bk.ON_GPU:
            torch.cuda.empty_cache()
    return {"name": sweep.name, "case": sweep.case, "dtype": str(dtype).removeprefix("torch."),
            "size_label": sweep.size_label, "unit": unit, "baseline": case.baseline_name, "points": points}


def run_all() -> list[dict[str, Any]]:
    return [run_sweep(sweep) for sweep in SWEEPS]

"""Kernel benchmark: correctness against float64, then timings beside PyTorch baselines and ceilings.

    python benchmarks/bench_kernels.py [--out FILE] [--only NAME ...]    (NAME: a case, or attention_variants)

On a CUDA GPU, for bf16 and fp16: each Triton kernel is checked against its float64 PyTorch twin
(`fastllm.kernels.reference`) on a moderate shape, then timed with `triton.testing.do_bench`
(median) on the issue's shapes beside its baseline: torch SDPA's flash backend (prefill),
gather-then-SDPA (paged decode), `torch.softmax`, a sort-based top-k/top-p sampler as vLLM
writes it (sampling), and the eager PyTorch reference for the fused small ops. The hardware
ceilings are measured in the same run, a large device-to-device copy (bandwidth) and a large
bf16 matmul (tensor-core throughput), and each result reports its fraction of them. Results go
to benchmarks/results/<date>-<device>-kernels.json.

Besides the timed cases, every attention variant the engine launches (prefill over packed and
paged K/V, decode split and unsplit, head dims 64/128/256) is checked against float64 in bf16,
fp16 and float32 (`check_attention_variants`).

Without a GPU the script sets TRITON_INTERPRET=1 and runs tiny float16 shapes on the CPU so that
every code path is exercised; those timings are meaningless, labelled so, and not written to a
file unless --out is given.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import itertools
import json
import os
import platform
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

# With TRITON_INTERPRET=1 already set (as the test suite does) the kernels cannot run on the GPU.
ON_GPU = torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET", "0") != "1"
if not ON_GPU:
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before fastllm.kernels is imported

import triton  # noqa: E402
import triton.testing  # noqa: E402

import fastllm.kernels as kernels  # noqa: E402
from fastllm.kernels import reference  # noqa: E402

DEVICE = torch.device("cuda" if ON_GPU else "cpu")
DTYPES = (torch.bfloat16, torch.float16) if ON_GPU else (torch.float16,)
TOLERANCE = {torch.bfloat16: 3e-2, torch.float16: 5e-3, torch.float32: 1e-4}
RESULTS_DIR = Path(__file__).resolve().parent / "results"


def _randn(*shape: int, dtype: torch.dtype = torch.float32, scale: float = 1.0) -> torch.Tensor:
    return (torch.randn(shape, device=DEVICE) * scale).to(dtype)


def _median_ms(fn: Callable[[], object]) -> float:
    """Median milliseconds per call: do_bench on the GPU; in the interpreter, whose timings mean
    nothing (and which compiles nothing to warm up), one wall-clock run, to exercise the path."""
    if ON_GPU:
        return float(triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median"))
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e3


def _relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.double(), ref.double()
    return ((out - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item()


# -- ceilings ----------------------------------------------------------------------------------


def measure_ceilings() -> dict[str, Any]:
    """Copy bandwidth (read + write bytes per second) and bf16 matmul throughput, measured now."""
    copy_bytes = (1 << 30) if ON_GPU else (1 << 23)
    src = torch.empty(copy_bytes, dtype=torch.uint8, device=DEVICE)
    dst = torch.empty_like(src)
    copy_ms = _median_ms(lambda: dst.copy_(src))
    n = 8192 if ON_GPU else 256
    mm_dtype = torch.bfloat16 if ON_GPU else torch.float32
    a, b = _randn(n, n, dtype=mm_dtype), _randn(n, n, dtype=mm_dtype)
    mm_ms = _median_ms(lambda: a @ b)
    del src, dst
    return {
        "copy_bytes": copy_bytes,
        "copy_ms": copy_ms,
        "copy_tb_per_s": 2 * copy_bytes / copy_ms / 1e9,
        "matmul_shape": [n, n, n],
        "matmul_dtype": str(mm_dtype).removeprefix("torch."),
        "matmul_ms": mm_ms,
        "matmul_tflop_per_s": 2 * n**3 / mm_ms / 1e9,
    }


# -- cases -------------------------------------------------------------------------------------


@dataclasses.dataclass
class Case:
    """One kernel on one shape.

    build(dtype, check) -> inputs (a dict); check=True asks for the moderate correctness shape.
    kernel/baseline(inputs) run the Triton kernel / the PyTorch baseline; check(inputs) returns
    the kernel's relative error against float64 (or 0/1 for exact and set-membership checks).
    bytes/flops(inputs) give the least memory traffic and the useful floating-point work.
    dtypes: the activation dtypes to run (the sampler takes the model's float32 logits).
    """

    name: str
    build: Callable[[torch.dtype, bool], dict[str, Any]]
    kernel: Callable[[dict[str, Any]], object]
    check: Callable[[dict[str, Any]], float]
    baseline_name: str | None = None
    baseline: Callable[[dict[str, Any]], object] | None = None
    bytes: Callable[[dict[str, Any]], int] | None = None
    flops: Callable[[dict[str, Any]], int] | None = None
    tolerance_scale: float = 1.0
    dtypes: tuple[torch.dtype, ...] = DTYPES


def _nbytes(*tensors: torch.Tensor) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def _float64(inputs: dict[str, Any]) -> dict[str, Any]:
    return {k: v.double() if isinstance(v, torch.Tensor) and v.is_floating_point() else v for k, v in inputs.items()}


def _twin_error(op: str, args: Callable[[dict[str, Any]], tuple]) -> Callable[[dict[str, Any]], float]:
    """Check: the kernel against its PyTorch twin run on float64 copies (max over tuple outputs)."""
    def check(i: dict[str, Any]) -> float:
        out = getattr(kernels, op)(*args(i))
        ref = getattr(reference, op)(*args(_float64(i)))
        pairs = zip(out, ref) if isinstance(out, tuple) else [(out, ref)]
        return max(_relative_error(o, r) for o, r in pairs)
    return check


def _twin_case(name: str, op: str, build: Callable[[torch.dtype, bool], dict[str, Any]],
               args: Callable[[dict[str, Any]], tuple], bytes: Callable[[dict[str, Any]], int], **overrides: Any) -> Case:
    """A kernel timed beside its eager PyTorch twin (unless `overrides` names another baseline)."""
    fields = {
        "kernel": lambda i: getattr(kernels, op)(*args(i)),
        "check": _twin_error(op, args),
        "baseline_name": f"eager PyTorch (reference.{op})",
        "baseline": lambda i: getattr(reference, op)(*args(i)),
        "bytes": bytes,
    }
    fields.update(overrides)
    return Case(name=name, build=build, **fields)


def _softmax_inputs(dtype: torch.dtype, check: bool) -> dict[str, Any]:
    rows, cols = ((256, 8192) if check else (8192, 16384)) if ON_GPU else (16, 700)
    return {"x": _randn(rows, cols, dtype=dtype, scale=3.0)}


def _norm_inputs(dtype: torch.dtype, check: bool) -> dict[str, Any]:
    tokens, hidden = ((512, 4096) if check else (8192, 4096)) if ON_GPU else (8, 576)
    return {"x": _randn(tokens, hidden, dtype=dtype), "residual": _randn(tokens, hidden, dtype=dtype),
            "weight": _randn(hidden, dtype=dtype), "eps": 1e-5}


def _rotary_inputs(dtype: torch.dtype, check: bool) -> dict[str, Any]:
    tokens, q_heads, kv_heads, head_dim = ((512, 32, 8, 128) if check else (8192, 32, 8, 128)) if ON_GPU else (8, 4, 2, 64)
    angles = torch.rand(tokens * 2, head_dim // 2, device=DEVICE) * 10
    return {"q": _randn(tokens, q_heads, head_dim, dtype=dtype), "k": _randn(tokens, kv_heads, head_dim, dtype=dtype),
            "positions": torch.randperm(tokens * 2, device=DEVICE)[:tokens], "cos": angles.cos(), "sin": angles.sin()}


def _silu_inputs(dtype: torch.dtype, check: bool) -> dict[str, Any]:
    tokens, inter = ((512, 14336) if check else (8192, 14336)) if ON_GPU else (8, 1536)
    return {"x": _randn(tokens, 2 * inter, dtype=dtype, scale=2.0)}


def _store_inputs(dtype: torch.dtype, check: bool) -> dict[str, Any]:
    tokens, kv_heads, head_dim, block_size = ((512, 8, 128, 16) if check else (8192, 8, 128, 16)) if ON_GPU else (8, 2, 64, 16)
    num_blocks = 2 * tokens // block_size
    cache_shape = (num_blocks, block_size, kv_heads, head_dim)
    return {"k": _randn(tokens, kv_heads, head_dim, dtype=dtype), "v": _randn(tokens, kv_heads, head_dim, dtype=dtype),
            "k_cache": torch.zeros(cache_shape, dtype=dtype, device=DEVICE),
            "v_cache": torch.zeros(cache_shape, dtype=dtype, device=DEVICE),
            "slots": torch.randperm(num_blocks * block_size, device=DEVICE)[:tokens]}


def _store_args(i: dict[str, Any]) -> tuple[torch.Tensor, ...]:
    return i["k"], i["v"], i["k_cache"], i["v_cache"], i["slots"]


def _store_check(i: dict[str, Any]) -> float:
    """1 unless the kernel writes exactly the cache the PyTorch twin writes."""
    kernels.store_kv_cache(*_store_args(i))
    expected_k, expected_v = torch.zeros_like(i["k_cache"]), torch.zeros_like(i["v_cache"])
    reference.store_kv_cache(i["k"], i["v"], expected_k, expected_v, i["slots"])
    return float(not (torch.equal(i["k_cache"], expected_k) and torch.equal(i["v_cache"], expected_v)))


SOFTMAX = _twin_case(
    "softmax", "softmax", _softmax_inputs, lambda i: (i["x"],), lambda i: 2 * _nbytes(i["x"]),
    baseline_name="torch.softmax", baseline=lambda i: torch.softmax(i["x"], dim=-1),
)
FUSED_ADD_RMS_NORM = _twin_case(
    "fused_add_rms_norm", "fused_add_rms_norm", _norm_inputs,
    lambda i: (i["x"], i["residual"], i["weight"], i["eps"]),
    lambda i: 4 * _nbytes(i["x"]),  # read x and residual, write the sum and the normalized copy
    tolerance_scale=2.0,  # rounded twice in the activation dtype (normalized, then weighted), as in HF
)
ROTARY = _twin_case(
    "rotary_embedding", "rotary_embedding", _rotary_inputs,
    lambda i: (i["q"], i["k"], i["positions"], i["cos"], i["sin"]), lambda i: 2 * _nbytes(i["q"], i["k"]),
)
SILU_AND_MUL = _twin_case(
    "silu_and_mul", "silu_and_mul", _silu_inputs, lambda i: (i["x"],), lambda i: _nbytes(i["x"]) * 3 // 2,
    tolerance_scale=2.0,  # silu rounded to the dtype before the multiply, as in PyTorch
)
STORE_KV_CACHE = _twin_case(
    "store_kv_cache", "store_kv_cache", _store_inputs, _store_args, lambda i: 2 * _nbytes(i["k"], i["v"]),
    check=_store_check,
)


# prefill attention --------------------------------------------------------------------------------

def _prefill_inputs(q_heads: int, kv_heads: int) -> Callable[[torch.dtype, bool], dict[str, Any]]:
    def build(dtype: torch.dtype, check: bool) -> dict[str, Any]:
        tokens, head_dim = ((1024 if check else 8192), 128) if ON_GPU else (40, 64)
        heads = (q_heads, kv_heads) if ON_GPU else (4, 4 if q_heads == kv_heads else 1)
        cu = torch.tensor([0, tokens], dtype=torch.int32, device=DEVICE)
        return {"q": _randn(tokens, heads[0], head_dim, dtype=dtype), "k": _randn(tokens, heads[1], head_dim, dtype=dtype),
                "v": _randn(tokens, heads[1], head_dim, dtype=dtype), "cu": cu, "max_len": tokens}
    return build


def _prefill_kernel(i: dict[str, Any]) -> torch.Tensor:
    return kernels.varlen_attention(i["q"], i["k"], i["v"], i["cu"], i["cu"], causal=True,
                                    max_seqlen_q=i["max_len"], max_seqlen_k=i["max_len"])


def _prefill_check(i: dict[str, Any]) -> float:
    ref = reference.varlen_attention(i["q"].double(), i["k"].double(), i["v"].double(), i["cu"], i["cu"], causal=True)
    return _relative_error(_prefill_kernel(i), ref)


def _sdpa_flash(i: dict[str, Any]) -> torch.Tensor:
    """torch SDPA on [1, H, T, D] views, flash backend only (K/V heads repeated beforehand for GQA)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q, k, v = (t.transpose(0, 1).unsqueeze(0) for t in (i["q"], i["k_rep"], i["v_rep"]))
    backends = [SDPBackend.FLASH_ATTENTION] if ON_GPU else [SDPBackend.MATH]
    with sdpa_kernel(backends):
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)


def _with_repeated_kv(build: Callable[[torch.dtype, bool], dict[str, Any]]) -> Callable[[torch.dtype, bool], dict[str, Any]]:
    def wrapped(dtype: torch.dtype, check: bool) -> dict[str, Any]:
        i = build(dtype, check)
        group = i["q"].shape[1] // i["k"].shape[1]
        i["k_rep"] = i["k"].repeat_interleave(group, dim=1)
        i["v_rep"] = i["v"].repeat_interleave(group, dim=1)
        return i
    return wrapped


def _causal_flops(i: dict[str, Any]) -> int:
    tokens, heads, head_dim = i["q"].shape
    return 4 * heads * head_dim * tokens * (tokens + 1) // 2  # two matmuls over the visible half


def _prefill_case(name: str, q_heads: int, kv_heads: int) -> Case:
    return Case(
        name=name,
        build=_with_repeated_kv(_prefill_inputs(q_heads, kv_heads)),
        kernel=_prefill_kernel,
        check=_prefill_check,
        baseline_name="torch SDPA, flash backend" + (" (K/V repeated to all heads, untimed)" if q_heads != kv_heads else ""),
        baseline=_sdpa_flash,
        flops=_causal_flops,
    )


# paged decode attention ---------------------------------------------------------------------------

def _decode_inputs(batch: int, context: int) -> Callable[[torch.dtype, bool], dict[str, Any]]:
    def build(dtype: torch.dtype, check: bool) -> dict[str, Any]:
        b, ctx, q_heads, kv_heads, head_dim, block_size = (
            (min(batch, 8) if check else batch, min(context, 2048) if check else context, 32, 4, 128, 16)
            if ON_GPU else (3, 100, 8, 1, 64, 16)
        )
        blocks_per_seq = -(-ctx // block_size)
        table = torch.randperm(b * blocks_per_seq, device=DEVICE).to(torch.int32).view(b, blocks_per_seq)
        cache_shape = (b * blocks_per_seq, block_size, kv_heads, head_dim)
        return {"q": _randn(b, q_heads, head_dim, dtype=dtype), "k_cache": _randn(*cache_shape, dtype=dtype),
                "v_cache": _randn(*cache_shape, dtype=dtype), "table": table,
                "seqlens": torch.full((b,), ctx, dtype=torch.int32, device=DEVICE)}
    return build


def _decode_args(i: dict[str, Any]) -> tuple[torch.Tensor, ...]:
    return i["q"], i["k_cache"], i["v_cache"], i["seqlens"], i["table"]


def _gather_then_sdpa(i: dict[str, Any]) -> torch.Tensor:
    """The usual fallback: gather each sequence's blocks into contiguous K/V, then SDPA."""
    q, k_cache, v_cache, seqlens, table = _decode_args(i)
    batch, q_heads, head_dim = q.shape
    keys = k_cache[table.long()].flatten(1, 2).transpose(1, 2)  # [B, Hkv, L, D]
    values = v_cache[table.long()].flatten(1, 2).transpose(1, 2)
    out = torch.nn.functional.scaled_dot_product_attention(q.unsqueeze(2), keys, values, enable_gqa=True)
    return out.squeeze(2)


def _decode_check(i: dict[str, Any]) -> float:
    return _relative_error(kernels.paged_decode_attention(*_decode_args(i)),
                           reference.paged_decode_attention(*_decode_args(_float64(i))))


def _decode_case(name: str, batch: int, context: int) -> Case:
    return Case(
        name=name,
        build=_decode_inputs(batch, context),
        kernel=lambda i: kernels.paged_decode_attention(*_decode_args(i)),
        check=_decode_check,
        baseline_name="gather blocks, then torch SDPA",
        baseline=_gather_then_sdpa,
        bytes=lambda i: _nbytes(i["q"]) * 2 + 2 * i["seqlens"].sum().item() * i["k_cache"][0, 0].numel()
        * i["k_cache"].element_size(),
    )


# sampling -----------------------------------------------------------------------------------------

def _sampling_inputs(top_k: int, top_p: float) -> Callable[[torch.dtype, bool], dict[str, Any]]:
    def build(dtype: torch.dtype, check: bool) -> dict[str, Any]:
        batch, vocab = ((16 if check else 128), 128256) if ON_GPU else (4, 1000)
        logits = _randn(batch, vocab, dtype=dtype, scale=3.0)
        return {"logits": logits, "temperature": torch.full((batch,), 0.8, device=DEVICE),
                "top_k": torch.full((batch,), top_k, dtype=torch.int32, device=DEVICE),
                "top_p": torch.full((batch,), top_p, device=DEVICE), "min_p": torch.zeros(batch, device=DEVICE),
                "seeds": torch.randint(0, 2**62, (batch,), device=DEVICE)}
    return build


def _sample_args(i: dict[str, Any]) -> tuple[torch.Tensor, ...]:
    return i["logits"], i["temperature"], i["top_k"], i["top_p"], i["min_p"], i["seeds"]


def _sort_based_sample(i: dict[str, Any]) -> torch.Tensor:
    """vLLM's PyTorch path: sort, mask top-k and top-p, unsort, then an exponential-race draw."""
    logits = i["logits"] / i["temperature"].unsqueeze(1)
    sorted_logits, order = logits.sort(dim=-1, descending=False)
    vocab = logits.shape[1]
    top_k = torch.where(i["top_k"] > 0, i["top_k"], vocab).long()
    kth = sorted_logits.gather(1, (vocab - top_k).unsqueeze(1))
    sorted_logits.masked_fill_(sorted_logits < kth, float("-inf"))
    cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    drop = cumulative <= 1 - i["top_p"].unsqueeze(1)
    drop[:, -1] = False
    sorted_logits.masked_fill_(drop, float("-inf"))
    probs = torch.empty_like(sorted_logits).scatter_(1, order, sorted_logits).softmax(dim=-1)
    return (probs / torch.empty_like(probs).exponential_()).argmax(dim=-1)


def _sampling_check(i: dict[str, Any]) -> float:
    """1 if any drawn token is outside the float64 filtered distribution's kept set, else 0."""
    tokens = kernels.sample(*_sample_args(i))
    probs = reference.filtered_probs(i["logits"].double(), *_sample_args(i)[1:5])
    return float(not bool((probs.gather(1, tokens.unsqueeze(1)) > 0).all()))


def _sampling_case(name: str, top_k: int, top_p: float) -> Case:
    return Case(
        name=name,
        build=_sampling_inputs(top_k, top_p),
        kernel=lambda i: kernels.sample(*_sample_args(i)),
        check=_sampling_check,
        baseline_name="sort-based top-k/top-p (vLLM's PyTorch sampler)",
        baseline=_sort_based_sample,
        bytes=lambda i: _nbytes(i["logits"]),  # one read of the logits (the kernel makes several)
        dtypes=(torch.float32,),  # the model's compute_logits returns float32
    )


# The case that stands for each headline kernel in summaries (benchmarks.run, gpu_check).
HEADLINE_CASES = {
    "prefill_attention": "prefill_attention_causal_8k_h128_gqa4",
    "paged_decode_attention": "paged_decode_b64_ctx4k_gqa8",
    "softmax": "softmax",
    "sampling": "sample_top_k_top_p_b128_v128k",
}

CASES = [
    SOFTMAX,
    FUSED_ADD_RMS_NORM,
    ROTARY,
    SILU_AND_MUL,
    STORE_KV_CACHE,
    _prefill_case("prefill_attention_causal_8k_h128_mha", 32, 32),
    _prefill_case("prefill_attention_causal_8k_h128_gqa4", 32, 8),
    _decode_case("paged_decode_b64_ctx4k_gqa8", 64, 4096),
    _decode_case("paged_decode_b4_ctx32k_gqa8_split", 4, 32768),
    _sampling_case("sample_top_p_b128_v128k", 0, 0.9),
    _sampling_case("sample_top_k_top_p_b128_v128k", 50, 0.9),
]


# attention variants -------------------------------------------------------------------------------
# Every variant the engine launches, on fresh random inputs against float64: prefill over packed
# K/V (plain prompts) and through the block table (chunked prefill, prefix-cache hits), paged
# decode split over the context (few sequences) and unsplit (enough of them to fill the GPU),
# each at head dims 64, 128 and 256. The timed cases above cover one shape each.

VARIANTS_CASE = "attention_variants"  # its name for --only
VARIANT_HEAD_DIMS = (64, 128, 256)
VARIANT_DTYPES = (torch.bfloat16, torch.float16, torch.float32) if ON_GPU else (torch.float16, torch.float32)
# float32 attention takes IEEE products (fastllm.kernels._runtime.DOT_PRECISION); TF32 ones
# would land near 3e-4.
VARIANT_TOLERANCE = {**TOLERANCE, torch.float32: 2e-5}
VARIANT_HEADS = (8, 2)  # query and KV heads: GQA 4, as in the Llama-3.2-1B shape
KV_BLOCK = 16
# Per variant, GPU and interpreter sizes: (new query tokens, cached + new keys) per sequence for
# prefill; context lengths for decode. Paged prefill: a chunk after 400 cached tokens, one token
# after 32, 60 after a 200-token prefix hit. Decode: two long sequences split, 80 unsplit.
PREFILL_LENGTHS = {
    "prefill_contiguous": (([1000, 37, 300], [1000, 37, 300]), ([40, 17], [40, 17])),
    "prefill_paged": (([300, 1, 60], [700, 33, 260]), ([24, 1], [40, 17])),
}
DECODE_CONTEXTS = {
    "decode_split": ([3000, 4100], [200]),
    "decode_unsplit": ([1 + 7 * i for i in range(80)], [1, 15, 16, 33]),
}


def _paged_kv(lengths: list[int], num_kv_heads: int, head_dim: int,
              dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random K/V caches whose blocks go to the sequences in a shuffled order; each table row is
    one block wider than its sequence needs (pointing at a spare block)."""
    blocks = [-(-n // KV_BLOCK) for n in lengths]
    order = torch.randperm(sum(blocks) + 1).to(torch.int32)
    table = torch.full((len(lengths), max(blocks) + 1), int(order[-1]), dtype=torch.int32)
    for row, (first, count) in enumerate(zip([0, *itertools.accumulate(blocks)], blocks)):
        table[row, :count] = order[first : first + count]
    shape = (sum(blocks) + 1, KV_BLOCK, num_kv_heads, head_dim)
    return _randn(*shape, dtype=dtype), _randn(*shape, dtype=dtype), table.to(DEVICE)


def _cu(lengths: list[int]) -> torch.Tensor:
    return torch.tensor([0, *itertools.accumulate(lengths)], dtype=torch.int32, device=DEVICE)


def _poisoned(run: Callable[[], torch.Tensor], like: torch.Tensor) -> torch.Tensor:
    """run() after freeing a NaN-filled block of its output's size, which the caching allocator
    most likely hands to the kernel's output: an element the kernel fails to write stays NaN."""
    poison = torch.full_like(like, float("nan"))
    del poison
    return run()


def _prefill_variant(name: str, head_dim: int, dtype: torch.dtype) -> dict[str, Any]:
    lengths_q, lengths_k = PREFILL_LENGTHS[name][0 if ON_GPU else 1]
    q_heads, kv_heads = VARIANT_HEADS
    q = _randn(sum(lengths_q), q_heads, head_dim, dtype=dtype)
    cu_q, cu_k = _cu(lengths_q), _cu(lengths_k)
    if name == "prefill_paged":
        k, v, table = _paged_kv(lengths_k, kv_heads, head_dim, dtype)
    else:
        k, v = (_randn(sum(lengths_k), kv_heads, head_dim, dtype=dtype) for _ in range(2))
        table = None
    out = _poisoned(lambda: kernels.varlen_attention(
        q, k, v, cu_q, cu_k, causal=True, block_table=table, max_seqlen_q=max(lengths_q),
        max_seqlen_k=max(lengths_k)), q)
    ref = reference.varlen_attention(q.double(), k.double(), v.double(), cu_q, cu_k, causal=True, block_table=table)
    return {"error": _relative_error(out, ref), "query_lengths": lengths_q, "key_lengths": lengths_k}


def _decode_variant(name: str, head_dim: int, dtype: torch.dtype) -> dict[str, Any]:
    from fastllm.kernels.decode_attention import decode_splits

    contexts = DECODE_CONTEXTS[name][0 if ON_GPU else 1]
    q_heads, kv_heads = VARIANT_HEADS if ON_GPU else (4, 1)  # the interpreter's nominal 4 SMs: 1 KV head
    q = _randn(len(contexts), q_heads, head_dim, dtype=dtype)
    k_cache, v_cache, table = _paged_kv(contexts, kv_heads, head_dim, dtype)
    seqlens = torch.tensor(contexts, dtype=torch.int32, device=DEVICE)
    splits = decode_splits(q, k_cache, table)
    out = _poisoned(lambda: kernels.paged_decode_attention(q, k_cache, v_cache, seqlens, table), q)
    ref = reference.paged_decode_attention(q.double(), k_cache.double(), v_cache.double(), seqlens, table)
    result: dict[str, Any] = {"error": _relative_error(out, ref), "contexts": len(contexts),
                              "max_context": max(contexts), "num_splits": splits}
    if (splits > 1) != (name == "decode_split"):  # the heuristic moved: this check no longer covers its path
        result["wrong_path"] = f"{name} ran with {splits} split(s)"
    return result


VARIANTS: dict[str, Callable[[str, int, torch.dtype], dict[str, Any]]] = {
    "prefill_contiguous": _prefill_variant,
    "prefill_paged": _prefill_variant,
    "decode_split": _decode_variant,
    "decode_unsplit": _decode_variant,
}


def check_variant(name: str, head_dim: int, dtype: torch.dtype) -> dict[str, Any]:
    """One variant on fresh inputs: its relative error against float64, and whether it passes."""
    tolerance = VARIANT_TOLERANCE[dtype]
    result = {"variant": name, "head_dim": head_dim, "dtype": str(dtype).removeprefix("torch."),
              **VARIANTS[name](name, head_dim, dtype), "tolerance": tolerance}
    result["passed"] = result["error"] <= tolerance and "wrong_path" not in result  # NaN fails
    return result


def check_attention_variants(deadline: float | None = None) -> dict[str, Any]:
    """Every variant in every dtype (the model's first), each printed as it comes; with a deadline
    (time.perf_counter seconds) the ones left when it passes are listed as not run."""
    results: list[dict[str, Any]] = []
    not_run: list[str] = []
    for dtype in VARIANT_DTYPES:
        for head_dim in VARIANT_HEAD_DIMS:
            for name in VARIANTS:
                label = f"{name} d{head_dim} {str(dtype).removeprefix('torch.')}"
                if deadline is not None and time.perf_counter() > deadline:
                    not_run.append(label)
                    continue
                results.append(check_variant(name, head_dim, dtype))
                r = results[-1]
                print(f"{label:<36} {'ok ' if r['passed'] else 'FAIL'} (error {r['error']:.1e}, "
                      f"tolerance {r['tolerance']:.0e}){'  ' + r['wrong_path'] if 'wrong_path' in r else ''}",
                      flush=True)
    return {"results": results, "not_run": not_run, "passed": all(r["passed"] for r in results) and not not_run}


def decode_recompiles(head_dim: int = 64, dtype: torch.dtype = DTYPES[0]) -> dict[str, Any]:
    """One sequence whose context grows from 16 tokens past the point where decode splits most,
    as in eager decode: how many splits each step takes, and how many kernel variants Triton
    compiled after the first step (on the GPU; the interpreter compiles nothing)."""
    from fastllm.kernels._runtime import compiled_variants
    from fastllm.kernels.decode_attention import decode_splits

    contexts = [16 << i for i in range(11 if ON_GPU else 6)]  # 16 .. 16384 (GPU), .. 512 (interpreter)
    q_heads, kv_heads = VARIANT_HEADS
    q = _randn(1, q_heads, head_dim, dtype=dtype)
    k_cache, v_cache, _ = _paged_kv([contexts[-1]], kv_heads, head_dim, dtype)
    splits, after_first = [], None
    for context in contexts:
        table = torch.arange(-(-context // KV_BLOCK), dtype=torch.int32, device=DEVICE).unsqueeze(0)
        splits.append(decode_splits(q, k_cache, table))
        kernels.paged_decode_attention(q, k_cache, v_cache, torch.tensor([context], dtype=torch.int32, device=DEVICE),
                                       table)
        after_first = after_first if after_first is not None else compiled_variants()
    compiled = compiled_variants()
    result: dict[str, Any] = {"contexts": contexts, "num_splits": splits}
    if ON_GPU:
        grown = {k: n - after_first.get(k, 0) for k, n in compiled.items() if n != after_first.get(k, 0)}
        result.update(compiled_after_first_step=grown, passed=not grown)
    else:
        result.update(compiled_after_first_step=None, passed=True,
                      note="the interpreter compiles nothing: tests/test_kernels_attention.py counts the variants "
                           "compiled for sm_90")
    return result


# runner -------------------------------------------------------------------------------------------


def _shapes(inputs: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v.shape) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}


def run_case(case: Case, dtype: torch.dtype, ceilings: dict[str, Any]) -> dict[str, Any]:
    tolerance = TOLERANCE[dtype] * case.tolerance_scale
    error = case.check(case.build(dtype, True))
    inputs = case.build(dtype, False)
    result: dict[str, Any] = {
        "kernel": case.name,
        "dtype": str(dtype).removeprefix("torch."),
        "shapes": _shapes(inputs),
        "check": {"error": error, "tolerance": tolerance, "passed": error <= tolerance},
        "triton_ms": _median_ms(lambda: case.kernel(inputs)),
    }
    if case.baseline is not None:
        result["baseline"] = case.baseline_name
        result["baseline_ms"] = _median_ms(lambda: case.baseline(inputs))
        result["speedup"] = result["baseline_ms"] / result["triton_ms"]
    if case.bytes is not None:
        result["bytes"] = int(case.bytes(inputs))
        result["achieved_tb_per_s"] = result["bytes"] / result["triton_ms"] / 1e9
        result["fraction_of_copy_bandwidth"] = result["achieved_tb_per_s"] / ceilings["copy_tb_per_s"]
    if case.flops is not None:
        result["flops"] = int(case.flops(inputs))
        result["achieved_tflop_per_s"] = result["flops"] / result["triton_ms"] / 1e9
        result["fraction_of_matmul"] = result["achieved_tflop_per_s"] / ceilings["matmul_tflop_per_s"]
    del inputs
    if ON_GPU:
        torch.cuda.empty_cache()
    return result


def run_cases(cases: list[Case], ceilings: dict[str, Any]) -> list[dict[str, Any]]:
    """Every case in each of its dtypes, each result printed as it comes."""
    results = []
    for case in cases:
        for dtype in case.dtypes:
            results.append(run_case(case, dtype, ceilings))
            print(_format(results[-1]), flush=True)
    return results


def versions() -> dict[str, str | None]:
    return {"python": platform.python_version(), "torch": torch.__version__, "triton": triton.__version__,
            "cuda": torch.version.cuda}


def _device_name() -> str:
    return torch.cuda.get_device_name(DEVICE) if ON_GPU else f"cpu ({platform.processor() or platform.machine()})"


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _format(result: dict[str, Any]) -> str:
    parts = [f"{result['kernel']:<40} {result['dtype']:<8}",
             f"check {'ok ' if result['check']['passed'] else 'FAIL'} ({result['check']['error']:.1e})",
             f"triton {result['triton_ms']:9.4f} ms"]
    if "baseline_ms" in result:
        parts.append(f"baseline {result['baseline_ms']:9.4f} ms  x{result['speedup']:.2f}")
    if "fraction_of_copy_bandwidth" in result:
        parts.append(f"{result['achieved_tb_per_s']:.2f} TB/s ({100 * result['fraction_of_copy_bandwidth']:.0f}% of copy)")
    if "fraction_of_matmul" in result:
        parts.append(f"{result['achieved_tflop_per_s']:.0f} TFLOP/s ({100 * result['fraction_of_matmul']:.0f}% of matmul)")
    return "  ".join(parts)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="JSON file to write (default on a GPU: benchmarks/results/<date>-<device>-kernels.json)")
    parser.add_argument("--only", nargs="+", metavar="NAME",
                        help=f"run only the cases whose name contains one of these ({VARIANTS_CASE}: the attention variants)")
    args = parser.parse_args(argv)
    cases = [c for c in CASES if not args.only or any(part in c.name for part in args.only)]
    with_variants = not args.only or any(part in VARIANTS_CASE for part in args.only)
    if not cases and not with_variants:
        parser.error(f"--only matched no case; cases: {', '.join(c.name for c in CASES)}, {VARIANTS_CASE}")

    torch.manual_seed(0)
    device = _device_name()
    if not ON_GPU:
        print("No CUDA GPU: running tiny shapes through the Triton interpreter. Timings are MEANINGLESS.")
    ceilings = measure_ceilings()
    print(f"{device}: copy {ceilings['copy_tb_per_s']:.2f} TB/s, {ceilings['matmul_dtype']} matmul "
          f"{ceilings['matmul_tflop_per_s']:.1f} TFLOP/s")
    results = run_cases(cases, ceilings)
    variants = check_attention_variants() if with_variants else None

    now = datetime.datetime.now(datetime.timezone.utc)
    report = {
        "date": now.isoformat(timespec="seconds"),
        "device": device,
        "interpreter": not ON_GPU,
        "timings_meaningful": ON_GPU,
        "versions": versions(),
        "timing": "triton.testing.do_bench median (warmup 25 ms, rep 100 ms)" if ON_GPU
        else "one wall-clock run in the Triton interpreter",
        "ceilings": ceilings,
        "results": results,
    }
    if variants is not None:
        report["variants"] = variants
    out = args.out or (RESULTS_DIR / f"{now:%Y-%m-%d}-{_slug(device)}-kernels.json" if ON_GPU else None)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {out}")
    failed = [f"{r['kernel']} ({r['dtype']})" for r in results if not r["check"]["passed"]]
    failed += [f"{r['variant']} d{r['head_dim']} ({r['dtype']})" for r in (variants or {}).get("results", [])
               if not r["passed"]]
    if failed:
        print(f"correctness check FAILED: {', '.join(failed)}", file=sys.stderr)
    return report


def passed(report: dict[str, Any]) -> bool:
    """Every timed case's check and, when they ran, every attention variant's."""
    return all(r["check"]["passed"] for r in report["results"]) and report.get("variants", {"passed": True})["passed"]


if __name__ == "__main__":
    sys.exit(0 if passed(main()) else 1)

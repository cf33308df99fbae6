"""backend="cpu": the PyTorch ops of `fastllm.kernels.reference`, with C++ kernels where they pay.

- `paged_decode_attention`: the reference spends most of its time gathering every sequence's
  cache blocks into one padded tensor for SDPA; the kernel (csrc/cpu_attention.cpp) reads the
  blocks where they are, one pass per (sequence, KV head) with an online softmax.
- `rms_norm`, `fused_add_rms_norm`, `rotary_embedding`, `silu_and_mul`, `gelu_tanh_and_mul`,
  `store_kv_cache`: at
  decode sizes the reference is mostly per-op overhead (several PyTorch calls each); the kernels
  (csrc/cpu_elementwise.cpp) make one pass and compute each element as the reference does (SwiGLU's
  and GeGLU's exp to float32 rounding rather than torch's own). They are also what the one-call decode step
  of `fastllm.model.cpu_decode` runs, so both paths give the same numbers.

Inside a model step their results come from the step's buffers (`fastllm.kernels.cpu_buffers`).
All run on torch's own intra-op threads. They take float32 CPU tensors (and, for attention,
contiguous caches and the head dims of Llama-family models, `_cpu_kernels.head_dims`): what the
engine runs on a CPU. Anything else goes to the reference op (which checks it), so this module
accepts every input the reference does and raises the same errors; arguments are checked once
on either path. The other ops are the reference's.
"""

from __future__ import annotations

import torch

from fastllm import _cpu_kernels
from fastllm.kernels import cpu_buffers, reference
from fastllm.kernels._checks import (
    check_paged_decode,
    check_rms_norm,
    check_rotary,
    check_silu_and_mul,
    check_softmax_scale,
    check_store_kv_cache,
    check_window,
)
from fastllm.kernels.reference import sample, softmax

__all__ = [
    "fused_add_rms_norm",
    "gelu_tanh_and_mul",
    "paged_decode_attention",
    "rms_norm",
    "rotary_embedding",
    "sample",
    "silu_and_mul",
    "softmax",
    "store_kv_cache",
    "varlen_attention",
]


def _float32_cpu(*tensors: object) -> bool:
    """Float32 CPU tensors outside autograd: what the kernels take (they read the memory through
    NumPy, which refuses tensors that require grad; the reference ops keep the graph). Anything
    else, non-tensors included, is False: the reference op then reports it."""
    return all(
        isinstance(t, torch.Tensor) and t.device.type == "cpu" and t.dtype == torch.float32 and not t.requires_grad
        for t in tensors
    )


def _rows(x: torch.Tensor) -> bool:
    """A 2-D tensor whose rows are contiguous (what the C++ RMSNorm reads)."""
    return x.dim() == 2 and x.stride(-1) == 1


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """`fastllm.kernels.reference.rms_norm`, in C++ for float32 CPU rows [T, H]."""
    if not (_float32_cpu(x, weight) and _rows(x)):
        return reference.rms_norm(x, weight, eps)
    check_rms_norm(x, weight, eps)
    out = cpu_buffers.output(x.shape[0], x.shape[1])
    _cpu_kernels.rms_norm(x.numpy(), None, weight.contiguous().numpy(), eps, None, out.numpy(), torch.get_num_threads())
    return out


def fused_add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """`fastllm.kernels.reference.fused_add_rms_norm`, in C++ for float32 CPU rows [T, H]."""
    if not (_float32_cpu(x, residual, weight) and _rows(x) and _rows(residual)):
        return reference.fused_add_rms_norm(x, residual, weight, eps)
    check_rms_norm(x, weight, eps, residual)
    # In a model step (a cpu_buffers block) both results are the step's buffers, which the next
    # call overwrites: its sum goes over `residual` in place when that is this call's sum (row by
    # row, each element read before it is written).
    out = cpu_buffers.carried("normed", x.shape[0], x.shape[1])
    summed = cpu_buffers.carried("residual", x.shape[0], x.shape[1])
    _cpu_kernels.rms_norm(
        x.numpy(), residual.numpy(), weight.contiguous().numpy(), eps, summed.numpy(), out.numpy(),
        torch.get_num_threads(),
    )
    return out, summed


def varlen_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens_q: torch.Tensor, cu_seqlens_k: torch.Tensor,
    **options: object,
) -> torch.Tensor:
    """`fastllm.kernels.reference.varlen_attention`, its result in the step's buffers for float32
    CPU queries [T, Hq, D]."""
    out = None
    if _float32_cpu(q) and q.dim() == 3:
        out = cpu_buffers.output(q.shape[0], q.shape[1] * q.shape[2]).view(q.shape)
    return reference.varlen_attention(q, k, v, cu_seqlens_q, cu_seqlens_k, out=out, **options)


def rotary_embedding(
    q: torch.Tensor,
    k: torch.Tensor,
    positions: torch.Tensor,
    cos_cache: torch.Tensor,
    sin_cache: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`fastllm.kernels.reference.rotary_embedding`, in C++ for float32 CPU tensors."""
    if not _float32_cpu(q, k, cos_cache, sin_cache):
        return reference.rotary_embedding(q, k, positions, cos_cache, sin_cache)
    check_rotary(q, k, positions, cos_cache, sin_cache)
    tokens, head_dim = q.shape[0], q.shape[-1]
    # One allocation for both outputs: at decode sizes allocations are a good part of the cost.
    out = cpu_buffers.output(tokens, (q.shape[1] + k.shape[1]) * head_dim).view(-1)
    out_q = out[: q.numel()].view(q.shape)
    out_k = out[q.numel() :].view(k.shape)
    _cpu_kernels.rotary_embedding(
        q.numpy(), k.numpy(), positions.to(torch.int64).contiguous().numpy(), cos_cache.contiguous().numpy(),
        sin_cache.contiguous().numpy(), out_q.numpy(), out_k.numpy(), torch.get_num_threads(),
    )
    return out_q, out_k


def silu_and_mul(x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """`fastllm.kernels.reference.silu_and_mul`, in C++ for float32 CPU rows [T, 2 * I] (and `out`
    rows [T, I], which may be strided: a slice of a wider tensor's columns)."""
    if not _gated_kernel_applies(x, out):
        return reference.silu_and_mul(x, out)
    return _gated(_cpu_kernels.silu_and_mul, x, out)


def gelu_tanh_and_mul(x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """`fastllm.kernels.reference.gelu_tanh_and_mul`, in C++ for float32 CPU rows [T, 2 * I] (and
    `out` rows [T, I], strided or not)."""
    if not _gated_kernel_applies(x, out):
        return reference.gelu_tanh_and_mul(x, out)
    return _gated(_cpu_kernels.gelu_tanh_and_mul, x, out)


def _gated_kernel_applies(x: torch.Tensor, out: torch.Tensor | None) -> bool:
    return _float32_cpu(x) and _rows(x) and (out is None or (_float32_cpu(out) and _rows(out)))


def _gated(kernel, x: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
    check_silu_and_mul(x, out)
    if out is None:
        out = torch.empty((x.shape[0], x.shape[1] // 2), dtype=x.dtype)
    kernel(x.numpy(), out.numpy(), torch.get_num_threads())
    return out


def store_kv_cache(
    k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, slot_mapping: torch.Tensor
) -> None:
    """`fastllm.kernels.reference.store_kv_cache`, in C++ for float32 CPU tensors with contiguous
    token rows and caches."""
    rows_contiguous = all(t.dim() == 3 and t.stride(2) == 1 and t.stride(1) == t.shape[2] for t in (k, v))
    if not (_float32_cpu(k, v, k_cache, v_cache) and rows_contiguous and k_cache.is_contiguous()
            and v_cache.is_contiguous()):
        reference.store_kv_cache(k, v, k_cache, v_cache, slot_mapping)
        return
    check_store_kv_cache(k, v, k_cache, v_cache, slot_mapping)
    _cpu_kernels.store_kv_cache(k.numpy(), v.numpy(), k_cache.numpy(), v_cache.numpy(),
                                slot_mapping.to(torch.int64).contiguous().numpy())


def _native_decode_applies(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor) -> bool:
    return (
        _float32_cpu(q, k_cache, v_cache)
        and q.dim() == 3
        and q.shape[-1] in _cpu_kernels.head_dims
        and k_cache.is_contiguous()
        and v_cache.is_contiguous()
    )


def paged_decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    cache_seqlens: torch.Tensor,
    block_table: torch.Tensor,
    *,
    softmax_scale: float | None = None,
    window: int | None = None,
) -> torch.Tensor:
    """`fastllm.kernels.reference.paged_decode_attention`, in C++ for float32 CPU tensors.

    q: [B, Hq, D]; caches: [num_blocks, block_size, Hkv, D]; cache_seqlens: int32 [B] (1 up to
    the table's capacity); block_table: int32 [B, max_blocks]; `window`: each query sees its
    sequence's last `window` tokens (the blocks before them are not read). Returns [B, Hq, D].
    """
    if not _native_decode_applies(q, k_cache, v_cache):
        return reference.paged_decode_attention(
            q, k_cache, v_cache, cache_seqlens, block_table, softmax_scale=softmax_scale, window=window
        )
    check_paged_decode(q, k_cache, v_cache, cache_seqlens, block_table)
    scale = check_softmax_scale(softmax_scale, q.shape[-1])
    window = check_window(window)
    q = q.contiguous()
    out = torch.empty_like(q)
    _cpu_kernels.paged_decode_attention(
        q.numpy(),
        k_cache.numpy(),
        v_cache.numpy(),
        cache_seqlens.contiguous().numpy(),
        block_table.contiguous().numpy(),
        scale,
        window or 0,
        out.numpy(),
        torch.get_num_threads(),
    )
    return out

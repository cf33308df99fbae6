"""backend="cpu": the PyTorch ops of `fastllm.kernels.reference`, with decode attention in C++.

On a CPU the reference decode attention spends most of its time gathering every sequence's
cache blocks into one padded tensor for SDPA. `fastllm._cpu_kernels` (csrc/cpu_attention.cpp)
reads the blocks where they are: one pass per (sequence, KV head) with an online softmax, on
torch's own intra-op threads. It takes float32 CPU tensors, contiguous caches and the head dims
of Llama-family models (`_cpu_kernels.head_dims`), which is what the engine runs on a CPU;
anything else goes to the reference op, so this module accepts every input the reference does.
The other ops are the reference's.
"""

from __future__ import annotations

import torch

from fastllm import _cpu_kernels
from fastllm.kernels import reference
from fastllm.kernels._checks import check_paged_decode, check_softmax_scale
from fastllm.kernels.reference import (
    fused_add_rms_norm,
    rms_norm,
    rotary_embedding,
    sample,
    silu_and_mul,
    softmax,
    store_kv_cache,
    varlen_attention,
)

__all__ = [
    "fused_add_rms_norm",
    "paged_decode_attention",
    "rms_norm",
    "rotary_embedding",
    "sample",
    "silu_and_mul",
    "softmax",
    "store_kv_cache",
    "varlen_attention",
]


def _native_decode_applies(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor) -> bool:
    return (
        q.device.type == "cpu"
        and q.dtype == torch.float32
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
) -> torch.Tensor:
    """`fastllm.kernels.reference.paged_decode_attention`, in C++ for float32 CPU tensors.

    q: [B, Hq, D]; caches: [num_blocks, block_size, Hkv, D]; cache_seqlens: int32 [B] (1 up to
    the table's capacity); block_table: int32 [B, max_blocks]. Returns [B, Hq, D].
    """
    check_paged_decode(q, k_cache, v_cache, cache_seqlens, block_table)
    if not _native_decode_applies(q, k_cache, v_cache):
        return reference.paged_decode_attention(
            q, k_cache, v_cache, cache_seqlens, block_table, softmax_scale=softmax_scale
        )
    scale = check_softmax_scale(softmax_scale, q.shape[-1])
    q = q.contiguous()
    out = torch.empty_like(q)
    _cpu_kernels.paged_decode_attention(
        q.numpy(),
        k_cache.numpy(),
        v_cache.numpy(),
        cache_seqlens.contiguous().numpy(),
        block_table.contiguous().numpy(),
        scale,
        out.numpy(),
        torch.get_num_threads(),
    )
    return out

"""Rotary position embedding ("rotate half", GPT-NeoX / HF Llama layout) for q and k in one launch.

One program per token: it reads the token's cos/sin row once and rotates every query and key
head with it. q and k may be strided views (e.g. slices of a fused qkv projection); the results
are new contiguous tensors.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fastllm.kernels._checks import check_contiguous_last_dim, check_rotary
from fastllm.kernels._runtime import INTERPRETER, check_launchable, next_power_of_2


@triton.jit
def _rotate_heads(
    src_ptr, dst_ptr, stride_src_h, stride_dst_h, num_heads, cos, sin,
    HALF: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_HALF: tl.constexpr,
):
    """Rotate the heads of one token: src/dst point at the token's first head."""
    d = tl.arange(0, BLOCK_HALF)[None, :]
    for h0 in range(0, num_heads, BLOCK_H):
        h = h0 + tl.arange(0, BLOCK_H)[:, None]
        mask = (h < num_heads) & (d < HALF)
        src = src_ptr + h * stride_src_h + d
        x1 = tl.load(src, mask=mask, other=0.0)
        x2 = tl.load(src + HALF, mask=mask, other=0.0).to(tl.float32)
        out1 = x1.to(tl.float32) * cos - x2 * sin
        out2 = x2 * cos + x1.to(tl.float32) * sin
        dst = dst_ptr + h * stride_dst_h + d
        tl.store(dst, out1.to(x1.dtype), mask=mask)
        tl.store(dst + HALF, out2.to(x1.dtype), mask=mask)


@triton.jit
def _rotary_kernel(
    q_ptr, k_ptr, q_out_ptr, k_out_ptr, positions_ptr, cos_ptr, sin_ptr,
    num_q_heads, num_kv_heads, max_position,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_cos, stride_sin,
    HALF: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_HALF: tl.constexpr,
):
    token = tl.program_id(0).to(tl.int64)
    position = tl.load(positions_ptr + token).to(tl.int64)
    d = tl.arange(0, BLOCK_HALF)[None, :]
    # Out-of-range positions read nothing out of bounds (they rotate by angle 0); callers size
    # the cos/sin cache to the model's maximum position.
    in_range = (position >= 0) & (position < max_position)
    position = tl.where(in_range, position, 0)
    cos = tl.load(cos_ptr + position * stride_cos + d, mask=d < HALF, other=1.0).to(tl.float32)
    sin = tl.load(sin_ptr + position * stride_sin + d, mask=d < HALF, other=0.0).to(tl.float32)
    cos = tl.where(in_range, cos, 1.0)
    sin = tl.where(in_range, sin, 0.0)
    head_dim = 2 * HALF
    _rotate_heads(q_ptr + token * stride_qt, q_out_ptr + token * num_q_heads * head_dim, stride_qh, head_dim,
                  num_q_heads, cos, sin, HALF, BLOCK_H, BLOCK_HALF)
    _rotate_heads(k_ptr + token * stride_kt, k_out_ptr + token * num_kv_heads * head_dim, stride_kh, head_dim,
                  num_kv_heads, cos, sin, HALF, BLOCK_H, BLOCK_HALF)


def rotary_embedding(
    q: torch.Tensor,
    k: torch.Tensor,
    positions: torch.Tensor,
    cos_cache: torch.Tensor,
    sin_cache: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotary position embedding, "rotate half" (GPT-NeoX / HF Llama) layout.

    q: [T, Hq, D], k: [T, Hkv, D], positions: int [T] (each in [0, max_position)),
    cos_cache/sin_cache: [max_position, D // 2], float32. Returns new rotated (q, k).
    """
    check_rotary(q, k, positions, cos_cache, sin_cache)
    check_launchable(("q", q), ("k", k), ("positions", positions), ("cos_cache", cos_cache), ("sin_cache", sin_cache))
    check_contiguous_last_dim("positions", positions)
    head_dim = q.shape[-1]
    q_in = q if q.stride(-1) == 1 else q.contiguous()
    k_in = k if k.stride(-1) == 1 else k.contiguous()
    cos = cos_cache if cos_cache.stride(-1) == 1 else cos_cache.contiguous()
    sin = sin_cache if sin_cache.stride(-1) == 1 else sin_cache.contiguous()
    q_out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    k_out = torch.empty(k.shape, dtype=k.dtype, device=k.device)
    num_tokens = q.shape[0]
    if num_tokens == 0:
        return q_out, k_out
    half = head_dim // 2
    block_half = next_power_of_2(half)
    max_heads = max(q.shape[1], k.shape[1])
    block_h = min(next_power_of_2(max_heads), max(1, (256 if INTERPRETER else 2048) // block_half))
    num_warps = 1 if INTERPRETER else 4
    _rotary_kernel[(num_tokens,)](
        q_in, k_in, q_out, k_out, positions, cos, sin,
        q.shape[1], k.shape[1], cos.shape[0],
        q_in.stride(0), q_in.stride(1), k_in.stride(0), k_in.stride(1), cos.stride(0), sin.stride(0),
        HALF=half, BLOCK_H=block_h, BLOCK_HALF=block_half, num_warps=num_warps,
    )
    return q_out, k_out

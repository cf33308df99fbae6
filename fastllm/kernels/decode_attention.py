"""Paged decode attention: one new query token per sequence against its paged KV cache.

Grid: (sequences, KV heads, splits). A program takes all the query heads that share one KV
head (a GQA group, padded to 16 rows for the tensor cores), so each cached key and value is
read from memory once per group rather than once per query head. When sequences x KV heads are
too few to fill the GPU, each sequence's keys are cut into splits processed in parallel
(flash-decoding); a second small kernel merges the splits' partial outputs by their
log-sum-exp. Split sizes come from the block table's width, not from the lengths, so nothing is
read back from the GPU and the launch is CUDA-graph friendly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from fastllm.kernels._attention_common import kv_rows, online_softmax_update
from fastllm.kernels._checks import check_contiguous_last_dim, check_paged_decode, check_softmax_scale
from fastllm.kernels._runtime import (
    DOT_PRECISION,
    INTERPRETER,
    LOG2E,
    MAX_GRID_YZ,
    check_launchable,
    next_power_of_2,
    num_sms,
)

_MAX_SPLITS = 64


# These follow the block table's width, which changes from step to step (eager decode):
# specializing on them would recompile mid-run.
@triton.jit(do_not_specialize=["tokens_per_split", "kv_capacity", "stride_block_table"])
def _paged_decode_kernel(
    q_ptr, k_cache_ptr, v_cache_ptr, cache_seqlens_ptr, block_table_ptr,
    out_ptr, partial_out_ptr, partial_lse_ptr,
    scale_log2, tokens_per_split, kv_capacity, num_q_heads,
    stride_qb, stride_qh,
    stride_kb, stride_kt, stride_kh,
    stride_vb, stride_vt, stride_vh,
    stride_ob, stride_oh, stride_block_table,
    GROUP: tl.constexpr, BLOCK_G: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr, KV_BLOCK_SIZE: tl.constexpr, SPLIT: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    seq = tl.program_id(0).to(tl.int64)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    # Lengths past the block table's reach are clamped so that nothing is read out of bounds.
    seq_len = tl.minimum(tl.load(cache_seqlens_ptr + seq), kv_capacity)
    start = split * tokens_per_split
    end = tl.minimum(seq_len, start + tokens_per_split)

    offs_g = tl.arange(0, BLOCK_G)
    heads = kv_head * GROUP + offs_g
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d[None, :] < HEAD_DIM
    q_mask = (offs_g[:, None] < GROUP) & d_ok
    q = tl.load(q_ptr + seq * stride_qb + heads[:, None] * stride_qh + offs_d[None, :], mask=q_mask, other=0.0)

    acc = tl.zeros([BLOCK_G, BLOCK_D], tl.float32)
    row_max = tl.full([BLOCK_G], float("-inf"), tl.float32)
    row_sum = tl.zeros([BLOCK_G], tl.float32)
    table_row = block_table_ptr + seq * stride_block_table
    k_head = k_cache_ptr + kv_head * stride_kh
    v_head = v_cache_ptr + kv_head * stride_vh
    for n0 in range(start, end, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        valid = offs_n < end
        block, row = kv_rows(table_row, 0, offs_n, valid, KV_BLOCK_SIZE, True)
        kv_mask = valid[:, None] & d_ok
        k = tl.load(k_head + (block * stride_kb + row * stride_kt)[:, None] + offs_d[None, :], mask=kv_mask, other=0.0)
        v = tl.load(v_head + (block * stride_vb + row * stride_vt)[:, None] + offs_d[None, :], mask=kv_mask, other=0.0)
        scores = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * scale_log2
        scores = tl.where(valid[None, :], scores, float("-inf"))
        acc, row_max, row_sum = online_softmax_update(scores, v, acc, row_max, row_sum, DOT_PRECISION)

    # A split past the sequence's end (or a zero-length sequence) has row_sum 0: output 0, lse -inf.
    has_keys = row_sum > 0.0
    out = acc / tl.where(has_keys, row_sum, 1.0)[:, None]
    if SPLIT:
        num_splits = tl.num_programs(2)
        slot = (seq * num_q_heads + heads) * num_splits + split
        lse = tl.where(has_keys, row_max + tl.log2(tl.where(has_keys, row_sum, 1.0)), float("-inf"))
        tl.store(partial_lse_ptr + slot, lse, mask=offs_g < GROUP)
        tl.store(partial_out_ptr + slot[:, None] * HEAD_DIM + offs_d[None, :], out, mask=q_mask)
    else:
        out_ptrs = out_ptr + seq * stride_ob + heads[:, None] * stride_oh + offs_d[None, :]
        tl.store(out_ptrs, out.to(out_ptr.dtype.element_ty), mask=q_mask)


@triton.jit(do_not_specialize=["num_splits"])
def _merge_splits_kernel(
    partial_out_ptr, partial_lse_ptr, out_ptr, num_splits, num_q_heads, stride_ob, stride_oh,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_S: tl.constexpr,
):
    seq = tl.program_id(0).to(tl.int64)
    head = tl.program_id(1)
    offs_s = tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, BLOCK_D)
    s_ok = offs_s < num_splits
    slots = (seq * num_q_heads + head) * num_splits + offs_s
    lse = tl.load(partial_lse_ptr + slots, mask=s_ok, other=float("-inf"))
    # Every split of a zero-length sequence is empty (lse -inf): its weights are all 0, not NaN.
    lse_max = tl.max(lse, axis=0)
    weights = tl.exp2(lse - tl.where(lse_max == float("-inf"), 0.0, lse_max))
    total = tl.sum(weights, axis=0)
    weights = weights / tl.where(total == 0.0, 1.0, total)
    parts = tl.load(
        partial_out_ptr + slots[:, None] * HEAD_DIM + offs_d[None, :],
        mask=s_ok[:, None] & (offs_d[None, :] < HEAD_DIM), other=0.0,
    )
    out = tl.sum(weights[:, None] * parts, axis=0)
    tl.store(out_ptr + seq * stride_ob + head * stride_oh + offs_d, out.to(out_ptr.dtype.element_ty),
             mask=offs_d < HEAD_DIM)


@dataclass(frozen=True)
class _Config:
    block_n: int
    num_warps: int
    num_stages: int


def _config(block_d: int, dtype: torch.dtype) -> _Config:
    """Key tile per head dim: 16-32 KB of K and V per stage keeps enough bytes in flight on Hopper."""
    if INTERPRETER:
        return _Config(16, 1, 1)
    block_n = 128 if block_d <= 64 else 64 if block_d <= 128 else 32
    if dtype == torch.float32:
        block_n //= 2
    return _Config(block_n, 4, 3)


def num_splits_for(programs: int, kv_capacity: int, block_n: int, sms: int) -> int:
    """How many splits per sequence so that the grid fills the GPU about twice over.

    No split when sequences x KV heads already cover the SMs; otherwise enough to reach two
    programs per SM, with at least four key tiles per split so the merge stays cheap.
    """
    if programs >= sms:
        return 1
    wanted = triton.cdiv(2 * sms, programs)
    useful = max(1, kv_capacity // (4 * block_n))
    return max(1, min(wanted, useful, _MAX_SPLITS))


def paged_decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    cache_seqlens: torch.Tensor,
    block_table: torch.Tensor,
    *,
    softmax_scale: float | None = None,
) -> torch.Tensor:
    """Attention of one new query token per sequence over its paged KV cache.

    q: [B, Hq, D]; caches: [num_blocks, block_size, Hkv, D]; cache_seqlens: int32 [B] (>= 1,
    the new token included, at most block_table.shape[1] * block_size); block_table: int32
    [B, max_blocks]. Returns [B, Hq, D]. Lengths are not read back to the host: a length of 0
    gives zeros, and lengths are clamped to what the block-table row can address.
    """
    return _paged_decode(q, k_cache, v_cache, cache_seqlens, block_table, softmax_scale=softmax_scale)


def _paged_decode(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    cache_seqlens: torch.Tensor,
    block_table: torch.Tensor,
    *,
    softmax_scale: float | None,
    num_splits: int | None = None,
) -> torch.Tensor:
    """paged_decode_attention with the number of splits optionally forced (tests, benchmarks)."""
    check_paged_decode(q, k_cache, v_cache, cache_seqlens, block_table)
    scale = check_softmax_scale(softmax_scale, q.shape[-1])
    check_launchable(("q", q), ("k_cache", k_cache), ("v_cache", v_cache),
                     ("cache_seqlens", cache_seqlens), ("block_table", block_table))
    for name, t in (("cache_seqlens", cache_seqlens), ("block_table", block_table)):  # read with unit stride
        check_contiguous_last_dim(name, t)
    batch, num_q_heads, head_dim = q.shape
    num_kv_heads, kv_block_size = k_cache.shape[2], k_cache.shape[1]
    if num_q_heads > MAX_GRID_YZ:
        raise ValueError(f"at most {MAX_GRID_YZ} query heads per call, got {num_q_heads}")
    out = torch.empty_like(q)
    kv_capacity = block_table.shape[1] * kv_block_size
    if batch == 0 or kv_capacity == 0:
        return out.zero_()

    block_d = max(16, next_power_of_2(head_dim))
    config = _config(block_d, q.dtype)
    if num_splits is None:
        num_splits = num_splits_for(batch * num_kv_heads, kv_capacity, config.block_n, num_sms(q.device))
    elif isinstance(num_splits, bool) or not isinstance(num_splits, int) or not 1 <= num_splits <= _MAX_SPLITS:
        raise ValueError(f"num_splits must be an int in [1, {_MAX_SPLITS}], got {num_splits!r}")
    # Whole key tiles per split; the split count may shrink accordingly.
    tokens_per_split = triton.cdiv(triton.cdiv(kv_capacity, num_splits), config.block_n) * config.block_n
    num_splits = triton.cdiv(kv_capacity, tokens_per_split)
    split = num_splits > 1
    if split:
        partial_out = torch.empty((batch, num_q_heads, num_splits, head_dim), dtype=torch.float32, device=q.device)
        partial_lse = torch.empty((batch, num_q_heads, num_splits), dtype=torch.float32, device=q.device)
    else:
        partial_out = partial_lse = out  # unused
    group = num_q_heads // num_kv_heads
    _paged_decode_kernel[(batch, num_kv_heads, num_splits)](
        q, k_cache, v_cache, cache_seqlens, block_table,
        out, partial_out, partial_lse,
        scale * LOG2E, tokens_per_split, kv_capacity, num_q_heads,
        q.stride(0), q.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        out.stride(0), out.stride(1), block_table.stride(0),
        GROUP=group, BLOCK_G=max(16, next_power_of_2(group)), HEAD_DIM=head_dim, BLOCK_D=block_d,
        BLOCK_N=config.block_n, KV_BLOCK_SIZE=kv_block_size, SPLIT=split, DOT_PRECISION=DOT_PRECISION,
        num_warps=config.num_warps, num_stages=config.num_stages,
    )
    if split:
        _merge_splits_kernel[(batch, num_q_heads)](
            partial_out, partial_lse, out, num_splits, num_q_heads, out.stride(0), out.stride(1),
            HEAD_DIM=head_dim, BLOCK_D=block_d, BLOCK_S=max(2, next_power_of_2(num_splits)),
            num_warps=1 if INTERPRETER else 4,
        )
    return out

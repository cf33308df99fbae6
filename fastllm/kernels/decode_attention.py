"""Paged decode attention: one new query token per sequence against its paged KV cache.

Grid: (sequences, KV heads, splits). A program takes all the query heads that share one KV
head (a GQA group, padded to 16 rows for the tensor cores), so each cached key and value is
read from memory once per group rather than once per query head. When sequences x KV heads are
too few to fill the GPU, each sequence's keys are cut into splits processed in parallel
(flash-decoding); a second small kernel merges the splits' partial outputs by their
log-sum-exp. Split sizes come from the block table's width, not from the lengths, so nothing is
read back from the GPU and the launch is CUDA-graph friendly.

The split count changes as contexts grow (eager decode: the block table widens step by step), so
nothing compiled depends on it: the main kernel tells a split launch from an unsplit one at run
time (its third grid dimension) and the merge walks the splits in fixed-size chunks. Per model
shape and dtype there is one variant of each kernel, and the first launch compiles both.

With a sliding window (a compile-time switch: one variant per model layer kind) each sequence
starts at its window's first token: the blocks before it are never read, and splits that fall
wholly before it do nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from fastllm.kernels._attention_common import kv_rows, online_softmax_update
from fastllm.kernels._checks import check_contiguous_last_dim, check_paged_decode, check_softmax_scale, check_window
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
_MERGE_BLOCK_S = 16  # splits the merge reads per iteration


# These follow the block table's width, which changes from step to step (eager decode):
# specializing on them would recompile mid-run. The window is a model constant; SLIDING tells the
# kinds of layers apart.
@triton.jit(do_not_specialize=["tokens_per_split", "kv_capacity", "window", "stride_block_table"])
def _paged_decode_kernel(
    q_ptr, k_cache_ptr, v_cache_ptr, cache_seqlens_ptr, block_table_ptr,
    out_ptr, partial_out_ptr, partial_lse_ptr,
    scale_log2, tokens_per_split, kv_capacity, num_q_heads, window,
    stride_qb, stride_qh,
    stride_kb, stride_kt, stride_kh,
    stride_vb, stride_vt, stride_vh,
    stride_ob, stride_oh, stride_block_table,
    GROUP: tl.constexpr, BLOCK_G: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr, KV_BLOCK_SIZE: tl.constexpr, SLIDING: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    seq = tl.program_id(0).to(tl.int64)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    # Lengths past the block table's reach are clamped so that nothing is read out of bounds.
    seq_len = tl.minimum(tl.load(cache_seqlens_ptr + seq), kv_capacity)
    start = split * tokens_per_split
    end = tl.minimum(seq_len, start + tokens_per_split)
    if SLIDING:  # the query sees its last `window` tokens only
        start = tl.maximum(start, seq_len - window)

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
    num_splits = tl.num_programs(2)
    if num_splits > 1:  # the same for every program of a launch: no divergence
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
    """Merge one (sequence, query head)'s splits, BLOCK_S at a time, with a running log-sum-exp."""
    seq = tl.program_id(0).to(tl.int64)
    head = tl.program_id(1)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    first_slot = (seq * num_q_heads + head) * num_splits
    acc = tl.zeros([BLOCK_D], tl.float32)
    running_max = tl.full([], float("-inf"), tl.float32)
    total = tl.zeros([], tl.float32)
    for s0 in range(0, num_splits, BLOCK_S):
        offs_s = s0 + tl.arange(0, BLOCK_S)
        s_ok = offs_s < num_splits
        lse = tl.load(partial_lse_ptr + first_slot + offs_s, mask=s_ok, other=float("-inf"))
        new_max = tl.maximum(running_max, tl.max(lse, axis=0))
        # Empty splits (and every split of a zero-length sequence) have lse -inf: weight 0, not NaN.
        shift = tl.where(new_max == float("-inf"), 0.0, new_max)
        alpha = tl.exp2(running_max - shift)
        weights = tl.exp2(lse - shift)
        parts = tl.load(
            partial_out_ptr + (first_slot + offs_s)[:, None] * HEAD_DIM + offs_d[None, :],
            mask=s_ok[:, None] & d_ok[None, :], other=0.0,
        )
        acc = acc * alpha + tl.sum(weights[:, None] * parts, axis=0)
        total = total * alpha + tl.sum(weights, axis=0)
        running_max = new_max
    out = acc / tl.where(total == 0.0, 1.0, total)
    tl.store(out_ptr + seq * stride_ob + head * stride_oh + offs_d, out.to(out_ptr.dtype.element_ty), mask=d_ok)


@dataclass(frozen=True)
class _Config:
    block_n: int
    num_warps: int
    num_stages: int


def _config(block_d: int, dtype: torch.dtype) -> _Config:
    """Key tile per head dim: 16-32 KB of K and V per stage keeps enough bytes in flight on Hopper.

    float32 (IEEE dots on the FMA units, operands in registers) halves the tile and spreads it
    over 8 warps: with 4, ptxas spills at head dim 128 for sm_90.
    """
    if INTERPRETER:
        return _Config(16, 1, 1)
    block_n = 128 if block_d <= 64 else 64 if block_d <= 128 else 32
    if dtype == torch.float32:
        return _Config(block_n // 2, 8, 3)
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


def _split_plan(
    q: torch.Tensor, k_cache: torch.Tensor, block_table: torch.Tensor, num_splits: int | None
) -> tuple[int, int]:
    """(tokens per split, splits) of a launch: `num_splits` (None: num_splits_for's choice), made
    whole key tiles per split, which may lower the count."""
    batch, _, head_dim = q.shape
    kv_capacity = block_table.shape[1] * k_cache.shape[1]
    block_n = _config(max(16, next_power_of_2(head_dim)), q.dtype).block_n
    if num_splits is None:
        num_splits = num_splits_for(batch * k_cache.shape[2], kv_capacity, block_n, num_sms(q.device))
    tokens_per_split = triton.cdiv(triton.cdiv(kv_capacity, num_splits), block_n) * block_n
    return tokens_per_split, triton.cdiv(kv_capacity, tokens_per_split)


def decode_splits(q: torch.Tensor, k_cache: torch.Tensor, block_table: torch.Tensor) -> int:
    """How many splits paged_decode_attention cuts each sequence into for these inputs (1: unsplit)."""
    return _split_plan(q, k_cache, block_table, None)[1]


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
    """Attention of one new query token per sequence over its paged KV cache.

    q: [B, Hq, D]; caches: [num_blocks, block_size, Hkv, D]; cache_seqlens: int32 [B] (>= 1,
    the new token included, at most block_table.shape[1] * block_size); block_table: int32
    [B, max_blocks]. `window`: each query sees only its sequence's last `window` tokens (None =
    all). Returns [B, Hq, D]. Lengths are not read back to the host: a length of 0 gives zeros,
    and lengths are clamped to what the block-table row can address.
    """
    return _paged_decode(q, k_cache, v_cache, cache_seqlens, block_table, softmax_scale=softmax_scale, window=window)


def _paged_decode(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    cache_seqlens: torch.Tensor,
    block_table: torch.Tensor,
    *,
    softmax_scale: float | None,
    window: int | None = None,
    num_splits: int | None = None,
) -> torch.Tensor:
    """paged_decode_attention with the number of splits optionally forced (tests, benchmarks)."""
    check_paged_decode(q, k_cache, v_cache, cache_seqlens, block_table)
    scale = check_softmax_scale(softmax_scale, q.shape[-1])
    window = check_window(window)
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
    if num_splits is not None and (
        isinstance(num_splits, bool) or not isinstance(num_splits, int) or not 1 <= num_splits <= _MAX_SPLITS
    ):
        raise ValueError(f"num_splits must be an int in [1, {_MAX_SPLITS}], got {num_splits!r}")
    tokens_per_split, num_splits = _split_plan(q, k_cache, block_table, num_splits)
    split = num_splits > 1
    # float32 partial buffers even when unused (one element then): a pointer of another type would
    # compile another variant of the kernel.
    partials = (batch, num_q_heads, num_splits) if split else (1, 1, 1)
    partial_lse = torch.empty(partials, dtype=torch.float32, device=q.device)
    partial_out = torch.empty((*partials, head_dim), dtype=torch.float32, device=q.device)
    _warm_up_merge(out, block_d)
    group = num_q_heads // num_kv_heads
    _paged_decode_kernel[(batch, num_kv_heads, num_splits)](
        q, k_cache, v_cache, cache_seqlens, block_table,
        out, partial_out, partial_lse,
        scale * LOG2E, tokens_per_split, kv_capacity, num_q_heads, window or 0,
        q.stride(0), q.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        out.stride(0), out.stride(1), block_table.stride(0),
        GROUP=group, BLOCK_G=max(16, next_power_of_2(group)), HEAD_DIM=head_dim, BLOCK_D=block_d,
        BLOCK_N=config.block_n, KV_BLOCK_SIZE=kv_block_size, SLIDING=window is not None,
        DOT_PRECISION=DOT_PRECISION,
        num_warps=config.num_warps, num_stages=config.num_stages,
    )
    if split:
        _merge_splits(partial_out, partial_lse, out, num_splits, block_d)
    return out


def _merge_splits(
    partial_out: torch.Tensor, partial_lse: torch.Tensor, out: torch.Tensor, num_splits: int, block_d: int
) -> None:
    batch, num_q_heads, head_dim = out.shape
    _merge_splits_kernel[(batch, num_q_heads)](
        partial_out, partial_lse, out, num_splits, num_q_heads, out.stride(0), out.stride(1),
        HEAD_DIM=head_dim, BLOCK_D=block_d, BLOCK_S=_MERGE_BLOCK_S, num_warps=1 if INTERPRETER else 4,
    )


# (device, dtype, query heads, head dim, output strides) of the merges already compiled.
_merged_shapes: set[tuple[object, ...]] = set()


def _warm_up_merge(out: torch.Tensor, block_d: int) -> None:
    """Compile the merge at a shape's first decode launch, split or not: else a context growing
    past its first split would compile it mid-run. It merges one split of zeros into out[0],
    which the decode kernel then overwrites. Never while a CUDA graph is being captured (the
    capture would keep it; the engine captures only after an eager warm-up step anyway)."""
    _, num_q_heads, head_dim = out.shape
    key = (out.device, out.dtype, num_q_heads, head_dim, out.stride(0), out.stride(1))
    if key in _merged_shapes or (out.is_cuda and torch.cuda.is_current_stream_capturing()):
        return
    _merged_shapes.add(key)
    partial_lse = torch.zeros((1, num_q_heads, 1), dtype=torch.float32, device=out.device)
    partial_out = torch.zeros((1, num_q_heads, 1, head_dim), dtype=torch.float32, device=out.device)
    _merge_splits(partial_out, partial_lse, out[:1], 1, block_d)

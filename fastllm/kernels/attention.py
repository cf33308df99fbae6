"""Flash-attention forward over packed variable-length sequences (prefill and chunked prefill).

Grid: (query tiles of the longest sequence, query heads, sequences). A program owns BLOCK_M
queries of one head of one sequence and streams that sequence's keys and values in BLOCK_N
tiles with an online softmax, so scores never touch memory. Keys come either packed like the
queries or from the paged KV cache through the sequence's block-table row (prefix-cache hits,
chunked prefill). The causal mask is aligned bottom-right; tiles entirely below the diagonal
skip the mask arithmetic, and tiles entirely above it are never visited. With a sliding window,
tiles entirely before every row's window are never visited either, and those across its lower
edge are masked.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from fastllm.kernels._attention_common import kv_rows, online_softmax_update
from fastllm.kernels._checks import (
    check_contiguous_last_dim,
    check_cu_seqlens,
    check_softmax_scale,
    check_varlen_attention,
    check_window,
)
from fastllm.kernels._runtime import (
    DOT_PRECISION,
    INTERPRETER,
    LOG2E,
    MAX_GRID_YZ,
    check_launchable,
    next_power_of_2,
)


@triton.jit
def _attend_tile(
    q, acc, row_max, row_sum, start, offs_m, offs_d, d_ok, diag, window, end,
    k_head, v_head, table_row, k_start, stride_kb, stride_kt, stride_vb, stride_vt, scale_log2,
    BLOCK_N: tl.constexpr, KV_BLOCK_SIZE: tl.constexpr, PAGED: tl.constexpr, MASKED: tl.constexpr,
    CAUSAL: tl.constexpr, SLIDING: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """Fold the keys start .. start + BLOCK_N into the online softmax: MASKED tiles check every
    key against the end, the causal diagonal and the window; the others are seen by every row."""
    offs_n = start + tl.arange(0, BLOCK_N)
    valid = offs_n < end
    block, row = kv_rows(table_row, k_start, offs_n, valid, KV_BLOCK_SIZE, PAGED)
    kv_mask = (valid[:, None] & d_ok) if MASKED else d_ok
    k = tl.load(k_head + (block * stride_kb + row * stride_kt)[:, None] + offs_d[None, :], mask=kv_mask, other=0.0)
    v = tl.load(v_head + (block * stride_vb + row * stride_vt)[:, None] + offs_d[None, :], mask=kv_mask, other=0.0)
    scores = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * scale_log2
    if MASKED:
        visible = valid[None, :]
        if CAUSAL:
            visible = visible & (offs_n[None, :] <= offs_m[:, None] + diag)
        if SLIDING:
            visible = visible & (offs_n[None, :] > offs_m[:, None] + diag - window)
        scores = tl.where(visible, scores, float("-inf"))
    return online_softmax_update(scores, v, acc, row_max, row_sum, DOT_PRECISION)


# kv_capacity (the packed key count without a block table) and the block table's row stride
# (its width) change from step to step: specializing on them would recompile mid-run. The window
# is a model constant; SLIDING tells the kinds of layers apart.
@triton.jit(do_not_specialize=["kv_capacity", "window", "stride_block_table"])
def _varlen_attention_kernel(
    q_ptr, k_ptr, v_ptr, out_ptr, cu_seqlens_q_ptr, cu_seqlens_k_ptr, block_table_ptr,
    scale_log2, kv_capacity, window,
    stride_qt, stride_qh,
    stride_kb, stride_kt, stride_kh,
    stride_vb, stride_vt, stride_vh,
    stride_ot, stride_oh, stride_block_table,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, KV_BLOCK_SIZE: tl.constexpr,
    CAUSAL: tl.constexpr, SLIDING: tl.constexpr, PAGED: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    m_block = tl.program_id(0)
    head = tl.program_id(1)
    seq = tl.program_id(2)
    q_start = tl.load(cu_seqlens_q_ptr + seq)
    q_len = tl.load(cu_seqlens_q_ptr + seq + 1) - q_start
    # The grid is sized for the longest sequence: tiles past a shorter one's end have no work.
    if m_block * BLOCK_M < q_len:
        k_start = tl.load(cu_seqlens_k_ptr + seq)
        k_len = tl.load(cu_seqlens_k_ptr + seq + 1) - k_start
        kv_head = head // GROUP

        offs_m = m_block * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, BLOCK_D)
        d_ok = offs_d[None, :] < HEAD_DIM
        q_rows = (q_start + offs_m).to(tl.int64)
        q = tl.load(
            q_ptr + q_rows[:, None] * stride_qt + head * stride_qh + offs_d[None, :],
            mask=(offs_m[:, None] < q_len) & d_ok, other=0.0,
        )

        # Query i sees keys j <= i + diag (bottom-right alignment), and with a sliding window
        # only those with j > i + diag - window. Tiles from `start` on hold keys some row of this
        # tile sees; every row sees the keys from `full_start` to `full_end`; no row sees those
        # from `end` on. Tiles outside [full_start, full_end) are masked.
        diag = k_len - q_len
        last_row = tl.minimum(m_block * BLOCK_M + BLOCK_M, q_len) - 1
        if CAUSAL:
            full_end = tl.maximum(m_block * BLOCK_M + diag + 1, 0)
            end = tl.minimum(tl.maximum(last_row + diag + 1, 0), k_len)
        else:
            full_end = k_len
            end = k_len
        end = tl.minimum(end, kv_capacity)
        full_end = tl.minimum(full_end, end) // BLOCK_N * BLOCK_N
        start = 0
        full_start = 0
        if SLIDING:
            start = tl.maximum(m_block * BLOCK_M + diag - window + 1, 0) // BLOCK_N * BLOCK_N
            window_full = tl.cdiv(tl.maximum(last_row + diag - window + 1, 0), BLOCK_N) * BLOCK_N
            full_start = tl.minimum(tl.maximum(window_full, start), full_end)

        acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
        row_max = tl.full([BLOCK_M], float("-inf"), tl.float32)
        row_sum = tl.zeros([BLOCK_M], tl.float32)
        table_row = block_table_ptr + seq.to(tl.int64) * stride_block_table
        k_head = k_ptr + kv_head * stride_kh
        v_head = v_ptr + kv_head * stride_vh

        for tile in range(start, full_start, BLOCK_N):  # the window's lower edge
            acc, row_max, row_sum = _attend_tile(
                q, acc, row_max, row_sum, tile, offs_m, offs_d, d_ok, diag, window, end,
                k_head, v_head, table_row, k_start, stride_kb, stride_kt, stride_vb, stride_vt, scale_log2,
                BLOCK_N, KV_BLOCK_SIZE, PAGED, True, CAUSAL, SLIDING, DOT_PRECISION,
            )
        for tile in range(full_start, full_end, BLOCK_N):
            acc, row_max, row_sum = _attend_tile(
                q, acc, row_max, row_sum, tile, offs_m, offs_d, d_ok, diag, window, end,
                k_head, v_head, table_row, k_start, stride_kb, stride_kt, stride_vb, stride_vt, scale_log2,
                BLOCK_N, KV_BLOCK_SIZE, PAGED, False, CAUSAL, SLIDING, DOT_PRECISION,
            )
        for tile in range(full_end, end, BLOCK_N):  # the causal diagonal and the sequence's end
            acc, row_max, row_sum = _attend_tile(
                q, acc, row_max, row_sum, tile, offs_m, offs_d, d_ok, diag, window, end,
                k_head, v_head, table_row, k_start, stride_kb, stride_kt, stride_vb, stride_vt, scale_log2,
                BLOCK_N, KV_BLOCK_SIZE, PAGED, True, CAUSAL, SLIDING, DOT_PRECISION,
            )

        # Queries that see no key at all (only when q_len > k_len) produce zeros, like flash-attention.
        out = acc / tl.where(row_sum == 0.0, 1.0, row_sum)[:, None]
        tl.store(
            out_ptr + q_rows[:, None] * stride_ot + head * stride_oh + offs_d[None, :],
            out.to(out_ptr.dtype.element_ty), mask=(offs_m[:, None] < q_len) & d_ok,
        )


@dataclass(frozen=True)
class _Config:
    block_m: int
    block_n: int
    num_warps: int
    num_stages: int


def _config(block_d: int, dtype: torch.dtype) -> _Config:
    """Tile sizes per head dim for Hopper (FlashAttention-2 / Triton-tutorial shapes).

    float32 takes IEEE dots (see DOT_PRECISION), which run on the FMA units with both operands in
    registers: smaller tiles over 8 warps, the largest that ptxas fits for sm_90 without spilling.
    The interpreter gets 16 x 16 tiles: tile edges then fall on the KV-cache block sizes tests use.
    """
    if INTERPRETER:
        return _Config(16, 16, 1, 1)
    if dtype == torch.float32:
        return _Config(64, 32, 8, 2) if block_d <= 64 else _Config(32, 16, 8, 2)
    if block_d <= 64:
        return _Config(128, 64, 4, 3)
    if block_d <= 128:
        return _Config(128, 64, 8, 3)
    return _Config(64, 32, 8, 2)


def _check_hint(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a non-negative int or None, got {value!r}")
    return value


def varlen_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    *,
    causal: bool = True,
    softmax_scale: float | None = None,
    block_table: torch.Tensor | None = None,
    max_seqlen_q: int | None = None,
    max_seqlen_k: int | None = None,
    window: int | None = None,
) -> torch.Tensor:
    """Attention over packed variable-length sequences (flash-attention's varlen conventions).

    q: [Tq, Hq, D]; k, v: [Tk, Hkv, D], or with `block_table` (int32 [B, max_blocks]) the paged
    caches [num_blocks, block_size, Hkv, D]; cu_seqlens_q/k: int32 [B + 1] cumulative lengths
    starting at 0 (with a block table, cu_seqlens_k's differences are each sequence's cached
    length, new tokens included). GQA when Hq is a multiple of Hkv. Causal masking is aligned
    bottom-right: query i of a sequence with lq queries and lk keys sees keys j <= i + lk - lq;
    with a `window` (causal only) just the last `window` of them, j > i + lk - lq - window.

    `max_seqlen_q` sizes the grid. When it is None it is computed on the host, which also
    validates cu_seqlens (one device sync); callers that pass it (the engine, CUDA graphs)
    vouch for cu_seqlens and for max_seqlen_q being at least the longest query length.
    `max_seqlen_k` is accepted for flash-attention compatibility and only type-checked.
    """
    check_varlen_attention(q, k, v, cu_seqlens_q, cu_seqlens_k, block_table)
    scale = check_softmax_scale(softmax_scale, q.shape[-1])
    window = check_window(window, causal)
    paged = block_table is not None
    index_tensors = [("cu_seqlens_q", cu_seqlens_q), ("cu_seqlens_k", cu_seqlens_k)]
    if paged:
        index_tensors.append(("block_table", block_table))
    check_launchable(("q", q), ("k", k), ("v", v), *index_tensors)
    for name, t in index_tensors:  # read with unit stride (a block table along its rows)
        check_contiguous_last_dim(name, t)
    if max_seqlen_k is not None:
        _check_hint("max_seqlen_k", max_seqlen_k)
    kv_capacity = block_table.shape[1] * k.shape[1] if paged else k.shape[0]
    if max_seqlen_q is None:
        starts_q, _ = check_cu_seqlens(
            cu_seqlens_q, cu_seqlens_k, q.shape[0],
            num_k_tokens=None if paged else k.shape[0], kv_capacity=kv_capacity if paged else None,
        )
        max_seqlen_q = max(b - a for a, b in zip(starts_q, starts_q[1:]))
    else:
        _check_hint("max_seqlen_q", max_seqlen_q)

    num_tokens, num_q_heads, head_dim = q.shape
    num_kv_heads = k.shape[-2]
    batch = cu_seqlens_q.shape[0] - 1
    if batch > MAX_GRID_YZ or num_q_heads > MAX_GRID_YZ:
        raise ValueError(f"at most {MAX_GRID_YZ} sequences and query heads per call, got {batch} and {num_q_heads}")
    out = torch.empty_like(q)
    if num_tokens == 0 or max_seqlen_q == 0:
        return out

    block_d = max(16, next_power_of_2(head_dim))
    config = _config(block_d, q.dtype)
    if paged:
        stride_kb, stride_kt, stride_kh = k.stride(0), k.stride(1), k.stride(2)
        stride_vb, stride_vt, stride_vh = v.stride(0), v.stride(1), v.stride(2)
        table, stride_table, kv_block_size = block_table, block_table.stride(0), k.shape[1]
    else:
        stride_kb, stride_kt, stride_kh = 0, k.stride(0), k.stride(1)
        stride_vb, stride_vt, stride_vh = 0, v.stride(0), v.stride(1)
        table, stride_table, kv_block_size = cu_seqlens_k, 0, 1  # no table: any valid pointer
    grid = (triton.cdiv(max_seqlen_q, config.block_m), num_q_heads, batch)
    _varlen_attention_kernel[grid](
        q, k, v, out, cu_seqlens_q, cu_seqlens_k, table,
        scale * LOG2E, kv_capacity, window or 0,
        q.stride(0), q.stride(1),
        stride_kb, stride_kt, stride_kh,
        stride_vb, stride_vt, stride_vh,
        out.stride(0), out.stride(1), stride_table,
        GROUP=num_q_heads // num_kv_heads, HEAD_DIM=head_dim, BLOCK_D=block_d,
        BLOCK_M=config.block_m, BLOCK_N=config.block_n, KV_BLOCK_SIZE=kv_block_size,
        CAUSAL=bool(causal), SLIDING=window is not None, PAGED=paged, DOT_PRECISION=DOT_PRECISION,
        num_warps=config.num_warps, num_stages=config.num_stages,
    )
    return out

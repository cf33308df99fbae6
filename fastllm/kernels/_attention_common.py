"""Triton building blocks shared by the prefill (varlen) and decode attention kernels."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def kv_rows(block_table_row_ptr, seq_start, offs_n, valid, KV_BLOCK_SIZE: tl.constexpr, PAGED: tl.constexpr):
    """Where tokens `offs_n` of one sequence live: (cache block, row), both int64 [BLOCK_N].

    Paged: the block comes from the sequence's block-table row and the row is the offset inside
    the block. Contiguous: block 0 and the row is the token's index in the packed tensor (callers
    pass a block stride of 0). Invalid tokens read nothing from the table (no read past the
    row): they get block 0, and callers mask their key/value loads.
    """
    if PAGED:
        block = tl.load(block_table_row_ptr + offs_n // KV_BLOCK_SIZE, mask=valid, other=0).to(tl.int64)
        return block, (offs_n % KV_BLOCK_SIZE).to(tl.int64)
    else:
        return tl.zeros_like(offs_n).to(tl.int64), (seq_start + offs_n).to(tl.int64)


@triton.jit
def online_softmax_update(scores, v, acc, row_max, row_sum, DOT_PRECISION: tl.constexpr):
    """Fold one tile of keys into the running (acc, row_max, row_sum) of flash attention.

    `scores` [M, N] are already multiplied by softmax_scale * log2(e) (so exp2 is the softmax's
    exp) and masked with -inf. Rows that have seen no key yet keep a -inf max; they are
    shifted by 0 instead, so that no NaN appears and their (zero) sums stay zero.
    """
    new_max = tl.maximum(row_max, tl.max(scores, axis=1))
    shift = tl.where(new_max == float("-inf"), 0.0, new_max)
    alpha = tl.exp2(row_max - shift)
    p = tl.exp2(scores - shift[:, None])
    row_sum = row_sum * alpha + tl.sum(p, axis=1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
    return acc, new_max, row_sum

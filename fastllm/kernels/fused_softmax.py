"""Fused softmax: one read and one write of the tensor when a row fits in one tile.

Rows are processed as 2D tiles [BLOCK_R rows, BLOCK_N columns], so short rows still give each
program enough work. A row longer than one tile is handled with an online max/sum pass followed
by a normalizing pass. Softmax along a dimension other than the last needs no transpose: the
kernel walks columns with a stride, and neighbouring rows, being neighbours in memory, keep the
accesses coalesced.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fastllm.kernels._checks import FLOAT_DTYPES, check_tensor
from fastllm.kernels._runtime import INTERPRETER, check_launchable, next_power_of_2

# Longest row kept whole in registers; longer rows take the two-pass path. The interpreter uses
# small tiles so that tests exercise the multi-tile path on small inputs.
_MAX_BLOCK_N = 256 if INTERPRETER else 16384
_TILE_ELEMENTS = 1024 if INTERPRETER else 4096


@triton.jit(do_not_specialize=["n_rows"])
def _softmax_kernel(
    x_ptr,
    out_ptr,
    n_rows,
    n_cols,
    inner,  # product of the sizes after the softmax dim: the column stride of a row
    BLOCK_R: tl.constexpr,
    BLOCK_N: tl.constexpr,
    SINGLE_TILE: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_ok = rows < n_rows
    # Rows past the end recompute the last row (valid memory, no NaN from all-masked rows) and
    # are dropped at the store.
    rows = tl.minimum(rows, n_rows - 1).to(tl.int64)
    row_base = (rows // inner) * n_cols * inner + rows % inner
    cols = tl.arange(0, BLOCK_N)

    if SINGLE_TILE:
        mask = cols[None, :] < n_cols
        offs = row_base[:, None] + cols[None, :].to(tl.int64) * inner
        x = tl.load(x_ptr + offs, mask=mask, other=float("-inf")).to(tl.float32)
        e = tl.exp(x - tl.max(x, axis=1)[:, None])
        y = e / tl.sum(e, axis=1)[:, None]
        tl.store(out_ptr + offs, y.to(out_ptr.dtype.element_ty), mask=mask & row_ok[:, None])
    else:
        row_max = tl.full([BLOCK_R], float("-inf"), tl.float32)
        row_sum = tl.zeros([BLOCK_R], tl.float32)
        for start in range(0, n_cols, BLOCK_N):
            c = start + cols
            offs = row_base[:, None] + c[None, :].to(tl.int64) * inner
            x = tl.load(x_ptr + offs, mask=c[None, :] < n_cols, other=float("-inf")).to(tl.float32)
            new_max = tl.maximum(row_max, tl.max(x, axis=1))
            # Rows that have seen only -inf so far are shifted by 0, not by -inf (-inf - -inf is NaN).
            shift = tl.where(new_max == float("-inf"), 0.0, new_max)
            row_sum = row_sum * tl.exp(row_max - shift) + tl.sum(tl.exp(x - shift[:, None]), axis=1)
            row_max = new_max
        inv_sum = 1.0 / row_sum
        for start in range(0, n_cols, BLOCK_N):
            c = start + cols
            mask = c[None, :] < n_cols
            offs = row_base[:, None] + c[None, :].to(tl.int64) * inner
            x = tl.load(x_ptr + offs, mask=mask, other=float("-inf")).to(tl.float32)
            y = tl.exp(x - row_max[:, None]) * inv_sum[:, None]
            tl.store(out_ptr + offs, y.to(out_ptr.dtype.element_ty), mask=mask & row_ok[:, None])


def softmax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Softmax along `dim`, computed in float32, returned in x's dtype (fp16, bf16 or fp32)."""
    check_tensor("x", x, dtypes=FLOAT_DTYPES)
    check_launchable(("x", x))
    ndim = max(x.dim(), 1)
    if isinstance(dim, bool) or not isinstance(dim, int) or not -ndim <= dim < ndim:
        raise ValueError(f"dim must be an int in [{-ndim}, {ndim}), got {dim!r}")
    x = x.contiguous()
    out = torch.empty_like(x)
    if x.numel() == 0:
        return out
    shape = x.shape if x.dim() else (1,)
    dim %= ndim
    n_cols = shape[dim]
    inner = x.numel() // (n_cols * (shape[:dim].numel()))
    n_rows = x.numel() // n_cols

    if inner == 1:
        block_n = min(next_power_of_2(n_cols), _MAX_BLOCK_N)
        block_r = min(next_power_of_2(n_rows), max(1, _TILE_ELEMENTS // block_n))
    else:
        # Strided rows: neighbouring rows are neighbours in memory, so a tile takes several.
        block_r = min(16, next_power_of_2(n_rows))
        block_n = min(next_power_of_2(n_cols), _TILE_ELEMENTS // block_r)
    tile = block_r * block_n
    num_warps = 1 if INTERPRETER else (4 if tile <= 2048 else 8 if tile <= 8192 else 16)
    grid = (triton.cdiv(n_rows, block_r),)
    _softmax_kernel[grid](
        x, out, n_rows, n_cols, inner,
        BLOCK_R=block_r, BLOCK_N=block_n, SINGLE_TILE=n_cols <= block_n, num_warps=num_warps,
    )
    return out

"""SwiGLU activation fused with its multiply: [..., 2I] = [gate | up] -> silu(gate) * up."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fastllm.kernels._checks import check_silu_and_mul
from fastllm.kernels._runtime import INTERPRETER, as_rows, check_launchable, next_power_of_2

_MAX_BLOCK = 256 if INTERPRETER else 2048


@triton.jit
def _silu_and_mul_kernel(x_ptr, out_ptr, n_cols, stride_x, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < n_cols
    gate = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(x_ptr + row * stride_x + n_cols + cols, mask=mask, other=0.0)
    # Rounded twice, like PyTorch's `F.silu(gate) * up` in the activation dtype.
    activated = (gate / (1.0 + tl.exp(-gate))).to(up.dtype).to(tl.float32)
    tl.store(out_ptr + row * n_cols + cols, (activated * up.to(tl.float32)).to(up.dtype), mask=mask)


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """SwiGLU activation: x is [..., 2 * I] = [gate | up]; returns silu(gate) * up, [..., I]."""
    check_silu_and_mul(x)
    check_launchable(("x", x))
    n_cols = x.shape[-1] // 2
    out = torch.empty((*x.shape[:-1], n_cols), dtype=x.dtype, device=x.device)
    if out.numel() == 0:
        return out
    rows = as_rows(x)
    block = min(next_power_of_2(n_cols), _MAX_BLOCK)
    num_warps = 1 if INTERPRETER else min(8, max(1, block // 256))
    grid = (rows.shape[0], triton.cdiv(n_cols, block))
    _silu_and_mul_kernel[grid](rows, out, n_cols, rows.stride(0), BLOCK=block, num_warps=num_warps)
    return out

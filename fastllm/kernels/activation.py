"""Gated activations fused with their multiply: [..., 2I] = [gate | up] -> act(gate) * up.

SwiGLU (silu) for Llama-family models, GeGLU (tanh-approximated gelu) for Gemma; one kernel, the
activation a compile-time switch.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fastllm.kernels._checks import check_silu_and_mul
from fastllm.kernels._runtime import INTERPRETER, as_rows, check_launchable, next_power_of_2

_MAX_BLOCK = 256 if INTERPRETER else 2048


_SQRT_2_OVER_PI = 0.7978845608028654


@triton.jit
def _gated_kernel(x_ptr, out_ptr, n_cols, stride_x, stride_out, GELU: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < n_cols
    gate = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(x_ptr + row * stride_x + n_cols + cols, mask=mask, other=0.0)
    if GELU:
        # 0.5 g (1 + tanh(u)) written as g * sigmoid(2u): no tanh in Triton, and no cancellation
        # where tanh(u) ~ -1.
        inner = 2.0 * _SQRT_2_OVER_PI * (gate + 0.044715 * gate * gate * gate)
        activated = gate / (1.0 + tl.exp(-inner))
    else:
        activated = gate / (1.0 + tl.exp(-gate))
    # Rounded twice, like PyTorch's `F.silu(gate) * up` in the activation dtype.
    activated = activated.to(up.dtype).to(tl.float32)
    tl.store(out_ptr + row * stride_out + cols, (activated * up.to(tl.float32)).to(up.dtype), mask=mask)


def silu_and_mul(x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """SwiGLU activation: x is [..., 2 * I] = [gate | up]; returns silu(gate) * up, [..., I]
    (written into `out` when given: see check_silu_and_mul)."""
    return _gated(x, out, gelu=False)


def gelu_tanh_and_mul(x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """GeGLU activation (Gemma): x is [..., 2 * I] = [gate | up]; returns gelu_tanh(gate) * up,
    [..., I] (written into `out` when given)."""
    return _gated(x, out, gelu=True)


def _gated(x: torch.Tensor, out: torch.Tensor | None, *, gelu: bool) -> torch.Tensor:
    check_silu_and_mul(x, out)
    check_launchable(("x", x))
    n_cols = x.shape[-1] // 2
    if out is None:
        out = torch.empty((*x.shape[:-1], n_cols), dtype=x.dtype, device=x.device)
    if out.numel() == 0:
        return out
    rows, out_rows = as_rows(x), as_rows(out)
    block = min(next_power_of_2(n_cols), _MAX_BLOCK)
    num_warps = 1 if INTERPRETER else min(8, max(1, block // 256))
    grid = (rows.shape[0], triton.cdiv(n_cols, block))
    _gated_kernel[grid](rows, out_rows, n_cols, rows.stride(0), out_rows.stride(0), GELU=gelu, BLOCK=block,
                        num_warps=num_warps)
    return out

"""RMSNorm, optionally fused with the residual add that precedes it in every decoder layer.

One program normalizes one row held whole in registers. Rounding follows HF exactly so that the
Triton and PyTorch backends produce the same greedy tokens: normalize in float32, then a weight
of the activation dtype scales after the cast to it (Llama), a float32 weight before (Gemma's
1 + w kept in float32).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fastllm.kernels._checks import check_rms_norm, check_same_dtype
from fastllm.kernels._runtime import INTERPRETER, as_rows, check_launchable, next_power_of_2

# A row is held in registers; wider rows than this are not a Llama hidden size.
_MAX_HIDDEN = 65536


@triton.jit
def _rms_norm_kernel(
    x_ptr,
    residual_ptr,
    weight_ptr,
    out_ptr,
    summed_ptr,
    n_cols,
    eps,
    stride_x,
    stride_residual,
    HAS_RESIDUAL: tl.constexpr,
    SCALE_BEFORE_CAST: tl.constexpr,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    x = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0)
    if HAS_RESIDUAL:
        residual = tl.load(residual_ptr + row * stride_residual + cols, mask=mask, other=0.0)
        # Rounded to the activation dtype, as `x + residual` is in PyTorch.
        x = (x.to(tl.float32) + residual.to(tl.float32)).to(x_ptr.dtype.element_ty)
        tl.store(summed_ptr + row * n_cols + cols, x, mask=mask)
    xf = x.to(tl.float32)
    rstd = tl.rsqrt(tl.sum(xf * xf, axis=0) / n_cols + eps)
    normed = xf * rstd
    if not SCALE_BEFORE_CAST:
        normed = normed.to(x_ptr.dtype.element_ty).to(tl.float32)
    weight = tl.load(weight_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * n_cols + cols, (normed * weight).to(out_ptr.dtype.element_ty), mask=mask)


def _launch(
    x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(normalized, summed): summed is x + residual, or x itself when there is no residual."""
    check_rms_norm(x, weight, eps, residual)
    tensors = [("x", x), ("weight", weight)]
    if residual is not None:
        check_same_dtype(("x", "residual"), (x, residual))
        tensors.append(("residual", residual))
    check_launchable(*tensors)
    hidden = x.shape[-1]
    if hidden > _MAX_HIDDEN:
        raise ValueError(f"the last dimension of x must be at most {_MAX_HIDDEN}, got {hidden}")

    x_rows = as_rows(x)
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    # Not empty_like: it keeps a permuted x's strides, and the kernel writes rows contiguously.
    summed = torch.empty(x.shape, dtype=x.dtype, device=x.device) if residual is not None else x
    if x.numel() == 0:
        return out, summed
    residual_rows = as_rows(residual) if residual is not None else x_rows
    block = next_power_of_2(hidden)
    num_warps = 1 if INTERPRETER else min(16, max(1, block // 512))
    _rms_norm_kernel[(x_rows.shape[0],)](
        x_rows, residual_rows, weight.contiguous(), out, summed,
        hidden, float(eps), x_rows.stride(0), residual_rows.stride(0),
        HAS_RESIDUAL=residual is not None, SCALE_BEFORE_CAST=weight.dtype != x.dtype, BLOCK=block,
        num_warps=num_warps,
    )
    return out, summed


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm over the last dim, in x's dtype (HF's rounding: see `fastllm.kernels.reference.rms_norm`)."""
    return _launch(x, None, weight, eps)[0]


def fused_add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (rms_norm(x + residual), x + residual) from one pass over both inputs."""
    return _launch(x, residual, weight, eps)

"""Argument checks shared by the Triton kernels and their PyTorch twins.

Every public kernel validates its inputs and raises a ValueError (TypeError for a non-tensor)
naming the argument, so a bad call fails clearly instead of reading out of bounds on a GPU.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
INDEX_DTYPES = (torch.int32, torch.int64)


def check_tensor(
    name: str,
    t: object,
    *,
    ndim: int | None = None,
    dtypes: Sequence[torch.dtype] | None = None,
    device: torch.device | None = None,
) -> torch.Tensor:
    """Check that `t` is a tensor of the given rank, dtype and device; return it."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(t.shape)}")
    if dtypes is not None and t.dtype not in dtypes:
        allowed = ", ".join(str(d).removeprefix("torch.") for d in dtypes)
        raise ValueError(f"{name} must have dtype in ({allowed}), got {str(t.dtype).removeprefix('torch.')}")
    if device is not None and t.device != device:
        raise ValueError(f"{name} must be on {device}, got {t.device}")
    return t


def check_shape(name: str, t: torch.Tensor, expected: Sequence[int]) -> None:
    if tuple(t.shape) != tuple(expected):
        raise ValueError(f"{name} must have shape {tuple(expected)}, got {tuple(t.shape)}")


def check_same_dtype(names: Sequence[str], tensors: Sequence[torch.Tensor]) -> None:
    dtypes = {t.dtype for t in tensors}
    if len(dtypes) > 1:
        got = ", ".join(f"{n}={str(t.dtype).removeprefix('torch.')}" for n, t in zip(names, tensors))
        raise ValueError(f"{', '.join(names)} must share one dtype, got {got}")


def check_contiguous_last_dim(name: str, t: torch.Tensor) -> None:
    if t.stride(-1) != 1:
        raise ValueError(f"{name} must be contiguous in its last dimension, got strides {t.stride()}")


def check_gqa(num_q_heads: int, num_kv_heads: int) -> None:
    if num_kv_heads <= 0 or num_q_heads % num_kv_heads:
        raise ValueError(
            f"the number of query heads ({num_q_heads}) must be a multiple of the number of "
            f"key/value heads ({num_kv_heads})"
        )


def _is_positive_finite(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < math.inf


def check_softmax_scale(softmax_scale: float | None, head_dim: int) -> float:
    if softmax_scale is None:
        return head_dim**-0.5
    if not _is_positive_finite(softmax_scale):
        raise ValueError(f"softmax_scale must be a positive finite float or None, got {softmax_scale!r}")
    return float(softmax_scale)


def check_window(window: int | None, causal: bool = True) -> int | None:
    """A sliding window: None (off) or the number of keys a query sees at most, itself included."""
    if window is None:
        return None
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ValueError(f"window must be a positive int or None, got {window!r}")
    if not causal:
        raise ValueError("window needs causal=True (a sliding window looks back from each query)")
    return window


def check_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None) -> None:
    check_tensor("x", x, dtypes=FLOAT_DTYPES)
    if x.dim() == 0:
        raise ValueError("x must have at least one dimension (the hidden size), got a 0-d tensor")
    check_tensor("weight", weight, ndim=1, dtypes=FLOAT_DTYPES, device=x.device)
    if weight.shape[0] != x.shape[-1]:
        raise ValueError(f"weight must have shape ({x.shape[-1]},), got {tuple(weight.shape)}")
    if not _is_positive_finite(eps):
        raise ValueError(f"eps must be a positive finite float, got {eps!r}")
    if residual is not None:
        check_tensor("residual", residual, dtypes=FLOAT_DTYPES, device=x.device)
        if residual.shape != x.shape:
            raise ValueError(f"residual must have the shape of x {tuple(x.shape)}, got {tuple(residual.shape)}")


def check_rotary(
    q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, cos_cache: torch.Tensor, sin_cache: torch.Tensor
) -> None:
    check_tensor("q", q, ndim=3, dtypes=FLOAT_DTYPES)
    check_tensor("k", k, ndim=3, dtypes=FLOAT_DTYPES, device=q.device)
    check_tensor("positions", positions, ndim=1, dtypes=INDEX_DTYPES, device=q.device)
    check_tensor("cos_cache", cos_cache, ndim=2, dtypes=FLOAT_DTYPES, device=q.device)
    check_tensor("sin_cache", sin_cache, ndim=2, dtypes=FLOAT_DTYPES, device=q.device)
    if q.shape[0] != positions.shape[0] or k.shape[0] != positions.shape[0]:
        raise ValueError(
            f"q, k and positions must agree on the token count, got {q.shape[0]}, {k.shape[0]}, {positions.shape[0]}"
        )
    if k.shape[-1] != q.shape[-1] or cos_cache.shape[-1] * 2 != q.shape[-1] or sin_cache.shape != cos_cache.shape:
        raise ValueError(
            f"cos_cache and sin_cache must have shape [max_position, {q.shape[-1] // 2}] for head dim "
            f"{q.shape[-1]}, got {tuple(cos_cache.shape)} and {tuple(sin_cache.shape)}"
        )


def check_silu_and_mul(x: torch.Tensor, out: torch.Tensor | None = None) -> None:
    """x [..., 2I] = [gate | up]; out, if given, [..., I] of x's dtype and device, its last axis
    contiguous (a slice of a wider 2-D tensor's columns, say), contiguous beyond 2-D."""
    check_tensor("x", x, dtypes=FLOAT_DTYPES)
    if x.dim() == 0 or x.shape[-1] % 2:
        raise ValueError(f"x's last dimension must be even ([gate | up]), got shape {tuple(x.shape)}")
    if out is None:
        return
    check_tensor("out", out, dtypes=(x.dtype,), device=x.device)
    expected = (*x.shape[:-1], x.shape[-1] // 2)
    if tuple(out.shape) != expected:
        raise ValueError(f"out must have shape {expected} for x of shape {tuple(x.shape)}, got {tuple(out.shape)}")
    if out.numel() and (out.stride(-1) != 1 or (out.dim() > 2 and not out.is_contiguous())):
        raise ValueError(f"out must have a contiguous last axis (and be contiguous beyond 2-D), got strides {out.stride()}")


def check_store_kv_cache(
    k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, slot_mapping: torch.Tensor
) -> None:
    check_tensor("k", k, ndim=3, dtypes=FLOAT_DTYPES)
    check_tensor("v", v, ndim=3, dtypes=FLOAT_DTYPES, device=k.device)
    check_tensor("k_cache", k_cache, ndim=4, dtypes=FLOAT_DTYPES, device=k.device)
    check_tensor("v_cache", v_cache, ndim=4, dtypes=FLOAT_DTYPES, device=k.device)
    check_tensor("slot_mapping", slot_mapping, ndim=1, dtypes=INDEX_DTYPES, device=k.device)
    check_same_dtype(("k", "v", "k_cache", "v_cache"), (k, v, k_cache, v_cache))
    if k.shape != v.shape or k_cache.shape != v_cache.shape or k.shape[1:] != k_cache.shape[2:]:
        raise ValueError(
            f"k/v [T, Hkv, D] must match caches [num_blocks, block_size, Hkv, D], got k {tuple(k.shape)}, "
            f"v {tuple(v.shape)}, k_cache {tuple(k_cache.shape)}, v_cache {tuple(v_cache.shape)}"
        )
    if slot_mapping.shape[0] != k.shape[0]:
        raise ValueError(f"slot_mapping must have one slot per token ({k.shape[0]}), got {slot_mapping.shape[0]}")


def check_varlen_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    block_table: torch.Tensor | None,
) -> None:
    """Shapes for packed variable-length attention, contiguous or paged keys/values."""
    check_tensor("q", q, ndim=3, dtypes=FLOAT_DTYPES)
    paged = block_table is not None
    kv_ndim = 4 if paged else 3
    check_tensor("k", k, ndim=kv_ndim, dtypes=FLOAT_DTYPES, device=q.device)
    check_tensor("v", v, ndim=kv_ndim, dtypes=FLOAT_DTYPES, device=q.device)
    check_same_dtype(("q", "k", "v"), (q, k, v))
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape, got {tuple(k.shape)} and {tuple(v.shape)}")
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_contiguous_last_dim(name, t)
    if k.shape[-1] != q.shape[-1]:
        raise ValueError(f"q and k must have the same head dim, got {q.shape[-1]} and {k.shape[-1]}")
    check_gqa(q.shape[1], k.shape[-2])
    check_tensor("cu_seqlens_q", cu_seqlens_q, ndim=1, dtypes=(torch.int32,), device=q.device)
    check_tensor("cu_seqlens_k", cu_seqlens_k, ndim=1, dtypes=(torch.int32,), device=q.device)
    if cu_seqlens_q.numel() < 2 or cu_seqlens_q.shape != cu_seqlens_k.shape:
        raise ValueError(
            "cu_seqlens_q and cu_seqlens_k must both have shape [batch + 1] with batch >= 1, got "
            f"{tuple(cu_seqlens_q.shape)} and {tuple(cu_seqlens_k.shape)}"
        )
    if paged:
        check_tensor("block_table", block_table, ndim=2, dtypes=(torch.int32,), device=q.device)
        if block_table.shape[0] != cu_seqlens_q.numel() - 1:
            raise ValueError(
                f"block_table must have one row per sequence ({cu_seqlens_q.numel() - 1}), "
                f"got shape {tuple(block_table.shape)}"
            )


def check_paged_decode(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    cache_seqlens: torch.Tensor,
    block_table: torch.Tensor,
) -> None:
    check_tensor("q", q, ndim=3, dtypes=FLOAT_DTYPES)
    check_tensor("k_cache", k_cache, ndim=4, dtypes=FLOAT_DTYPES, device=q.device)
    check_tensor("v_cache", v_cache, ndim=4, dtypes=FLOAT_DTYPES, device=q.device)
    check_same_dtype(("q", "k_cache", "v_cache"), (q, k_cache, v_cache))
    if k_cache.shape != v_cache.shape:
        raise ValueError(
            f"k_cache and v_cache must have the same shape, got {tuple(k_cache.shape)} and {tuple(v_cache.shape)}"
        )
    for name, t in (("q", q), ("k_cache", k_cache), ("v_cache", v_cache)):
        check_contiguous_last_dim(name, t)
    if k_cache.shape[-1] != q.shape[-1]:
        raise ValueError(f"q and k_cache must have the same head dim, got {q.shape[-1]} and {k_cache.shape[-1]}")
    check_gqa(q.shape[1], k_cache.shape[2])
    batch = q.shape[0]
    check_tensor("cache_seqlens", cache_seqlens, ndim=1, dtypes=(torch.int32,), device=q.device)
    check_shape("cache_seqlens", cache_seqlens, (batch,))
    check_tensor("block_table", block_table, ndim=2, dtypes=(torch.int32,), device=q.device)
    if block_table.shape[0] != batch:
        raise ValueError(f"block_table must have {batch} rows (one per query), got shape {tuple(block_table.shape)}")


def check_sample(
    logits: torch.Tensor,
    temperature: torch.Tensor,
    top_k: torch.Tensor,
    top_p: torch.Tensor,
    min_p: torch.Tensor,
    seeds: torch.Tensor | None,
) -> None:
    """The sampler's arguments; `seeds` None for callers that draw nothing (`filtered_probs`)."""
    check_tensor("logits", logits, ndim=2, dtypes=FLOAT_DTYPES)
    batch = logits.shape[0]
    if logits.shape[1] == 0:
        raise ValueError("logits must have a non-empty vocabulary dimension")
    per_row = (
        ("temperature", temperature, (torch.float32,)),
        ("top_k", top_k, (torch.int32,)),
        ("top_p", top_p, (torch.float32,)),
        ("min_p", min_p, (torch.float32,)),
    )
    if seeds is not None:
        per_row += (("seeds", seeds, (torch.int64,)),)
    for name, t, dtypes in per_row:
        check_tensor(name, t, ndim=1, dtypes=dtypes, device=logits.device)
        check_shape(name, t, (batch,))


def check_cu_seqlens(
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    num_q_tokens: int,
    num_k_tokens: int | None,
    kv_capacity: int | None,
) -> tuple[list[int], list[int]]:
    """Validate cumulative sequence lengths on the host; return them as lists (one device sync).

    `num_k_tokens` is the packed key count (contiguous keys) and `kv_capacity` the tokens one
    block-table row can address (paged keys); pass None for the one that does not apply.
    """
    starts = torch.stack((cu_seqlens_q, cu_seqlens_k)).tolist()
    starts_q, starts_k = starts
    if starts_q[0] != 0 or starts_k[0] != 0:
        raise ValueError(f"cu_seqlens_q and cu_seqlens_k must start at 0, got {starts_q[0]} and {starts_k[0]}")
    if starts_q[-1] != num_q_tokens:
        raise ValueError(f"cu_seqlens_q[-1] ({starts_q[-1]}) must equal the number of query tokens ({num_q_tokens})")
    if num_k_tokens is not None and starts_k[-1] != num_k_tokens:
        raise ValueError(f"cu_seqlens_k[-1] ({starts_k[-1]}) must equal the number of key tokens ({num_k_tokens})")
    for b in range(len(starts_q) - 1):
        len_q, len_k = starts_q[b + 1] - starts_q[b], starts_k[b + 1] - starts_k[b]
        if len_q < 0 or len_k < 0:
            raise ValueError(f"cu_seqlens_q and cu_seqlens_k must be non-decreasing (sequence {b})")
        if kv_capacity is not None and len_k > kv_capacity:
            raise ValueError(
                f"sequence {b} has {len_k} cached tokens but its block_table row holds only {kv_capacity}"
            )
    return starts_q, starts_k

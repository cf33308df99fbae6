"""Rotary position embedding tables: inverse frequencies (with HF's rope scaling types) and cos/sin caches.

Everything is computed in float32 with the same expressions, in the same order, as HF
transformers' `modeling_rope_utils`, so the tables match HF's bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3", "yarn")


def rope_type_of(rope_scaling: Mapping[str, Any] | None) -> str:
    """The rope type named by an HF rope-scaling dict ("rope_type", or the older "type"); "default" if none."""
    if not rope_scaling:
        return "default"
    rope_type = rope_scaling.get("rope_type", rope_scaling.get("type", "default"))
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise ValueError(
            f"rope_scaling type must be one of {', '.join(SUPPORTED_ROPE_TYPES)}, got {rope_type!r}"
        )
    return rope_type


def _require(rope_scaling: Mapping[str, Any], rope_type: str, key: str) -> float:
    value = rope_scaling.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"rope_scaling of type {rope_type!r} needs a positive number {key!r}, got {value!r}")
    return value


def _default_inv_freq(head_dim: int, theta: float) -> torch.Tensor:
    return 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))


def _llama3_inv_freq(inv_freq: torch.Tensor, rope_scaling: Mapping[str, Any]) -> torch.Tensor:
    factor = _require(rope_scaling, "llama3", "factor")
    low_freq_factor = _require(rope_scaling, "llama3", "low_freq_factor")
    high_freq_factor = _require(rope_scaling, "llama3", "high_freq_factor")
    old_context_len = _require(rope_scaling, "llama3", "original_max_position_embeddings")
    if high_freq_factor <= low_freq_factor:
        raise ValueError(
            "llama3 rope_scaling needs high_freq_factor > low_freq_factor, "
            f"got {high_freq_factor} and {low_freq_factor}"
        )
    low_freq_wavelen = old_context_len / low_freq_factor
    high_freq_wavelen = old_context_len / high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    # Long wavelengths are divided by `factor`, short ones kept, the band between interpolated.
    inv_freq_llama = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth_factor = (old_context_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    smoothed_inv_freq = (1 - smooth_factor) * inv_freq_llama / factor + smooth_factor * inv_freq_llama
    is_medium_freq = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
    return torch.where(is_medium_freq, smoothed_inv_freq, inv_freq_llama)


def _yarn_inv_freq(head_dim: int, theta: float, rope_scaling: Mapping[str, Any]) -> tuple[torch.Tensor, float]:
    factor = _require(rope_scaling, "yarn", "factor")
    original_max = _require(rope_scaling, "yarn", "original_max_position_embeddings")
    attention_factor = rope_scaling.get("attention_factor")
    if attention_factor is None:
        mscale, mscale_all_dim = rope_scaling.get("mscale"), rope_scaling.get("mscale_all_dim")

        def get_mscale(scale: float, m: float = 1.0) -> float:
            return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

        if mscale and mscale_all_dim:
            attention_factor = float(get_mscale(factor, mscale) / get_mscale(factor, mscale_all_dim))
        else:
            attention_factor = get_mscale(factor)
    beta_fast = rope_scaling.get("beta_fast") or 32
    beta_slow = rope_scaling.get("beta_slow") or 1

    def correction_dim(num_rotations: float) -> float:
        return (head_dim * math.log(original_max / (num_rotations * 2 * math.pi))) / (2 * math.log(theta))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if rope_scaling.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, head_dim - 1)
    if low == high:
        high += 0.001  # avoid a zero-width ramp
    ramp = torch.clamp((torch.arange(head_dim // 2, dtype=torch.float32) - low) / (high - low), 0, 1)
    extrapolation_factor = 1 - ramp
    pos_freqs = theta ** (torch.arange(0, head_dim, 2).float() / head_dim)
    inv_freq_extrapolation = 1.0 / pos_freqs
    inv_freq_interpolation = 1.0 / (factor * pos_freqs)
    inv_freq = (
        inv_freq_interpolation * (1 - extrapolation_factor) + inv_freq_extrapolation * extrapolation_factor
    )
    return inv_freq, float(attention_factor)


def rope_inv_freq(
    head_dim: int,
    theta: float,
    rope_scaling: Mapping[str, Any] | None = None,
    rope_freqs: torch.Tensor | None = None,
) -> tuple[torch.Tensor, float]:
    """Inverse frequencies (float32 [head_dim // 2]) and the cos/sin scale ("attention factor").

    `rope_scaling` is an HF rope-scaling dict (default, linear, llama3 or yarn). `rope_freqs`
    are llama.cpp's per-frequency divisors (how GGUF files store llama3 scaling), applied last.
    """
    rope_type = rope_type_of(rope_scaling)
    attention_factor = 1.0
    if rope_type == "yarn":
        inv_freq, attention_factor = _yarn_inv_freq(head_dim, theta, rope_scaling)
    else:
        inv_freq = _default_inv_freq(head_dim, theta)
        if rope_type == "linear":
            inv_freq = inv_freq / _require(rope_scaling, "linear", "factor")
        elif rope_type == "llama3":
            inv_freq = _llama3_inv_freq(inv_freq, rope_scaling)
    if rope_freqs is not None:
        if rope_freqs.shape != inv_freq.shape:
            raise ValueError(
                f"rope_freqs must have shape ({head_dim // 2},) for head_dim {head_dim}, got {tuple(rope_freqs.shape)}"
            )
        inv_freq = inv_freq / rope_freqs.to(device=inv_freq.device, dtype=torch.float32)
    return inv_freq, attention_factor


def rotary_cos_sin(
    max_positions: int,
    inv_freq: torch.Tensor,
    attention_factor: float = 1.0,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables, float32 [max_positions, head_dim // 2], row p for position p."""
    inv_freq = inv_freq.to(device=device, dtype=torch.float32)
    angles = torch.arange(max_positions, device=device, dtype=torch.int64).float()[:, None] * inv_freq[None, :]
    return angles.cos() * attention_factor, angles.sin() * attention_factor

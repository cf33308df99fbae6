"""Rotary tables against HF transformers' own rope initialization, for every supported scaling type."""

from __future__ import annotations

import pytest
import torch

from fastllm.model.rotary import rope_inv_freq, rotary_cos_sin

SCALINGS = {
    "default": None,
    "linear": {"rope_type": "linear", "factor": 3.0},
    "llama3": {
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64,
    },
    "yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64},
    "yarn_mscale": {
        "rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64, "beta_fast": 16.0,
        "beta_slow": 2.0, "mscale": 1.0, "mscale_all_dim": 0.5,
    },
}


def hf_rope(head_dim: int, theta: float, scaling: dict | None) -> tuple[torch.Tensor, float]:
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    config = LlamaConfig(
        hidden_size=head_dim * 4, num_attention_heads=4, head_dim=head_dim, max_position_embeddings=256,
        rope_theta=theta, rope_scaling=dict(scaling) if scaling else None,
    )
    if scaling is None:
        return LlamaRotaryEmbedding.compute_default_rope_parameters(config)
    return ROPE_INIT_FUNCTIONS[scaling["rope_type"]](config, "cpu")


@pytest.mark.parametrize("name", SCALINGS)
@pytest.mark.parametrize("head_dim, theta", [(64, 10000.0), (32, 500000.0)])
def test_inverse_frequencies_equal_hf(name, head_dim, theta):
    scaling = SCALINGS[name]
    expected, expected_factor = hf_rope(head_dim, theta, scaling)
    inv_freq, factor = rope_inv_freq(head_dim, theta, dict(scaling) if scaling else None)
    assert torch.equal(inv_freq, expected.float()) and factor == pytest.approx(expected_factor, rel=1e-12)


def test_cos_sin_tables_equal_hf_rotary_embedding():
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    config = LlamaConfig(hidden_size=256, num_attention_heads=4, max_position_embeddings=300, rope_theta=100000.0)
    positions = torch.arange(300)
    cos_hf, sin_hf = LlamaRotaryEmbedding(config)(torch.zeros(1, dtype=torch.float32), positions[None])
    cos, sin = rotary_cos_sin(300, rope_inv_freq(64, 100000.0)[0])
    assert cos.shape == (300, 32) and cos.dtype == torch.float32
    assert torch.equal(cos, cos_hf[0, :, :32]) and torch.equal(sin, sin_hf[0, :, :32])


@pytest.mark.parametrize(
    "scaling, message",
    [
        ({"rope_type": "dynamic", "factor": 2.0}, "rope_scaling type must be one of default, linear, llama3, yarn"),
        ({"rope_type": "linear"}, "rope_scaling of type 'linear' needs a positive number 'factor'"),
        ({"rope_type": "llama3", "factor": 8.0}, "needs a positive number 'low_freq_factor'"),
        (
            {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 4.0, "high_freq_factor": 1.0,
             "original_max_position_embeddings": 64},
            "high_freq_factor > low_freq_factor",
        ),
    ],
)
def test_bad_scaling_is_rejected(scaling, message):
    with pytest.raises(ValueError, match=message):
        rope_inv_freq(64, 10000.0, scaling)


def test_rope_freqs_divide_and_must_fit():
    factors = torch.linspace(1.0, 4.0, 32)
    assert torch.equal(rope_inv_freq(64, 1e4, None, factors)[0], rope_inv_freq(64, 1e4)[0] / factors)
    with pytest.raises(ValueError, match=r"rope_freqs must have shape \(32,\)"):
        rope_inv_freq(64, 1e4, None, torch.ones(16))

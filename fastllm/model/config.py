"""ModelConfig: the shape of a Llama-family decoder, filled by the loaders (GGUF or HF folder).

Llama, Mistral, Qwen2, Qwen3 and Gemma 3 are one decoder with a few switches: the fields after
`eos_token_id` say where a family departs from Llama (their defaults are Llama's), and the
model reads only them, never the family's name.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

HIDDEN_ACTIVATIONS = ("silu", "gelu_pytorch_tanh")
LAYER_TYPES = ("full_attention", "sliding_attention")


@dataclass(frozen=True)
class ModelConfig:
    """Hyper-parameters of a Llama-family decoder-only model (names follow HF's LlamaConfig)."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    max_position_embeddings: int
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    # HF-style rope scaling dict, e.g. {"rope_type": "llama3", "factor": 32.0, ...}; None = plain RoPE.
    rope_scaling: dict[str, Any] | None = None
    tie_word_embeddings: bool = False
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    # -- where a family departs from Llama ---------------------------------------------------
    attention_bias: bool = False  # the q, k and v projections add a bias (Qwen2)
    qk_norm: bool = False  # RMSNorm over each head of q and k before the rotary (Qwen3, Gemma 3)
    # RMSNorm of the attention and MLP outputs before their residual adds (Gemma 3's
    # post_attention_layernorm and post_feedforward_layernorm; its pre_feedforward_layernorm is
    # Llama's post_attention_layernorm).
    sandwich_norms: bool = False
    # RMSNorms scale by (norm_weight_offset + weight), in float32: Gemma's (1 + w) is 1.0.
    norm_weight_offset: float = 0.0
    hidden_act: str = "silu"  # the gated MLP's activation: "silu" (SwiGLU) or "gelu_pytorch_tanh" (GeGLU)
    embedding_multiplier: float = 1.0  # embeddings times this, rounded to the model dtype (Gemma: sqrt(hidden))
    query_pre_attn_scalar: float | None = None  # attention scale query_pre_attn_scalar ** -0.5 (None: head_dim)
    sliding_window: int | None = None  # keys a sliding-window layer's query sees, itself included
    # Per layer "full_attention" or "sliding_attention" (attends to the last `sliding_window`
    # tokens, with `local_rope_theta`); None: every layer full.
    layer_types: tuple[str, ...] | None = None
    local_rope_theta: float | None = None  # sliding layers' rope base, unscaled (None: rope_theta and rope_scaling)
    name: str = "llama"
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        positive = (
            "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
            "num_attention_heads", "num_key_value_heads", "head_dim", "max_position_embeddings",
        )
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"ModelConfig.{name} must be a positive int, got {value!r}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"ModelConfig.num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads})"
            )
        if self.head_dim % 2:
            raise ValueError(f"ModelConfig.head_dim must be even for rotary embeddings, got {self.head_dim}")
        if not self.rms_norm_eps > 0:
            raise ValueError(f"ModelConfig.rms_norm_eps must be > 0, got {self.rms_norm_eps!r}")
        if not self.rope_theta > 0:
            raise ValueError(f"ModelConfig.rope_theta must be > 0, got {self.rope_theta!r}")
        if self.rope_scaling is not None:
            # Computing the frequencies once validates the scaling type and its parameters here,
            # where loaders can still name the file, rather than when the model is built.
            from fastllm.model.rotary import rope_inv_freq

            rope_inv_freq(self.head_dim, self.rope_theta, self.rope_scaling)
        self._check_family_fields()

    def _check_family_fields(self) -> None:
        if self.hidden_act not in HIDDEN_ACTIVATIONS:
            raise ValueError(f"ModelConfig.hidden_act must be one of {HIDDEN_ACTIVATIONS}, got {self.hidden_act!r}")
        for name in ("norm_weight_offset", "embedding_multiplier"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"ModelConfig.{name} must be a finite number, got {value!r}")
        if self.query_pre_attn_scalar is not None and not self.query_pre_attn_scalar > 0:
            raise ValueError(f"ModelConfig.query_pre_attn_scalar must be > 0 or None, got {self.query_pre_attn_scalar!r}")
        if self.local_rope_theta is not None and not self.local_rope_theta > 0:
            raise ValueError(f"ModelConfig.local_rope_theta must be > 0 or None, got {self.local_rope_theta!r}")
        window = self.sliding_window
        if window is not None and (isinstance(window, bool) or not isinstance(window, int) or window < 1):
            raise ValueError(f"ModelConfig.sliding_window must be a positive int or None, got {window!r}")
        if self.layer_types is not None:
            types = self.layer_types
            if not isinstance(types, tuple) or len(types) != self.num_hidden_layers:
                raise ValueError(
                    f"ModelConfig.layer_types must be a tuple of {self.num_hidden_layers} layer types, got {types!r}"
                )
            unknown = sorted(set(types) - set(LAYER_TYPES))
            if unknown:
                raise ValueError(f"ModelConfig.layer_types must hold only {LAYER_TYPES}, got {unknown}")
            if "sliding_attention" in types and window is None:
                raise ValueError("ModelConfig.layer_types has sliding_attention layers but sliding_window is None")

    @property
    def num_queries_per_kv(self) -> int:
        return self.num_attention_heads // self.num_key_value_heads

    def is_sliding(self, layer: int) -> bool:
        """Whether layer `layer` attends through a sliding window (with the local rotary tables)."""
        return self.layer_types is not None and self.layer_types[layer] == "sliding_attention"

    def window_of(self, layer: int) -> int | None:
        """The keys layer `layer`'s queries see at most (themselves included); None: all before them."""
        return self.sliding_window if self.is_sliding(layer) else None

    @property
    def attention_scale(self) -> float:
        """The softmax scale of the attention scores."""
        return (self.query_pre_attn_scalar or self.head_dim) ** -0.5

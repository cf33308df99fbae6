"""The tensors a Llama-family checkpoint must hold: HF names and shapes, from a ModelConfig.

The names are those of HF's LlamaForCausalLM, plus what a family adds (Qwen2's q/k/v biases, the
q/k norms of Qwen3 and Gemma 3, Gemma 3's pre- and post-feedforward norms).

Shared by the loaders (to reject a bad file with its path in the message) and by
`LlamaForCausalLM.load_weights` (to reject bad weights from any source).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch

from fastllm.model.config import ModelConfig

if TYPE_CHECKING:
    from fastllm.model.quantized import QuantizedTensor

# Optional extra tensor: llama.cpp's llama3 rope frequency divisors, [head_dim // 2].
ROPE_FREQS = "rope_freqs"
LM_HEAD = "lm_head.weight"


def llama_weight_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every required weight (no "lm_head.weight" when embeddings are tied)."""
    hidden, inter, head_dim = config.hidden_size, config.intermediate_size, config.head_dim
    q_size, kv_size = config.num_attention_heads * head_dim, config.num_key_value_heads * head_dim
    shapes = {"model.embed_tokens.weight": (config.vocab_size, hidden), "model.norm.weight": (hidden,)}
    if not config.tie_word_embeddings:
        shapes[LM_HEAD] = (config.vocab_size, hidden)
    for i in range(config.num_hidden_layers):
        prefix = f"model.layers.{i}."
        shapes.update({
            prefix + "input_layernorm.weight": (hidden,),
            prefix + "self_attn.q_proj.weight": (q_size, hidden),
            prefix + "self_attn.k_proj.weight": (kv_size, hidden),
            prefix + "self_attn.v_proj.weight": (kv_size, hidden),
            prefix + "self_attn.o_proj.weight": (hidden, q_size),
            prefix + "post_attention_layernorm.weight": (hidden,),
            prefix + "mlp.gate_proj.weight": (inter, hidden),
            prefix + "mlp.up_proj.weight": (inter, hidden),
            prefix + "mlp.down_proj.weight": (hidden, inter),
        })
        if config.attention_bias:
            shapes.update({
                prefix + "self_attn.q_proj.bias": (q_size,),
                prefix + "self_attn.k_proj.bias": (kv_size,),
                prefix + "self_attn.v_proj.bias": (kv_size,),
            })
        if config.qk_norm:
            shapes[prefix + "self_attn.q_norm.weight"] = (head_dim,)
            shapes[prefix + "self_attn.k_norm.weight"] = (head_dim,)
        if config.sandwich_norms:
            shapes[prefix + "pre_feedforward_layernorm.weight"] = (hidden,)
            shapes[prefix + "post_feedforward_layernorm.weight"] = (hidden,)
    return shapes


def shape_problems(shapes: Mapping[str, tuple[int, ...]], config: ModelConfig) -> list[str]:
    """Missing, unexpected and misshapen tensors among name -> shape for `config`; [] if none.

    With tied embeddings an "lm_head.weight" is tolerated (HF ignores it too).
    """
    expected_shapes = llama_weight_shapes(config)
    optional = {ROPE_FREQS: (config.head_dim // 2,)}
    if config.tie_word_embeddings:
        optional[LM_HEAD] = (config.vocab_size, config.hidden_size)
    problems = []
    missing = [name for name in expected_shapes if name not in shapes]
    if missing:
        problems.append(f"missing tensors {_preview(missing)}")
    unexpected = [name for name in shapes if name not in expected_shapes and name not in optional]
    if unexpected:
        problems.append(f"unexpected tensors {_preview(unexpected)}")
    for name, shape in shapes.items():
        expected = expected_shapes.get(name, optional.get(name))
        if expected is not None and tuple(shape) != expected:
            problems.append(f"tensor {name!r} has shape {tuple(shape)}, expected {expected}")
    return problems


def weight_problems(weights: Mapping[str, torch.Tensor | QuantizedTensor], config: ModelConfig) -> list[str]:
    """`shape_problems` of the tensors, plus any float tensor that is not floating point; [] if all is well."""
    problems = shape_problems({name: tuple(t.shape) for name, t in weights.items()}, config)
    problems += [
        f"tensor {name!r} has dtype {t.dtype}, expected a floating-point dtype"
        for name, t in weights.items()
        if isinstance(t, torch.Tensor) and not t.is_floating_point()
    ]
    return problems


def _preview(names: list[str], limit: int = 4) -> str:
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(map(repr, names[:limit])) + more

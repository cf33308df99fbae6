"""backend "cpu": a decode step's decoder layers in one C++ call (csrc/cpu_decoder.cpp).

At batch 1 a decode step is ~10 small ops per layer; as separate PyTorch and pybind11 calls their
overhead outweighs the work. `FusedDecode` runs the same C++ kernels the layer-by-layer path runs
on this backend (RMSNorm, the register-decoding quantized matmul, rotary, KV store, paged
attention, SwiGLU or GeGLU), in the same order, in one call: its output equals that path's bit for
bit. Every piece a family switches on (q/k/v biases, q/k norms, sandwich norms, GeGLU, sliding
windows with local rotary tables) has its place in the C++ layer. It applies to float32 CPU models
whose projections are all GGUF-encoded (`EncodedLinear`) and whose head dim the kernels are built for.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from fastllm.model.backend import AttentionMetadata
from fastllm.model.linear import EncodedLinear

if TYPE_CHECKING:
    from fastllm.model.llama import LlamaDecoderLayer, LlamaForCausalLM


def _parts(linear: EncodedLinear) -> list[tuple[object, int]]:
    return [(part.data.numpy(), int(part.qtype)) for part in linear.parts]


def _array(tensor: torch.Tensor | None) -> object:
    return None if tensor is None else tensor.detach().contiguous().numpy()


def _layer(layer: LlamaDecoderLayer) -> dict[str, object]:
    """One layer's weights and switches, as csrc/cpu_kernels_bindings.cpp's DecoderStack reads them."""
    attn = layer.self_attn
    norms = {
        "input_norm": layer.input_layernorm, "post_attention_norm": layer.post_attention_layernorm,
        "q_norm": attn.q_norm, "k_norm": attn.k_norm,
        "attention_output_norm": layer.attention_output_norm, "mlp_output_norm": layer.mlp_output_norm,
    }
    return {
        **{key: _array(norm.weight) for key, norm in norms.items() if norm is not None},
        "qkv": _parts(attn.qkv_proj), "o": _parts(attn.o_proj),
        "gate_up": _parts(layer.mlp.gate_up_proj), "down": _parts(layer.mlp.down_proj),
        "qkv_bias": _array(attn.qkv_bias), "window": attn.window or 0, "local_rope": layer.local_rope,
        "qkv_order": _array(attn.qkv_proj.output_order),  # llama.cpp's Q/K rows, read in place
    }


class FusedDecode:
    """All decoder layers of `model` for decode steps (one new token per sequence)."""

    @staticmethod
    def applies(model: LlamaForCausalLM) -> bool:
        if model.backend.name != "cpu" or model.device.type != "cpu" or model.dtype != torch.float32:
            return False
        if model.parallel is not None:  # the layers' partial sums are added up between its C++ ops
            return False
        from fastllm import _cpu_kernels  # only now: other backends run without the C++ extension

        if model.config.head_dim not in _cpu_kernels.head_dims:
            return False
        return all(
            isinstance(layer.self_attn.qkv_proj, EncodedLinear)
            and all(
                isinstance(linear, EncodedLinear) and linear.output_order is None  # only qkv's rows may be reordered
                for linear in (layer.self_attn.o_proj, layer.mlp.gate_up_proj, layer.mlp.down_proj)
            )
            for layer in model.layers
        )

    def __init__(self, model: LlamaForCausalLM) -> None:
        from fastllm import _cpu_kernels

        config = model.config
        self.model = model
        self._stack = _cpu_kernels.DecoderStack(
            [_layer(layer) for layer in model.layers], config.hidden_size, config.intermediate_size,
            config.num_attention_heads, config.num_key_value_heads, config.head_dim, config.rms_norm_eps,
            config.attention_scale, config.hidden_act,
        )

    @staticmethod
    def takes(kv_cache: torch.Tensor) -> bool:
        """Whether the C++ call can read this cache in place (the engine's pool always qualifies)."""
        return kv_cache.dtype == torch.float32 and kv_cache.is_contiguous()

    def __call__(
        self, hidden: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata, kv_cache: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(last layer's output, residual stream) for the embeddings `hidden` [B, hidden_size] of a decode step."""
        out, residual = torch.empty((2, *hidden.shape), dtype=hidden.dtype)
        model = self.model
        self._stack.decode(
            hidden.contiguous().numpy(), positions.to(torch.int64).contiguous().numpy(),
            model.rotary_cos.numpy(), model.rotary_sin.numpy(), _array(model.local_rotary_cos),
            _array(model.local_rotary_sin), kv_cache.numpy(),
            meta.slot_mapping.to(torch.int64).contiguous().numpy(), meta.context_lens.contiguous().numpy(),
            meta.block_tables.contiguous().numpy(), out.numpy(), residual.numpy(), torch.get_num_threads(),
        )
        return out, residual

"""backend "cpu": a decode step's decoder layers in one C++ call (csrc/cpu_decoder.cpp).

At batch 1 a decode step is ~10 small ops per layer; as separate PyTorch and pybind11 calls their
overhead outweighs the work. `FusedDecode` runs the same C++ kernels the layer-by-layer path runs
on this backend (RMSNorm, the register-decoding quantized matmul, rotary, KV store, paged
attention, SwiGLU), in the same order, in one call: its output equals that path's bit for bit.
It applies to float32 CPU models whose projections are all GGUF-encoded (`EncodedLinear`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from fastllm.model.backend import AttentionMetadata
from fastllm.model.linear import EncodedLinear

if TYPE_CHECKING:
    from fastllm.model.llama import LlamaForCausalLM


def _parts(linear: EncodedLinear) -> list[tuple[object, int]]:
    return [(part.data.numpy(), int(part.qtype)) for part in linear.parts]


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
            isinstance(linear, EncodedLinear)
            for layer in model.layers
            for linear in (layer.self_attn.qkv_proj, layer.self_attn.o_proj, layer.mlp.gate_up_proj, layer.mlp.down_proj)
        )

    def __init__(self, model: LlamaForCausalLM) -> None:
        from fastllm import _cpu_kernels

        config = model.config
        layers = [
            (
                layer.input_layernorm.weight.detach().numpy(),
                layer.post_attention_layernorm.weight.detach().numpy(),
                _parts(layer.self_attn.qkv_proj),
                _parts(layer.self_attn.o_proj),
                _parts(layer.mlp.gate_up_proj),
                _parts(layer.mlp.down_proj),
            )
            for layer in model.layers
        ]
        self.model = model
        self._stack = _cpu_kernels.DecoderStack(
            layers, config.hidden_size, config.intermediate_size, config.num_attention_heads,
            config.num_key_value_heads, config.head_dim, config.rms_norm_eps, config.head_dim**-0.5,
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
        self._stack.decode(
            hidden.contiguous().numpy(), positions.to(torch.int64).contiguous().numpy(),
            self.model.rotary_cos.numpy(), self.model.rotary_sin.numpy(), kv_cache.numpy(),
            meta.slot_mapping.to(torch.int64).contiguous().numpy(), meta.context_lens.contiguous().numpy(),
            meta.block_tables.contiguous().numpy(), out.numpy(), residual.numpy(), torch.get_num_threads(),
        )
        return out, residual

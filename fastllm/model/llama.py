"""Llama-family decoder (RMSNorm, RoPE, grouped-query attention, SwiGLU) over a paged KV cache.

Tokens of all sequences in a step are packed into one flat batch ([T, hidden]); where each one
sits is described by `AttentionMetadata`. Every op that is not a matmul or a lookup goes
through the backend, so the same module runs on the PyTorch reference ops or the Triton kernels.

Numerics mirror HF transformers' LlamaForCausalLM (RMSNorm normalizes in float32 then casts
before scaling, rotary tables in float32, residual adds in the model dtype, SDPA attention), so
greedy decoding matches it token for token. The q/k/v and gate/up projections are fused into
one matmul each. On a CPU in float32 the matmuls run in oneDNN on prepacked weights
(`fastllm.model.linear`), HF's in MKL: logits agree to float32 rounding (within ~2e-4), not bit for bit.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from fastllm.model.backend import AttentionMetadata, Backend
from fastllm.model.config import ModelConfig
from fastllm.model.linear import linear, onednn_applies, prepack
from fastllm.model.rotary import rope_inv_freq, rotary_cos_sin
from fastllm.model.weights import ROPE_FREQS, weight_problems


def _weight(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> nn.Parameter:
    # Uninitialized: every parameter is overwritten by load_weights.
    return nn.Parameter(torch.empty(shape, dtype=dtype, device=device), requires_grad=False)


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float, backend: Backend, *, dtype: torch.dtype, device: torch.device):
        super().__init__()
        self.eps = eps
        self.backend = backend
        self.weight = _weight((size,), dtype, device)

    def forward(
        self, x: torch.Tensor, residual: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (normed, new residual): with a residual, x is added to it first (fused)."""
        if residual is None:
            return self.backend.rms_norm(x, self.weight, self.eps), x
        return self.backend.fused_add_rms_norm(x, residual, self.weight, self.eps)


class LlamaAttention(nn.Module):
    def __init__(self, config: ModelConfig, backend: Backend, *, dtype: torch.dtype, device: torch.device):
        super().__init__()
        self.backend = backend
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.q_size = self.num_heads * self.head_dim
        self.kv_size = self.num_kv_heads * self.head_dim
        self.scale = self.head_dim**-0.5
        self.qkv_proj = _weight((self.q_size + 2 * self.kv_size, config.hidden_size), dtype, device)
        self.o_proj = _weight((config.hidden_size, self.q_size), dtype, device)

    def forward(
        self,
        hidden: torch.Tensor,
        positions: torch.Tensor,
        cos_sin: tuple[torch.Tensor, torch.Tensor],
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        meta: AttentionMetadata,
    ) -> torch.Tensor:
        tokens = hidden.shape[0]
        q, k, v = linear(hidden, self.qkv_proj).split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q, k = self.backend.rotary_embedding(
            q.view(tokens, self.num_heads, self.head_dim),
            k.view(tokens, self.num_kv_heads, self.head_dim),
            positions,
            *cos_sin,
        )
        v = v.view(tokens, self.num_kv_heads, self.head_dim)
        out = self.backend.attention(q, k, v, k_cache, v_cache, meta, self.scale)
        return linear(out.reshape(tokens, self.q_size), self.o_proj)


class LlamaMLP(nn.Module):
    def __init__(self, config: ModelConfig, backend: Backend, *, dtype: torch.dtype, device: torch.device):
        super().__init__()
        self.backend = backend
        self.gate_up_proj = _weight((2 * config.intermediate_size, config.hidden_size), dtype, device)
        self.down_proj = _weight((config.hidden_size, config.intermediate_size), dtype, device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(self.backend.silu_and_mul(linear(x, self.gate_up_proj)), self.down_proj)


class LlamaDecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, backend: Backend, *, dtype: torch.dtype, device: torch.device):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, backend, dtype=dtype, device=device)
        self.self_attn = LlamaAttention(config, backend, dtype=dtype, device=device)
        self.post_attention_layernorm = RMSNorm(
            config.hidden_size, config.rms_norm_eps, backend, dtype=dtype, device=device
        )
        self.mlp = LlamaMLP(config, backend, dtype=dtype, device=device)

    def forward(
        self,
        hidden: torch.Tensor,
        residual: torch.Tensor | None,
        positions: torch.Tensor,
        cos_sin: tuple[torch.Tensor, torch.Tensor],
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        meta: AttentionMetadata,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        hidden, residual = self.input_layernorm(hidden, residual)
        hidden = self.self_attn(hidden, positions, cos_sin, k_cache, v_cache, meta)
        hidden, residual = self.post_attention_layernorm(hidden, residual)
        return self.mlp(hidden), residual


class LlamaForCausalLM(nn.Module):
    """A Llama-family causal LM whose attention reads and writes a paged KV cache.

    Build it, then `load_weights` (HF LlamaForCausalLM names); parameters start uninitialized.
    """

    def __init__(
        self,
        config: ModelConfig,
        backend: Backend,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        super().__init__()
        if dtype not in (torch.float32, torch.bfloat16, torch.float16):
            raise ValueError(f"dtype must be torch.float32, torch.bfloat16 or torch.float16, got {dtype}")
        device = torch.device(device)
        self.config = config
        self.backend = backend
        self.dtype = dtype
        self.embed_tokens = _weight((config.vocab_size, config.hidden_size), dtype, device)
        self.layers = nn.ModuleList(
            LlamaDecoderLayer(config, backend, dtype=dtype, device=device) for _ in range(config.num_hidden_layers)
        )
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, backend, dtype=dtype, device=device)
        self.lm_head = (
            self.embed_tokens
            if config.tie_word_embeddings
            else _weight((config.vocab_size, config.hidden_size), dtype, device)
        )
        # A prepacked copy of tied embeddings for compute_logits (load_weights); None: use lm_head.
        self._packed_tied_lm_head: torch.Tensor | None = None
        self._set_rotary(None, device)

    @property
    def device(self) -> torch.device:
        return self.embed_tokens.device

    def _set_rotary(self, rope_freqs: torch.Tensor | None, device: torch.device) -> None:
        config = self.config
        inv_freq, attention_factor = rope_inv_freq(config.head_dim, config.rope_theta, config.rope_scaling, rope_freqs)
        cos, sin = rotary_cos_sin(config.max_position_embeddings, inv_freq, attention_factor, device)
        self.register_buffer("rotary_cos", cos, persistent=False)
        self.register_buffer("rotary_sin", sin, persistent=False)

    # -- weights ---------------------------------------------------------------------------

    def _weight_sources(self) -> list[tuple[nn.Module, str, list[str]]]:
        """(module, parameter name, checkpoint tensors it is made of, stacked by rows in this order)."""
        config = self.config
        sources = [(self, "embed_tokens", ["model.embed_tokens.weight"]), (self.norm, "weight", ["model.norm.weight"])]
        if not config.tie_word_embeddings:
            sources.append((self, "lm_head", ["lm_head.weight"]))
        for i, layer in enumerate(self.layers):
            prefix = f"model.layers.{i}."
            attn, mlp = layer.self_attn, layer.mlp
            sources += [
                (layer.input_layernorm, "weight", [prefix + "input_layernorm.weight"]),
                (attn, "qkv_proj", [prefix + f"self_attn.{p}_proj.weight" for p in "qkv"]),
                (attn, "o_proj", [prefix + "self_attn.o_proj.weight"]),
                (layer.post_attention_layernorm, "weight", [prefix + "post_attention_layernorm.weight"]),
                (mlp, "gate_up_proj", [prefix + "mlp.gate_proj.weight", prefix + "mlp.up_proj.weight"]),
                (mlp, "down_proj", [prefix + "mlp.down_proj.weight"]),
            ]
        return sources

    def _projections(self) -> list[tuple[nn.Module, str]]:
        """The (module, parameter name) of every weight used only as a matmul operand."""
        names = [(self, "lm_head")] if not self.config.tie_word_embeddings else []
        for layer in self.layers:
            names += [(layer.self_attn, "qkv_proj"), (layer.self_attn, "o_proj")]
            names += [(layer.mlp, "gate_up_proj"), (layer.mlp, "down_proj")]
        return names

    @torch.no_grad()
    def load_weights(self, weights: Mapping[str, torch.Tensor]) -> None:
        """Load checkpoint tensors (HF LlamaForCausalLM names, any float dtype) into the model.

        Every expected tensor must be present with its exact shape. With tied embeddings an
        "lm_head.weight" is accepted and ignored (HF does the same); "rope_freqs" (llama.cpp's
        llama3 frequency divisors) rebuilds the rotary tables. A tensor that already has the
        model's dtype and device becomes the parameter without a copy (the model then shares its
        memory), except that on a CPU in float32 the projection weights (everything but the
        embeddings and norms) are reordered once into oneDNN's blocked layout, which their
        matmuls read faster (see `fastllm.model.linear`); `.to_dense()` gives such a weight back.
        Tied embeddings stay dense for the lookup and the logits matmul gets a reordered copy
        (vocab x hidden more memory, 113 MB for SmolLM2-135M, for a lm_head 1.5x faster at 16 rows).
        """
        problems = weight_problems(weights, self.config)
        if problems:
            raise ValueError(f"checkpoint weights do not fit the model: {'; '.join(problems)}")
        for module, name, sources in self._weight_sources():
            # A fresh parameter (rather than a copy into the placeholder): one allocation and one
            # pass per tensor, and it replaces a prepacked weight as well as a dense one.
            parts = [weights[source].to(device=self.device, dtype=self.dtype) for source in sources]
            tensor = parts[0].contiguous() if len(parts) == 1 else torch.cat(parts)
            setattr(module, name, nn.Parameter(tensor, requires_grad=False))
        if self.config.tie_word_embeddings:
            self.lm_head = self.embed_tokens
        for module, name in self._projections():
            weight = getattr(module, name)
            if onednn_applies(weight):
                setattr(module, name, nn.Parameter(prepack(weight), requires_grad=False))
        tied = self.config.tie_word_embeddings
        self._packed_tied_lm_head = prepack(self.lm_head) if tied and onednn_applies(self.lm_head) else None
        # Rebuilt on every load: a checkpoint without "rope_freqs" must not keep a previous one's.
        self._set_rotary(weights.get(ROPE_FREQS), self.device)

    # -- forward ---------------------------------------------------------------------------

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        meta: AttentionMetadata,
        kv_cache: torch.Tensor,
    ) -> torch.Tensor:
        """Run the packed tokens of one step; returns the final-normed hidden states [T, hidden].

        input_ids, positions: int64 [T]; kv_cache: [num_layers, 2, num_blocks, block_size, num_kv_heads, head_dim]
        (layer i reads and writes kv_cache[i, 0] as keys, kv_cache[i, 1] as values).
        """
        expected = (len(self.layers), 2, self.config.num_key_value_heads, self.config.head_dim)
        if kv_cache.dim() != 6 or (*kv_cache.shape[:2], *kv_cache.shape[4:]) != expected:
            raise ValueError(
                f"kv_cache must have shape [{len(self.layers)}, 2, num_blocks, block_size, "
                f"{self.config.num_key_value_heads}, {self.config.head_dim}], got {tuple(kv_cache.shape)}"
            )
        cos_sin = (self.rotary_cos, self.rotary_sin)
        hidden = F.embedding(input_ids, self.embed_tokens)
        residual = None
        for layer, layer_cache in zip(self.layers, kv_cache):
            hidden, residual = layer(hidden, residual, positions, cos_sin, layer_cache[0], layer_cache[1], meta)
        hidden, _ = self.norm(hidden, residual)
        return hidden

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """float32 logits [N, vocab] for hidden states [N, hidden] (the projection runs in the model dtype)."""
        head = self.lm_head if self._packed_tied_lm_head is None else self._packed_tied_lm_head
        return linear(hidden, head).float()


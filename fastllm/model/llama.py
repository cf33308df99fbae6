"""Llama-family decoder (RMSNorm, RoPE, grouped-query attention, SwiGLU) over a paged KV cache.

Tokens of all sequences in a step are packed into one flat batch ([T, hidden]); where each one
sits is described by `AttentionMetadata`. Every op that is not a matmul or a lookup goes
through the backend, so the same module runs on the PyTorch reference ops or the Triton kernels.

Numerics mirror HF transformers' LlamaForCausalLM (RMSNorm normalizes in float32 then casts
before scaling, rotary tables in float32, residual adds in the model dtype, SDPA attention), so
greedy decoding matches it token for token. The q/k/v and gate/up projections are fused into
one matmul each. Weights live in the form `fastllm.model.linear` picks for the device, dtype and
backend (on a CPU with backend "cpu", GGUF blocks decoded inside the matmuls); its matmuls sum in
another order than HF's, so logits agree to float32 rounding, not bit for bit.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch
from torch import nn

from fastllm.model.backend import AttentionMetadata, Backend
from fastllm.model.config import ModelConfig
from fastllm.model.cpu_decode import FusedDecode
from fastllm.model.linear import Embedding, Linear, encoded_types, make_linear
from fastllm.model.quantized import QuantizedTensor
from fastllm.model.rotary import rope_inv_freq, rotary_cos_sin
from fastllm.model.weights import ROPE_FREQS, weight_problems

if TYPE_CHECKING:
    from fastllm.distributed.group import TensorParallel

Weights = Mapping[str, "torch.Tensor | QuantizedTensor"]


def _weight(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> nn.Parameter:
    # Uninitialized: every parameter is overwritten by load_weights.
    return nn.Parameter(torch.empty(shape, dtype=dtype, device=device), requires_grad=False)


def _row_parallel(partial: torch.Tensor, parallel: TensorParallel | None) -> torch.Tensor:
    """A row-parallel projection's output: each rank's partial sums added up over the group."""
    return partial if parallel is None else parallel.group.all_reduce(partial)


def _dense(weight: torch.Tensor | QuantizedTensor, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    if isinstance(weight, QuantizedTensor):
        return weight.dequantize(dtype, device)
    return weight.to(device=device, dtype=dtype).contiguous()


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
    def __init__(self, config: ModelConfig, backend: Backend, parallel: TensorParallel | None):
        super().__init__()
        self.backend = backend
        self.parallel = parallel
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.q_size = self.num_heads * self.head_dim
        self.kv_size = self.num_kv_heads * self.head_dim
        self.scale = self.head_dim**-0.5
        self.qkv_proj: Linear | None = None  # set by LlamaForCausalLM.load_weights
        self.o_proj: Linear | None = None

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
        q, k, v = self.qkv_proj(hidden).split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q, k = self.backend.rotary_embedding(
            q.view(tokens, self.num_heads, self.head_dim),
            k.view(tokens, self.num_kv_heads, self.head_dim),
            positions,
            *cos_sin,
        )
        v = v.view(tokens, self.num_kv_heads, self.head_dim)
        out = self.backend.attention(q, k, v, k_cache, v_cache, meta, self.scale)
        return _row_parallel(self.o_proj(out.reshape(tokens, self.q_size)), self.parallel)


class LlamaMLP(nn.Module):
    def __init__(self, backend: Backend, parallel: TensorParallel | None):
        super().__init__()
        self.backend = backend
        self.parallel = parallel
        self.gate_up_proj: Linear | None = None  # set by LlamaForCausalLM.load_weights
        self.down_proj: Linear | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _row_parallel(self.down_proj(self.backend.silu_and_mul(self.gate_up_proj(x))), self.parallel)


class LlamaDecoderLayer(nn.Module):
    def __init__(
        self, config: ModelConfig, backend: Backend, parallel: TensorParallel | None, *, dtype: torch.dtype,
        device: torch.device,
    ):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, backend, dtype=dtype, device=device)
        self.self_attn = LlamaAttention(config, backend, parallel)
        self.post_attention_layernorm = RMSNorm(
            config.hidden_size, config.rms_norm_eps, backend, dtype=dtype, device=device
        )
        self.mlp = LlamaMLP(backend, parallel)

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

    Build it, then `load_weights` (HF LlamaForCausalLM names); it holds no weights before.

    With `parallel`, the model is one rank of a tensor-parallel group (Megatron's split, see
    fastllm.distributed.sharding): `config` is then this rank's part (its heads, intermediate
    features and padded vocabulary slice, which its KV cache and weights follow), `vocab_size` the
    whole model's; o and down projections add up their partial sums over the group, the embedding
    looks up its own rows, and the logits are gathered on rank 0.
    """

    def __init__(
        self,
        config: ModelConfig,
        backend: Backend,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        parallel: TensorParallel | None = None,
    ) -> None:
        super().__init__()
        if dtype not in (torch.float32, torch.bfloat16, torch.float16):
            raise ValueError(f"dtype must be torch.float32, torch.bfloat16 or torch.float16, got {dtype}")
        device = torch.device(device)
        self.vocab_size = config.vocab_size
        self.parallel = parallel
        if parallel is not None:
            config = parallel.shard.config
        self.config = config
        self.backend = backend
        self.dtype = dtype
        self._device = device
        self.embed_tokens: Embedding | None = None  # set by load_weights
        self.lm_head: Linear | None = None
        self.layers = nn.ModuleList(
            LlamaDecoderLayer(config, backend, parallel, dtype=dtype, device=device)
            for _ in range(config.num_hidden_layers)
        )
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, backend, dtype=dtype, device=device)
        # backend "cpu" with encoded weights: decode steps run every layer in one C++ call (load_weights).
        self._fused_decode: FusedDecode | None = None
        self._set_rotary(None, device)

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def encoded_types(self) -> frozenset:
        """The GGUF types whose weights this model keeps encoded (see `fastllm.model.linear.encoded_types`)."""
        return encoded_types(self.backend.name, self.device, self.dtype)

    def _set_rotary(self, rope_freqs: torch.Tensor | None, device: torch.device) -> None:
        config = self.config
        inv_freq, attention_factor = rope_inv_freq(config.head_dim, config.rope_theta, config.rope_scaling, rope_freqs)
        cos, sin = rotary_cos_sin(config.max_position_embeddings, inv_freq, attention_factor, device)
        self.register_buffer("rotary_cos", cos, persistent=False)
        self.register_buffer("rotary_sin", sin, persistent=False)

    # -- weights ---------------------------------------------------------------------------

    def _projections(self) -> list[tuple[nn.Module, str, list[str]]]:
        """(module, attribute, checkpoint tensors stacked by rows into it) of every matmul weight."""
        head = "model.embed_tokens.weight" if self.config.tie_word_embeddings else "lm_head.weight"
        sources = [(self, "lm_head", [head])]
        for i, layer in enumerate(self.layers):
            prefix = f"model.layers.{i}."
            attn, mlp = layer.self_attn, layer.mlp
            sources += [
                (attn, "qkv_proj", [prefix + f"self_attn.{p}_proj.weight" for p in "qkv"]),
                (attn, "o_proj", [prefix + "self_attn.o_proj.weight"]),
                (mlp, "gate_up_proj", [prefix + "mlp.gate_proj.weight", prefix + "mlp.up_proj.weight"]),
                (mlp, "down_proj", [prefix + "mlp.down_proj.weight"]),
            ]
        return sources

    def _norms(self) -> list[tuple[RMSNorm, str]]:
        norms = [(self.norm, "model.norm.weight")]
        for i, layer in enumerate(self.layers):
            prefix = f"model.layers.{i}."
            norms += [(layer.input_layernorm, prefix + "input_layernorm.weight"),
                      (layer.post_attention_layernorm, prefix + "post_attention_layernorm.weight")]
        return norms

    @torch.no_grad()
    def load_weights(self, weights: Weights) -> None:
        """Load checkpoint tensors (HF LlamaForCausalLM names) into the model.

        Tensors are float tensors of any float dtype, or `QuantizedTensor`s (GGUF blocks). Every
        expected tensor must be present with its exact shape. With tied embeddings an
        "lm_head.weight" is accepted and ignored (HF does the same), and the logits read the
        embedding table itself; "rope_freqs" (llama.cpp's llama3 frequency divisors) rebuilds the
        rotary tables. Matrices take the form `fastllm.model.linear.make_linear` chooses: on a CPU
        in float32 with backend "cpu", encoded types stay encoded (no copy of a memory-mapped
        file's bytes); elsewhere they are dequantized to the model's dtype. A float tensor that
        already has the model's dtype and device is used without a copy where its form is dense.
        """
        problems = weight_problems(weights, self.config)
        if problems:
            raise ValueError(f"checkpoint weights do not fit the model: {'; '.join(problems)}")
        encoded = self.encoded_types
        embedding = weights["model.embed_tokens.weight"]
        if not (isinstance(embedding, QuantizedTensor) and embedding.qtype in encoded):
            embedding = _dense(embedding, self.dtype, self.device)
        self.embed_tokens = Embedding(embedding)
        for module, name, sources in self._projections():
            parts = [embedding if source == "model.embed_tokens.weight" else weights[source] for source in sources]
            setattr(module, name, make_linear(parts, dtype=self.dtype, device=self.device, encoded_types=encoded))
        for norm, source in self._norms():
            # A fresh parameter (rather than a copy into the placeholder): one allocation and one pass.
            norm.weight = nn.Parameter(_dense(weights[source], self.dtype, self.device), requires_grad=False)
        # Rebuilt on every load: a checkpoint without "rope_freqs" must not keep a previous one's.
        self._set_rotary(weights.get(ROPE_FREQS), self.device)
        self._fused_decode = FusedDecode(self) if FusedDecode.applies(self) else None

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
        if self.embed_tokens is None:
            raise RuntimeError("the model has no weights yet: call load_weights first")
        cos_sin = (self.rotary_cos, self.rotary_sin)
        hidden = self._embed(input_ids)
        if self._fused_decode is not None and not meta.is_prefill and self._fused_decode.takes(kv_cache):
            hidden, residual = self._fused_decode(hidden, positions, meta, kv_cache)
        else:
            residual = None
            for layer, layer_cache in zip(self.layers, kv_cache):
                hidden, residual = layer(hidden, residual, positions, cos_sin, layer_cache[0], layer_cache[1], meta)
        hidden, _ = self.norm(hidden, residual)
        return hidden

    def _embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self.parallel is None:
            return self.embed_tokens(input_ids)
        # This rank holds embedding rows `vocab_rows`: it looks up its own ids and gives zeros for
        # the others, so the sum over the group is each token's row, exactly.
        rows = self.parallel.shard.vocab_rows
        local = input_ids - rows.start
        elsewhere = (local < 0) | (local >= len(rows))
        hidden = self.embed_tokens(local.masked_fill(elsewhere, 0))
        return self.parallel.group.all_reduce(hidden.masked_fill_(elsewhere.unsqueeze(-1), 0))

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor | None:
        """float32 logits [N, vocab] for hidden states [N, hidden] (the projection runs in the model
        dtype); on a tensor-parallel rank other than 0, None (rank 0 gathers every rank's slice)."""
        logits = self.lm_head(hidden).float()
        if self.parallel is None:
            return logits
        gathered = self.parallel.group.gather_last_dim(logits)
        return None if gathered is None else gathered[:, : self.vocab_size]


"""Llama-family decoder (RMSNorm, RoPE, grouped-query attention, gated MLP) over a paged KV cache.

One decoder serves Llama, Mistral, Qwen2, Qwen3 and Gemma 3: the ModelConfig fields where a
family departs from Llama (q/k/v biases, q/k norms, Gemma's sandwich norms and (1 + w) norm
weights, GeGLU, scaled embeddings, the attention scale, sliding-window layers with their own
rotary base) each switch one small piece below, and the model never asks which family it runs.

Tokens of all sequences in a step are packed into one flat batch ([T, hidden]); where each one
sits is described by `AttentionMetadata`. Every op that is not a matmul or a lookup goes
through the backend, so the same module runs on the PyTorch reference ops or the Triton kernels.

Numerics mirror HF transformers' models (RMSNorm normalizes in float32 then casts before
scaling, Gemma's scales in float32 before the cast; rotary tables in float32, residual adds in the
model dtype, SDPA attention), so greedy decoding matches it token for token. The q/k/v and gate/up projections are fused into
one matmul each. Weights live in the form `fastllm.model.linear` picks for the device, dtype and
backend (on a CPU with backend "cpu", GGUF blocks decoded inside the matmuls); its matmuls sum in
another order than HF's, so logits agree to float32 rounding, not bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
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


# Rotary table rows a CPU model starts with (see LlamaForCausalLM._set_rotary): a power of two.
_FIRST_ROTARY_ROWS = 1024
# The gated MLP's activation (ModelConfig.hidden_act) -> the backend op computing act(gate) * up.
_GATED_ACTIVATIONS = {"silu": "silu_and_mul", "gelu_pytorch_tanh": "gelu_tanh_and_mul"}


def _no_phase() -> None:
    pass


class RMSNorm(nn.Module):
    """RMSNorm whose `weight` is the scale itself: Llama's w in the model dtype, or Gemma's 1 + w in
    float32 (`norm_weight_offset`; the ops then scale before casting to the activation dtype, as HF
    Gemma does)."""

    def __init__(self, size: int, eps: float, backend: Backend, *, dtype: torch.dtype, device: torch.device):
        super().__init__()
        self.eps = eps
        self.backend = backend
        self.weight = _weight((size,), dtype, device)

    def load(self, weight: torch.Tensor | QuantizedTensor, offset: float, dtype: torch.dtype) -> None:
        """Take the checkpoint's weight (HF convention): w in `dtype`, or with an offset its float32 offset + w."""
        device = self.weight.device
        if offset:
            scale = offset + _dense(weight, torch.float32, device)  # HF: 1.0 + weight.float()
        else:
            scale = _dense(weight, dtype, device)
        # A fresh parameter (rather than a copy into the placeholder): one allocation and one pass.
        self.weight = nn.Parameter(scale, requires_grad=False)

    def forward(
        self, x: torch.Tensor, residual: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (normed, new residual): with a residual, x is added to it first (fused)."""
        if residual is None:
            return self.backend.rms_norm(x, self.weight, self.eps), x
        return self.backend.fused_add_rms_norm(x, residual, self.weight, self.eps)


class LlamaAttention(nn.Module):
    def __init__(
        self, config: ModelConfig, layer: int, backend: Backend, parallel: TensorParallel | None, *,
        dtype: torch.dtype, device: torch.device,
    ):
        super().__init__()
        self.backend = backend
        self.parallel = parallel
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.q_size = self.num_heads * self.head_dim
        self.kv_size = self.num_kv_heads * self.head_dim
        self.scale = config.attention_scale
        self.window = config.window_of(layer)  # None: every earlier token
        self.qkv_proj: Linear | None = None  # set by LlamaForCausalLM.load_weights
        self.o_proj: Linear | None = None
        self.qkv_bias: torch.Tensor | None = None  # [q | k | v] biases (attention_bias)
        self.q_norm = self.k_norm = None
        if config.qk_norm:
            self.q_norm = RMSNorm(config.head_dim, config.rms_norm_eps, backend, dtype=dtype, device=device)
            self.k_norm = RMSNorm(config.head_dim, config.rms_norm_eps, backend, dtype=dtype, device=device)

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
        qkv = self.qkv_proj(hidden)
        if self.qkv_bias is not None:
            qkv += self.qkv_bias
        q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        if self.q_norm is not None:  # over each head's head_dim values
            q, _ = self.q_norm(q.reshape(-1, self.head_dim))
            k, _ = self.k_norm(k.reshape(-1, self.head_dim))
        q, k = self.backend.rotary_embedding(
            q.view(tokens, self.num_heads, self.head_dim),
            k.view(tokens, self.num_kv_heads, self.head_dim),
            positions,
            *cos_sin,
        )
        v = v.view(tokens, self.num_kv_heads, self.head_dim)
        out = self.backend.attention(q, k, v, k_cache, v_cache, meta, self.scale, window=self.window)
        return _row_parallel(self.o_proj(out.reshape(tokens, self.q_size)), self.parallel)


class LlamaMLP(nn.Module):
    def __init__(self, config: ModelConfig, backend: Backend, parallel: TensorParallel | None):
        super().__init__()
        self.activation = getattr(backend, _GATED_ACTIVATIONS[config.hidden_act])
        self.parallel = parallel
        self.gate_up_proj: Linear | None = None  # set by LlamaForCausalLM.load_weights
        self.down_proj: Linear | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _row_parallel(self.down_proj(self.gate_up_proj.gated(x, self.activation)), self.parallel)


class LlamaDecoderLayer(nn.Module):
    """input_layernorm -> attention -> (attention_output_norm) -> + residual -> post_attention_layernorm
    -> MLP -> (mlp_output_norm) -> + residual; the two output norms only with `sandwich_norms`."""

    def __init__(
        self, config: ModelConfig, layer: int, backend: Backend, parallel: TensorParallel | None, *,
        dtype: torch.dtype, device: torch.device,
    ):
        super().__init__()

        def norm() -> RMSNorm:
            return RMSNorm(config.hidden_size, config.rms_norm_eps, backend, dtype=dtype, device=device)

        self.input_layernorm = norm()
        self.self_attn = LlamaAttention(config, layer, backend, parallel, dtype=dtype, device=device)
        self.post_attention_layernorm = norm()  # before the MLP (HF Gemma's pre_feedforward_layernorm)
        self.mlp = LlamaMLP(config, backend, parallel)
        self.attention_output_norm = norm() if config.sandwich_norms else None
        self.mlp_output_norm = norm() if config.sandwich_norms else None
        self.local_rope = config.is_sliding(layer) and config.local_rope_theta is not None
        # Called where each half of the layer begins (load_weights sets it for the CPU kernels'
        # StepBuffers): the half's kernel results may then reuse the memory of the half before.
        self.begin_phase: Callable[[], None] = _no_phase

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
        self.begin_phase()
        hidden = self.self_attn(hidden, positions, cos_sin, k_cache, v_cache, meta)
        if self.attention_output_norm is not None:
            hidden, _ = self.attention_output_norm(hidden)
        hidden, residual = self.post_attention_layernorm(hidden, residual)
        self.begin_phase()
        hidden = self.mlp(hidden)
        if self.mlp_output_norm is not None:
            hidden, _ = self.mlp_output_norm(hidden)
        return hidden, residual


class LlamaForCausalLM(nn.Module):
    """A Llama-family causal LM whose attention reads and writes a paged KV cache.

    Build it, then `load_weights` (HF names, see `fastllm.model.weights`); it holds no weights before.

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
            LlamaDecoderLayer(config, i, backend, parallel, dtype=dtype, device=device)
            for i in range(config.num_hidden_layers)
        )
        # Gemma: embeddings times sqrt(hidden), rounded to the model dtype first (as HF multiplies).
        multiplier = config.embedding_multiplier
        scale = None if multiplier == 1 else torch.tensor(multiplier, dtype=torch.float32).to(device=device, dtype=dtype)
        self.register_buffer("embedding_multiplier", scale, persistent=False)
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, backend, dtype=dtype, device=device)
        # backend "cpu" with encoded weights: decode steps run every layer in one C++ call (load_weights).
        self._fused_decode: FusedDecode | None = None
        self._step_buffers: Callable[[], AbstractContextManager] = nullcontext  # load_weights sets it
        self._set_rotary(None, device)

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def encoded_types(self) -> frozenset:
        """The GGUF types whose weights this model keeps encoded (see `fastllm.model.linear.encoded_types`)."""
        return encoded_types(self.backend.name, self.device, self.dtype)

    def _set_rotary(self, rope_freqs: torch.Tensor | None, device: torch.device) -> None:
        """The rotary tables: rotary_cos/sin for the layers with the model's rope, and
        local_rotary_cos/sin (None unless some layer has `local_rope`) for sliding layers with their own base.

        On the CPU they start at _FIRST_ROTARY_ROWS positions and grow with the positions a step
        holds (`_cover`): a long-context model's whole tables are tens of MB a process would keep
        for positions it may never see. Elsewhere they are whole from the start, so that a step
        never waits to learn its largest position.
        """
        config = self.config
        inv_freq, attention_factor = rope_inv_freq(config.head_dim, config.rope_theta, config.rope_scaling, rope_freqs)
        local_inv_freq = None
        if any(layer.local_rope for layer in self.layers):
            local_inv_freq, _ = rope_inv_freq(config.head_dim, config.local_rope_theta)
        self._rope = inv_freq, attention_factor, local_inv_freq
        rows = config.max_position_embeddings
        self._fill_rotary(min(rows, _FIRST_ROTARY_ROWS) if torch.device(device).type == "cpu" else rows, device)

    def _fill_rotary(self, rows: int, device: torch.device) -> None:
        # A power of two of rows (or all of them) is a whole number of vectors for the elementwise
        # cos and sin, so that every position's entries are the same bits at every size.
        inv_freq, attention_factor, local_inv_freq = self._rope
        cos, sin = rotary_cos_sin(rows, inv_freq, attention_factor, device)
        self.register_buffer("rotary_cos", cos, persistent=False)
        self.register_buffer("rotary_sin", sin, persistent=False)
        local = (None, None) if local_inv_freq is None else rotary_cos_sin(rows, local_inv_freq, 1.0, device)
        self.register_buffer("local_rotary_cos", local[0], persistent=False)
        self.register_buffer("local_rotary_sin", local[1], persistent=False)

    def _cover(self, positions: torch.Tensor) -> None:
        """Grow the rotary tables to hold `positions` (see `_set_rotary`): to the next power of two
        of rows, or to all of max_position_embeddings."""
        rows, limit = self.rotary_cos.shape[0], self.config.max_position_embeddings
        if rows < limit and positions.numel():
            needed = int(positions.max()) + 1
            if needed > rows:
                self._fill_rotary(min(1 << (needed - 1).bit_length(), limit), self.device)

    def rotary_tables(self, layer: LlamaDecoderLayer) -> tuple[torch.Tensor, torch.Tensor]:
        """The (cos, sin) tables `layer` rotates its queries and keys with."""
        if layer.local_rope:
            return self.local_rotary_cos, self.local_rotary_sin
        return self.rotary_cos, self.rotary_sin

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
        """(norm, checkpoint tensor) of every RMSNorm. With sandwich norms, HF Gemma's names: its
        post_attention_layernorm is the attention output's norm, pre_feedforward_layernorm the MLP's input's."""
        norms = [(self.norm, "model.norm.weight")]
        for i, layer in enumerate(self.layers):
            prefix = f"model.layers.{i}."
            norms.append((layer.input_layernorm, prefix + "input_layernorm.weight"))
            if self.config.sandwich_norms:
                norms += [(layer.attention_output_norm, prefix + "post_attention_layernorm.weight"),
                          (layer.post_attention_layernorm, prefix + "pre_feedforward_layernorm.weight"),
                          (layer.mlp_output_norm, prefix + "post_feedforward_layernorm.weight")]
            else:
                norms.append((layer.post_attention_layernorm, prefix + "post_attention_layernorm.weight"))
            if self.config.qk_norm:
                norms += [(layer.self_attn.q_norm, prefix + "self_attn.q_norm.weight"),
                          (layer.self_attn.k_norm, prefix + "self_attn.k_norm.weight")]
        return norms

    @torch.no_grad()
    def load_weights(self, weights: Weights) -> None:
        """Load checkpoint tensors (HF LlamaForCausalLM names) into the model.

        Tensors are float tensors of any float dtype, or `QuantizedTensor`s (GGUF blocks); norm
        weights follow HF's convention of the family (Gemma's w of its (1 + w)). Every
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
            norm.load(weights[source], self.config.norm_weight_offset, self.dtype)
        if self.config.attention_bias:
            for i, layer in enumerate(self.layers):
                biases = [weights[f"model.layers.{i}.self_attn.{p}_proj.bias"] for p in "qkv"]
                layer.self_attn.qkv_bias = torch.cat([_dense(b, self.dtype, self.device) for b in biases])
        # Rebuilt on every load: a checkpoint without "rope_freqs" must not keep a previous one's.
        self._set_rotary(weights.get(ROPE_FREQS), self.device)
        self._fused_decode = FusedDecode(self) if FusedDecode.applies(self) else None
        # Encoded weights: within a step, the CPU kernels reuse their buffers from layer to layer.
        self._step_buffers = nullcontext
        begin_phase = _no_phase
        if encoded:
            from fastllm.kernels.cpu_buffers import StepBuffers

            buffers = StepBuffers()
            self._step_buffers, begin_phase = buffers, buffers.begin_phase
        for layer in self.layers:
            layer.begin_phase = begin_phase

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
        hidden = self._embed(input_ids)
        self._cover(positions)
        if self.embedding_multiplier is not None:
            hidden = hidden * self.embedding_multiplier
        if self._fused_decode is not None and not meta.is_prefill and self._fused_decode.takes(kv_cache):
            hidden, residual = self._fused_decode(hidden, positions, meta, kv_cache)
        else:
            residual = None
            with self._step_buffers():
                for layer, layer_cache in zip(self.layers, kv_cache):
                    hidden, residual = layer(
                        hidden, residual, positions, self.rotary_tables(layer), layer_cache[0], layer_cache[1], meta
                    )
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


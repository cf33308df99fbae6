"""GGUF (llama.cpp) models -> Checkpoint: metadata to ModelConfig, tensors to HF names and layout.

Architectures llama (Llama 1-3, Mistral, TinyLlama, SmolLM), qwen2, qwen3 and gemma3; each is a
small `GGUFArchitecture`: its extra tensor names, whether llama.cpp permuted its Q/K rows, what
it added to its norm weights, and the ModelConfig fields where it departs from Llama.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fastllm.ggml_types import GGMLType
from fastllm.loader.checkpoint import Checkpoint, CheckpointError, ShardFor
from fastllm.loader.gguf_file import GGUFFile
from fastllm.model.config import ModelConfig
from fastllm.model.quantized import FLOAT_TYPES, QuantizedTensor, dequantize
from fastllm.model.weights import ROPE_FREQS, shape_problems

logger = logging.getLogger(__name__)

_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
    "rope_freqs.weight": ROPE_FREQS,
}
_LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_QK_NORM_NAMES = {"attn_q_norm.weight": "self_attn.q_norm.weight", "attn_k_norm.weight": "self_attn.k_norm.weight"}
_LAYER_TENSOR = re.compile(r"blk\.(\d+)\.(.+)")


def unpermute_qk(rows: torch.Tensor | np.ndarray, num_heads: int) -> torch.Tensor | np.ndarray:
    """Undo llama.cpp's Q/K row permutation, back to HF's rotate-half layout.

    llama.cpp's converter interleaves the two halves of each head's rows (it rotates adjacent
    pairs); HF rotates the first half against the second. Rows [h, pair, 2] -> [h, 2, pair].
    Only whole rows move, so this works on a tensor's raw bytes, quantized or not, before decoding.
    """
    count = rows.shape[0]
    return rows.reshape(num_heads, count // num_heads // 2, 2, *rows.shape[1:]).swapaxes(1, 2).reshape(rows.shape)


def _unpermuted(tensor: torch.Tensor | QuantizedTensor, head_dim: int) -> torch.Tensor | QuantizedTensor:
    """A Q/K weight with llama.cpp's row permutation undone: a float tensor's rows copied, an
    encoded one's read in place through its `row_order`."""
    if isinstance(tensor, QuantizedTensor):
        # numpy, not torch: see fastllm.model.quantized._NUMPY_FLOATS
        order = unpermute_qk(np.arange(tensor.shape[0]), tensor.shape[0] // head_dim)
        return QuantizedTensor(tensor.data, tensor.qtype, tensor.shape, torch.from_numpy(order))
    return unpermute_qk(tensor, tensor.shape[0] // head_dim).contiguous()


def _reads(tensor: torch.Tensor | QuantizedTensor, raw: np.ndarray) -> bool:
    """Whether `tensor` is a view of the mapped bytes `raw`."""
    data = tensor.data if isinstance(tensor, QuantizedTensor) else tensor
    start = raw.ctypes.data
    return start <= data.data_ptr() < start + max(raw.nbytes, 1)


_REQUIRED = object()


class _Metadata:
    """Typed access to a GGUF file's `{arch}.*` keys, with errors naming the file and the key."""

    def __init__(self, gguf: GGUFFile, arch: str) -> None:
        self.values = gguf.metadata
        self.path = gguf.path
        self.arch = arch

    def get(self, key: str, default: Any = None) -> Any:
        return self.values.get(key.format(arch=self.arch), default)

    def number(self, key: str, default: Any = _REQUIRED, *, integer: bool = False) -> Any:
        """The number at `key` (an int if `integer`); `default` when absent, an error if there is none."""
        name = key.format(arch=self.arch)
        value = self.values.get(name, default)
        if value is _REQUIRED:
            raise CheckpointError(self.path, f"GGUF metadata lacks {name!r}")
        kinds = (int,) if integer else (int, float)
        if value is not default and (isinstance(value, bool) or not isinstance(value, kinds)):
            kind = "an integer" if integer else "a number"
            raise CheckpointError(self.path, f"GGUF metadata {name!r} must be {kind}, got {value!r}")
        return value


def _rope_scaling(meta: _Metadata, context_length: int) -> dict[str, Any] | None:
    """HF rope-scaling dict from llama.cpp's `{arch}.rope.scaling.*` keys (llama3 uses rope_freqs instead)."""
    scaling_type = meta.get("{arch}.rope.scaling.type", "none")
    factor = meta.get("{arch}.rope.scaling.factor")
    if scaling_type == "none" and meta.get("{arch}.rope.scale_linear") is not None:
        scaling_type, factor = "linear", meta.get("{arch}.rope.scale_linear")  # pre-2024 key
    if scaling_type == "none":
        return None
    if scaling_type == "linear":
        # llama.cpp writes factor 0 or 1 for "no scaling".
        return None if factor in (None, 0, 1) else {"rope_type": "linear", "factor": float(factor)}
    if scaling_type == "yarn":
        scaling = {
            "rope_type": "yarn",
            "factor": float(meta.number("{arch}.rope.scaling.factor")),
            "original_max_position_embeddings": meta.number(
                "{arch}.rope.scaling.original_context_length", context_length, integer=True
            ),
        }
        for gguf_key, hf_key in (("yarn_beta_fast", "beta_fast"), ("yarn_beta_slow", "beta_slow")):
            value = meta.get("{arch}.rope.scaling." + gguf_key)
            if value is not None:
                scaling[hf_key] = float(value)
        return scaling
    raise CheckpointError(meta.path, f"unsupported rope scaling type {scaling_type!r} (supported: none, linear, yarn)")


def _layer_types(meta: _Metadata, num_layers: int, default_period: int) -> tuple[str, ...]:
    """Per-layer attention from `{arch}.attention.sliding_window_pattern`: a period (every n-th layer
    global, the others sliding) or one bool per layer (true: sliding); else `default_period`."""
    pattern = meta.get("{arch}.attention.sliding_window_pattern", default_period)
    if isinstance(pattern, np.ndarray) and pattern.dtype == np.bool_:  # the GGUF reader's bool arrays
        pattern = pattern.tolist()
    if isinstance(pattern, list):
        if len(pattern) != num_layers or not all(isinstance(p, bool) for p in pattern):
            raise CheckpointError(meta.path, f"GGUF metadata sliding_window_pattern must hold {num_layers} bools")
        sliding = pattern
    elif isinstance(pattern, int) and not isinstance(pattern, bool) and pattern > 0:
        sliding = [(i + 1) % pattern != 0 for i in range(num_layers)]
    else:
        raise CheckpointError(
            meta.path, f"GGUF metadata sliding_window_pattern must be a period or bools, got {pattern!r}"
        )
    return tuple("sliding_attention" if s else "full_attention" for s in sliding)


def _gemma3_fields(meta: _Metadata, hidden: int, num_heads: int, head_dim: int, num_layers: int) -> dict[str, Any]:
    """Gemma 3: what llama.cpp's gemma3 loader assumes where the file is silent (a local rope base of
    10,000, every sixth layer global; the 27B's attention scale from hidden / heads)."""
    return {
        "qk_norm": True, "sandwich_norms": True, "norm_weight_offset": 1.0, "hidden_act": "gelu_pytorch_tanh",
        "embedding_multiplier": hidden**0.5,
        "query_pre_attn_scalar": hidden // num_heads if num_layers == 62 else head_dim,
        "sliding_window": meta.number("{arch}.attention.sliding_window", integer=True),
        "layer_types": _layer_types(meta, num_layers, 6),
        "local_rope_theta": float(meta.number("{arch}.rope.freq_base_swa", 10000.0)),
    }


@dataclass(frozen=True)
class GGUFArchitecture:
    """How one llama.cpp architecture's file maps to HF names and ModelConfig."""

    # GGUF per-layer tensor suffix -> HF name, beyond and over the llama ones (_LAYER_NAMES).
    layer_names: dict[str, str] = field(default_factory=dict)
    # llama.cpp's converter interleaves the Q/K rows of these (rotate-pairs rope); not of NeoX-style ones.
    permuted_qk: bool = False
    # What llama.cpp's converter added to every norm weight (Gemma: 1, storing HF's (1 + w) whole).
    norm_shift: float = 0.0
    # ModelConfig fields where it departs from Llama: (metadata, hidden, heads, head_dim, layers) -> fields.
    fields: Callable[[_Metadata, int, int, int, int], dict[str, Any]] = lambda *_: {}

    def hf_name(self, gguf_name: str) -> str | None:
        """The HF name of a tensor of this architecture, or None if it has none."""
        if gguf_name in _GLOBAL_NAMES:
            return _GLOBAL_NAMES[gguf_name]
        match = _LAYER_TENSOR.fullmatch(gguf_name)
        if match:
            suffix = match.group(2)
            name = self.layer_names.get(suffix, _LAYER_NAMES.get(suffix))
            if name is not None:
                return f"model.layers.{match.group(1)}.{name}"
        return None


ARCHITECTURES = {
    "llama": GGUFArchitecture(permuted_qk=True),
    "qwen2": GGUFArchitecture(
        layer_names={f"attn_{p}.bias": f"self_attn.{p}_proj.bias" for p in "qkv"},
        fields=lambda *_: {"attention_bias": True},
    ),
    "qwen3": GGUFArchitecture(layer_names=_QK_NORM_NAMES, fields=lambda *_: {"qk_norm": True}),
    "gemma3": GGUFArchitecture(
        layer_names={
            **_QK_NORM_NAMES,
            "post_attention_norm.weight": "post_attention_layernorm.weight",
            "ffn_norm.weight": "pre_feedforward_layernorm.weight",
            "post_ffw_norm.weight": "post_feedforward_layernorm.weight",
        },
        norm_shift=1.0,
        fields=_gemma3_fields,
    ),
}
SUPPORTED_ARCHITECTURES = tuple(ARCHITECTURES)


def hf_name(gguf_name: str, arch: str = "llama") -> str | None:
    """The HF name of a llama.cpp tensor name of architecture `arch`, or None if it has none."""
    return ARCHITECTURES[arch].hf_name(gguf_name)


def _config(gguf: GGUFFile, arch: str) -> ModelConfig:
    meta = _Metadata(gguf, arch)
    hidden = meta.number("{arch}.embedding_length", integer=True)
    num_heads = meta.number("{arch}.attention.head_count", integer=True)
    key_length = meta.number("{arch}.attention.key_length", None, integer=True)
    value_length = meta.number("{arch}.attention.value_length", key_length, integer=True)
    if key_length != value_length:
        raise CheckpointError(gguf.path, f"key_length {key_length} != value_length {value_length} is not supported")
    rope_dims = meta.number("{arch}.rope.dimension_count", None, integer=True)
    # The key length, else the rotary dimension (llama rotates whole heads; HF reads it so), else hidden / heads.
    head_dim = key_length or rope_dims or hidden // max(num_heads, 1)
    if rope_dims is not None and rope_dims != head_dim:
        raise CheckpointError(
            gguf.path, f"partial rotary embeddings (rope.dimension_count {rope_dims} != head_dim {head_dim}) "
            "are not supported"
        )
    context_length = meta.number("{arch}.context_length", integer=True)
    if "token_embd.weight" not in gguf.tensors:
        raise CheckpointError(gguf.path, "GGUF file has no 'token_embd.weight' tensor")
    vocab_size = gguf.tensors["token_embd.weight"].shape[0]
    eos = meta.get("tokenizer.ggml.eos_token_id")
    num_layers = meta.number("{arch}.block_count", integer=True)
    family = ARCHITECTURES[arch].fields(meta, hidden, num_heads, head_dim, num_layers)
    try:
        return ModelConfig(
            vocab_size=vocab_size,
            hidden_size=hidden,
            intermediate_size=meta.number("{arch}.feed_forward_length", integer=True),
            num_hidden_layers=num_layers,
            num_attention_heads=num_heads,
            num_key_value_heads=meta.number("{arch}.attention.head_count_kv", num_heads, integer=True),
            head_dim=head_dim,
            max_position_embeddings=context_length,
            rms_norm_eps=float(meta.number("{arch}.attention.layer_norm_rms_epsilon", 1e-5)),
            rope_theta=float(meta.number("{arch}.rope.freq_base", 10000.0)),
            rope_scaling=_rope_scaling(meta, context_length),
            tie_word_embeddings="output.weight" not in gguf.tensors,
            bos_token_id=meta.get("tokenizer.ggml.bos_token_id"),
            eos_token_id=eos,
            name=meta.get("general.name") or Path(gguf.path).stem,
            extra={"architecture": arch},
            **family,
        )
    except ValueError as exc:
        raise CheckpointError(gguf.path, f"invalid model hyper-parameters: {exc}") from None


def load_gguf(
    path: str | os.PathLike | GGUFFile,
    *,
    keep_encoded: Collection[GGMLType] = (),
    shard: ShardFor | None = None,
) -> Checkpoint:
    """Load a GGUF file (or one already opened) of a supported architecture: config from its
    metadata, weights in HF names and layout (norm weights in HF's convention).

    Matrices whose type is in `keep_encoded` stay in their GGUF encoding (`QuantizedTensor`, a view
    of the memory-mapped file; the Q/K rows that llama.cpp permutes are read through a row order); every other
    tensor is dequantized to float32 (float types keep their dtype). With `shard`, each tensor is
    cut to `shard(config)`'s part as soon as it is read, so no more than one whole tensor exists.
    """
    gguf = path if isinstance(path, GGUFFile) else GGUFFile(path)
    arch = gguf.metadata.get("general.architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise CheckpointError(
            gguf.path, f"unsupported model architecture {arch!r}; supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
        )
    parts = gguf.metadata.get("split.count", 1)
    if parts != 1:
        raise CheckpointError(
            gguf.path, f"this is one part of a split GGUF model ({parts} parts); merge them first "
            "(llama-gguf-split --merge) and load the merged file"
        )
    config = _config(gguf, arch)
    architecture = ARCHITECTURES[arch]
    unknown = [name for name in gguf.tensors if architecture.hf_name(name) is None]
    if unknown:
        raise CheckpointError(
            gguf.path, f"unexpected tensors for a {arch} model: {', '.join(unknown[:4])}"
            f"{' ...' if len(unknown) > 4 else ''}"
        )
    # Check shapes before un-permuting (which needs whole heads): from the directory, decoding nothing.
    problems = shape_problems({architecture.hf_name(name): info.shape for name, info in gguf.tensors.items()}, config)
    if problems:
        raise CheckpointError(gguf.path, "; ".join(problems))
    # llama.cpp permutes these rows for the architectures whose rope rotates adjacent pairs.
    permuted = ("self_attn.q_proj.weight", "self_attn.k_proj.weight") if architecture.permuted_qk else ()
    cut = shard(config) if shard is not None else None
    weights: dict[str, torch.Tensor | QuantizedTensor] = {}
    decoded_types = set()
    for name, info in gguf.tensors.items():
        target = architecture.hf_name(name)
        raw = gguf.raw(name)
        encoded = len(info.shape) == 2 and info.qtype in keep_encoded
        try:
            if encoded:
                tensor = QuantizedTensor(torch.from_numpy(raw), info.qtype, info.shape)
            else:
                tensor = dequantize(raw, info.qtype, info.shape)
                if info.qtype not in FLOAT_TYPES:
                    decoded_types.add(info.qtype)
                if architecture.norm_shift and target.endswith("norm.weight"):
                    # Back to HF's w, as transformers' loader does (the model adds it back for (1 + w)).
                    tensor = tensor.float() - architecture.norm_shift
        except ValueError as exc:
            raise CheckpointError(gguf.path, f"tensor {name!r}: {exc}") from None
        if cut is not None:
            tensor = cut(target, tensor)  # whole heads: llama.cpp permutes rows within a head only
        if permuted and target.endswith(permuted):
            tensor = _unpermuted(tensor, config.head_dim)
        weights[target] = tensor
        if not _reads(tensor, raw):
            gguf.release(name)  # nothing reads the mapped bytes again: they were copied (un-permuted, decoded, cut)
    if keep_encoded and decoded_types:
        logger.info(
            "%s: %s tensors are dequantized to float32 at load (no kernel reads them encoded)",
            gguf.path, ", ".join(sorted(t.name for t in decoded_types)),
        )
    return Checkpoint(config=config, weights=weights, path=gguf.path, format="gguf", shard=cut)

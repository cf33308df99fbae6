"""Random-weight llama GGUF files at real shapes, for benchmarks that need big models without downloads.

Each preset is the shape of a published model (Llama-3.2-1B, Llama-3.1-8B) with the tensor types
llama.cpp's quantizer gives that file type (`llama_tensor_get_type`): the output matrix, or the
tied token embedding that serves as it, becomes Q6_K in a Q4_0 or Q4_K_M file; Q4_K_M gives
attn_v and ffn_down Q6_K in the layers its `use_more_bits` rule picks, Q4_K elsewhere. Norms and
rope_freqs stay F32. Weights follow HF's initialization (N(0, 0.02) matrices, unit norms), so
activations stay in range; they are deterministic from a seed, tensor by tensor, and Q/K rows are
stored in llama.cpp's permuted order as its converter writes them. The tokenizer is the default
model's (SmolLM2-135M-Instruct byte-level BPE, with its chat template), padded with reserved
control tokens up to the preset's vocabulary (llama.cpp wants one token per embedding row).

Files go to a cache folder outside the repository (never committed), named by preset and a key of
everything that decides their bytes; an existing file is reused. Tensors are written one at a
time (tensor infos first, data after), so the 8B file needs well under its own size in memory.

gguf-py quantizes Q4_0, Q4_1, Q8_0, F16 and BF16; it has no quantizer for the K-quants, so
`quantize_k` below implements Q4_K, Q5_K and Q6_K (plain min/max scaling, every value within half
a quantization step; the tests hold it to that through `gguf.quants.dequantize`).

    python -m benchmarks.make_gguf [--models NAME ...] [--cache DIR] [--list]
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import importlib.metadata
import json
import math
import os
import time
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import gguf
import numpy as np
from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as Q

from fastllm.model.config import ModelConfig

DEFAULT_CACHE = Path.home() / ".cache" / "fastllm" / "gguf"
INIT_STD = 0.02  # HF's initializer_range
FORMAT_VERSION = 1  # bump when the bytes written for the same parameters change
QK_K = 256  # K-quant super-block size
# Rows generated (and quantized) at a time: bounds memory on the 8B's 128256 x 4096 embedding.
CHUNK_VALUES = 1 << 24

GGUF_PY_TYPES = (Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q8_0, Q.F16, Q.BF16)
K_TYPES = (Q.Q4_K, Q.Q5_K, Q.Q6_K)
MATRIX_TYPES = (Q.F32, *GGUF_PY_TYPES, *K_TYPES)
_FILE_TYPES = {  # general.file_type of the file, by its main matrix type
    Q.F32: gguf.LlamaFileType.ALL_F32, Q.F16: gguf.LlamaFileType.MOSTLY_F16, Q.BF16: gguf.LlamaFileType.MOSTLY_BF16,
    Q.Q4_0: gguf.LlamaFileType.MOSTLY_Q4_0, Q.Q4_1: gguf.LlamaFileType.MOSTLY_Q4_1,
    Q.Q5_0: gguf.LlamaFileType.MOSTLY_Q5_0, Q.Q5_1: gguf.LlamaFileType.MOSTLY_Q5_1,
    Q.Q8_0: gguf.LlamaFileType.MOSTLY_Q8_0, Q.Q4_K: gguf.LlamaFileType.MOSTLY_Q4_K_M,
    Q.Q5_K: gguf.LlamaFileType.MOSTLY_Q5_K_M, Q.Q6_K: gguf.LlamaFileType.MOSTLY_Q6_K,
}

# -- shapes and presets ----------------------------------------------------------------------------

_LLAMA3_ROPE = {"rope_type": "llama3", "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192}
# bos/eos are the default model's, whose tokenizer the files carry.
LLAMA_3_2_1B = ModelConfig(
    vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
    num_key_value_heads=8, head_dim=64, max_position_embeddings=131072, rms_norm_eps=1e-5, rope_theta=500000.0,
    rope_scaling={**_LLAMA3_ROPE, "factor": 32.0}, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2,
    name="Llama-3.2-1B shape, random weights",
)
LLAMA_3_1_8B = ModelConfig(
    vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
    num_key_value_heads=8, head_dim=128, max_position_embeddings=131072, rms_norm_eps=1e-5, rope_theta=500000.0,
    rope_scaling={**_LLAMA3_ROPE, "factor": 8.0}, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
    name="Llama-3.1-8B shape, random weights",
)


def _more_bits_layers(num_layers: int) -> list[int]:
    """The layers llama.cpp's `use_more_bits` gives more bits: the first and last eighth, every third between."""
    return [i for i in range(num_layers)
            if i < num_layers // 8 or i >= 7 * num_layers // 8 or (i - num_layers // 8) % 3 == 2]


def llama_cpp_types(config: ModelConfig, file_type: Q) -> dict[str, Q]:
    """Tensor-name pattern -> type, as llama.cpp's quantizer assigns them for file type Q4_0, Q8_0 or
    Q4_K (meaning Q4_K_M); first match wins (see `tensor_type`)."""
    output = "output.weight" if not config.tie_word_embeddings else "token_embd.weight"
    types: dict[str, Q] = {}
    if file_type == Q.Q4_K:
        for i in _more_bits_layers(config.num_hidden_layers):
            types[f"blk.{i}.attn_v.weight"] = types[f"blk.{i}.ffn_down.weight"] = Q.Q6_K
    elif file_type not in (Q.Q4_0, Q.Q8_0):
        raise ValueError(f"file_type must be Q4_0, Q8_0 or Q4_K (Q4_K_M), got {file_type.name}")
    # llama.cpp keeps a Q8_0 file's output in Q8_0 and makes it Q6_K for the lower-bit types.
    types[output] = Q.Q8_0 if file_type == Q.Q8_0 else Q.Q6_K
    types["*"] = file_type
    return types


@dataclass(frozen=True)
class Preset:
    config: ModelConfig
    file_type: Q
    seed: int = 0

    @property
    def types(self) -> dict[str, Q]:
        return llama_cpp_types(self.config, self.file_type)


PRESETS = {
    "llama-3.2-1b-q4_0": Preset(LLAMA_3_2_1B, Q.Q4_0),
    "llama-3.2-1b-q8_0": Preset(LLAMA_3_2_1B, Q.Q8_0),
    "llama-3.2-1b-q4_k_m": Preset(LLAMA_3_2_1B, Q.Q4_K),
    "llama-3.1-8b-q4_0": Preset(LLAMA_3_1_8B, Q.Q4_0),
}

# -- tensors ---------------------------------------------------------------------------------------


def tensor_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """GGUF name -> shape (PyTorch order) of every tensor of a llama file, in llama.cpp's order."""
    hidden, inter, head_dim = config.hidden_size, config.intermediate_size, config.head_dim
    q_size, kv_size = config.num_attention_heads * head_dim, config.num_key_value_heads * head_dim
    shapes: dict[str, tuple[int, ...]] = {"token_embd.weight": (config.vocab_size, hidden)}
    if config.rope_scaling is not None:
        shapes["rope_freqs.weight"] = (head_dim // 2,)
    for i in range(config.num_hidden_layers):
        shapes.update({
            f"blk.{i}.attn_norm.weight": (hidden,),
            f"blk.{i}.attn_q.weight": (q_size, hidden),
            f"blk.{i}.attn_k.weight": (kv_size, hidden),
            f"blk.{i}.attn_v.weight": (kv_size, hidden),
            f"blk.{i}.attn_output.weight": (hidden, q_size),
            f"blk.{i}.ffn_norm.weight": (hidden,),
            f"blk.{i}.ffn_gate.weight": (inter, hidden),
            f"blk.{i}.ffn_up.weight": (inter, hidden),
            f"blk.{i}.ffn_down.weight": (hidden, inter),
        })
    shapes["output_norm.weight"] = (hidden,)
    if not config.tie_word_embeddings:
        shapes["output.weight"] = (config.vocab_size, hidden)
    return shapes


def tensor_type(name: str, shape: tuple[int, ...], types: Mapping[str, Q]) -> Q:
    """The type `name` is stored in: F32 for 1-D tensors (norms, rope_freqs), else the first
    pattern of `types` (fnmatch on the GGUF name, e.g. "blk.*.attn_v.weight" or "*") that matches."""
    if len(shape) == 1:
        return Q.F32
    for pattern, qtype in types.items():
        if fnmatch.fnmatchcase(name, pattern):
            if qtype not in MATRIX_TYPES:
                raise ValueError(f"types[{pattern!r}] is {qtype!r}; supported: {[t.name for t in MATRIX_TYPES]}")
            block = GGML_QUANT_SIZES[qtype][0]
            if shape[-1] % block:
                raise ValueError(f"tensor {name!r} has rows of {shape[-1]} values: {qtype.name} needs a multiple "
                                 f"of {block}")
            return qtype
    raise ValueError(f"no pattern of types {list(types)} matches tensor {name!r}: add one, or '*'")


def llama3_rope_freqs(config: ModelConfig) -> np.ndarray:
    """llama.cpp's rope_freqs for llama3 scaling: the divisor of each rotary frequency (its converter's formula)."""
    scaling = config.rope_scaling or {}
    if scaling.get("rope_type") != "llama3":
        raise ValueError(f"rope_freqs are written for llama3 rope scaling only, got rope_scaling={scaling!r}")
    factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
    old_context = scaling["original_max_position_embeddings"]
    freqs = 1.0 / (config.rope_theta ** (np.arange(0, config.head_dim, 2, dtype=np.float64) / config.head_dim))
    factors = []
    for freq in freqs:
        wavelength = 2 * math.pi / freq
        if wavelength < old_context / high:
            factors.append(1.0)
        elif wavelength > old_context / low:
            factors.append(factor)
        else:
            smooth = (old_context / wavelength - low) / (high - low)
            factors.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(factors, dtype=np.float32)


def permute_qk(weight: np.ndarray, num_heads: int) -> np.ndarray:
    """llama.cpp's converter order for Q/K rows (adjacent rotary pairs); `unpermute_qk` undoes it."""
    rows = weight.shape[0]
    return weight.reshape(num_heads, 2, rows // num_heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def _qk_heads(name: str, config: ModelConfig) -> int | None:
    if name.endswith(".attn_q.weight"):
        return config.num_attention_heads
    if name.endswith(".attn_k.weight"):
        return config.num_key_value_heads
    return None


def source_chunks(name: str, shape: tuple[int, ...], seed: int) -> Iterator[np.ndarray]:
    """The float32 values of tensor `name` in HF layout, a block of rows at a time: ones for 1-D
    tensors (norms), N(0, 0.02) for matrices, from a stream of its own (seed and name decide it)."""
    if len(shape) == 1:
        yield np.ones(shape, np.float32)
        return
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    rows, columns = shape
    step = max(1, CHUNK_VALUES // columns)
    for first in range(0, rows, step):
        chunk = rng.standard_normal((min(step, rows - first), columns), dtype=np.float32)
        chunk *= INIT_STD
        yield chunk


def source_tensor(name: str, config: ModelConfig, seed: int) -> np.ndarray:
    """Tensor `name` (a GGUF name) before quantization, in HF layout (Q/K rows not permuted)."""
    if name == "rope_freqs.weight":
        return llama3_rope_freqs(config)
    shape = tensor_shapes(config)[name]
    return np.concatenate(list(source_chunks(name, shape, seed))) if len(shape) > 1 else next(
        source_chunks(name, shape, seed))


def _stored_chunks(name: str, config: ModelConfig, seed: int) -> Iterator[np.ndarray]:
    """What is quantized for `name`, in file order: Q/K permuted whole (they are small), the rest as generated."""
    heads = _qk_heads(name, config)
    if name == "rope_freqs.weight" or heads is not None:
        tensor = source_tensor(name, config, seed)
        yield tensor if heads is None else permute_qk(tensor, heads)
        return
    yield from source_chunks(name, tensor_shapes(config)[name], seed)


# -- quantization ----------------------------------------------------------------------------------


def _f16_at_least(values: np.ndarray) -> np.ndarray:
    """The smallest float16 >= each (non-negative, finite) value: a scale that never falls short of its target."""
    half = values.astype(np.float16)
    low = half.astype(np.float32) < values
    half[low] = np.nextafter(half[low], np.float16(np.inf))
    return half


def _divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator, 0 where the denominator is 0 (an all-zero block or sub-block)."""
    out = np.zeros(np.broadcast_shapes(numerator.shape, denominator.shape), np.float32)
    np.divide(numerator, denominator, out=out, where=denominator != 0)
    return out


def _pack_k_scales(scales: np.ndarray, mins: np.ndarray) -> np.ndarray:
    """Q4_K/Q5_K's 12 bytes of eight 6-bit scales and mins ([n, 8] each; layout of gguf's `get_scale_min`)."""
    out = np.empty((scales.shape[0], 12), np.uint8)
    out[:, 0:4] = scales[:, :4] | ((scales[:, 4:] >> 4) << 6)
    out[:, 4:8] = mins[:, :4] | ((mins[:, 4:] >> 4) << 6)
    out[:, 8:12] = (scales[:, 4:] & 0x0F) | ((mins[:, 4:] & 0x0F) << 4)
    return out


def _quantize_q45_k(blocks: np.ndarray, bits: int) -> np.ndarray:
    """Q4_K (bits 4) or Q5_K (bits 5): value = d * scale_j * q - dmin * min_j over 8 sub-blocks of 32."""
    n, top = blocks.shape[0], (1 << bits) - 1
    sub = blocks.reshape(n, 8, 32)
    offset = -np.minimum(sub.min(axis=-1), 0)  # what the sub-block's minimum must reach down to
    dmin = _f16_at_least(offset.max(axis=-1) / 63)
    mins = np.clip(np.ceil(_divide(offset, dmin.astype(np.float32)[:, None])), 0, 63).astype(np.uint8)
    base = dmin.astype(np.float32)[:, None] * mins.astype(np.float32)  # >= offset: the range covers the minimum
    need = (sub.max(axis=-1) + base) / top  # the step that reaches the maximum from -base
    d = _f16_at_least(need.max(axis=-1) / 63)
    scales = np.clip(np.ceil(_divide(need, d.astype(np.float32)[:, None])), 0, 63).astype(np.uint8)
    step = d.astype(np.float32)[:, None] * scales.astype(np.float32)
    q = np.clip(np.rint(_divide(sub + base[..., None], step[..., None])), 0, top).astype(np.uint8)
    low = q & 0x0F
    parts = [d.view(np.uint8).reshape(n, 2), dmin.view(np.uint8).reshape(n, 2), _pack_k_scales(scales, mins)]
    if bits == 5:  # bit 4 of value l of sub-block j is bit j of qh[l]
        parts.append(np.bitwise_or.reduce((q >> 4) << np.arange(8, dtype=np.uint8)[None, :, None], axis=1))
    parts.append((low[:, 0::2] | (low[:, 1::2] << 4)).reshape(n, 128))  # sub-blocks 2c, 2c+1 share 32 bytes
    return np.concatenate(parts, axis=1)


def _quantize_q6_k(blocks: np.ndarray) -> np.ndarray:
    """Q6_K: value = d * scale_j * (q - 32) over 16 sub-blocks of 16, int8 scales."""
    n = blocks.shape[0]
    sub = blocks.reshape(n, 16, 16)
    need = np.abs(sub).max(axis=-1) / 31  # q in [-31, 31]: symmetric, inside [-32, 31]
    d = _f16_at_least(need.max(axis=-1) / 127)
    scales = np.clip(np.ceil(_divide(need, d.astype(np.float32)[:, None])), 0, 127).astype(np.int8)
    step = d.astype(np.float32)[:, None] * scales.astype(np.float32)
    q = (np.clip(np.rint(_divide(sub, step[..., None])), -32, 31) + 32).astype(np.uint8).reshape(n, 2, 128)
    # Value e = 128 h + 64 s + j (j < 64): nibble s of ql[64 h + j]; its bits 4-5 are bits 2t of
    # qh[32 h + l] where e = 128 h + 32 t + l.
    halves = q.reshape(n, 2, 2, 64)
    ql = ((halves[:, :, 0] & 0x0F) | ((halves[:, :, 1] & 0x0F) << 4)).reshape(n, 128)
    high = (q.reshape(n, 2, 4, 32) >> 4) << (2 * np.arange(4, dtype=np.uint8))[None, None, :, None]
    qh = np.bitwise_or.reduce(high, axis=2).reshape(n, 64)
    return np.concatenate([ql, qh, scales.view(np.uint8), d.view(np.uint8).reshape(n, 2)], axis=1)


def quantize_k(data: np.ndarray, qtype: Q) -> np.ndarray:
    """Q4_K, Q5_K or Q6_K blocks (uint8 [..., bytes per row]) of float32 `data` whose rows are
    multiples of 256; every value decodes (gguf.quants.dequantize) to within half a step of its input."""
    if qtype not in K_TYPES:
        raise ValueError(f"qtype must be one of {[t.name for t in K_TYPES]}, got {qtype!r}")
    data = np.asarray(data, dtype=np.float32)
    if data.ndim == 0 or data.shape[-1] % QK_K:
        raise ValueError(f"data rows must be a multiple of {QK_K} values for {qtype.name}, got shape {data.shape}")
    if not np.isfinite(data).all():
        raise ValueError("data must be finite to be quantized")
    blocks = data.reshape(-1, QK_K)
    packed = _quantize_q6_k(blocks) if qtype == Q.Q6_K else _quantize_q45_k(blocks, 4 if qtype == Q.Q4_K else 5)
    return packed.reshape(*data.shape[:-1], data.shape[-1] // QK_K * GGML_QUANT_SIZES[qtype][1])


def quantize(data: np.ndarray, qtype: Q) -> np.ndarray:
    """`data` (float32) stored as `qtype`: uint8 [..., bytes per row], as a GGUF file holds it."""
    if qtype == Q.F32:
        return np.ascontiguousarray(data, dtype=np.float32).view(np.uint8)
    if qtype in K_TYPES:
        return quantize_k(data, qtype)
    if qtype in GGUF_PY_TYPES:
        return np.ascontiguousarray(gguf.quants.quantize(np.asarray(data, np.float32), qtype)).view(np.uint8)
    raise ValueError(f"qtype must be one of {[t.name for t in MATRIX_TYPES]}, got {qtype!r}")


def row_bytes(columns: int, qtype: Q) -> int:
    block, size = GGML_QUANT_SIZES[qtype]
    return columns // block * size


# -- tokenizer -------------------------------------------------------------------------------------


def default_tokenizer_metadata() -> dict[str, Any]:
    """The default model's `tokenizer.*` metadata (SmolLM2-135M-Instruct byte-level BPE, chat template)."""
    from fastllm.loader.default_model import default_model_path
    from fastllm.loader.gguf_file import GGUFFile

    metadata = GGUFFile(default_model_path()).metadata
    return {key: value for key, value in metadata.items() if key.startswith("tokenizer.")}


def fit_tokenizer(metadata: Mapping[str, Any], vocab_size: int) -> dict[str, Any]:
    """`metadata`'s tokenizer with exactly `vocab_size` tokens: padded with reserved control tokens,
    or cut (dropping the merges that build a token past the cut) for tiny test models."""
    tokens = list(metadata["tokenizer.ggml.tokens"])
    types = [int(t) for t in metadata["tokenizer.ggml.token_type"]]
    merges = list(metadata["tokenizer.ggml.merges"])
    special = {key: value for key, value in metadata.items() if key.endswith("_token_id")}
    if vocab_size < len(tokens):
        tokens, types = tokens[:vocab_size], types[:vocab_size]
        kept = set(tokens)
        merges = [m for m in merges if m.replace(" ", "", 1) in kept and all(p in kept for p in m.split(" ", 1))]
        too_big = {key: value for key, value in special.items() if value >= vocab_size}
        if too_big:
            raise ValueError(f"vocab_size {vocab_size} cuts off the tokenizer's special tokens {too_big}")
    padding = vocab_size - len(tokens)
    tokens += [f"<|reserved_special_token_{i}|>" for i in range(padding)]
    types += [int(gguf.TokenType.CONTROL)] * padding
    return {**metadata, "tokenizer.ggml.tokens": tokens, "tokenizer.ggml.token_type": types,
            "tokenizer.ggml.merges": merges}


def _add_tokenizer(writer: gguf.GGUFWriter, metadata: Mapping[str, Any]) -> None:
    def raw(token: str) -> bytes:  # GGUFFile keeps undecodable bytes as surrogates
        return token.encode("utf-8", "surrogateescape")

    writer.add_tokenizer_model(metadata["tokenizer.ggml.model"])
    writer.add_tokenizer_pre(metadata.get("tokenizer.ggml.pre", "gpt2"))
    writer.add_token_list([raw(t) for t in metadata["tokenizer.ggml.tokens"]])
    writer.add_token_types(list(metadata["tokenizer.ggml.token_type"]))
    writer.add_token_merges([raw(m) for m in metadata["tokenizer.ggml.merges"]])
    for key in ("unknown_token_id", "padding_token_id"):
        if f"tokenizer.ggml.{key}" in metadata:
            writer.add_uint32(f"tokenizer.ggml.{key}", int(metadata[f"tokenizer.ggml.{key}"]))
    for key in ("add_bos_token", "add_space_prefix"):
        if f"tokenizer.ggml.{key}" in metadata:
            writer.add_bool(f"tokenizer.ggml.{key}", bool(metadata[f"tokenizer.ggml.{key}"]))
    if "tokenizer.chat_template" in metadata:
        writer.add_chat_template(metadata["tokenizer.chat_template"])


# -- writing ---------------------------------------------------------------------------------------


def _add_model_metadata(writer: gguf.GGUFWriter, config: ModelConfig, file_type: Q) -> None:
    writer.add_name(config.name)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_freq_base(config.rope_theta)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_dimension_count(config.head_dim)
    if config.head_dim != config.hidden_size // config.num_attention_heads:
        writer.add_key_length(config.head_dim)
        writer.add_value_length(config.head_dim)
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type(_FILE_TYPES[file_type])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    if config.bos_token_id is not None:
        writer.add_bos_token_id(config.bos_token_id)
    if config.eos_token_id is not None:
        writer.add_eos_token_id(config.eos_token_id)


def _check_rope_scaling(config: ModelConfig) -> None:
    rope_type = (config.rope_scaling or {}).get("rope_type", "default")
    if rope_type not in ("default", "llama3"):
        raise ValueError(f"config.rope_scaling must be None or llama3 (written as rope_freqs), got {rope_type!r}")


def _layout(config: ModelConfig, types: Mapping[str, Q]) -> tuple[dict[str, tuple[int, ...]], dict[str, Q], Q]:
    """The tensors' shapes, the type each is stored in, and the file's main type (its general.file_type)."""
    shapes = tensor_shapes(config)
    stored = {name: tensor_type(name, shape, types) for name, shape in shapes.items()}
    return shapes, stored, types.get("*", next(iter(stored.values())))


def write_random_gguf(
    path: str | os.PathLike,
    config: ModelConfig,
    types: Mapping[str, Q],
    seed: int = 0,
    *,
    tokenizer: Mapping[str, Any] | None = None,
) -> Path:
    """Write a llama GGUF file of `config`'s shape with random weights (see `source_tensor`).

    types: GGUF-name pattern -> type of the matrices stored by it, first match wins (`tensor_type`);
    1-D tensors are F32. llama3 rope scaling is written as rope_freqs, as llama.cpp does.
    tokenizer: `tokenizer.*` metadata; None = the default model's, fitted to config.vocab_size.
    Tensors are quantized and written one at a time. Returns the path.
    """
    _check_rope_scaling(config)
    shapes, stored, main_type = _layout(config, types)
    path = Path(path)
    writer = gguf.GGUFWriter(path, "llama")
    _add_model_metadata(writer, config, main_type)
    _add_tokenizer(writer, fit_tokenizer(tokenizer or default_tokenizer_metadata(), config.vocab_size))
    for name, shape in shapes.items():
        nbytes = math.prod(shape[:-1]) * row_bytes(shape[-1], stored[name])
        writer.add_tensor_info(name, shape, np.dtype(np.float32), nbytes, raw_dtype=stored[name])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for name, shape in shapes.items():
        data = np.empty((math.prod(shape[:-1]), row_bytes(shape[-1], stored[name])), np.uint8)
        row = 0
        for chunk in _stored_chunks(name, config, seed):
            chunk = chunk.reshape(-1, shape[-1])
            data[row : row + len(chunk)] = quantize(chunk, stored[name])
            row += len(chunk)
        writer.write_tensor_data(data)
        del data
    writer.close()
    return path


class _MetadataRecorder:
    """Stands in for a GGUFWriter: notes each metadata call `_add_model_metadata` makes."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def __getattr__(self, method: str) -> Callable[..., None]:
        return lambda *args: self.calls.append((method, *args))


def content_key(config: ModelConfig, types: Mapping[str, Q], seed: int) -> str:
    """A short hash of everything that decides a file's bytes (same key, same file): the model
    metadata written, each tensor's name, shape and type, what the values are drawn from (seed,
    rope scaling for rope_freqs), the tokenizer, and the gguf version that quantizes. Only what
    the writer reads: a ModelConfig field it does not write leaves the key (and the file) alone."""
    from fastllm.loader.default_model import default_model_path

    shapes, stored, main_type = _layout(config, types)
    metadata = _MetadataRecorder()
    _add_model_metadata(metadata, config, main_type)
    description = {
        "format": FORMAT_VERSION, "metadata": metadata.calls,
        "tensors": [(name, shape, stored[name].name) for name, shape in shapes.items()],
        "rope_scaling": config.rope_scaling, "seed": seed, "tokenizer": Path(default_model_path()).name,
        "gguf": importlib.metadata.version("gguf"),
    }
    return hashlib.sha256(json.dumps(description, sort_keys=True, default=str).encode()).hexdigest()[:12]


def preset_path(name: str, cache: str | os.PathLike = DEFAULT_CACHE) -> Path:
    """Where preset `name` lives in `cache` (whether or not it was written yet)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from {list(PRESETS)}")
    preset = PRESETS[name]
    return Path(cache) / f"{name}-{content_key(preset.config, preset.types, preset.seed)}.gguf"


def ensure_preset(name: str, cache: str | os.PathLike = DEFAULT_CACHE, *, log: bool = True) -> Path:
    """Preset `name`'s file in `cache`, written first if it is not there yet."""
    path = preset_path(name, cache)
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".partial-{os.getpid()}")  # renamed when complete: no half file is ever reused
    preset = PRESETS[name]
    start = time.perf_counter()
    if log:
        print(f"writing {path} ...", flush=True)
    try:
        write_random_gguf(partial, preset.config, preset.types, preset.seed)
        partial.rename(path)
    finally:
        partial.unlink(missing_ok=True)
    if log:
        print(f"  {path.stat().st_size / 1e9:.2f} GB in {time.perf_counter() - start:.0f} s", flush=True)
    return path


def tiny_config(**changes: Any) -> ModelConfig:
    """A tiny llama (a few hundred KB as GGUF) whose rows fit every type, K-quants included (256)."""
    base = ModelConfig(
        vocab_size=320, hidden_size=256, intermediate_size=256, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=2, head_dim=64, max_position_embeddings=512, rope_theta=500000.0,
        rope_scaling={**_LLAMA3_ROPE, "factor": 32.0, "original_max_position_embeddings": 64},
        tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, name="tiny random llama",
    )
    return replace(base, **changes)


def main(argv: list[str] | None = None) -> list[Path]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", choices=list(PRESETS), default=list(PRESETS),
                        help="presets to write (default all)")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE,
                        help=f"folder for the files (default {DEFAULT_CACHE})")
    parser.add_argument("--list", action="store_true",
                        help="print the presets' paths and whether they exist; write nothing")
    args = parser.parse_args(argv)
    if args.list:
        for name in args.models:
            path = preset_path(name, args.cache)
            print(f"{name:22s} {'present' if path.is_file() else 'missing':8s} {path}")
        return []
    return [ensure_preset(name, args.cache) for name in args.models]


if __name__ == "__main__":
    main()

"""GGUF loading: the container reader, dequantization of every supported type, llama files written
with gguf.GGUFWriter, and a clear error for every kind of bad file."""

from __future__ import annotations

import struct
import subprocess
import sys

import gguf
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Q
from gguf import quants

from benchmarks import make_gguf
from fastllm.ggml_types import BLOCK_SIZES, GGMLType
from fastllm.loader import CheckpointError, load_checkpoint
from fastllm.loader.gguf_file import GGUFFile, GGUFValueType
from fastllm.loader.gguf_loader import unpermute_qk
from fastllm.model import LlamaForCausalLM, get_backend
from fastllm.model.quantized import GGUF_QUANTS_TYPES, dequantize
from fastllm.model.rotary import rope_inv_freq

QK_K = 256
rng = np.random.default_rng()

# -- writing small llama GGUF files ---------------------------------------------------------

HIDDEN, INTER, HEADS, KV_HEADS, LAYERS, VOCAB = 64, 96, 4, 2, 2, 40
HEAD_DIM = HIDDEN // HEADS


def permute_like_llama_cpp(weight: np.ndarray, num_heads: int) -> np.ndarray:
    """convert_hf_to_gguf.py's Q/K permutation, written independently of the loader's inverse."""
    rows = weight.shape[0]
    return weight.reshape(num_heads, 2, rows // num_heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def hf_weights(tied: bool = True, hidden: int = HIDDEN, inter: int = INTER) -> dict[str, np.ndarray]:
    """Random float32 weights of a tiny llama, keyed by GGUF names, in HF's (unpermuted) layout."""
    config = make_gguf.tiny_config(
        vocab_size=VOCAB, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, head_dim=hidden // HEADS,
        rope_scaling=None, tie_word_embeddings=tied,
    )
    shapes = make_gguf.tensor_shapes(config)
    return {name: rng.standard_normal(shape).astype(np.float32) * 0.3 for name, shape in shapes.items()}


def write_gguf(
    path,
    weights: dict[str, np.ndarray],
    qtype: Q = Q.F32,
    *,
    arch: str = "llama",
    metadata: dict | None = None,
    skip_metadata: tuple[str, ...] = (),
    raw_tensors: dict[str, tuple[np.ndarray, Q]] | None = None,
    hidden: int = HIDDEN,
    inter: int = INTER,
) -> None:
    """A llama GGUF file: 2-D weights stored as `qtype` (Q/K permuted like llama.cpp), 1-D ones as F32."""
    writer = gguf.GGUFWriter(path, arch)
    values = {
        "context_length": 256, "embedding_length": hidden, "block_count": LAYERS, "feed_forward_length": inter,
        "attention.head_count": HEADS, "attention.head_count_kv": KV_HEADS, "rope.freq_base": 10000.0,
        "attention.layer_norm_rms_epsilon": 1e-6, "rope.dimension_count": hidden // HEADS,
    }
    for key, value in values.items():
        if key not in skip_metadata:
            kind = gguf.GGUFValueType.FLOAT32 if isinstance(value, float) else gguf.GGUFValueType.UINT32
            writer.add_key_value(f"{arch}.{key}", value, kind)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    for key, (value, kind) in (metadata or {}).items():
        writer.add_key_value(key, value, kind)
    for name, weight in weights.items():
        if name.endswith(("attn_q.weight", "attn_k.weight")):
            weight = permute_like_llama_cpp(weight, HEADS if "attn_q" in name else KV_HEADS)
        if weight.ndim == 1 or qtype == Q.F32:
            writer.add_tensor(name, weight)
        elif qtype == Q.F16:
            writer.add_tensor(name, weight.astype(np.float16))
        else:
            writer.add_tensor(name, quants.quantize(weight, qtype), raw_dtype=qtype)
    for name, (raw, raw_type) in (raw_tensors or {}).items():
        writer.add_tensor(name, raw, raw_dtype=raw_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def roundtrip(weight: np.ndarray, qtype: Q) -> np.ndarray:
    """What a `qtype` file stores for `weight`, decoded by gguf.quants (independent of fastllm)."""
    if weight.ndim == 1 or qtype == Q.F32:
        return weight
    if qtype == Q.F16:
        return weight.astype(np.float16).astype(np.float32)
    return quants.dequantize(quants.quantize(weight, qtype), qtype)


HF_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight", "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight", "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight", "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight", "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight", "ffn_down.weight": "mlp.down_proj.weight",
}


def to_hf_name(name: str) -> str:
    if name.startswith("blk."):
        _, layer, rest = name.split(".", 2)
        return f"model.layers.{layer}.{HF_NAMES[rest]}"
    return HF_NAMES[name]


# -- llama files end to end -----------------------------------------------------------------


@pytest.mark.parametrize("qtype", [Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1], ids=lambda q: q.name)
def test_llama_file_loads_to_hf_layout(tmp_path, qtype):
    weights = hf_weights(tied=qtype != Q.Q8_0)
    path = tmp_path / f"tiny-{qtype.name}.gguf"
    write_gguf(path, weights, qtype)
    checkpoint = load_checkpoint(path)
    assert checkpoint.format == "gguf" and checkpoint.path == str(path)
    assert set(checkpoint.weights) == {to_hf_name(name) for name in weights}
    for name, weight in weights.items():
        got = checkpoint.weights[to_hf_name(name)]
        np.testing.assert_array_equal(got.float().numpy(), roundtrip(weight, qtype), err_msg=name)
    expected_dtype = {Q.F16: torch.float16, Q.BF16: torch.bfloat16}.get(qtype, torch.float32)
    assert checkpoint.weights["model.layers.0.mlp.up_proj.weight"].dtype == expected_dtype
    config = checkpoint.config
    assert config.tie_word_embeddings == (qtype != Q.Q8_0)
    assert (config.vocab_size, config.hidden_size, config.intermediate_size) == (VOCAB, HIDDEN, INTER)
    assert (config.num_hidden_layers, config.num_attention_heads) == (LAYERS, HEADS)
    assert config.num_key_value_heads == KV_HEADS
    assert (config.head_dim, config.max_position_embeddings, config.rope_theta) == (HEAD_DIM, 256, 10000.0)
    assert config.rms_norm_eps == pytest.approx(1e-6) and config.rope_scaling is None
    assert (config.bos_token_id, config.eos_token_id, config.name) == (1, 2, f"tiny-{qtype.name}")


def test_unpermute_inverts_llama_cpp_permutation():
    weight = rng.standard_normal((6 * 8, 5))
    permuted = permute_like_llama_cpp(weight, 6)
    assert not np.array_equal(permuted, weight)
    np.testing.assert_array_equal(unpermute_qk(permuted, 6), weight)


def test_rope_freqs_and_key_length(tmp_path):
    """llama3 GGUF files carry rope_freqs (divisors of the frequencies); key_length sets head_dim."""
    factors = rng.uniform(1.0, 8.0, HEAD_DIM // 2).astype(np.float32)
    path = tmp_path / "llama3.gguf"
    write_gguf(path, {**hf_weights(), "rope_freqs.weight": factors})
    checkpoint = load_checkpoint(path)
    np.testing.assert_array_equal(checkpoint.weights["rope_freqs"].numpy(), factors)
    model = LlamaForCausalLM(checkpoint.config, get_backend("torch"))
    model.load_weights(checkpoint.weights)
    inv_freq = rope_inv_freq(HEAD_DIM, 10000.0)[0] / torch.from_numpy(factors)
    angles = torch.arange(256).float()[:, None] * inv_freq
    assert torch.equal(model.rotary_cos, angles.cos()) and torch.equal(model.rotary_sin, angles.sin())

    # An explicit key_length wins over embedding_length / head_count (here 2x the natural size).
    wide = {name: w for name, w in hf_weights().items()}
    for i in range(LAYERS):
        for part, heads in (("q", HEADS), ("k", KV_HEADS), ("v", KV_HEADS)):
            wide[f"blk.{i}.attn_{part}.weight"] = rng.standard_normal((heads * 32, HIDDEN)).astype(np.float32)
        wide[f"blk.{i}.attn_output.weight"] = rng.standard_normal((HIDDEN, HEADS * 32)).astype(np.float32)
    path = tmp_path / "wide.gguf"
    write_gguf(
        path, wide, skip_metadata=("rope.dimension_count",),
        metadata={"llama.attention.key_length": (32, gguf.GGUFValueType.UINT32)},
    )
    assert load_checkpoint(path).config.head_dim == 32


@pytest.mark.parametrize(
    "metadata, expected",
    [
        (
            {"llama.rope.scaling.type": "linear", "llama.rope.scaling.factor": 4.0},
            {"rope_type": "linear", "factor": 4.0},
        ),
        ({"llama.rope.scale_linear": 2.0}, {"rope_type": "linear", "factor": 2.0}),
        ({"llama.rope.scaling.type": "none", "llama.rope.scaling.factor": 4.0}, None),
        (
            {"llama.rope.scaling.type": "yarn", "llama.rope.scaling.factor": 4.0,
             "llama.rope.scaling.original_context_length": 64},
            {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64},
        ),
    ],
)
def test_rope_scaling_metadata(tmp_path, metadata, expected):
    def kind(value):
        return gguf.GGUFValueType.STRING if isinstance(value, str) else (
            gguf.GGUFValueType.FLOAT32 if isinstance(value, float) else gguf.GGUFValueType.UINT32
        )

    path = tmp_path / "scaled.gguf"
    write_gguf(path, hf_weights(), metadata={key: (value, kind(value)) for key, value in metadata.items()})
    assert load_checkpoint(path).config.rope_scaling == expected


# -- dequantization -------------------------------------------------------------------------


def random_f16(count: int) -> np.ndarray:
    """Finite float16 scales spanning normal, subnormal, zero and negative values."""
    values = rng.standard_normal(count).astype(np.float16) * np.float16(0.05)
    values[: min(count, 3)] = [np.float16(0.0), np.float16(-0.0), np.float16(3e-7)][: min(count, 3)]
    return values


def random_blocks(qtype: Q, n_blocks: int, f16_fields: tuple[int, ...]) -> np.ndarray:
    """Random bytes for `n_blocks` blocks of `qtype`, with the float16 fields at the given offsets made finite."""
    type_size = gguf.GGML_QUANT_SIZES[qtype][1]
    blocks = rng.integers(0, 256, (n_blocks, type_size), dtype=np.uint8)
    for offset in f16_fields:
        blocks[:, offset : offset + 2] = random_f16(n_blocks).view(np.uint8).reshape(n_blocks, 2)
    return blocks


@pytest.mark.parametrize(
    "qtype, f16_fields", [(Q.Q8_0, (0,)), (Q.Q4_0, (0,)), (Q.Q4_1, (0, 2))], ids=["Q8_0", "Q4_0", "Q4_1"]
)
def test_block_decoders_are_bit_identical_to_gguf_quants(qtype, f16_fields):
    block_size = gguf.GGML_QUANT_SIZES[qtype][0]
    rows, blocks_per_row = 7, 5
    raw = random_blocks(qtype, rows * blocks_per_row, f16_fields).reshape(rows, -1)
    got = dequantize(raw, qtype, (rows, blocks_per_row * block_size))
    np.testing.assert_array_equal(got.numpy(), quants.dequantize(raw, qtype))
    # And on what the quantizer produces from real-valued data.
    data = rng.standard_normal((rows, blocks_per_row * block_size)).astype(np.float32)
    packed = quants.quantize(data, qtype)
    np.testing.assert_array_equal(dequantize(packed, qtype, data.shape).numpy(), quants.dequantize(packed, qtype))


@pytest.mark.parametrize("qtype", [Q.F32, Q.F16, Q.BF16], ids=lambda q: q.name)
def test_float_types_are_reinterpreted(qtype):
    data = rng.standard_normal((3, 10)).astype(np.float32)
    raw = quants.quantize(data, qtype) if qtype == Q.BF16 else data.astype(
        np.float16 if qtype == Q.F16 else np.float32
    ).view(np.uint8)
    got = dequantize(raw.reshape(3, -1), qtype, (3, 10))
    np.testing.assert_array_equal(got.float().numpy(), quants.dequantize(raw.reshape(3, -1), qtype).reshape(3, 10))


def f16(blocks: np.ndarray, offset: int) -> np.ndarray:
    return blocks[:, offset : offset + 2].copy().view(np.float16).astype(np.float32)[:, 0]


def q4_k_reference(blocks: np.ndarray) -> np.ndarray:
    """dequantize_row_q4_K from ggml-quants.c, element by element."""
    out = np.empty((len(blocks), QK_K), np.float32)
    for b, block in enumerate(blocks):
        d, dmin = f16(blocks[b : b + 1], 0)[0], f16(blocks[b : b + 1], 2)[0]
        scales, qs = block[4:16], block[16:]

        def scale_min(j: int) -> tuple[int, int]:
            if j < 4:
                return scales[j] & 63, scales[j + 4] & 63
            return (scales[j + 4] & 0xF) | ((scales[j - 4] >> 6) << 4), (scales[j + 4] >> 4) | ((scales[j] >> 6) << 4)

        y = 0
        for j in range(0, QK_K, 64):
            q = qs[j // 2 : j // 2 + 32]
            for index, shift in ((j // 32, 0), (j // 32 + 1, 4)):
                sc, m = scale_min(index)
                d1, m1 = np.float32(d * np.float32(sc)), np.float32(dmin * np.float32(m))
                for l in range(32):
                    out[b, y] = d1 * np.float32((q[l] >> shift) & 0xF) - m1
                    y += 1
    return out


def q6_k_reference(blocks: np.ndarray) -> np.ndarray:
    """dequantize_row_q6_K from ggml-quants.c, element by element."""
    out = np.empty((len(blocks), QK_K), np.float32)
    for b, block in enumerate(blocks):
        ql, qh, sc = block[:128], block[128:192], block[192:208].view(np.int8)
        d = f16(blocks[b : b + 1], 208)[0]
        for n in range(2):
            l_base, h_base, s_base, y = 64 * n, 32 * n, 8 * n, 128 * n
            for l in range(32):
                lo0, lo1, h = ql[l_base + l], ql[l_base + l + 32], qh[h_base + l]
                values = (
                    (lo0 & 0xF) | ((h >> 0) & 3) << 4, (lo1 & 0xF) | ((h >> 2) & 3) << 4,
                    (lo0 >> 4) | ((h >> 4) & 3) << 4, (lo1 >> 4) | ((h >> 6) & 3) << 4,
                )
                for k, q in enumerate(values):
                    scale = np.float32(d * np.float32(sc[s_base + l // 16 + 2 * k]))
                    out[b, y + l + 32 * k] = scale * np.float32(int(q) - 32)
    return out


@pytest.mark.parametrize(
    "qtype, f16_fields, reference",
    [(Q.Q4_K, (0, 2), q4_k_reference), (Q.Q6_K, (208,), q6_k_reference)],
    ids=["Q4_K", "Q6_K"],
)
def test_k_quants_match_an_independent_decoding(qtype, f16_fields, reference):
    blocks = random_blocks(qtype, 3, f16_fields)
    got = dequantize(blocks.reshape(1, -1), qtype, (1, 3 * QK_K))
    np.testing.assert_array_equal(got.numpy().reshape(3, QK_K), reference(blocks))


def test_k_quant_llama_file(tmp_path):
    """A Q4_K / Q6_K file (rows of 256) loads with its weights decoded and in place."""
    raw = {
        "blk.0.ffn_gate.weight": (random_blocks(Q.Q4_K, QK_K, (0, 2)), Q.Q4_K),
        "blk.0.ffn_up.weight": (random_blocks(Q.Q6_K, QK_K, (208,)), Q.Q6_K),
    }
    weights = {name: w for name, w in hf_weights(hidden=QK_K, inter=QK_K).items() if name not in raw}
    path = tmp_path / "kquants.gguf"
    write_gguf(path, weights, raw_tensors=raw, hidden=QK_K, inter=QK_K)
    checkpoint = load_checkpoint(path)
    assert checkpoint.config.hidden_size == QK_K and checkpoint.config.head_dim == QK_K // HEADS
    weights = checkpoint.weights
    gate, up = raw["blk.0.ffn_gate.weight"][0], raw["blk.0.ffn_up.weight"][0]
    np.testing.assert_array_equal(weights["model.layers.0.mlp.gate_proj.weight"].numpy(), q4_k_reference(gate))
    np.testing.assert_array_equal(weights["model.layers.0.mlp.up_proj.weight"].numpy(), q6_k_reference(up))


@pytest.mark.parametrize("qtype", GGUF_QUANTS_TYPES, ids=lambda q: q.name)
def test_every_gguf_quants_type_decodes_to_its_shape(qtype):
    block_size, type_size = gguf.GGML_QUANT_SIZES[qtype]
    raw = np.zeros((2, 2 * type_size), np.uint8)
    got = dequantize(raw, qtype, (2, 2 * block_size))
    assert got.shape == (2, 2 * block_size) and got.dtype == torch.float32 and torch.isfinite(got).all()


# -- the container reader against gguf.GGUFReader --------------------------------------------


def test_reader_agrees_with_gguf_reader(tmp_path):
    path = tmp_path / "kinds.gguf"
    writer = gguf.GGUFWriter(path, "llama")
    V = gguf.GGUFValueType
    scalars = {
        "t.u8": (200, V.UINT8), "t.i8": (-100, V.INT8), "t.u16": (60000, V.UINT16), "t.i16": (-30000, V.INT16),
        "t.u32": (4_000_000_000, V.UINT32), "t.i32": (-2_000_000_000, V.INT32), "t.f32": (0.25, V.FLOAT32),
        "t.bool": (True, V.BOOL), "t.str": ("héllo ✓", V.STRING), "t.u64": (2**63, V.UINT64),
        "t.i64": (-(2**62), V.INT64), "t.f64": (1e-300, V.FLOAT64),
    }
    for key, (value, kind) in scalars.items():
        writer.add_key_value(key, value, kind)
    tokens = [f"tok{i}\u0120" for i in range(300)]
    writer.add_token_list(tokens)
    writer.add_array("t.ints", [3, -1, 7])
    writer.add_array("t.floats", [0.5, 1.5])
    writer.add_tensor("a", rng.standard_normal((3, 5)).astype(np.float32))
    writer.add_tensor("b", quants.quantize(rng.standard_normal((4, 64)).astype(np.float32), Q.Q4_1), raw_dtype=Q.Q4_1)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    ours, theirs = GGUFFile(path), gguf.GGUFReader(path)
    for key, field in theirs.fields.items():
        if key.startswith("GGUF."):
            continue
        expected, got = field.contents(), ours.metadata[key]
        if isinstance(got, np.ndarray):
            got = got.tolist()
        assert got == expected, key
    assert ours.metadata["tokenizer.ggml.tokens"] == tokens
    assert list(ours.tensors) == [t.name for t in theirs.tensors]
    for tensor in theirs.tensors:
        info = ours.tensors[tensor.name]
        assert (info.qtype, info.offset, info.nbytes) == (tensor.tensor_type, tensor.data_offset, tensor.n_bytes)
        assert info.shape == tuple(int(d) for d in reversed(tensor.shape))
        expected = np.asarray(tensor.data).view(np.uint8).reshape(-1)
        np.testing.assert_array_equal(ours.raw(tensor.name).reshape(-1), expected)


def test_type_tables_agree_with_the_gguf_package():
    # The gguf package may know types released after ours (a file of one is an unknown type id);
    # every type of ours must be its type of the same id, name and block size.
    for qtype, sizes in BLOCK_SIZES.items():
        assert Q(int(qtype)).name == qtype.name
        assert gguf.GGML_QUANT_SIZES[Q(int(qtype))] == sizes, qtype.name
    assert set(BLOCK_SIZES) == set(GGMLType)
    for kind in GGUFValueType:
        assert gguf.GGUFValueType(int(kind)).name == kind.name
    assert len(GGUFValueType) == len(gguf.GGUFValueType)


def test_loading_natively_kept_types_does_not_import_gguf():
    # `import gguf` loads the whole package (YAML, SentencePiece): about 4 MB per engine process.
    # The default model (Q4_1 and Q8_0 matrices, float32 norms) and its tokenizer.
    script = (
        "import sys\nfrom fastllm.loader import load\nfrom fastllm.kernels.cpu_quant import QUANTIZED_TYPES\n"
        "load(keep_encoded=QUANTIZED_TYPES)\n"
        "print(sorted(m for m in ('gguf', 'yaml', 'sentencepiece') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


# -- bad files ------------------------------------------------------------------------------


@pytest.fixture
def good_file(tmp_path):
    path = tmp_path / "model.gguf"
    write_gguf(path, hf_weights(), Q.Q8_0)
    return path


@pytest.mark.parametrize("keep", [3, 30, 300, 2000, -100])
def test_truncated_file(good_file, keep):
    data = good_file.read_bytes()
    good_file.write_bytes(data[:keep])
    message = "GGUF file is empty|not a GGUF file|truncated" if keep < 4 else "truncated"
    with pytest.raises(CheckpointError, match=rf"model\.gguf: .*({message})"):
        load_checkpoint(good_file)


def test_empty_file_and_bad_magic(tmp_path):
    path = tmp_path / "x.gguf"
    path.write_bytes(b"")
    with pytest.raises(CheckpointError, match="x.gguf: GGUF file is empty"):
        GGUFFile(path)
    path.write_bytes(b"GGML" + bytes(100))
    with pytest.raises(CheckpointError, match="x.gguf: not a GGUF file"):
        GGUFFile(path)
    with pytest.raises(CheckpointError, match="not a GGUF file .bad magic."):
        load_checkpoint(path)


def test_unsupported_version(good_file):
    data = bytearray(good_file.read_bytes())
    data[4:8] = struct.pack("<I", 1)
    good_file.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="unsupported GGUF version 1"):
        load_checkpoint(good_file)


def test_unknown_architecture(tmp_path):
    path = tmp_path / "gpt2.gguf"
    write_gguf(path, hf_weights(), arch="gpt2")
    with pytest.raises(CheckpointError, match="gpt2.gguf: unsupported model architecture 'gpt2'; supported: llama, qwen2, qwen3, gemma3"):
        load_checkpoint(path)


def test_unsupported_tensor_type(tmp_path):
    weights = hf_weights()
    del weights["blk.1.ffn_up.weight"]
    block_size, type_size = gguf.GGML_QUANT_SIZES[Q.Q8_1]
    raw = np.zeros((INTER, HIDDEN // block_size * type_size), np.uint8)
    path = tmp_path / "q8_1.gguf"
    write_gguf(path, weights, raw_tensors={"blk.1.ffn_up.weight": (raw, Q.Q8_1)})
    with pytest.raises(CheckpointError, match="tensor 'blk.1.ffn_up.weight': unsupported tensor type Q8_1"):
        load_checkpoint(path)


def test_unknown_type_id(good_file):
    data = bytearray(good_file.read_bytes())
    name = b"blk.0.ffn_up.weight"
    # Tensor info: name, n_dims (u32), dims (2 x u64), type (u32), offset (u64).
    at = data.index(name) + len(name) + 4 + 16
    data[at : at + 4] = struct.pack("<I", 99)
    good_file.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="tensor 'blk.0.ffn_up.weight' has unknown GGML type id 99"):
        load_checkpoint(good_file)


def test_missing_misshapen_and_unexpected_tensors(tmp_path):
    weights = hf_weights()
    del weights["blk.1.attn_v.weight"]
    path = tmp_path / "missing.gguf"
    write_gguf(path, weights)
    with pytest.raises(CheckpointError, match=r"missing.gguf: missing tensors 'model\.layers\.1\.self_attn\.v_proj"):
        load_checkpoint(path)

    weights = hf_weights()
    weights["blk.0.ffn_up.weight"] = weights["blk.0.ffn_up.weight"][:64]
    path = tmp_path / "shape.gguf"
    write_gguf(path, weights)
    with pytest.raises(CheckpointError, match=r"shape.gguf: tensor 'model\.layers\.0\.mlp\.up_proj\.weight' has shape"):
        load_checkpoint(path)

    path = tmp_path / "bias.gguf"
    write_gguf(path, {**hf_weights(), "blk.0.attn_q.bias": np.zeros(HIDDEN, np.float32)})
    with pytest.raises(CheckpointError, match="bias.gguf: unexpected tensors for a llama model: blk.0.attn_q.bias"):
        load_checkpoint(path)


def test_split_file(tmp_path):
    path = tmp_path / "model-00001-of-00002.gguf"
    write_gguf(path, hf_weights(), metadata={"split.count": (2, gguf.GGUFValueType.UINT16)})
    with pytest.raises(CheckpointError, match="one part of a split GGUF model .2 parts.; merge them first"):
        load_checkpoint(path)


def test_missing_or_invalid_metadata(tmp_path):
    path = tmp_path / "nolayers.gguf"
    write_gguf(path, hf_weights(), skip_metadata=("block_count",))
    with pytest.raises(CheckpointError, match="nolayers.gguf: GGUF metadata lacks 'llama.block_count'"):
        load_checkpoint(path)

    path = tmp_path / "partial.gguf"
    write_gguf(path, hf_weights(), skip_metadata=("rope.dimension_count",), metadata={
        "llama.rope.dimension_count": (HEAD_DIM // 2, gguf.GGUFValueType.UINT32),
        "llama.attention.key_length": (HEAD_DIM, gguf.GGUFValueType.UINT32),
    })
    with pytest.raises(CheckpointError, match="partial rotary embeddings"):
        load_checkpoint(path)

    path = tmp_path / "heads.gguf"
    write_gguf(path, hf_weights(), skip_metadata=("attention.head_count_kv",), metadata={
        "llama.attention.head_count_kv": (3, gguf.GGUFValueType.UINT32),
    })
    with pytest.raises(CheckpointError, match=r"heads.gguf: invalid model hyper-parameters: .*multiple of"):
        load_checkpoint(path)

    path = tmp_path / "longrope.gguf"
    write_gguf(path, hf_weights(), metadata={"llama.rope.scaling.type": ("longrope", gguf.GGUFValueType.STRING)})
    with pytest.raises(CheckpointError, match="unsupported rope scaling type 'longrope'"):
        load_checkpoint(path)


def gguf_header(tensor_count: int, kv_count: int) -> bytes:
    return b"GGUF" + struct.pack("<IQQ", 3, tensor_count, kv_count)


def test_element_count_beyond_int64_is_truncation_not_an_empty_tensor(tmp_path):
    # 2**32 x 2**32 float32 values: a product that wraps to 0 in int64 arithmetic.
    name = b"t"
    info = struct.pack("<Q", len(name)) + name + struct.pack("<I2QIQ", 2, 2**32, 2**32, int(Q.F32), 0)
    path = tmp_path / "huge.gguf"
    path.write_bytes(gguf_header(1, 0) + info + bytes(64))
    with pytest.raises(CheckpointError, match=r"huge\.gguf: GGUF file is truncated: tensor 't'"):
        GGUFFile(path)


def test_nested_arrays_are_refused_without_recursing(tmp_path):
    # llama.cpp refuses arrays of arrays; a deep nest must not exhaust Python's recursion limit.
    key = b"x"
    V = gguf.GGUFValueType
    nest = struct.pack("<I", V.ARRAY) + struct.pack("<IQ", V.ARRAY, 1) * 100_000 + struct.pack("<IQ", V.UINT8, 0)
    path = tmp_path / "nested.gguf"
    path.write_bytes(gguf_header(0, 1) + struct.pack("<Q", len(key)) + key + nest)
    with pytest.raises(CheckpointError, match=r"nested\.gguf: .*metadata 'x' .*arrays of arrays"):
        GGUFFile(path)


def test_tensor_whose_bytes_do_not_match_its_type_and_shape(tmp_path):
    # Tensor 'a' claims Q8_0 [2, 64] (136 bytes) where the file gives it 64 before tensor 'b' starts.
    infos = b""
    for name, dims, offset in ((b"a", (64, 2), 0), (b"b", (16,), 64)):
        kind = Q.Q8_0 if name == b"a" else Q.F32
        infos += struct.pack("<Q", len(name)) + name + struct.pack(f"<I{len(dims)}QIQ", len(dims), *dims, int(kind), offset)
    header = gguf_header(2, 0) + infos
    padding = bytes(-len(header) % 32)
    path = tmp_path / "mismatch.gguf"
    path.write_bytes(header + padding + bytes(64 + 64 + 136))
    with pytest.raises(CheckpointError, match=r"mismatch\.gguf: tensor 'a' \(Q8_0, shape \(2, 64\)\) needs 136 bytes "
                                              r"but the file holds 64 for it before tensor 'b'"):
        GGUFFile(path)


@pytest.mark.parametrize("qtype", [Q.Q4_0, Q.Q8_0, Q.F16])
def test_kept_encoded_tensors_are_views_of_the_file_and_permuted_rows_an_order(tmp_path, qtype):
    from fastllm.model.quantized import QuantizedTensor

    path = tmp_path / "kept.gguf"
    write_gguf(path, hf_weights(), qtype)
    kept = load_checkpoint(path, keep_encoded={qtype}).weights
    decoded = load_checkpoint(path).weights
    pointers = []
    for name, tensor in kept.items():
        if isinstance(tensor, torch.Tensor):
            assert tensor.dim() == 1 and torch.equal(tensor, decoded[name])  # norms: float32 as ever
            continue
        assert isinstance(tensor, QuantizedTensor) and tensor.qtype == qtype
        assert torch.equal(tensor.dequantize(), decoded[name].float())  # q/k un-permuted like the rest
        # llama.cpp's permuted q/k rows are read through an order (checked by the dequantize above).
        assert (tensor.row_order is not None) == name.endswith(("q_proj.weight", "k_proj.weight"))
        pointers.append(tensor.data.data_ptr())
    # The file is mapped in one piece: every tensor read in place lies within one file's length.
    start, size = min(pointers), path.stat().st_size
    assert all(start <= p < start + size for p in pointers)

"""benchmarks.make_gguf: the K-quant quantizer against gguf.quants.dequantize, and tiny random models
that fastllm loads with the config, tensor types and weights that were written."""

from __future__ import annotations

from dataclasses import replace

import gguf
import numpy as np
import pytest
import torch
from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as Q

from benchmarks import make_gguf
from fastllm.loader import load_checkpoint
from fastllm.loader.gguf_file import GGUFFile
from fastllm.loader.gguf_loader import hf_name, unpermute_qk
from fastllm.model.rotary import rope_inv_freq

rng = np.random.default_rng()

# Relative RMS error of each type on N(0, s) rows (round-trip through gguf.quants.dequantize).
# Measured over 200 draws of 4 x 1024 values at scales 1e-4 .. 1e2: worst 0.0827 (Q4_K),
# 0.0411 (Q5_K), 0.0204 (Q6_K), about 4% above the median; the bounds leave ~15% on top.
K_QUANT_RMS = {Q.Q4_K: 0.095, Q.Q5_K: 0.048, Q.Q6_K: 0.024}
# The same measure on N(0, 0.02) matrices of 128 x 256 (the tiny model's smallest), 200 draws:
# worst 0.0870 (Q4_0), 0.0790 (Q4_1), 0.00543 (Q8_0), 2.10e-4 (F16), 1.68e-3 (BF16), the
# K-quants as above; the bounds leave ~15% on top.
MODEL_RMS = {**K_QUANT_RMS, Q.Q4_0: 0.10, Q.Q4_1: 0.09, Q.Q8_0: 0.0063, Q.F16: 2.5e-4, Q.BF16: 2e-3, Q.F32: 0.0}


def sub_block_steps(blocks: np.ndarray, qtype: Q) -> np.ndarray:
    """Each value's quantization step (d * scale of its sub-block), read with gguf-py's own layout."""
    if qtype == Q.Q6_K:  # ql[128] qh[64] scales int8[16] d f16
        scales = blocks[:, 192:208].view(np.int8).astype(np.float32)
        d = blocks[:, 208:210].copy().view(np.float16).astype(np.float32)
        return np.repeat(d * scales, 16, axis=1)
    d = blocks[:, 0:2].copy().view(np.float16).astype(np.float32)  # d, dmin, scales[12], ...
    scales, _ = gguf.quants.Q4_K.get_scale_min(blocks[:, 4:16])
    return np.repeat(d * scales.astype(np.float32), 32, axis=1)


def awkward_rows(scale: float) -> np.ndarray:
    """Rows of 1024 values with the cases a min/max quantizer can get wrong, plus plain noise."""
    rows = (rng.standard_normal((8, 1024)) * scale).astype(np.float32)
    rows[0, :256] = 0  # an all-zero super-block
    rows[1, :32] = scale  # a constant sub-block
    rows[2] = np.abs(rows[2])  # all positive: the minimum is above zero
    rows[3] = -np.abs(rows[3])  # all negative
    rows[4, 7] = 50 * scale  # one outlier
    rows[5] += 3 * scale  # an offset
    return rows


@pytest.mark.parametrize("qtype", make_gguf.K_TYPES, ids=lambda q: q.name)
def test_k_quants_round_trip_within_half_a_step(qtype):
    for scale in 10.0 ** rng.uniform(-4, 2, size=4):
        data = awkward_rows(float(scale))
        packed = make_gguf.quantize_k(data, qtype)
        assert packed.dtype == np.uint8 and packed.shape == (8, 4 * GGML_QUANT_SIZES[qtype][1])
        decoded = gguf.quants.dequantize(packed, qtype)
        steps = sub_block_steps(packed.reshape(-1, GGML_QUANT_SIZES[qtype][1]), qtype).reshape(data.shape)
        # Within half a step of its sub-block (the range always covers the values: no clipping),
        # allowing float32 rounding of the decode.
        slack = 4 * np.finfo(np.float32).eps * np.abs(data).max()
        assert (np.abs(decoded - data) <= 0.5 * steps * (1 + 1e-6) + slack).all()
        assert (decoded[0, :256] == 0).all()
        noise = data[6:]
        error = decoded[6:] - noise
        assert np.sqrt(np.mean(error**2)) <= K_QUANT_RMS[qtype] * np.sqrt(np.mean(noise**2))


def test_quantize_k_rejects_bad_input():
    with pytest.raises(ValueError, match="multiple of 256"):
        make_gguf.quantize_k(np.zeros((2, 100), np.float32), Q.Q4_K)
    with pytest.raises(ValueError, match="finite"):
        make_gguf.quantize_k(np.full((1, 256), np.nan, np.float32), Q.Q6_K)
    with pytest.raises(ValueError, match="qtype must be one of"):
        make_gguf.quantize_k(np.zeros((1, 256), np.float32), Q.Q4_0)


def test_llama_cpp_type_rules():
    """Q4_K_M: Q6_K attn_v / ffn_down in use_more_bits layers, Q6_K output (the tied embedding here)."""
    config = make_gguf.LLAMA_3_2_1B
    types = make_gguf.llama_cpp_types(config, Q.Q4_K)
    shapes = make_gguf.tensor_shapes(config)
    stored = {name: make_gguf.tensor_type(name, shape, types) for name, shape in shapes.items()}
    assert [i for i in range(16) if stored[f"blk.{i}.ffn_down.weight"] == Q.Q6_K] == [0, 1, 4, 7, 10, 13, 14, 15]
    assert stored["blk.3.attn_v.weight"] == Q.Q4_K and stored["blk.3.attn_q.weight"] == Q.Q4_K
    assert stored["token_embd.weight"] == Q.Q6_K and stored["output_norm.weight"] == Q.F32
    untied = make_gguf.llama_cpp_types(make_gguf.LLAMA_3_1_8B, Q.Q4_0)
    assert make_gguf.tensor_type("output.weight", (128256, 4096), untied) == Q.Q6_K
    assert make_gguf.tensor_type("token_embd.weight", (128256, 4096), untied) == Q.Q4_0


def test_tensor_type_rejects_what_cannot_be_written():
    with pytest.raises(ValueError, match="no pattern"):
        make_gguf.tensor_type("blk.0.attn_q.weight", (64, 256), {"*ffn*": Q.Q8_0})
    with pytest.raises(ValueError, match="multiple of 256"):
        make_gguf.tensor_type("blk.0.attn_q.weight", (64, 96), {"*": Q.Q4_K})


TYPE_MIXES = {
    "Q4_K_M-like": {"blk.*.attn_v.weight": Q.Q6_K, "blk.*.ffn_down.weight": Q.Q5_K, "*": Q.Q4_K},
    "legacy": {"token_embd.weight": Q.Q8_0, "*attn*": Q.Q4_0, "*": Q.Q4_1},
    "float": {"*attn*": Q.F16, "*ffn*": Q.BF16, "*": Q.F32},
}


@pytest.mark.parametrize("mix", list(TYPE_MIXES))
def test_tiny_model_loads_as_written(tmp_path, mix):
    config = make_gguf.tiny_config(tie_word_embeddings=mix != "float")
    seed = int(rng.integers(1 << 31))
    path = make_gguf.write_random_gguf(tmp_path / "tiny.gguf", config, TYPE_MIXES[mix], seed)
    assert path.stat().st_size < 2_000_000

    checkpoint = load_checkpoint(path)
    loaded = checkpoint.config
    for field in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                  "num_key_value_heads", "head_dim", "max_position_embeddings", "rope_theta",
                  "tie_word_embeddings", "bos_token_id", "eos_token_id", "name"):
        assert getattr(loaded, field) == getattr(config, field), field
    assert loaded.rms_norm_eps == pytest.approx(config.rms_norm_eps)
    # llama3 scaling travels as rope_freqs, which give fastllm the same frequencies as the HF dict.
    scaled, _ = rope_inv_freq(config.head_dim, config.rope_theta, config.rope_scaling)
    from_file, _ = rope_inv_freq(config.head_dim, config.rope_theta, None, checkpoint.weights["rope_freqs"])
    torch.testing.assert_close(from_file, scaled, rtol=1e-6, atol=0)

    gguf_file = GGUFFile(path)
    heads = {"attn_q": config.num_attention_heads, "attn_k": config.num_key_value_heads}
    for name, info in gguf_file.tensors.items():
        if name == "rope_freqs.weight":
            continue
        expected_type = make_gguf.tensor_type(name, info.shape, TYPE_MIXES[mix])
        assert info.qtype == expected_type, name
        weight = checkpoint.weights[hf_name(name)].float().numpy()
        # The loader's decode is gguf-py's, on the file's rows in HF order.
        raw = gguf_file.raw(name)
        role = name.split(".")[-2]
        if role in heads:
            raw = unpermute_qk(raw, heads[role])
        reference = raw.view(np.float32) if info.qtype == Q.F32 else gguf.quants.dequantize(raw, info.qtype)
        np.testing.assert_array_equal(weight, reference.reshape(info.shape), err_msg=name)
        # ... and it is the random tensor that was written, within its type's rounding (a wrong
        # Q/K permutation or tensor would be off by ~1.4x its RMS).
        source = make_gguf.source_tensor(name, config, seed)
        error = np.sqrt(np.mean((weight - source) ** 2))
        assert error <= MODEL_RMS[info.qtype] * np.sqrt(np.mean(source**2)), (name, info.qtype.name)


def test_tiny_model_tokenizer_and_files_are_deterministic(tmp_path):
    """Same parameters, same bytes; the tokenizer is the default model's, cut to the vocabulary."""
    from fastllm import Tokenizer

    config = make_gguf.tiny_config()
    first = make_gguf.write_random_gguf(tmp_path / "a.gguf", config, {"*": Q.Q8_0}, seed=5)
    second = make_gguf.write_random_gguf(tmp_path / "b.gguf", config, {"*": Q.Q8_0}, seed=5)
    assert first.read_bytes() == second.read_bytes()
    tokenizer = Tokenizer.from_gguf(first)
    assert tokenizer.vocab_size == config.vocab_size
    assert (tokenizer.bos_id, tokenizer.eos_id) == (config.bos_token_id, config.eos_token_id)
    assert tokenizer.chat_template == make_gguf.default_tokenizer_metadata()["tokenizer.chat_template"]
    ids = tokenizer.encode("the cat")
    assert ids and all(i < config.vocab_size for i in ids)


def test_fit_tokenizer_pads_with_reserved_control_tokens():
    metadata = make_gguf.default_tokenizer_metadata()
    size = len(metadata["tokenizer.ggml.tokens"])
    fitted = make_gguf.fit_tokenizer(metadata, size + 3)
    assert fitted["tokenizer.ggml.tokens"][size:] == [f"<|reserved_special_token_{i}|>" for i in range(3)]
    assert fitted["tokenizer.ggml.token_type"][size:] == [int(gguf.TokenType.CONTROL)] * 3
    assert fitted["tokenizer.ggml.merges"] == list(metadata["tokenizer.ggml.merges"])
    with pytest.raises(ValueError, match="special tokens"):
        make_gguf.fit_tokenizer(metadata, 2)


def test_content_key_follows_what_is_written_not_every_config_field():
    # A ModelConfig field the writer does not read must not rename cached files (gigabytes for
    # the 8B preset); anything written, the types, the seed and rope_freqs' source must.
    config, types = make_gguf.tiny_config(), {"*": Q.Q8_0}
    key = make_gguf.content_key(config, types, 0)
    assert make_gguf.content_key(replace(config, sliding_window=64, qk_norm=True), types, 0) == key
    changed = [
        (replace(config, rms_norm_eps=1e-6), types, 0),
        (replace(config, num_hidden_layers=config.num_hidden_layers + 1), types, 0),
        (replace(config, rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                       "high_freq_factor": 4.0, "original_max_position_embeddings": 64}), types, 0),
        (config, {"*": Q.Q4_0}, 0),
        (config, types, 1),
    ]
    keys = {make_gguf.content_key(*case) for case in changed}
    assert key not in keys and len(keys) == len(changed)

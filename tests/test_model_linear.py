"""`fastllm.model.linear`: the weight forms (dense, oneDNN-packed, GGUF-encoded) and which one a model gets."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from gguf import GGMLQuantizationType as Q
from gguf import quants as gguf_quants

from fastllm.model.quantized import QuantizedTensor
from fastllm.model import LlamaForCausalLM, get_backend
from fastllm.model.linear import DenseLinear, EncodedLinear, Embedding, encoded_types, make_linear, onednn_applies, prepack
from llama_testing import random_weights, tiny_config

needs_onednn = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="torch built without oneDNN")
ENCODED = encoded_types("cpu", torch.device("cpu"), torch.float32)


def _quantized(rows: int, cols: int, qtype: Q, seed: int) -> tuple[QuantizedTensor, torch.Tensor]:
    """A random matrix in `qtype` and its float32 dequantization (gguf's own)."""
    values = np.random.default_rng(seed).standard_normal((rows, cols)).astype(np.float32)
    blocks = gguf_quants.quantize(values, qtype)
    return QuantizedTensor(torch.from_numpy(blocks), qtype, (rows, cols)), torch.from_numpy(
        gguf_quants.dequantize(blocks, qtype))


def _max_relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    return ((got.double() - expected).abs().max() / expected.abs().max()).item()


@needs_onednn
@pytest.mark.parametrize("rows", [1, 3, 17, 130])
@pytest.mark.parametrize(("out_features", "in_features"), [(7, 5), (96, 33), (257, 64)])
def test_prepacked_matmul_matches_f_linear(rows, out_features, in_features):
    x = torch.randn(rows, in_features, dtype=torch.float64)
    weight = torch.randn(out_features, in_features, dtype=torch.float64)
    packed = DenseLinear(prepack(weight.float()))
    got = packed(x.float())
    assert packed.packed and got.shape == (rows, out_features) and got.dtype == torch.float32
    torch.testing.assert_close(got.double(), F.linear(x, weight), rtol=1e-5, atol=1e-5)
    assert torch.equal(packed.dense(), weight.float())


def test_dense_weights_go_to_f_linear():
    x, weight = torch.randn(4, 6, dtype=torch.float16), torch.randn(5, 6, dtype=torch.float16)
    assert torch.equal(DenseLinear(weight)(x), F.linear(x, weight))


@needs_onednn
@pytest.mark.parametrize(
    ("weight", "problem"),
    [
        (torch.randn(4, 4, dtype=torch.float16), "float16"),
        (torch.randn(4, 4, dtype=torch.float64), "float64"),
        (torch.randn(2, 4, 4), "3-D"),
    ],
)
def test_prepack_rejects_what_onednn_does_not_take(weight, problem):
    assert not (weight.dim() == 2 and onednn_applies(weight))
    with pytest.raises(ValueError, match=f"prepack needs a dense 2-D float32 CPU weight.*{problem}"):
        prepack(weight)


@needs_onednn
def test_prepack_rejects_an_already_packed_weight():
    with pytest.raises(ValueError, match="mkldnn"):
        prepack(prepack(torch.randn(3, 3)))


def test_encoded_stack_of_mixed_types_matches_its_dequantization():
    q, q_dense = _quantized(40, 64, Q.Q4_0, seed=1)
    k, k_dense = _quantized(8, 64, Q.Q8_0, seed=2)
    v = torch.randn(8, 64).to(torch.float16)
    linear = make_linear([q, k, v], dtype=torch.float32, device=torch.device("cpu"), encoded_types=ENCODED)
    assert isinstance(linear, EncodedLinear) and (linear.out_features, linear.in_features) == (56, 64)
    assert linear.nbytes == q.nbytes + k.nbytes + v.numel() * 2  # no float32 copy of anything
    expected_weight = torch.cat([q_dense, k_dense, v.float()])
    assert torch.equal(linear.dense(), expected_weight)
    for rows in (1, 5, 300):  # both implementations, whichever the crossover measured here
        x = torch.randn(2, rows, 64)
        got = linear(x)
        assert got.shape == (2, rows, 56)
        assert _max_relative_error(got, x.double() @ expected_weight.double().T) < 1e-5


@pytest.mark.parametrize("direct", [True, False])
def test_rows_stored_in_another_order_are_read_through_it_on_both_paths(direct):
    """llama.cpp's Q/K rows: kept where the file stores them, read through `row_order`. Both
    implementations give, bit for bit, what the same rows stored in order give."""
    q, q_dense = _quantized(40, 64, Q.Q4_1, seed=5)
    k, k_dense = _quantized(24, 64, Q.Q8_0, seed=6)
    q_order, k_order = torch.randperm(40), torch.randperm(24)
    stored = [QuantizedTensor(q.data, q.qtype, q.shape, q_order), k, QuantizedTensor(k.data, k.qtype, k.shape, k_order)]
    in_order = [QuantizedTensor(q.data[q_order], q.qtype, q.shape), k,
                QuantizedTensor(k.data[k_order], k.qtype, k.shape)]
    reordered, plain = (make_linear(parts, dtype=torch.float32, device=torch.device("cpu"), encoded_types=ENCODED)
                        for parts in (stored, in_order))
    assert torch.equal(reordered.dense(), torch.cat([q_dense[q_order], k_dense, k_dense[k_order]]))
    assert reordered.nbytes == plain.nbytes == q.nbytes + 2 * k.nbytes  # nothing copied
    for linear in (reordered, plain):
        linear.direct_max_rows = 1 << 20 if direct else 0
    for rows in (1, 3, 17, 300):
        x = torch.randn(rows, 64)
        assert torch.equal(reordered(x), plain(x))


@pytest.mark.parametrize("direct", [True, False])
def test_gated_projection_equals_the_activation_of_the_product(direct):
    from fastllm.kernels import cpu

    gate, _ = _quantized(48, 64, Q.Q8_0, seed=8)
    up, _ = _quantized(48, 64, Q.Q4_0, seed=9)
    linear = make_linear([gate, up], dtype=torch.float32, device=torch.device("cpu"), encoded_types=ENCODED)
    linear.direct_max_rows = 1 << 20 if direct else 0
    for rows in (1, 17, 300):
        x = torch.randn(rows, 64)
        got, expected = linear.gated(x, cpu.silu_and_mul), cpu.silu_and_mul(linear(x))
        assert got.shape == (rows, 48)
        assert torch.allclose(got, expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())


def test_a_row_order_must_be_a_permutation_of_the_rows():
    q, _ = _quantized(4, 32, Q.Q8_0, seed=7)
    for order in (torch.tensor([0, 1, 1, 3]), torch.tensor([0, 1, 2]), torch.tensor([0, 1, 2, 3], dtype=torch.int32)):
        with pytest.raises(ValueError, match=r"row_order must be a permutation of range\(4\)"):
            QuantizedTensor(q.data, q.qtype, q.shape, order)
    reordered = QuantizedTensor(q.data, q.qtype, q.shape, torch.tensor([2, 0, 3, 1]))
    assert torch.equal(reordered.rows(1, 3).dequantize(), reordered.dequantize()[1:3])


def test_without_encoded_types_every_part_becomes_a_dense_tensor_of_the_model_dtype():
    q, q_dense = _quantized(8, 32, Q.Q4_1, seed=3)
    linear = make_linear([q, torch.randn(4, 32)], dtype=torch.bfloat16, device=torch.device("cpu"),
                         encoded_types=frozenset())
    assert isinstance(linear, DenseLinear) and not linear.packed and linear.dense().dtype == torch.bfloat16
    assert torch.equal(linear.dense()[:8], q_dense.to(torch.bfloat16))


def test_all_float32_parts_stay_dense_even_where_blocks_are_read():
    weight = torch.randn(9, 16)
    linear = make_linear([weight], dtype=torch.float32, device=torch.device("cpu"), encoded_types=ENCODED)
    assert isinstance(linear, DenseLinear) and torch.equal(linear.dense(), weight)


def test_encoded_embedding_decodes_only_the_rows_looked_up():
    table, dense = _quantized(30, 64, Q.Q8_0, seed=4)
    ids = torch.tensor([3, 0, 29, 3])
    assert torch.equal(Embedding(table)(ids), dense[ids])
    assert Embedding(table).nbytes == table.nbytes


def test_quantized_tensor_checks_its_bytes():
    with pytest.raises(ValueError, match=r"Q4_0 and shape \(2, 64\) needs data of shape \(2, 36\)"):
        QuantizedTensor(torch.zeros(2, 35, dtype=torch.uint8), Q.Q4_0, (2, 64))
    with pytest.raises(ValueError, match="2-D uint8 tensor"):
        QuantizedTensor(torch.zeros(2, 36), Q.Q4_0, (2, 64))


@pytest.mark.parametrize("tied", [True, False])
def test_cpu_backend_float32_model_keeps_gguf_blocks_and_shares_a_tied_table(tied):
    config = tiny_config(tie_word_embeddings=tied, hidden_size=64, intermediate_size=96, head_dim=8,
                         num_attention_heads=4, num_key_value_heads=2)
    model = LlamaForCausalLM(config, get_backend("cpu"), dtype=torch.float32)
    weights = random_weights(model)
    encoded = {name: _quantized(*w.shape, Q.Q8_0, seed=i)[0] if w.dim() == 2 else w
               for i, (name, w) in enumerate(weights.items())}
    model.load_weights(encoded)
    attn = model.layers[0].self_attn
    assert isinstance(attn.qkv_proj, EncodedLinear) and isinstance(model.embed_tokens.weight, QuantizedTensor)
    if tied:
        assert model.lm_head.parts[0] is model.embed_tokens.weight  # one copy of the table
    hidden = torch.randn(3, config.hidden_size)
    head = encoded["model.embed_tokens.weight" if tied else "lm_head.weight"].dequantize()
    assert _max_relative_error(model.compute_logits(hidden), hidden.double() @ head.double().T) < 1e-5


def test_torch_backend_stays_the_plain_float_reference():
    model = LlamaForCausalLM(tiny_config(), get_backend("torch"), dtype=torch.float32)
    weights = random_weights(model)
    model.load_weights(weights)
    attn = model.layers[0].self_attn
    assert isinstance(attn.qkv_proj, DenseLinear) and not attn.qkv_proj.packed
    expected_qkv = torch.cat([weights[f"model.layers.0.self_attn.{p}_proj.weight"] for p in "qkv"])
    assert torch.equal(attn.qkv_proj.dense(), expected_qkv)
    assert model.compute_logits(torch.randn(2, model.config.hidden_size)).dtype == torch.float32

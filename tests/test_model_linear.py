"""`fastllm.model.linear`: oneDNN prepacked weights against F.linear, and how the model uses them."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fastllm.model import LlamaForCausalLM, get_backend
from fastllm.model.linear import linear, onednn_applies, prepack
from llama_testing import random_weights, tiny_config

needs_onednn = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="torch built without oneDNN")


@needs_onednn
@pytest.mark.parametrize("rows", [1, 3, 17, 130])
@pytest.mark.parametrize(("out_features", "in_features"), [(7, 5), (96, 33), (257, 64)])
def test_prepacked_linear_matches_f_linear(rows, out_features, in_features):
    x = torch.randn(rows, in_features, dtype=torch.float64)
    weight = torch.randn(out_features, in_features, dtype=torch.float64)
    expected = F.linear(x, weight)
    got = linear(x.float(), prepack(weight.float()))
    assert got.shape == (rows, out_features) and got.dtype == torch.float32
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-5)


@needs_onednn
def test_prepacked_linear_takes_leading_dims_and_round_trips():
    weight = torch.randn(12, 8)
    packed = prepack(weight)
    assert packed.is_mkldnn and packed.shape == weight.shape
    assert torch.equal(packed.to_dense(), weight)
    x = torch.randn(2, 3, 8)
    torch.testing.assert_close(linear(x, packed), F.linear(x, weight), rtol=1e-6, atol=1e-6)


def test_dense_weights_go_to_f_linear():
    x, weight = torch.randn(4, 6, dtype=torch.float16), torch.randn(5, 6, dtype=torch.float16)
    assert torch.equal(linear(x, weight), F.linear(x, weight))


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


@needs_onednn
@pytest.mark.parametrize("tied", [True, False])
def test_float32_cpu_model_packs_projections_and_keeps_lookups_dense(tied):
    model = LlamaForCausalLM(tiny_config(tie_word_embeddings=tied), get_backend("torch"), dtype=torch.float32)
    weights = random_weights(model)
    model.load_weights(weights)
    attn, mlp = model.layers[0].self_attn, model.layers[0].mlp
    assert attn.qkv_proj.is_mkldnn and attn.o_proj.is_mkldnn and mlp.gate_up_proj.is_mkldnn and mlp.down_proj.is_mkldnn
    expected_qkv = torch.cat([weights[f"model.layers.0.self_attn.{p}_proj.weight"] for p in "qkv"])
    assert torch.equal(attn.qkv_proj.to_dense(), expected_qkv)
    assert not model.embed_tokens.is_mkldnn and not model.norm.weight.is_mkldnn
    assert model.lm_head.is_mkldnn != tied  # tied: the embedding stays dense, the logits use a packed copy
    hidden = torch.randn(3, model.config.hidden_size)
    head = weights["model.embed_tokens.weight" if tied else "lm_head.weight"]
    torch.testing.assert_close(model.compute_logits(hidden), F.linear(hidden, head), rtol=1e-5, atol=1e-5)


def test_half_precision_cpu_model_stays_dense():
    model = LlamaForCausalLM(tiny_config(), get_backend("torch"), dtype=torch.float16)
    model.load_weights(random_weights(model))
    assert not any(p.is_mkldnn for p in model.parameters())
    assert model.compute_logits(torch.randn(2, model.config.hidden_size, dtype=torch.float16)).dtype == torch.float32

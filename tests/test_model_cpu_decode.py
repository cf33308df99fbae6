"""backend "cpu": the one-call decode step (fastllm.model.cpu_decode) against the layer-by-layer path."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Q
from gguf import quants as gguf_quants

from fastllm.model.quantized import QuantizedTensor
from fastllm.model import AttentionMetadata, LlamaForCausalLM, get_backend
from fastllm.model.cpu_decode import FusedDecode
from fastllm.model.linear import EncodedLinear
from llama_testing import paged_logits, random_weights, tiny_config

# Head dim 32 and widths that are whole Q8_0/Q4_x blocks.
CONFIG = tiny_config(hidden_size=64, intermediate_size=96, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                     vocab_size=70)


def _encoded_model(
    types: tuple[Q, ...], *, seed: int = 0, tied: bool = False, qk_stored_reordered: bool = False
) -> LlamaForCausalLM:
    """A tiny cpu-backend model whose matrices are stored in `types` (cycled over the tensors);
    with qk_stored_reordered, the q and k rows are stored shuffled and read through a row order
    (as the loader reads llama.cpp's permuted rows): the same model."""
    model = LlamaForCausalLM(replace(CONFIG, tie_word_embeddings=tied), get_backend("cpu"))
    rng, shuffles = np.random.default_rng(seed), np.random.default_rng(seed + 1)
    weights = {}
    for i, (name, tensor) in enumerate(random_weights(model).items()):
        if tensor.dim() == 1:
            weights[name] = torch.from_numpy(rng.uniform(0.5, 1.5, tensor.shape).astype(np.float32))
            continue
        qtype = types[i % len(types)]
        values = (rng.standard_normal(tensor.shape) * 0.3).astype(np.float32)
        blocks = torch.from_numpy(gguf_quants.quantize(values, qtype))
        if qk_stored_reordered and name.endswith(("q_proj.weight", "k_proj.weight")):
            order = torch.from_numpy(shuffles.permutation(tensor.shape[0]))
            stored = torch.empty_like(blocks)
            stored[order] = blocks  # stored row order[i] holds row i
            weights[name] = QuantizedTensor(stored, qtype, tensor.shape, order)
        else:
            weights[name] = QuantizedTensor(blocks, qtype, tensor.shape)
    model.load_weights(weights)
    for linear in _projections(model):
        linear.direct_max_rows = 1 << 20  # both paths on the register-decoding kernel, whatever was measured
    return model


def _projections(model: LlamaForCausalLM) -> list[EncodedLinear]:
    return [linear for layer in model.layers for linear in (layer.self_attn.qkv_proj, layer.self_attn.o_proj,
                                                            layer.mlp.gate_up_proj, layer.mlp.down_proj)]


@pytest.mark.parametrize("types", [(Q.Q8_0,), (Q.Q4_0, Q.Q4_1, Q.Q8_0)])
@pytest.mark.parametrize("tied", [False, True])
def test_one_call_decode_equals_the_layer_by_layer_path_bit_for_bit(types, tied):
    model = _encoded_model(types, tied=tied)
    assert model._fused_decode is not None
    prompts, steps = [[1, 2, 3, 4, 5], [7, 8, 9], [3] * 20], [[10, 11, 12], [12, 13, 14], [5, 6, 7]]
    fused = paged_logits(model, prompts, steps)
    model._fused_decode = None
    unfused = paged_logits(model, prompts, steps)
    for a, b in zip(fused, unfused):
        assert torch.equal(a, b)


def test_one_call_decode_reads_qk_rows_stored_in_another_order_bit_for_bit():
    prompts, steps = [[1, 2, 3, 4, 5], [3] * 20], [[10, 11, 12], [5, 6, 7]]
    model = _encoded_model((Q.Q4_0, Q.Q8_0), qk_stored_reordered=True)
    assert model._fused_decode is not None and model.layers[0].self_attn.qkv_proj.output_order is not None
    fused = paged_logits(model, prompts, steps)
    model._fused_decode = None
    unfused = paged_logits(model, prompts, steps)
    in_order = paged_logits(_encoded_model((Q.Q4_0, Q.Q8_0)), prompts, steps)
    for a, b, c in zip(fused, unfused, in_order):
        assert torch.equal(a, b) and torch.equal(a, c)


def test_applies_only_to_float32_cpu_models_with_encoded_projections():
    assert FusedDecode.applies(_encoded_model((Q.Q8_0,)))
    dense = LlamaForCausalLM(CONFIG, get_backend("cpu"))
    dense.load_weights(random_weights(dense))
    assert dense._fused_decode is None  # all-float32 weights stay dense (MKL or oneDNN)
    reference = LlamaForCausalLM(CONFIG, get_backend("torch"))
    reference.load_weights(random_weights(reference))
    assert reference._fused_decode is None


def test_bad_indices_are_refused_before_the_cache_is_written():
    model = _encoded_model((Q.Q8_0,))
    config = model.config
    kv_cache = torch.zeros(config.num_hidden_layers, 2, 4, 4, config.num_key_value_heads, config.head_dim)
    hidden = torch.randn(1, config.hidden_size)

    def decode(slot: int, length: int, block: int) -> None:
        meta = AttentionMetadata(is_prefill=False, slot_mapping=torch.tensor([slot]),
                                 context_lens=torch.tensor([length], dtype=torch.int32),
                                 block_tables=torch.tensor([[block]], dtype=torch.int32))
        model._fused_decode(hidden, torch.tensor([0]), meta, kv_cache)

    for slot, length, block, message in ((16, 1, 0, "slot_mapping"), (0, 5, 0, "cache_seqlens"),
                                         (0, 1, 9, "block_table")):
        with pytest.raises(ValueError, match=message):
            decode(slot, length, block)
        assert not kv_cache.any()

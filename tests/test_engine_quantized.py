"""GGUF weights kept in their blocks (backend "cpu") generate what the plain float32 reference generates.

Tiny random llama files in every type the C++ kernels read: the default engine (weights encoded,
one-call decode steps, measured matmul choices) against backend "torch" on the same file (weights
dequantized to float32 at load, PyTorch ops), greedy, batched, through a chunked prefill.
"""

from __future__ import annotations

import pytest
import torch
from gguf import GGMLQuantizationType as Q

from benchmarks import make_gguf
from fastllm import LLM, SamplingParams
from fastllm.model.quantized import QuantizedTensor
from fastllm.model.linear import EncodedLinear

TYPES = (Q.Q4_0, Q.Q4_1, Q.Q8_0, Q.Q4_K, Q.Q5_K, Q.Q6_K, Q.F16, Q.BF16)
PROMPTS = [[5, 17, 200, 33, 8], [250, 3], list(range(40, 110))]  # the last one is prefilled in two chunks


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("quantized")
    config = make_gguf.tiny_config(num_hidden_layers=2)
    return {qtype: make_gguf.write_random_gguf(folder / f"{qtype.name}.gguf", config, {"*": qtype}, seed=int(qtype))
            for qtype in TYPES}


def _generate(path, backend: str) -> tuple[LLM, list[list[int]]]:
    llm = LLM(path, backend=backend, num_kv_blocks=64, max_num_batched_tokens=64)
    params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    return llm, [out.token_ids for out in llm.generate(PROMPTS, params, use_tqdm=False)]


@pytest.mark.parametrize("qtype", TYPES, ids=lambda q: q.name)
def test_encoded_weights_generate_the_float32_reference_tokens(files, qtype):
    llm, tokens = _generate(files[qtype], "auto")
    model = llm.engine.model
    assert model.backend.name == "cpu" and model._fused_decode is not None
    projections = [model.layers[0].self_attn.qkv_proj, model.layers[1].mlp.down_proj, model.lm_head]
    assert all(isinstance(p, EncodedLinear) and p.parts[0].qtype == qtype for p in projections)
    assert isinstance(model.embed_tokens.weight, QuantizedTensor)
    _, reference = _generate(files[qtype], "torch")
    assert tokens == reference


def test_encoded_logits_match_the_float32_reference(files):
    # The encoded path differs from the reference only in the order of float32 sums: on logits of
    # magnitude ~2, measured over every type here and 43 prompts, at most 1.8e-6 apart (1e-4: 50x that).
    for qtype in (Q.Q4_K, Q.Q8_0):
        llm_encoded = LLM(files[qtype], num_kv_blocks=16)
        llm_float = LLM(files[qtype], backend="torch", num_kv_blocks=16)
        for prompt in PROMPTS:
            logits = [_prefill_logits(llm, prompt) for llm in (llm_encoded, llm_float)]
            torch.testing.assert_close(logits[0], logits[1], rtol=0, atol=1e-4)


def _prefill_logits(llm: LLM, prompt: list[int]) -> torch.Tensor:
    from fastllm.model import AttentionMetadata

    model = llm.engine.model
    config = model.config
    length = len(prompt)
    cache = torch.zeros(config.num_hidden_layers, 2, length, 1, config.num_key_value_heads, config.head_dim)
    cu = torch.tensor([0, length], dtype=torch.int32)
    meta = AttentionMetadata(is_prefill=True, slot_mapping=torch.arange(length), cu_seqlens_q=cu, cu_seqlens_k=cu,
                             max_seqlen_q=length, max_seqlen_k=length)
    with torch.inference_mode():
        return model.compute_logits(model(torch.tensor(prompt), torch.arange(length), meta, cache))

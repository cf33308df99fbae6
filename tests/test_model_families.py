"""Llama, Mistral, Qwen2, Qwen3 and Gemma 3 against transformers, on tiny random models.

Each family's model is built with transformers, saved as an HF folder and written as an F16 GGUF
file (family_testing): fastllm loads both and must give HF's logits and greedy tokens, through a
packed prefill, batched decode steps, a chunked prefill and prefix-cache hits. The GGUF files load
with their weights encoded on backend "cpu", whose one-call C++ decode step must equal the
layer-by-layer path bit for bit. Mistral's and Gemma's sliding windows (7 and 5 tokens) are
shorter than the prompts, so the windows matter.
"""

from __future__ import annotations

import json
from contextlib import nullcontext

import pytest
import torch
from gguf import GGMLQuantizationType as Q

from fastllm import LLM, SamplingParams
from fastllm.loader import CheckpointError, load_checkpoint
from fastllm.model import get_backend, load_model
from fastllm.model.linear import EncodedLinear, encoded_types
from family_testing import FAMILIES, build, save_folder, write_gguf
from llama_testing import hf_greedy, paged_logits

PROMPTS = [[5, 9, 3, 77, 1, 2, 60, 14, 33, 8, 90, 41, 7, 7, 23, 11, 64, 2, 19, 50], [4, 8, 15], [96], list(range(100, 131))]
STEPS = 6
# |fastllm - HF| on the logits: float32 sums in another order. Measured over 20 random models of
# each family, 3 random prompts each, 6 decode steps (folders and F16 GGUF files, backend "cpu"):
# worst 1.6e-6 (Gemma 3), 1e-6 and below for the others; the bound leaves over 10x.
LOGIT_ATOL = 2e-5


@pytest.fixture(scope="module")
def families(tmp_path_factory):
    """family -> (HF model, its folder, its GGUF file or None, HF's greedy logits and tokens per prompt)."""
    root = tmp_path_factory.mktemp("families")
    out = {}
    for seed, family in enumerate(FAMILIES):
        model = build(family, seed=seed)
        folder = save_folder(model, root / family)
        path = write_gguf(model, root / f"{family}.gguf", matrix_type=Q.F16) if FAMILIES[family][3] else None
        out[family] = (model, folder, path, [hf_greedy(model, prompt, STEPS) for prompt in PROMPTS])
    return out


def _load(path, backend: str):
    device, dtype = torch.device("cpu"), torch.float32
    checkpoint = load_checkpoint(path, keep_encoded=encoded_types(backend, device, dtype))
    return load_model(checkpoint, dtype=dtype, device=device, backend=get_backend(backend))


def _sources(family: str) -> list[str]:
    return ["folder", "gguf"] if FAMILIES[family][3] else ["folder"]


CASES = [(family, source) for family in FAMILIES for source in _sources(family)]


@pytest.mark.parametrize(("family", "source"), CASES, ids=[f"{f}-{s}" for f, s in CASES])
def test_logits_and_greedy_tokens_match_hf(families, family, source):
    _, folder, path, references = families[family]
    model = _load(folder if source == "folder" else path, "cpu")
    got = paged_logits(model, PROMPTS, [tokens for _, tokens in references], block_size=4)
    for (expected, tokens), logits in zip(references, got):
        torch.testing.assert_close(logits, expected, rtol=0, atol=LOGIT_ATOL)
        assert logits.argmax(-1)[:-1].tolist() == tokens


@pytest.mark.parametrize("family", [f for f in FAMILIES if FAMILIES[f][3]])
def test_one_call_decode_equals_the_layer_by_layer_path(families, family):
    _, _, path, references = families[family]
    model = _load(path, "cpu")
    assert model._fused_decode is not None  # every family's layer runs in the C++ decode step
    for linear in _encoded_linears(model):
        linear.direct_max_rows = 1 << 20  # both paths on the register-decoding kernel, whatever was measured
    fused = paged_logits(model, PROMPTS, [tokens for _, tokens in references], block_size=4)
    model._fused_decode = None
    layered = paged_logits(model, PROMPTS, [tokens for _, tokens in references], block_size=4)
    assert all(torch.equal(a, b) for a, b in zip(fused, layered))


@pytest.mark.parametrize("family", [f for f in FAMILIES if FAMILIES[f][3]])
def test_step_buffers_change_no_logit(families, family):
    """The layers' kernel results in the step's shared buffer give, bit for bit, the logits that a
    fresh tensor for each gives: through panels and sgemm and through the register kernel."""
    _, _, path, references = families[family]
    model = _load(path, "cpu")
    model._fused_decode = None  # decode steps through the layers too
    tokens = [tokens for _, tokens in references]
    buffered = {}
    for direct in (0, 1 << 20):
        for linear in _encoded_linears(model):
            linear.direct_max_rows = direct
        buffered[direct] = paged_logits(model, PROMPTS, tokens, block_size=4)
    model._step_buffers = nullcontext
    for layer in model.layers:
        layer.begin_phase = lambda: None
    for direct, logits in buffered.items():
        for linear in _encoded_linears(model):
            linear.direct_max_rows = direct
        fresh = paged_logits(model, PROMPTS, tokens, block_size=4)
        assert all(torch.equal(a, b) for a, b in zip(logits, fresh)), direct


@pytest.mark.parametrize("family", ["gemma3", "qwen2"])
def test_engine_greedy_through_chunks_and_prefix_hits_matches_hf(families, family):
    _, _, path, references = families[family]
    llm = LLM.from_model(_load(path, "cpu"), num_kv_blocks=64, block_size=4, max_num_batched_tokens=16)
    params = SamplingParams(temperature=0, max_tokens=STEPS, ignore_eos=True)
    expected = [tokens for _, tokens in references]
    assert [o.token_ids for o in llm.generate(PROMPTS, params, use_tqdm=False)] == expected
    again = llm.generate(PROMPTS, params, use_tqdm=False)  # the prompts' full blocks now come from the cache
    assert [o.token_ids for o in again] == expected
    assert again[3].metrics.num_cached_tokens >= 28


def test_family_configs(families):
    configs = {family: load_checkpoint(folder).config for family, (_, folder, _, _) in families.items()}
    gemma = configs["gemma3"]
    assert gemma.qk_norm and gemma.sandwich_norms and gemma.norm_weight_offset == 1.0
    assert gemma.hidden_act == "gelu_pytorch_tanh" and gemma.embedding_multiplier == 128**0.5
    assert gemma.layer_types == ("sliding_attention",) * 5 + ("full_attention",) and gemma.sliding_window == 5
    assert (gemma.rope_theta, gemma.local_rope_theta, gemma.attention_scale) == (1e6, 1e4, 32**-0.5)
    assert configs["qwen2"].attention_bias and configs["qwen2"].tie_word_embeddings
    assert configs["qwen3"].qk_norm and not configs["qwen3"].attention_bias
    assert configs["mistral"].layer_types == ("sliding_attention",) * 2 and configs["mistral"].sliding_window == 7
    assert configs["llama"].layer_types is None and not configs["llama"].qk_norm
    switches = ("attention_bias", "qk_norm", "sandwich_norms", "norm_weight_offset", "hidden_act",
                "embedding_multiplier", "attention_scale", "sliding_window", "layer_types", "local_rope_theta",
                "rope_theta", "head_dim", "tie_word_embeddings")
    for family, (_, _, path, _) in families.items():
        if path is not None:  # the GGUF file says the same
            gguf_config = load_checkpoint(path).config
            assert [getattr(gguf_config, f) for f in switches] == [getattr(configs[family], f) for f in switches]


def test_gemma_gguf_norms_come_back_in_hf_convention(families):
    model, _, path, _ = families["gemma3"]
    weights = load_checkpoint(path).weights
    for name in ("model.norm.weight", "model.layers.5.self_attn.q_norm.weight",
                 "model.layers.0.post_feedforward_layernorm.weight"):
        assert torch.equal(weights[name], model.state_dict()[name]), name


def test_query_pre_attn_scalar_sets_the_attention_scale(families, tmp_path):
    _, folder, _, _ = families["gemma3"]
    config = json.loads((folder / "config.json").read_text())
    config["query_pre_attn_scalar"] = 24
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "model.safetensors").symlink_to(folder / "model.safetensors")
    assert load_checkpoint(tmp_path).config.attention_scale == 24**-0.5


@pytest.mark.parametrize(("changes", "message"), [
    (dict(model_type="gpt_neox", architectures=["GPTNeoXForCausalLM"]), "unsupported model: model_type 'gpt_neox'"),
    (dict(final_logit_softcapping=30.0), "final_logit_softcapping=30.0 is not supported"),
    (dict(hidden_activation="gelu"), "hidden_act 'gelu' is not supported"),
])
def test_unsupported_gemma_variants_name_what_is_missing(families, tmp_path, changes, message):
    _, folder, _, _ = families["gemma3"]
    config = {**json.loads((folder / "config.json").read_text()), **changes}
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "model.safetensors").symlink_to(folder / "model.safetensors")
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(tmp_path)


def _encoded_linears(model) -> list[EncodedLinear]:
    layers = [(layer.self_attn.qkv_proj, layer.self_attn.o_proj, layer.mlp.gate_up_proj, layer.mlp.down_proj)
              for layer in model.layers]
    return [linear for group in layers for linear in group if isinstance(linear, EncodedLinear)]

"""LlamaForCausalLM on the default model against HF transformers, and the model's own contracts."""

from __future__ import annotations

import random

import pytest
import torch

from fastllm.loader import load_checkpoint
from fastllm.loader.default_model import default_model_path
from fastllm.model import AttentionMetadata, LlamaForCausalLM, get_backend, load_model
from fastllm.model.linear import encoded_types
from fastllm.model.rotary import rope_inv_freq, rotary_cos_sin
from llama_testing import hf_greedy, paged_logits, random_weights, tiny_config

# |logit difference| against HF on CPU float32, logits of magnitude 20-35 (fastllm's matmuls and
# HF's MKL ones sum the same products in different orders). Over 150 random prompts of 1-31
# tokens, 3 positions each: median 1.7e-5 / 3.0e-5, worst 1.1e-4 / 1.4e-4 (backend "torch" /
# backend "cpu" with GGUF blocks decoded in its kernels); with oneDNN matmuls, 300 prompts had
# reached 8.6e-4 and CI once met 1.28e-3 (short prompts carry the tail). A real bug moves logits
# by 1e-1 or more (bfloat16 alone does).
LOGIT_ATOL = 5e-3
# |final hidden state difference| (magnitudes up to ~57) between a prompt prefilled in two chunks
# and in one: the chunks' matmuls have fewer rows, so they sum in other orders, and through 30
# layers some prompts amplify that rounding. Over 600 random 29-token prompts: median 6.1e-5,
# p99 2.8e-3, worst 0.076 (5e-3 failed about 1 prompt in 100). A bug such as positions off by
# one moves them by 1.05 or more.
CHUNKED_PREFILL_ATOL = 0.3


@pytest.fixture(scope="module")
def default_checkpoint():
    return load_checkpoint(default_model_path())


@pytest.fixture(scope="module")
def default_model(default_checkpoint):
    """The plain float32 reference: weights dequantized at load, PyTorch ops."""
    model = LlamaForCausalLM(default_checkpoint.config, get_backend("torch"), dtype=torch.float32)
    model.load_weights(default_checkpoint.weights)
    return model.eval()


@pytest.fixture(scope="module", params=["torch", "cpu"])
def model_per_backend(request, default_model):
    """The reference, and backend "cpu" as the engine loads it: GGUF blocks decoded inside C++ matmuls,
    one-call decode steps."""
    if request.param == "torch":
        return default_model
    backend = get_backend("cpu")
    encoded = encoded_types(backend.name, torch.device("cpu"), torch.float32)
    model = load_model(load_checkpoint(default_model_path(), keep_encoded=encoded), dtype=torch.float32, device="cpu",
                       backend=backend)
    assert model._fused_decode is not None
    return model


def assert_same_argmax(got: torch.Tensor, expected: torch.Tensor) -> None:
    """Same greedy token per row, except where HF's top two logits are within float32 noise of
    each other (fresh random prompts can land on such a near-tie; either token is right there)."""
    top2 = expected.topk(2, dim=-1).values
    decisive = top2[:, 0] - top2[:, 1] > 2 * LOGIT_ATOL
    assert torch.equal(got.argmax(-1)[decisive], expected.argmax(-1)[decisive])


def random_prompts(lengths: list[int], vocab_size: int) -> list[list[int]]:
    rng = random.Random()
    return [[rng.randrange(3, vocab_size) for _ in range(n)] for n in lengths]


def test_default_weights_equal_transformers_gguf_loading(default_checkpoint, hf_default_model):
    reference = hf_default_model.state_dict()
    ours = default_checkpoint.weights
    assert set(ours) == set(reference) - {"lm_head.weight"}  # tied: HF lists the shared tensor twice
    for name, tensor in ours.items():
        assert torch.equal(tensor.float(), reference[name]), name


def test_default_config(default_checkpoint):
    config = default_checkpoint.config
    assert default_checkpoint.format == "gguf"
    assert (config.vocab_size, config.hidden_size, config.intermediate_size) == (49152, 576, 1536)
    assert (config.num_hidden_layers, config.num_attention_heads, config.num_key_value_heads) == (30, 9, 3)
    assert (config.head_dim, config.max_position_embeddings, config.rope_theta) == (64, 8192, 100000.0)
    assert config.rms_norm_eps == pytest.approx(1e-5)
    assert config.tie_word_embeddings and config.rope_scaling is None
    assert (config.bos_token_id, config.eos_token_id) == (1, 2)


def test_single_prompt_matches_hf(model_per_backend, hf_default_model):
    # fastllm's matmuls and HF's (MKL) sum the same float32 products in another order, so logits
    # agree to float32 rounding, not bit for bit.
    [prompt] = random_prompts([23], model_per_backend.config.vocab_size)
    expected, fed = hf_greedy(hf_default_model, prompt, steps=3)
    [got] = paged_logits(model_per_backend, [prompt], [fed], block_size=16)
    torch.testing.assert_close(got, expected, rtol=0, atol=LOGIT_ATOL)
    assert_same_argmax(got, expected)


def test_packed_prefill_and_batched_decode_match_hf(model_per_backend, hf_default_model):
    prompts = random_prompts([5, 17, 2, 31], model_per_backend.config.vocab_size)
    references = [hf_greedy(hf_default_model, prompt, steps=2) for prompt in prompts]
    got = paged_logits(model_per_backend, prompts, [fed for _, fed in references], block_size=4)
    for prompt, (expected, _), logits in zip(prompts, references, got):
        torch.testing.assert_close(logits, expected, rtol=0, atol=LOGIT_ATOL, msg=f"prompt {prompt}")
        assert_same_argmax(logits, expected)


def _prefill_meta(lengths_q, lengths_k, slot_mapping, block_tables=None):
    cu_q = torch.tensor([0, *torch.tensor(lengths_q).cumsum(0).tolist()], dtype=torch.int32)
    cu_k = torch.tensor([0, *torch.tensor(lengths_k).cumsum(0).tolist()], dtype=torch.int32)
    return AttentionMetadata(True, slot_mapping, cu_q, cu_k, max(lengths_q), max(lengths_k), None, block_tables)


def test_chunked_prefill_over_the_paged_cache_matches_one_shot_prefill(default_model):
    # The second chunk attends to the first through the block table (the prefix-cache path).
    config = default_model.config
    [prompt] = random_prompts([29], config.vocab_size)
    block_size, split = 4, 12
    table = torch.tensor([[5, 0, 7, 2, 3, 6, 1, 4]], dtype=torch.int32)
    slots = table[0, torch.arange(29) // block_size].long() * block_size + torch.arange(29) % block_size

    def new_cache():
        return torch.zeros(config.num_hidden_layers, 2, 8, block_size, config.num_key_value_heads, config.head_dim)

    ids, positions = torch.tensor(prompt), torch.arange(29)
    with torch.no_grad():
        whole = default_model(ids, positions, _prefill_meta([29], [29], slots), new_cache())
        cache = new_cache()
        first = default_model(ids[:split], positions[:split], _prefill_meta([split], [split], slots[:split]), cache)
        second = default_model(
            ids[split:], positions[split:], _prefill_meta([29 - split], [29], slots[split:], table), cache
        )
    torch.testing.assert_close(torch.cat([first, second]), whole, rtol=0, atol=CHUNKED_PREFILL_ATOL)


def test_bfloat16_tracks_float32(default_checkpoint, default_model):
    # float16 and more dtypes are checked against HF on a tiny model (test_loader_hf.py).
    model = LlamaForCausalLM(default_checkpoint.config, get_backend("torch"), dtype=torch.bfloat16)
    model.load_weights(default_checkpoint.weights)
    assert model.embed_tokens.dense().dtype == torch.bfloat16
    assert model.layers[0].self_attn.qkv_proj.dense().dtype == torch.bfloat16
    prompts = random_prompts([11], default_checkpoint.config.vocab_size)
    [low] = paged_logits(model, prompts, [[42]])
    [full] = paged_logits(default_model, prompts, [[42]])
    assert low.dtype == torch.float32 and torch.isfinite(low).all()
    # bfloat16 moves logits by O(0.1); the distributions must still agree.
    assert (low.softmax(-1) - full.softmax(-1)).abs().sum(-1).max() < 0.25


def test_compute_logits_is_float32_for_the_given_rows(default_model):
    hidden = torch.randn(3, default_model.config.hidden_size)
    logits = default_model.compute_logits(hidden)
    assert logits.shape == (3, default_model.config.vocab_size) and logits.dtype == torch.float32


def test_load_weights_rejects_missing_unexpected_and_misshapen_tensors():
    model = LlamaForCausalLM(tiny_config(), get_backend("torch"))
    weights = random_weights(model)
    model.load_weights(weights)

    missing = dict(weights)
    del missing["model.layers.1.mlp.up_proj.weight"]
    with pytest.raises(ValueError, match=r"missing tensors 'model\.layers\.1\.mlp\.up_proj\.weight'"):
        model.load_weights(missing)
    with pytest.raises(ValueError, match=r"unexpected tensors 'model\.layers\.2\.mlp\.up_proj\.weight'"):
        model.load_weights({**weights, "model.layers.2.mlp.up_proj.weight": torch.zeros(40, 24)})
    with pytest.raises(ValueError, match=r"k_proj\.weight' has shape \(4, 24\), expected \(8, 24\)"):
        model.load_weights({**weights, "model.layers.0.self_attn.k_proj.weight": torch.zeros(4, 24)})
    with pytest.raises(ValueError, match="floating-point"):
        model.load_weights({**weights, "model.norm.weight": torch.ones(24, dtype=torch.int64)})


def test_rotary_tables_follow_the_latest_checkpoint():
    model = LlamaForCausalLM(tiny_config(), get_backend("torch"))
    weights = random_weights(model)
    default_cos = model.rotary_cos.clone()
    model.load_weights({**weights, "rope_freqs": torch.full((2,), 4.0)})
    assert not torch.equal(model.rotary_cos, default_cos)
    model.load_weights(weights)
    assert torch.equal(model.rotary_cos, default_cos)


def test_cpu_rotary_tables_grow_with_the_positions_to_the_same_bits():
    config = tiny_config(max_position_embeddings=3000, vocab_size=50)
    model = LlamaForCausalLM(config, get_backend("torch"))
    model.load_weights(random_weights(model))
    assert model.rotary_cos.shape[0] == 1024  # not all 3000 rows, until a step needs them
    whole = rotary_cos_sin(3000, *rope_inv_freq(config.head_dim, config.rope_theta))
    for length, rows in ((1024, 1024), (1100, 2048), (3000, 3000)):
        paged_logits(model, [[random.randrange(50) for _ in range(length - 1)]], [[7]], block_size=64)
        assert model.rotary_cos.shape[0] == rows
        assert torch.equal(model.rotary_cos, whole[0][:rows]) and torch.equal(model.rotary_sin, whole[1][:rows])


def test_tied_model_shares_embeddings_and_ignores_lm_head():
    model = LlamaForCausalLM(tiny_config(tie_word_embeddings=True), get_backend("torch"))
    weights = random_weights(model)
    model.load_weights({**weights, "lm_head.weight": torch.zeros(50, 24)})
    assert torch.equal(model.lm_head.dense(), weights["model.embed_tokens.weight"])
    assert model.lm_head.weight is model.embed_tokens.weight  # one table for the lookup and the logits


def test_constructor_and_forward_argument_errors():
    with pytest.raises(ValueError, match="dtype must be"):
        LlamaForCausalLM(tiny_config(), get_backend("torch"), dtype=torch.float64)
    model = LlamaForCausalLM(tiny_config(), get_backend("torch"))
    model.load_weights(random_weights(model))
    meta = _prefill_meta([3], [3], torch.arange(3))
    with pytest.raises(ValueError, match=r"kv_cache must have shape \[2, 2, num_blocks, block_size, 2, 4\]"):
        model(torch.tensor([1, 2, 3]), torch.arange(3), meta, torch.zeros(1, 2, 4, 4, 2, 4))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])  # the interpreter has no bfloat16
def test_triton_backend_matches_torch_backend(dtype):
    """The same model through the Triton kernels (interpreted on CPU) and the PyTorch ops."""
    config = tiny_config(head_dim=16, hidden_size=96, num_attention_heads=6, num_key_value_heads=2)
    outputs = []
    for name in ("torch", "triton"):
        model = LlamaForCausalLM(config, get_backend(name), dtype=dtype)
        torch.manual_seed(0)
        model.load_weights(random_weights(model))
        outputs.append(paged_logits(model, [[1, 2, 3, 4, 5], [7, 8, 9]], [[10, 11], [12, 13]]))
    tolerance = 1e-4 if dtype == torch.float32 else 2e-2
    for expected, got in zip(*outputs):
        torch.testing.assert_close(got, expected, rtol=0, atol=tolerance)

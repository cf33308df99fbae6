"""Gemma 3 270M (Q4_K_M, the PyPI packages) against HF transformers on the same GGUF file.

Greedy tokens must equal HF's, 32 per prompt, float32 on the CPU, for text, code, a chat-template
prompt, non-English text and a prompt longer than the 512-token sliding window: batched, each
alone, prefilled in chunks and after prefix-cache hits. Both sides get the same token ids, from
HF's tokenizer built from the file (fastllm's SentencePiece tokenizer has its own tests).
"""

from __future__ import annotations

import pytest
import torch

from fastllm import LLM, SamplingParams
from fastllm.loader import load_checkpoint
from fastllm.model import get_backend, load_model
from fastllm.model.linear import encoded_types
from llama_testing import hf_greedy

NEW_TOKENS = 32
GREEDY = SamplingParams(temperature=0, max_tokens=NEW_TOKENS, ignore_eos=True)
TEXTS = [
    "The capital of France is",
    'def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n',
    "Übersetze ins Englische: Wo ist die Bibliothek? 東京は日本の首都で、",
]
# Gemma's chat format (the file carries no chat template): one user turn, then the model's.
CHAT = "<start_of_turn>user\nName three primary colors.<end_of_turn>\n<start_of_turn>model\n"
# Over 512 tokens once repeated: the sliding layers' window cuts the prompt, in prefill and decode.
LONG_TEXT = (
    "The history of computing is longer than the history of computing hardware and includes methods "
    "intended for pen and paper or for chalk and slate, with or without the aid of tables. "
) * 18 + "In summary,"


@pytest.fixture(scope="session")
def gemma3_prompts(gemma3_gguf_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gemma3_gguf_path.parent, gguf_file=gemma3_gguf_path.name)
    return [tokenizer(text)["input_ids"] for text in [*TEXTS, LONG_TEXT, CHAT]]


@pytest.fixture(scope="session")
def gemma3_hf_tokens(gemma3_gguf_path, gemma3_prompts):
    """HF's greedy tokens per prompt (the model is dropped once they are computed)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        gemma3_gguf_path.parent, gguf_file=gemma3_gguf_path.name, dtype=torch.float32
    ).eval()
    return [hf_greedy(model, prompt, NEW_TOKENS)[1] for prompt in gemma3_prompts]


@pytest.fixture(scope="module")
def gemma3_model(gemma3_gguf_path):
    device, dtype = torch.device("cpu"), torch.float32
    checkpoint = load_checkpoint(gemma3_gguf_path, keep_encoded=encoded_types("cpu", device, dtype))
    return load_model(checkpoint, dtype=dtype, device=device, backend=get_backend("cpu"))


def _greedy(model, prompts, **engine_options) -> list[list[int]]:
    llm = LLM.from_model(model, **{"num_kv_blocks": 256, **engine_options})
    return [out.token_ids for out in llm.generate(prompts, GREEDY, use_tqdm=False)]


def test_prompts_cover_the_window_and_the_chat_template(gemma3_model, gemma3_prompts):
    assert len(gemma3_prompts[3]) > gemma3_model.config.sliding_window + 20
    assert gemma3_prompts[0][0] == 2  # BOS
    assert gemma3_model._fused_decode is not None  # decode steps run in the one C++ call


def test_config(gemma3_model):
    config = gemma3_model.config
    assert (config.vocab_size, config.hidden_size, config.num_hidden_layers, config.head_dim) == (262144, 640, 18, 256)
    assert (config.num_attention_heads, config.num_key_value_heads, config.sliding_window) == (4, 1, 512)
    assert [i for i, kind in enumerate(config.layer_types) if kind == "full_attention"] == [5, 11, 17]
    assert (config.rope_theta, config.local_rope_theta, config.tie_word_embeddings) == (1e6, 1e4, True)


def test_batched_greedy_matches_transformers(gemma3_model, gemma3_prompts, gemma3_hf_tokens):
    assert _greedy(gemma3_model, gemma3_prompts) == gemma3_hf_tokens


def test_each_prompt_alone_matches_transformers(gemma3_model, gemma3_prompts, gemma3_hf_tokens):
    llm = LLM.from_model(gemma3_model, num_kv_blocks=256, enable_prefix_caching=False)
    for prompt, expected in zip(gemma3_prompts, gemma3_hf_tokens):
        assert llm.generate([prompt], GREEDY, use_tqdm=False)[0].token_ids == expected


def test_chunked_prefill_and_prefix_hits_give_the_same_tokens(gemma3_model, gemma3_prompts, gemma3_hf_tokens):
    llm = LLM.from_model(gemma3_model, num_kv_blocks=256, max_num_batched_tokens=96)
    first = llm.generate(gemma3_prompts, GREEDY, use_tqdm=False)
    assert [o.token_ids for o in first] == gemma3_hf_tokens
    again = llm.generate(gemma3_prompts[3:4], GREEDY, use_tqdm=False)[0]  # its prefix is cached now
    assert again.metrics.num_cached_tokens >= len(gemma3_prompts[3]) - 16
    assert again.token_ids == gemma3_hf_tokens[3]

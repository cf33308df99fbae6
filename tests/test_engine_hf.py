"""The engine on the default model (SmolLM2-135M-Instruct GGUF) against HF transformers.

Greedy token ids must equal HF's for varied prompts, and a prompt's greedy output must not depend
on how it was scheduled: alone, in a mixed batch, after a prefix-cache hit, chunked, or preempted
and recomputed under KV-cache pressure. Both sides get the same prompt token ids.
"""

import pytest

from fastllm.engine.config import EngineConfig
from fastllm.engine.llm_engine import LLMEngine
from fastllm.engine.sampling_params import SamplingParams
from tests.engine_testing import generate
from tests.llama_testing import hf_greedy

NEW_TOKENS = 32
GREEDY = SamplingParams(temperature=0, max_tokens=NEW_TOKENS, ignore_eos=True)
LONG_TEXT = (
    "The history of computing is longer than the history of computing hardware and modern computing "
    "technology and includes the history of methods intended for pen and paper or for chalk and slate, "
    "with or without the aid of tables. Digital computing is intimately tied to the representation of "
    "numbers. But long before abstractions like the number arose, there were mathematical concepts to "
    "serve the purposes of civilization. These concepts are implicit in concrete practices such as "
    "one-to-one correspondence, the basis of counting, comparison to a standard, used for measurement, "
    "and the 3-4-5 right triangle, a device for assuring a right angle. In summary,"
)


@pytest.fixture(scope="module")
def prompts(default_llm):
    texts = [
        "The capital of France is",
        'def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n',
        "Translate to French: Où est la bibliothèque? 🙂 Pi is 3.14159 and e is",
        LONG_TEXT,
    ]
    ids = [default_llm.tokenizer.encode(t) for t in texts]
    chat = default_llm.apply_chat_template([{"role": "user", "content": "Name three primary colors."}])
    return [*ids, default_llm.tokenizer.encode(chat)]


@pytest.fixture(scope="module")
def hf_reference(hf_default_model, prompts):
    return [hf_greedy(hf_default_model, p, NEW_TOKENS)[1] for p in prompts]


def engine_over(default_llm, **settings):
    """A fresh engine sharing the default model's weights."""
    engine = default_llm.engine
    return LLMEngine(engine.model, engine.tokenizer, EngineConfig(**settings), engine.processor.prompt_format)


def greedy(engine, prompts):
    return [o.token_ids for o in generate(engine, prompts, GREEDY)]


def test_long_prompt_is_long_enough_to_chunk(prompts):
    assert len(prompts[3]) > 100


def test_batched_greedy_matches_transformers(default_llm, prompts, hf_reference):
    assert greedy(engine_over(default_llm, num_kv_blocks=128), prompts) == hf_reference


def test_each_prompt_alone_matches_transformers(default_llm, prompts, hf_reference):
    engine = engine_over(default_llm, num_kv_blocks=128, enable_prefix_caching=False)
    for prompt, expected in zip(prompts, hf_reference):
        assert greedy(engine, [prompt]) == [expected]


def test_prefix_cache_hit_gives_the_same_tokens(default_llm, prompts, hf_reference):
    engine = engine_over(default_llm, num_kv_blocks=128)
    greedy(engine, [prompts[3]])
    variant = prompts[3][:-3] + prompts[0]  # the long prefix with another ending
    outs = generate(engine, [prompts[3], variant], GREEDY)
    assert all(o.metrics.num_cached_tokens >= 96 for o in outs)
    assert outs[0].token_ids == hf_reference[3]
    fresh = engine_over(default_llm, num_kv_blocks=128, enable_prefix_caching=False)
    assert outs[1].token_ids == greedy(fresh, [variant])[0]


def test_chunked_prefill_gives_the_same_tokens(default_llm, prompts, hf_reference):
    assert greedy(engine_over(default_llm, num_kv_blocks=128, max_num_batched_tokens=48), prompts) == hf_reference


def test_preemption_under_kv_pressure_gives_the_same_tokens(default_llm, prompts, hf_reference):
    # The long prompt alone needs ~12 blocks of 16 tokens; 16 blocks cannot hold all five requests.
    engine = engine_over(default_llm, num_kv_blocks=16)
    outputs = greedy(engine, prompts)
    assert engine.scheduler.num_preemptions > 0
    assert outputs == hf_reference
    assert engine.block_manager.num_free_blocks == 16

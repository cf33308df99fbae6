"""LLMEngine on a tiny random Llama: the paged, batched, chunked, preempting, prefix-caching engine
must produce exactly what cache-free greedy recomputation produces, and stop where it should."""

import pytest
import torch

from fastllm.engine.config import EngineConfig
from fastllm.engine.llm_engine import LLMEngine
from fastllm.engine.placement import resolve_device, resolve_dtype
from fastllm.engine.sampling_params import SamplingParams
from tests.engine_testing import (
    TINY_VOCAB,
    CharTokenizer,
    dense_greedy,
    generate,
    random_prompts,
    run_to_completion,
    tiny_engine,
    tiny_model,
)

GREEDY = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
LENGTHS = [5, 17, 33, 3, 50, 8, 1]


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def prompts():
    return random_prompts(LENGTHS)


@pytest.fixture(scope="module")
def reference(model, prompts):
    return [dense_greedy(model, p, GREEDY.max_tokens) for p in prompts]


def outputs(finals):
    return [o.token_ids for o in finals]


def test_batched_greedy_equals_cache_free_recomputation(model, prompts, reference):
    engine = tiny_engine(model)
    finals = generate(engine, prompts, GREEDY)
    assert outputs(finals) == reference
    assert all(s.finish_reason == "length" for s in finals)
    assert engine.block_manager.num_free_blocks == engine.num_kv_blocks


def test_each_prompt_alone_equals_batched(model, prompts, reference):
    engine = tiny_engine(model)
    for prompt, expected in zip(prompts, reference):
        assert outputs(generate(engine, [prompt], GREEDY)) == [expected]


@pytest.mark.parametrize("budget", [1, 7, 16])
def test_chunked_prefill(model, prompts, reference, budget):
    engine = tiny_engine(model, max_num_batched_tokens=budget)
    assert outputs(generate(engine, prompts, GREEDY)) == reference


def test_preemption_under_kv_pressure_loses_nothing(model, prompts, reference):
    engine = tiny_engine(model, num_kv_blocks=16, max_num_batched_tokens=24)  # 64 slots for 7 prompts
    finals = generate(engine, prompts, GREEDY)
    assert engine.scheduler.num_preemptions > 0
    assert outputs(finals) == reference
    assert engine.block_manager.num_free_blocks == 16


@pytest.mark.parametrize("enable_prefix_caching", [True, False])
def test_prefix_cache_hits_give_the_same_tokens(model, enable_prefix_caching):
    shared = random_prompts([21], seed=1)[0]
    tails = random_prompts([3, 6, 1], seed=2)
    prompts = [shared + t for t in tails]
    expected = [dense_greedy(model, p, GREEDY.max_tokens) for p in prompts]
    engine = tiny_engine(model, enable_prefix_caching=enable_prefix_caching)
    first = generate(engine, prompts[:1], GREEDY)
    rest = generate(engine, prompts[1:], GREEDY)
    assert outputs(first + rest) == expected
    cached = [o.metrics.num_cached_tokens for o in rest]
    assert cached == ([20, 20] if enable_prefix_caching else [0, 0])


def test_preempted_sequence_recomputes_from_the_prefix_cache(model, prompts, reference):
    engine = tiny_engine(model, num_kv_blocks=16)
    finals = generate(engine, prompts, GREEDY)
    assert engine.block_manager.num_cache_hits > 0
    assert outputs(finals) == reference


def test_seeded_sampling_is_reproducible_whatever_the_batch(model, prompts):
    sampled = SamplingParams(temperature=1.0, top_k=20, top_p=0.9, seed=99, max_tokens=12, ignore_eos=True)
    alone = outputs(generate(tiny_engine(model), [prompts[1]], sampled))[0]
    noisy = [SamplingParams(temperature=1.0, max_tokens=12, ignore_eos=True)] * len(prompts)
    noisy[1] = sampled
    in_batch = outputs(generate(tiny_engine(model, num_kv_blocks=16, max_num_batched_tokens=9), prompts, noisy))[1]
    assert alone == in_batch
    other_seed = outputs(generate(tiny_engine(model), [prompts[1]], SamplingParams(
        temperature=1.0, top_k=20, top_p=0.9, seed=100, max_tokens=12, ignore_eos=True)))[0]
    assert other_seed != alone


def test_stop_token_ids_end_generation_at_the_first_occurrence(model, prompts, reference):
    expected = reference[2]
    stop_token = expected[4]
    first = expected.index(stop_token)
    (out,) = generate(tiny_engine(model), [prompts[2]], SamplingParams(
        temperature=0, max_tokens=12, stop_token_ids=[stop_token]))
    assert out.token_ids == expected[: first + 1]
    assert out.finish_reason == "stop" and out.stop_reason == stop_token


def test_stop_string_spanning_tokens_is_cut_from_the_text(model, prompts, reference):
    text = CharTokenizer().decode(reference[4])
    stop = text[6:9]  # three tokens' worth of characters
    engine = tiny_engine(model)
    (out,) = generate(engine, [prompts[4]], SamplingParams(temperature=0, max_tokens=12, stop=[stop, "no-such"]))
    assert out.finish_reason == "stop" and out.stop_reason == stop
    assert out.text == text[: text.index(stop)]
    assert out.token_ids == reference[4][: text.index(stop) + len(stop)]


def test_eos_stops_unless_ignored_and_min_tokens_defers_it(model, prompts, reference):
    expected = reference[3]
    tokenizer = CharTokenizer()
    tokenizer.eos_id = expected[3]  # pretend one of the model's greedy tokens is EOS
    first = expected.index(tokenizer.eos_id)
    engine = LLMEngine(model, tokenizer, EngineConfig(num_kv_blocks=64, block_size=4))
    stopped, ignored, deferred = generate(engine, [prompts[3]] * 3, [
        SamplingParams(temperature=0, max_tokens=12),
        SamplingParams(temperature=0, max_tokens=12, ignore_eos=True),
        SamplingParams(temperature=0, max_tokens=12, min_tokens=5),
    ])
    assert stopped.token_ids == expected[: first + 1] and stopped.finish_reason == "stop"
    assert stopped.stop_reason is None
    assert ignored.token_ids == expected and ignored.finish_reason == "length"
    assert len(deferred.token_ids) >= 5 and tokenizer.eos_id not in deferred.token_ids[:5]


def test_max_tokens_none_runs_to_the_context_length(model, prompts):
    engine = tiny_engine(model, max_model_len=40)
    (out,) = generate(engine, [prompts[1]], SamplingParams(temperature=0, max_tokens=None, ignore_eos=True))
    assert len(out.prompt_token_ids) + len(out.token_ids) == 40 and out.finish_reason == "length"


def test_logprobs_one_entry_per_generated_token(model, prompts):
    (out,) = generate(tiny_engine(model), [prompts[0]], SamplingParams(
        temperature=0, max_tokens=6, logprobs=2, ignore_eos=True))
    assert len(out.logprobs) == 6
    for token, entry in zip(out.token_ids, out.logprobs):
        assert token in entry and 2 <= len(entry) <= 3
        assert max(entry.values()) == entry[token]  # greedy: the sampled token is the most likely


def test_abort_frees_blocks_and_the_engine_goes_on(model, prompts, reference):
    engine = tiny_engine(model)
    doomed = engine.add_request(prompts[4], GREEDY)
    kept = engine.add_request(prompts[0], GREEDY)
    engine.step()
    engine.abort(doomed)
    finals = run_to_completion(engine)
    assert list(finals) == [kept] and finals[kept].token_ids == reference[0]
    assert engine.block_manager.num_free_blocks == engine.num_kv_blocks


@pytest.mark.parametrize(
    "prompt, params, message",
    [
        ([], GREEDY, "the prompt is empty"),
        ([1, TINY_VOCAB], GREEDY, f"prompt token id {TINY_VOCAB} is outside the vocabulary"),
        ([1, -1], GREEDY, "prompt token id -1"),
        ([1, 2.0], GREEDY, "prompt token id 2.0 is not an int"),
        ([1, True], GREEDY, "prompt token id True is not an int"),
        ([1] * 30, SamplingParams(max_tokens=20), r"prompt \(30 tokens\) \+ max_tokens \(20\) = 50 exceeds max_model_len \(40\)"),
        ([1] * 40, SamplingParams(max_tokens=None), "the prompt has 40 tokens, but max_model_len allows at most 39"),
        ([1], SamplingParams(stop_token_ids=[TINY_VOCAB]), "stop_token_ids contains 101"),
        ([1], SamplingParams(logprobs=TINY_VOCAB + 1), r"logprobs \(102\) must be <= the vocabulary size"),
    ],
)
def test_bad_requests_are_refused_at_submission(model, prompt, params, message):
    engine = tiny_engine(model, max_model_len=40)
    with pytest.raises(ValueError, match=message):
        engine.add_request(prompt, params)
    assert not engine.has_unfinished_requests()


def test_request_larger_than_the_kv_pool_is_refused(model):
    engine = tiny_engine(model, num_kv_blocks=4)  # 16 slots
    with pytest.raises(ValueError, match=r"needs 5 KV blocks but the pool has 4"):
        engine.add_request([1] * 10, SamplingParams(max_tokens=8))
    with pytest.raises(ValueError, match=r"the KV cache \(num_kv_blocks \* block_size\) allows at most 16"):
        engine.add_request([1] * 17, SamplingParams(max_tokens=None))
    engine.add_request([1] * 10, SamplingParams(max_tokens=7, temperature=0))  # exactly fits: 16 KV slots
    run_to_completion(engine)


def test_sampling_params_type_is_checked(model):
    with pytest.raises(TypeError, match="sampling_params must be a SamplingParams"):
        tiny_engine(model).add_request([1, 2], {"temperature": 0})
    with pytest.raises(TypeError, match="prompt must be a str or a list of token ids, got int"):
        tiny_engine(model).add_request(7, GREEDY)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"block_size": 3}, "block_size must be a power of two"),
        ({"block_size": 0}, "block_size must be an int >= 1"),
        ({"num_kv_blocks": 0}, "num_kv_blocks must be an int >= 1 or None"),
        ({"max_num_seqs": 0}, "max_num_seqs must be an int >= 1"),
        ({"max_num_batched_tokens": -4}, "max_num_batched_tokens"),
        ({"max_model_len": 0}, "max_model_len"),
        ({"enable_prefix_caching": "yes"}, "enable_prefix_caching must be a bool"),
        ({"gpu_memory_utilization": 0}, r"gpu_memory_utilization must be a float in \(0, 1\]"),
    ],
)
def test_bad_engine_settings_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        EngineConfig(**kwargs)


def test_max_model_len_beyond_the_model_is_refused(model):
    with pytest.raises(ValueError, match=r"max_model_len \(300\) must be <= the model's max_position_embeddings \(256\)"):
        tiny_engine(model, max_model_len=300)


def test_device_and_dtype_resolution():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_dtype("auto", torch.device("cpu")) is torch.float32
    assert resolve_dtype("bf16", torch.device("cpu")) is torch.bfloat16
    assert resolve_dtype(torch.float16, torch.device("cpu")) is torch.float16
    with pytest.raises(ValueError, match="dtype must be 'auto'"):
        resolve_dtype("int8", torch.device("cpu"))
    with pytest.raises(ValueError, match="device must be 'auto', 'cpu'"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")
        assert resolve_device("auto") == torch.device("cpu")

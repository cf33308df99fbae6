"""The public API on the default model: LLM.generate / stream / chat and fastllm.generate."""

import pytest

import fastllm
from fastllm import LLM, RequestOutput, SamplingParams
from fastllm.api import get_llm

GREEDY8 = SamplingParams(temperature=0, max_tokens=8)
PROMPTS = ["The capital of France is", "1, 2, 3, 4,", "def add(a, b):"]


@pytest.fixture(scope="module")
def llm(default_llm):
    return default_llm


@pytest.fixture(scope="module")
def alone(llm):
    """Each prompt's greedy output generated on its own."""
    return [llm.generate(p, GREEDY8, use_tqdm=False)[0] for p in PROMPTS]


def assert_idle(llm):
    engine = llm.engine
    assert not engine.has_unfinished_requests() and not engine.scheduler.has_unfinished()
    assert engine.block_manager.num_free_blocks == engine.num_kv_blocks
    assert llm._outputs == {}


def test_generate_one_str(llm, alone):
    out = alone[0]
    assert isinstance(out, RequestOutput)
    assert out.prompt == PROMPTS[0] and out.prompt_token_ids == llm.tokenizer.encode(PROMPTS[0])
    assert len(out.token_ids) <= 8 and out.text == llm.tokenizer.decode(out.token_ids, skip_special_tokens=True)
    assert out.finish_reason in ("stop", "length") and out.logprobs is None
    m = out.metrics
    assert m.arrival_time <= m.first_scheduled_time <= m.first_token_time <= m.finished_time
    assert_idle(llm)


def test_generate_batch_keeps_input_order_and_matches_single_runs(llm, alone, capsys):
    outs = llm.generate(PROMPTS, GREEDY8, use_tqdm=True)
    assert [o.prompt for o in outs] == PROMPTS
    assert [o.token_ids for o in outs] == [o.token_ids for o in alone]
    assert "tok/s" in capsys.readouterr().err  # the progress bar's live throughput


def test_generate_token_id_prompts_and_per_prompt_params(llm, alone):
    ids = [llm.tokenizer.encode(p) for p in PROMPTS]
    params = [GREEDY8, SamplingParams(temperature=0, max_tokens=3), GREEDY8]
    outs = llm.generate(ids, params, use_tqdm=False)
    assert [o.prompt for o in outs] == [None] * 3
    assert outs[0].token_ids == alone[0].token_ids and outs[1].token_ids == alone[1].token_ids[:3]
    assert outs[1].finish_reason == "length"


def test_generate_nothing(llm):
    assert llm.generate([], use_tqdm=False) == []


def test_seeded_sampling_is_reproducible_in_any_batch(llm):
    seeded = SamplingParams(temperature=0.8, top_p=0.95, seed=7, max_tokens=10, ignore_eos=True)
    alone = llm.generate(PROMPTS[1], seeded, use_tqdm=False)[0].token_ids
    other = SamplingParams(temperature=1.0, max_tokens=10)
    batch = llm.generate([PROMPTS[0], PROMPTS[1], PROMPTS[2]], [other, seeded, other], use_tqdm=False)
    assert batch[1].token_ids == alone


def test_logprobs(llm):
    out = llm.generate(PROMPTS[0], SamplingParams(temperature=0, max_tokens=4, logprobs=5), use_tqdm=False)[0]
    assert len(out.logprobs) == len(out.token_ids)
    for token, entry in zip(out.token_ids, out.logprobs):
        assert len(entry) == 5 and entry[token] == max(entry.values()) and all(v <= 0 for v in entry.values())


def test_stop_string_is_not_in_the_text(llm):
    full = llm.generate("1, 2, 3, 4,", SamplingParams(temperature=0, max_tokens=12), use_tqdm=False)[0].text
    stop = full.strip()[3:6]
    out = llm.generate("1, 2, 3, 4,", SamplingParams(temperature=0, max_tokens=12, stop=stop), use_tqdm=False)[0]
    assert out.finish_reason == "stop" and out.stop_reason == stop
    assert stop not in out.text and full.startswith(out.text)


@pytest.mark.parametrize(
    "prompts, params, error, message",
    [
        ("", None, ValueError, "a prompt is empty"),
        (["ok", ""], None, ValueError, "a prompt is empty"),
        ([[]], None, ValueError, "the prompt is empty"),
        ([[1, 10**6]], None, ValueError, "prompt token id 1000000 is outside the vocabulary"),
        ([1, 2, 3], None, TypeError, "wrap it in a list"),
        ([3.5], None, TypeError, r"prompts\[0\] must be a str or a list of token ids"),
        (42, None, TypeError, "prompts must be a str"),
        (["a", "b"], [GREEDY8], ValueError, "got 1 sampling_params for 2 prompts"),
        ("a", {"temperature": 0}, TypeError, "sampling_params must be a SamplingParams"),
        ("a", [GREEDY8, "x"][1:], TypeError, "sampling_params must be a SamplingParams"),
        ("a", SamplingParams(max_tokens=10**6), ValueError, "exceeds max_model_len"),
    ],
)
def test_bad_input_gets_a_clear_error_and_leaves_nothing_behind(llm, prompts, params, error, message):
    with pytest.raises(error, match=message):
        llm.generate(prompts, params, use_tqdm=False)
    assert_idle(llm)


def test_stream_deltas_add_up_to_the_generated_text(llm, alone):
    stream = llm.stream(PROMPTS[0], GREEDY8)
    deltas = list(stream)
    assert "".join(deltas) == alone[0].text and all(deltas)
    assert stream.output.token_ids == alone[0].token_ids
    assert_idle(llm)


def test_stream_never_shows_a_stop_string(llm):
    full = llm.generate("1, 2, 3, 4,", SamplingParams(temperature=0, max_tokens=12), use_tqdm=False)[0].text
    stop = full.strip()[3:6]
    params = SamplingParams(temperature=0, max_tokens=12, stop=stop)
    assert "".join(llm.stream("1, 2, 3, 4,", params)) == full[: full.index(stop)]


def test_closing_a_stream_aborts_its_request(llm):
    stream = llm.stream("Tell me a long story.", SamplingParams(temperature=0, max_tokens=200, ignore_eos=True))
    next(stream)
    stream.close()
    assert stream.output is None
    assert_idle(llm)


def test_stream_validates_right_away(llm):
    with pytest.raises(ValueError, match="a prompt is empty"):
        llm.stream("")
    with pytest.raises(TypeError, match="sampling_params must be a SamplingParams"):
        llm.stream("hi", {"max_tokens": 3})


def test_chat_uses_the_models_template(llm):
    messages = [{"role": "user", "content": "Say hello."}]
    (out,) = llm.chat(messages, GREEDY8, use_tqdm=False)
    assert out.prompt == llm.apply_chat_template(messages)
    assert out.prompt.endswith("<|im_start|>assistant\n") and "<|im_start|>user\nSay hello.<|im_end|>" in out.prompt
    assert out.prompt_token_ids == llm.tokenizer.encode(out.prompt)
    both = llm.chat([messages, [{"role": "user", "content": "Count to three."}]], GREEDY8, use_tqdm=False)
    assert both[0].token_ids == out.token_ids and len(both) == 2


@pytest.mark.parametrize(
    "messages, message",
    [
        ([], "messages must be a non-empty list"),
        ("hello", "messages must be a non-empty list"),
        ([{"role": "user"}], r"messages\[0\]\['content'\] must be a str"),
        (["hi"], r"messages\[0\] must be a dict"),
    ],
)
def test_chat_rejects_malformed_messages(llm, messages, message):
    with pytest.raises(ValueError, match=message):
        llm.chat(messages)


def test_fastllm_generate_uses_the_cached_llm(llm, alone):
    assert get_llm() is llm
    assert fastllm.generate(PROMPTS[0], temperature=0, max_tokens=8) == alone[0].text
    assert fastllm.generate(PROMPTS[:2], GREEDY8) == [alone[0].text, alone[1].text]
    with pytest.raises(TypeError, match="either sampling_params or sampling keyword arguments"):
        fastllm.generate("x", GREEDY8, max_tokens=3)
    with pytest.raises(TypeError, match="sampling keywords must be SamplingParams fields"):
        fastllm.generate("x", max_tokns=3)
    with pytest.raises(ValueError, match="SamplingParams.top_p"):
        fastllm.generate("x", top_p=0)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"block_size": 12}, ValueError, "block_size must be a power of two"),
        ({"dtype": "int4"}, ValueError, "dtype must be 'auto'"),
        ({"backend": "jax"}, ValueError, "backend must be 'auto' or one of"),
        ({"device": "tpu"}, ValueError, "device must be 'auto'"),
        ({"model": "/no/such/model.gguf"}, FileNotFoundError, "no/such/model.gguf"),
        ({"max_num_sequences": 4}, TypeError, "unknown engine option max_num_sequences: the options are device, "),
    ],
)
def test_bad_llm_settings_fail_before_loading(kwargs, error, message):
    with pytest.raises(error, match=message):
        LLM(**kwargs)


# -- request clean-up on a tiny random model (no default model needed) ---------------------------


@pytest.fixture
def tiny_llm():
    from tests.engine_testing import CharTokenizer, tiny_model

    return LLM.from_model(tiny_model(), CharTokenizer(), num_kv_blocks=64, block_size=4)


def assert_forgotten(llm):
    """Idle, and no request's state left behind in the engine or the LLM."""
    assert_idle(llm)
    assert llm.engine._requests == {} and llm._outputs == {}


def test_interrupted_generate_forgets_its_finished_requests_too(tiny_llm, monkeypatch):
    engine, steps = tiny_llm.engine, 0
    real_step = engine.step

    def step():
        nonlocal steps
        steps += 1
        if steps == 4:  # the one-token request is done by now, the long one is not
            raise KeyboardInterrupt
        return real_step()

    monkeypatch.setattr(engine, "step", step)
    short = SamplingParams(temperature=0, max_tokens=1)
    long = SamplingParams(temperature=0, max_tokens=20, ignore_eos=True)
    with pytest.raises(KeyboardInterrupt):
        tiny_llm.generate([[5, 6], [7, 8, 9]], [short, long], use_tqdm=False)
    assert_forgotten(tiny_llm)


def test_abandoning_a_stream_that_another_stream_finished_forgets_it(tiny_llm):
    driver = tiny_llm.stream([5, 6, 7], SamplingParams(temperature=0, max_tokens=10, ignore_eos=True))
    passenger = tiny_llm.stream([8, 9], SamplingParams(temperature=0, max_tokens=2, ignore_eos=True))
    next(passenger)
    list(driver)  # its steps finish the passenger's request too
    passenger.close()
    assert passenger.output is None
    assert_forgotten(tiny_llm)


def test_n_samples_come_grouped_per_prompt(tiny_llm):
    params = SamplingParams(temperature=0.9, seed=3, max_tokens=6, ignore_eos=True, n=3)
    single = SamplingParams(temperature=0.9, max_tokens=6, ignore_eos=True)
    first, second = tiny_llm.generate([[5, 6, 7], [8, 9]], [params, single], use_tqdm=False)
    assert [o.index for o in first.outputs] == [0, 1, 2] and len(second.outputs) == 1
    again = tiny_llm.generate([[5, 6, 7]], SamplingParams(**{**params.__dict__, "n": 1, "seed": 5}), use_tqdm=False)
    assert first.outputs[2].token_ids == again[0].token_ids  # sample 2 drew with seed 3 + 2
    with pytest.raises(ValueError, match="stream takes SamplingParams.n = 1, got n=3"):
        tiny_llm.stream([5, 6], params)
    assert_forgotten(tiny_llm)


def test_a_stream_dropped_unread_is_aborted(tiny_llm):
    stream = tiny_llm.stream([5, 6, 7], SamplingParams(temperature=0, max_tokens=10, ignore_eos=True))
    assert tiny_llm.engine.get_num_unfinished_requests() == 1  # queued at once
    del stream
    assert_forgotten(tiny_llm)


def test_repr_names_the_model_and_where_it_runs(tiny_llm):
    assert repr(tiny_llm) == "LLM('llama', device=cpu, dtype=float32, backend=torch)"

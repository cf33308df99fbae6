"""The engine interface on a tiny random Llama: add_request -> request id, step() -> RequestOutputs
(deltas that add up), abort() in every state, no state left behind, n samples sharing blocks, and
mixed steps (decode tokens beside prefill chunks) that keep greedy tokens unchanged."""

from __future__ import annotations

import pytest

from fastllm.engine.sampling_params import SamplingParams
from tests.engine_testing import (
    CharTokenizer,
    dense_greedy,
    generate,
    random_prompts,
    run_to_completion,
    tiny_engine,
    tiny_model,
)

GREEDY = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)


@pytest.fixture(scope="module")
def model():
    return tiny_model()


def assert_no_state_left(engine):
    assert engine._requests == {} and not engine.has_unfinished_requests()
    assert not engine.scheduler.waiting and not engine.scheduler.running
    assert engine.block_manager.num_free_blocks == engine.num_kv_blocks
    assert engine.step() == []


def all_outputs(engine):
    """Every output of every step until idle, by request id."""
    seen = {}
    while engine.has_unfinished_requests():
        for output in engine.step():
            seen.setdefault(output.request_id, []).append(output)
    return seen


def test_step_outputs_carry_deltas_that_add_up_to_the_final_output(model):
    engine = tiny_engine(model, max_num_batched_tokens=16)
    prompts = random_prompts([5, 40, 9], seed=3)
    reference = CharTokenizer().decode(dense_greedy(model, prompts[1], 12))
    params = [
        SamplingParams(temperature=0.8, seed=1, max_tokens=10, n=2),
        SamplingParams(temperature=0, max_tokens=12, stop=[reference[5:8]]),  # held back, then cut
        SamplingParams(temperature=0, max_tokens=7, logprobs=1),
    ]
    ids = [engine.add_request(p, sp) for p, sp in zip(prompts, params)]
    seen = all_outputs(engine)
    assert list(seen) == ids
    for request_id, params_i in zip(ids, params):
        *partial, final = seen[request_id]
        assert final.finished and not any(o.finished for o in partial)
        assert len(final.outputs) == params_i.n
        for index, sample in enumerate(final.outputs):
            samples = [o.outputs[index] for o in seen[request_id]]
            assert "".join(s.delta_text for s in samples) == sample.text
            assert [t for s in samples for t in s.delta_token_ids] == sample.token_ids
            assert all(s.text == sample.text[: len(s.text)] for s in samples)  # text so far only grows
    stopped = seen[ids[1]][-1]
    assert stopped.finish_reason == "stop" and stopped.text == reference[:5]
    assert all(reference[5:8] not in o.text for o in seen[ids[1]])
    assert seen[ids[0]][-1].prompt_token_ids == prompts[0] and seen[ids[0]][-1].prompt is None
    assert len(seen[ids[2]][-1].logprobs) == 7
    assert_no_state_left(engine)


def test_request_ids(model):
    engine = tiny_engine(model)
    assert engine.add_request([3, 4], GREEDY, request_id="mine") == "mine"
    assert engine.add_request([3, 4], GREEDY) != engine.add_request([3, 4], GREEDY)
    with pytest.raises(ValueError, match="request_id 'mine' is already in use"):
        engine.add_request([5], GREEDY, request_id="mine")
    with pytest.raises(TypeError, match="request_id must be a str or None, got int"):
        engine.add_request([5], GREEDY, request_id=7)
    assert engine.get_num_unfinished_requests() == 3
    assert set(run_to_completion(engine)) >= {"mine"}
    engine.add_request([5], GREEDY, request_id="mine")  # free again once finished
    engine.abort("mine")
    engine.abort("mine")  # a second abort, or one of an unknown id, is a no-op
    engine.abort("never-added")
    assert_no_state_left(engine)


@pytest.mark.parametrize("state", ["waiting", "prefilling", "decoding", "first sample prefilling", "samples decoding"])
def test_abort_frees_every_block_in_every_state(model, state):
    engine = tiny_engine(model, max_num_batched_tokens=8)
    n = 3 if "sample" in state else 1
    params = SamplingParams(temperature=0.5, max_tokens=20, ignore_eos=True, n=n)
    request_id = engine.add_request(random_prompts([30], seed=4)[0], params)
    steps = {"waiting": 0, "prefilling": 1, "decoding": 6, "first sample prefilling": 1, "samples decoding": 8}
    for _ in range(steps[state]):
        engine.step()
    samples = engine._requests[request_id].samples
    running = [s for s in samples if s.block_table]
    assert len(running) == {"waiting": 0, "samples decoding": 3}.get(state, 1)
    assert (bool(running) and all(s.num_output_tokens > 0 for s in running)) == ("decoding" in state)
    engine.abort(request_id)
    assert all(s.finish_reason == "abort" and s.block_table == [] for s in samples)
    assert_no_state_left(engine)


def test_finished_and_aborted_requests_leave_nothing_and_others_go_on(model):
    engine = tiny_engine(model, num_kv_blocks=16, max_num_batched_tokens=8)
    prompts = random_prompts([13, 21, 4], seed=5)
    doomed = engine.add_request(prompts[0], GREEDY)
    kept = [engine.add_request(p, GREEDY) for p in prompts[1:]]
    for _ in range(3):
        engine.step()
    engine.abort(doomed)
    finals = run_to_completion(engine)
    assert list(finals) == kept
    assert [finals[k].token_ids for k in kept] == [dense_greedy(model, p, 12) for p in prompts[1:]]
    assert_no_state_left(engine)


def test_n_samples_share_the_prompt_blocks_and_sample_i_is_reproducible(model):
    prompt = random_prompts([33], seed=6)[0]  # 8 full blocks of 4 tokens, and one token
    sampled = SamplingParams(temperature=1.0, top_p=0.95, seed=11, max_tokens=8, ignore_eos=True)
    engine = tiny_engine(model)
    request_id = engine.add_request(prompt, SamplingParams(**{**sampled.__dict__, "n": 3}))
    samples = engine._requests[request_id].samples
    while not all(s.num_output_tokens > 1 for s in samples):
        engine.step()
    tables = [s.block_table for s in samples]
    assert tables[0][:8] == tables[1][:8] == tables[2][:8]  # the prompt's full blocks, held once
    used = engine.num_kv_blocks - engine.block_manager.num_free_blocks
    assert used == len({block for table in tables for block in table}) == 8 + sum(len(t) - 8 for t in tables)
    final = run_to_completion(engine)[request_id]
    assert [o.index for o in final.outputs] == [0, 1, 2]
    # Sample i draws with seed + i: it is the only sample of that request with n = 1, on a fresh engine.
    for index, sample in enumerate(final.outputs):
        alone = generate(tiny_engine(model), [prompt], SamplingParams(**{**sampled.__dict__, "seed": 11 + index}))
        assert sample.token_ids == alone[0].token_ids
    assert len({tuple(o.token_ids) for o in final.outputs}) == 3
    assert final.metrics.num_cached_tokens == 0  # the first sample's admission found nothing cached
    assert_no_state_left(engine)


def test_n_samples_without_the_prefix_cache_compute_the_prompt_each(model):
    prompt = random_prompts([17], seed=7)[0]
    engine = tiny_engine(model, enable_prefix_caching=False)
    (out,) = generate(engine, [prompt], SamplingParams(temperature=0, max_tokens=6, ignore_eos=True, n=2))
    assert [o.token_ids for o in out.outputs] == [dense_greedy(model, prompt, 6)] * 2
    assert_no_state_left(engine)


@pytest.mark.parametrize(
    "backend, head_dim, long_prompt, budget",
    [
        ("torch", 8, 3000, 512),
        ("cpu", 32, 3000, 512),  # head dim 32: the C++ decode kernel runs the decode rows
        ("triton", 16, 40, 16),  # the interpreter is slow: the same shape of schedule, smaller
    ],
)
def test_decode_goes_on_while_a_long_prompt_is_prefilled_and_greedy_tokens_do_not_change(
    backend, head_dim, long_prompt, budget
):
    model = tiny_model(backend=backend, head_dim=head_dim, max_position_embeddings=4096)
    short = random_prompts([5, 9, 3, 6], seed=8)
    (long,) = random_prompts([long_prompt], seed=9)
    decode_params = SamplingParams(temperature=0, max_tokens=long_prompt // (budget - 4) + 6, ignore_eos=True)
    long_params = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True)

    def fresh_engine():
        return tiny_engine(model, block_size=16, num_kv_blocks=long_prompt // 16 + 32, max_num_batched_tokens=budget)

    engine = fresh_engine()
    step_sizes = []
    run = engine.runner.run
    engine.runner.run = lambda batch: step_sizes.append(batch.num_tokens) or run(batch)
    decoding = [engine.add_request(p, decode_params) for p in short]
    started = set()
    while len(started) < len(decoding):  # the four prompts, until each sampled its first token
        started.update(o.request_id for o in engine.step())
    long_id = engine.add_request(long, long_params)
    finals, prefill_steps = {}, 0
    while long_id not in finals:
        outputs = {o.request_id: o for o in engine.step()}
        prefill_steps += 1
        assert all(len(outputs[r].outputs[0].delta_token_ids) == 1 for r in decoding)  # none stalls
        finals.update({r: o for r, o in outputs.items() if o.finished})
        if long_id in outputs:
            break
    assert prefill_steps == -(-long_prompt // (budget - 4)) and max(step_sizes) <= budget
    finals.update(run_to_completion(engine))
    mixed = [finals[r].token_ids for r in (*decoding, long_id)]
    # The unmixed schedule: the four alone, then the long prompt alone.
    unmixed = [o.token_ids for o in generate(fresh_engine(), short, decode_params)]
    unmixed += [o.token_ids for o in generate(fresh_engine(), [long], long_params)]
    assert mixed == unmixed
    if backend != "triton":  # (the interpreter is slow: cache-free recomputation is checked on the others)
        expected = [dense_greedy(model, p, decode_params.max_tokens) for p in short] + [dense_greedy(model, long, 4)]
        assert mixed == expected

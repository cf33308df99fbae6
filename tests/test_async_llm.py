"""AsyncLLM without HTTP, on a tiny random Llama: concurrent consumers each get the tokens of
their request run alone, in shared steps; a consumer that stops (break, cancellation, a dropped
stream) has its request aborted and its blocks freed, running or waiting; a refused request or
a failed step reaches its callers and the loop goes on; the waiting-queue bound; shutdown."""

from __future__ import annotations

import asyncio
import gc

import pytest

from fastllm.engine.async_llm import AsyncLLM, EngineClosedError, QueueFullError
from fastllm.engine.sampling_params import SamplingParams
from tests.engine_testing import random_prompts, run_to_completion, tiny_engine, tiny_model

GREEDY = SamplingParams(temperature=0, max_tokens=10, ignore_eos=True)
LONG = SamplingParams(temperature=0, max_tokens=200, ignore_eos=True)


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture
def make_llm(model):
    made = []

    def make(max_waiting_requests=None, **config):
        llm = AsyncLLM.from_engine(tiny_engine(model, **config), max_waiting_requests=max_waiting_requests)
        made.append(llm)
        return llm

    yield make
    for llm in made:
        llm.shutdown()


async def settled(llm: AsyncLLM):
    """The engine's stats once every command sent so far is applied (abort of nothing is a barrier)."""
    await llm.abort("no such request")
    return llm.stats()


def assert_idle(stats, llm):
    assert stats.num_running_requests == 0 and stats.num_waiting_requests == 0
    assert stats.num_free_kv_blocks == llm.engine.num_kv_blocks


async def first_output(stream):
    return await stream.__anext__()


def test_concurrent_consumers_share_steps_and_get_their_requests_tokens(model, make_llm):
    prompts = random_prompts([3 + 5 * i for i in range(12)], seed=1)
    alone = []
    for prompt in prompts:
        engine = tiny_engine(model)
        engine.add_request(prompt, GREEDY)
        alone.append(next(iter(run_to_completion(engine).values())).token_ids)

    llm = make_llm()
    steps = []
    step = llm.engine.step
    llm.engine.step = lambda: steps.append(1) or step()

    async def consume(prompt, delay):
        await asyncio.sleep(delay)  # arrivals spread over the first steps: they join the running batch
        tokens, final = [], None
        async for output in llm.generate(prompt, GREEDY):
            tokens += output.outputs[0].delta_token_ids
            final = output
        assert final.finished and final.token_ids == tokens
        return tokens

    async def main():
        results = await asyncio.gather(*(consume(p, 0.002 * i) for i, p in enumerate(prompts)))
        return results, await settled(llm)

    results, stats = asyncio.run(main())
    assert results == alone
    assert len(steps) < len(prompts) * GREEDY.max_tokens / 3  # batched: far fewer steps than tokens
    assert_idle(stats, llm)


def test_stopping_early_aborts_and_frees_blocks(make_llm):
    llm = make_llm()

    async def main():
        outputs = llm.generate([5, 6, 7], LONG)
        async for _ in outputs:
            break
        await outputs.aclose()  # what leaving `async for` early does once the generator is dropped
        after_break = await settled(llm)

        async def consume():
            async for _ in llm.generate([8, 9], LONG):
                pass

        task = asyncio.create_task(consume())
        while llm.stats().num_running_requests == 0:
            await asyncio.sleep(0.001)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        after_cancel = await settled(llm)

        stream = await llm.add_request([10, 11], LONG)
        await first_output(stream)
        del stream  # outputs already on their way hold it a moment longer: poll
        gc.collect()
        for _ in range(1000):
            after_drop = await settled(llm)
            if after_drop.num_running_requests == 0:
                break
            await asyncio.sleep(0.005)
        return after_break, after_cancel, after_drop

    for stats in asyncio.run(main()):
        assert_idle(stats, llm)


def test_a_waiting_request_is_aborted_too(make_llm):
    llm = make_llm(max_num_seqs=1)

    async def main():
        running = await llm.add_request([1, 2], LONG)
        await first_output(running)
        waiting = await llm.add_request([3, 4], LONG)
        queued = await settled(llm)
        waiting.abort()
        after = await settled(llm)
        running.abort()
        return queued, after, await settled(llm)

    queued, after, end = asyncio.run(main())
    assert (queued.num_running_requests, queued.num_waiting_requests) == (1, 1)
    assert (after.num_running_requests, after.num_waiting_requests) == (1, 0)
    assert_idle(end, llm)


def test_a_refused_request_raises_in_its_caller_only(make_llm):
    llm = make_llm()

    async def main():
        good = asyncio.create_task(collect(llm.generate([1, 2, 3], GREEDY)))
        with pytest.raises(ValueError, match="outside the vocabulary"):
            await llm.add_request([10_000], GREEDY)
        with pytest.raises(TypeError, match="sampling_params must be a SamplingParams"):
            await llm.add_request([1], "greedy")
        stream = await llm.add_request([4], GREEDY, request_id="mine")
        with pytest.raises(ValueError, match="request_id 'mine' is already in use"):
            await llm.add_request([5], GREEDY, request_id="mine")
        mine = await collect(stream)  # the refused duplicate did not touch the first "mine"
        return await good, mine

    good, mine = asyncio.run(main())
    assert good[-1].finished and len(good[-1].token_ids) == GREEDY.max_tokens
    assert mine[-1].finished


async def collect(outputs):
    return [output async for output in outputs]


def test_a_failed_step_fails_its_requests_and_the_loop_goes_on(make_llm):
    llm = make_llm()
    run = llm.engine.runner.run
    failures = []

    def fail_once(batch):
        if not failures:
            failures.append(1)
            raise RuntimeError("injected step failure")
        return run(batch)

    llm.engine.runner.run = fail_once

    async def main():
        with pytest.raises(RuntimeError, match="injected step failure"):
            await collect(llm.generate([1, 2, 3], GREEDY))
        after_failure = await settled(llm)
        outputs = await collect(llm.generate([1, 2, 3], GREEDY))
        return after_failure, outputs, await settled(llm)

    after_failure, outputs, end = asyncio.run(main())
    assert_idle(after_failure, llm)
    assert outputs[-1].finished and len(outputs[-1].token_ids) == GREEDY.max_tokens
    assert_idle(end, llm)


def test_the_waiting_queue_is_bounded(make_llm):
    llm = make_llm(max_waiting_requests=1, max_num_seqs=1)

    async def main():
        running = await llm.add_request([1, 2], LONG)
        await first_output(running)
        waiting = await llm.add_request([3, 4], LONG)
        with pytest.raises(QueueFullError, match=r"1 requests are already waiting \(max_waiting_requests=1\)"):
            await llm.add_request([5, 6], LONG)
        running.abort()
        waiting.abort()
        return await settled(llm)

    assert_idle(asyncio.run(main()), llm)
    with pytest.raises(ValueError, match="max_waiting_requests must be an int >= 0 or None, got -1"):
        make_llm(max_waiting_requests=-1)


def test_shutdown_ends_streams_and_refuses_new_requests(make_llm):
    llm = make_llm()

    async def main():
        stream = await llm.add_request([1, 2], LONG)
        await first_output(stream)
        llm.shutdown()
        with pytest.raises(EngineClosedError):
            await collect(stream)
        with pytest.raises(EngineClosedError):
            await llm.add_request([1], GREEDY)

    asyncio.run(main())
    assert not llm.is_running and not llm._thread.is_alive()
    assert_idle(llm.stats(), llm)
    llm.shutdown()  # idempotent


def test_a_model_that_cannot_load_raises_in_the_constructor():
    with pytest.raises(FileNotFoundError, match="no-such-model.gguf"):
        AsyncLLM("/no-such-model.gguf")
    with pytest.raises(TypeError, match="unknown engine option max_seqs"):
        AsyncLLM(max_seqs=4)

"""AsyncLLM: the engine for asyncio programs (a server): many concurrent requests, one batch.

    llm = AsyncLLM()                                         # or AsyncLLM.from_engine(engine)
    async for out in llm.generate("Hello", SamplingParams(max_tokens=32)):
        print(out.outputs[0].delta_text, end="")

One background thread owns the `LLMEngine` and is the only one that touches it: it takes the
commands the event loops send (add a request, abort one), runs `step()` while there is work,
and hands each step's outputs to the requests' own queues (through their event loop's
`call_soon_threadsafe`). So requests from any number of consumers join the running batch at the
next step (continuous batching across clients), and no engine call ever blocks an event loop.

Failure stays where it belongs: a request the engine refuses raises its ValueError / TypeError
in the caller that submitted it; a step that raises fails the requests it was running (each
consumer gets the error) and the loop goes on with new ones. A consumer that stops early (it
breaks out, is cancelled, or drops its stream) has its request aborted before the next step,
which frees its KV blocks.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import logging
import os
import threading
import uuid
import weakref
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

from fastllm.engine.config import engine_config
from fastllm.engine.llm_engine import LLMEngine
from fastllm.engine.outputs import EngineStats, RequestOutput
from fastllm.engine.sampling_params import SamplingParams

if TYPE_CHECKING:
    from fastllm.tokenizer import Tokenizer

__all__ = ["AsyncLLM", "EngineClosedError", "QueueFullError", "RequestStream"]

logger = logging.getLogger(__name__)
_stream_keys = itertools.count()


class QueueFullError(RuntimeError):
    """The engine already has `max_waiting_requests` requests waiting: try again later."""


class EngineClosedError(RuntimeError):
    """The AsyncLLM was shut down (before or while the request ran)."""


class _End:
    """The last item of a request's queue: it was aborted (error None) or failed (error set)."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException | None) -> None:
        self.error = error


class RequestStream:
    """The outputs of one request, as an async iterator of RequestOutputs (deltas in each).

    Iteration ends after the final output (`finished`), or early once the request is aborted;
    it raises the error of a failed step, or EngineClosedError at shutdown. `abort()` (also on
    leaving `async with`, or when the stream is dropped unfinished) stops the request.
    """

    def __init__(self, llm: AsyncLLM, request_id: str, loop: asyncio.AbstractEventLoop) -> None:
        self.request_id = request_id
        self.finished = False  # the final output came
        self._key = next(_stream_keys)  # tells this stream from a later request that reuses its id
        self._llm = llm
        self._loop = loop
        self._queue: asyncio.Queue[RequestOutput | _End] = asyncio.Queue()
        self._done = False  # nothing more will come (final output, end marker, or abort)

    def __aiter__(self) -> RequestStream:
        return self

    async def __anext__(self) -> RequestOutput:
        if self._done and self._queue.empty():
            raise StopAsyncIteration
        item = await self._queue.get()
        if isinstance(item, _End):
            self._done = True
            if item.error is not None:
                raise item.error
            raise StopAsyncIteration
        if item.finished:
            self._done = self.finished = True
        return item

    def abort(self) -> None:
        """Stop the request (before the engine's next step); a no-op once it finished."""
        if not self._done:
            self._done = True
            llm, request_id, key = self._llm, self.request_id, self._key  # not self: __del__ calls this
            llm._send(lambda: llm._abort(request_id, key))

    async def __aenter__(self) -> RequestStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.abort()

    def __del__(self) -> None:
        self.abort()

    # -- called on the stream's event loop, from the engine thread ---------------------------

    def _put(self, item: RequestOutput | _End) -> None:
        self._queue.put_nowait(item)


class AsyncLLM:
    """`AsyncLLM(model=None, *, max_waiting_requests=None, **engine_options)`: the engine of
    `fastllm.LLM` (same options) stepped by a background thread, for asyncio code.

    max_waiting_requests: a request submitted while this many wait (queued, not yet running)
    is refused with QueueFullError; None = no bound.
    """

    def __init__(
        self, model: str | os.PathLike | None = None, *, max_waiting_requests: int | None = None, **engine_options: Any
    ) -> None:
        config = engine_config({"model": model, **engine_options})  # bad options raise here
        # Built in the engine thread, which then alone runs the CPU kernels: their OpenMP threads
        # serve one caller. Kernels run from a second thread after the first had run them (at
        # load) measured about half as fast on a 2-core CPU (the OpenMP workers stop spinning).
        self._start(lambda: LLMEngine.from_config(config), max_waiting_requests, owns_engine=True)

    @classmethod
    def from_engine(cls, engine: LLMEngine, *, max_waiting_requests: int | None = None) -> AsyncLLM:
        """An AsyncLLM over an engine already built (e.g. `LLM(...).engine`); it takes the engine
        over: nothing else may call it while the AsyncLLM runs. (On a CPU, `AsyncLLM(model, ...)`,
        which builds the engine in its own thread, runs the kernels faster: see __init__.)"""
        if not isinstance(engine, LLMEngine):
            raise TypeError(f"engine must be an LLMEngine, got {type(engine).__name__}")
        llm = cls.__new__(cls)
        llm._start(lambda: engine, max_waiting_requests, owns_engine=False)
        return llm

    def _start(self, make_engine: Callable[[], LLMEngine], max_waiting_requests: int | None, *, owns_engine: bool) -> None:
        """Start the engine thread, which builds the engine with `make_engine`; returns once it is
        built (re-raising what building it raised). An engine it owns is closed at shutdown
        (the ranks of a tensor-parallel model stop)."""
        if max_waiting_requests is not None and (
            not isinstance(max_waiting_requests, int) or isinstance(max_waiting_requests, bool)
            or max_waiting_requests < 0
        ):
            raise ValueError(f"max_waiting_requests must be an int >= 0 or None, got {max_waiting_requests!r}")
        self.max_waiting_requests = max_waiting_requests
        self._owns_engine = owns_engine
        self._commands: list[Callable[[], None]] = []
        self._wakeup = threading.Condition()
        self._closed = False
        # The engine thread's: request id -> (stream key, weak reference to the stream). Weak, so
        # that a consumer dropping its stream drops the request (RequestStream.__del__ aborts it).
        self._streams: dict[str, tuple[int, weakref.ref[RequestStream]]] = {}
        built: concurrent.futures.Future[LLMEngine] = concurrent.futures.Future()
        self._thread = threading.Thread(target=self._run, args=(make_engine, built), name="fastllm-engine", daemon=True)
        self._thread.start()
        self.engine = built.result()

    def __repr__(self) -> str:
        return f"AsyncLLM({self.engine.model.config.name!r}, running={self._thread.is_alive()})"

    @property
    def tokenizer(self) -> Tokenizer:
        return self.engine.tokenizer

    @property
    def is_running(self) -> bool:
        """The engine thread is alive and not shut down."""
        return not self._closed and self._thread.is_alive()

    def stats(self) -> EngineStats:
        """The engine's load as of its latest step or command (running and waiting requests, KV blocks)."""
        return self._stats

    # -- requests ---------------------------------------------------------------------------

    async def add_request(
        self,
        prompt: str | list[int],
        params: SamplingParams | None = None,
        request_id: str | None = None,
        *,
        prompt_text: str | None = None,
    ) -> RequestStream:
        """Submit one request (as `LLMEngine.add_request`) and return its stream of outputs.

        Raises what `LLMEngine.add_request` raises for a bad request, QueueFullError when
        `max_waiting_requests` are waiting, EngineClosedError after shutdown. Call `abort()`
        on the stream (or use it in `async with`) if you may stop reading before it ends.
        """
        if request_id is None:
            request_id = uuid.uuid4().hex
        loop = asyncio.get_running_loop()
        stream = RequestStream(self, request_id, loop)
        accepted: asyncio.Future[None] = loop.create_future()
        if not self._send(lambda: self._add(stream, prompt, params, prompt_text, accepted)):
            stream._done = True
            raise EngineClosedError("the AsyncLLM is shut down")
        try:
            await accepted
        except asyncio.CancelledError:
            stream.abort()  # the add may still happen: the abort follows it in the command order
            raise
        except BaseException:
            stream._done = True  # refused: nothing to abort
            raise
        return stream

    async def generate(
        self,
        prompt: str | list[int],
        params: SamplingParams | None = None,
        request_id: str | None = None,
        *,
        prompt_text: str | None = None,
    ) -> AsyncIterator[RequestOutput]:
        """The outputs of one request as they come (each with its deltas); the request is
        aborted if the consumer stops early (break, cancellation, an error)."""
        stream = await self.add_request(prompt, params, request_id, prompt_text=prompt_text)
        try:
            async for output in stream:
                yield output
        finally:
            stream.abort()

    async def abort(self, request_id: str) -> None:
        """Abort a request by id and wait until the engine has freed its blocks; unknown ids are ignored."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()

        def abort_and_report() -> None:
            self._abort(request_id)
            self._stats = self.engine.stats()  # stats() shows the abort once this returns
            _call_soon(loop, _resolve, done, None)

        if self._send(abort_and_report):
            await done

    def shutdown(self, timeout: float | None = 10.0) -> None:
        """Stop the engine thread: unfinished requests are aborted and their consumers get
        EngineClosedError. Idempotent; waits up to `timeout` seconds for the thread."""
        with self._wakeup:
            self._closed = True
            self._wakeup.notify()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    # -- the engine thread ------------------------------------------------------------------

    def _send(self, command: Callable[[], None]) -> bool:
        """Queue a command for the engine thread (safe from any thread); False once shut down
        (shutdown aborts everything: no command is needed then)."""
        with self._wakeup:
            if self._closed:
                return False
            self._commands.append(command)
            self._wakeup.notify()
        return True

    def _run(self, make_engine: Callable[[], LLMEngine], built: concurrent.futures.Future[LLMEngine]) -> None:
        try:
            engine = make_engine()
        except BaseException as error:  # noqa: BLE001 - raised again in the constructor
            self._closed = True
            built.set_exception(error)
            return
        self.engine, self._stats = engine, engine.stats()
        built.set_result(engine)
        while True:
            with self._wakeup:
                while not (self._commands or self._closed or engine.has_unfinished_requests()):
                    self._wakeup.wait()
                commands, self._commands = self._commands, []
                closed = self._closed
            for command in commands:
                try:
                    command()
                except Exception:  # a bug: say so, and keep serving the other requests
                    logger.exception("AsyncLLM: an engine command failed")
            if closed:
                self._end_all(EngineClosedError("the AsyncLLM was shut down before this request finished"))
                self._stats = engine.stats()
                if self._owns_engine:
                    engine.close()
                return
            if engine.has_unfinished_requests():
                try:
                    outputs = engine.step()
                except Exception as error:  # noqa: BLE001 - it goes to the requests it concerns
                    # Which requests a failed step left half-updated is unknown, so none is kept.
                    logger.exception("AsyncLLM: an engine step failed; its requests get the error")
                    self._end_all(error)
                else:
                    self._dispatch(outputs)
            self._stats = engine.stats()

    def _add(
        self,
        stream: RequestStream,
        prompt: object,
        params: SamplingParams | None,
        prompt_text: str | None,
        accepted: asyncio.Future[None],
    ) -> None:
        try:
            if self.max_waiting_requests is not None:
                waiting = self.engine.stats().num_waiting_requests
                if waiting >= self.max_waiting_requests:
                    raise QueueFullError(
                        f"{waiting} requests are already waiting (max_waiting_requests={self.max_waiting_requests})"
                    )
            self.engine.add_request(prompt, params, stream.request_id, prompt_text=prompt_text)  # type: ignore[arg-type]
        except Exception as error:  # noqa: BLE001 - the caller's to handle
            _call_soon(stream._loop, _resolve, accepted, error)
            return
        self._streams[stream.request_id] = (stream._key, weakref.ref(stream))
        _call_soon(stream._loop, _resolve, accepted, None)

    def _abort(self, request_id: str, key: int | None = None) -> None:
        """Abort a request; with `key`, only if it is still that stream's."""
        entry = self._streams.get(request_id)
        if key is not None and (entry is None or entry[0] != key):
            return
        self.engine.abort(request_id)
        if entry is not None:
            del self._streams[request_id]
            stream = entry[1]()
            if stream is not None:
                _call_soon(stream._loop, stream._put, _End(None))

    def _dispatch(self, outputs: list[RequestOutput]) -> None:
        """Each output to its request's queue: one call per event loop per step."""
        batches: dict[asyncio.AbstractEventLoop, list[tuple[RequestStream, RequestOutput]]] = {}
        for output in outputs:
            entry = self._streams.get(output.request_id)
            stream = None if entry is None else entry[1]()
            if stream is None:  # its consumer dropped it (its abort may still be queued)
                self._abort(output.request_id)
                continue
            if output.finished:
                del self._streams[output.request_id]
            batches.setdefault(stream._loop, []).append((stream, output))
        for loop, items in batches.items():
            _call_soon(loop, _deliver, items)

    def _end_all(self, error: Exception) -> None:
        """Abort every request; each consumer gets `error`."""
        for request_id, (_, ref) in list(self._streams.items()):
            self.engine.abort(request_id)
            stream = ref()
            if stream is not None:
                _call_soon(stream._loop, stream._put, _End(error))
        self._streams.clear()


def _resolve(future: asyncio.Future[None], error: BaseException | None) -> None:
    if future.done():  # the awaiting task was cancelled
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)


def _deliver(items: list[tuple[RequestStream, RequestOutput]]) -> None:
    for stream, item in items:
        stream._put(item)


def _call_soon(loop: asyncio.AbstractEventLoop, callback: Callable[..., None], *args: object) -> None:
    """loop.call_soon_threadsafe, except on a loop that has closed (its consumers are gone)."""
    try:
        loop.call_soon_threadsafe(callback, *args)
    except RuntimeError:
        pass

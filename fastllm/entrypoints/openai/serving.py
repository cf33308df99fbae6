"""Completions and chat completions: a request's prompts into AsyncLLM streams, their outputs
into one response or an SSE stream, and a client that leaves into aborts.

Every engine request of an HTTP request is aborted, whatever way the HTTP request ends early:
the client disconnects while its request waits or streams (a watcher on the connection aborts
them at once), the handler is cancelled (server shutdown), or an error occurs.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from fastllm.engine.async_llm import AsyncLLM, EngineClosedError, QueueFullError, RequestStream
from fastllm.engine.outputs import RequestOutput
from fastllm.engine.processor import ContextLengthError
from fastllm.engine.sampling_params import SamplingParams
from fastllm.entrypoints.openai.errors import APIError, bad_request
from fastllm.entrypoints.openai.formatting import ResponseFormatter
from fastllm.entrypoints.openai.metrics import RequestTracker, ServerMetrics
from fastllm.entrypoints.openai.protocol import ChatCompletionRequest, CompletionRequest, GenerationRequest

logger = logging.getLogger(__name__)

# The status nginx logs for a client that closed its connection first; nobody reads it.
CLIENT_CLOSED = 499
Prompt = tuple[Any, str | None]  # (text or token ids, the text token ids came from)


class OpenAIServing:
    def __init__(self, llm: AsyncLLM, model_name: str, metrics: ServerMetrics) -> None:
        self.llm = llm
        self.model_name = model_name
        self.metrics = metrics

    def check_model(self, model: str | None) -> None:
        if model is not None and model != self.model_name:
            raise APIError(
                404, f"the model {model!r} does not exist: this server serves {self.model_name!r}",
                param="model", code="model_not_found",
            )

    async def create_completion(self, body: CompletionRequest, request: Request) -> Response:
        self.check_model(body.model)
        return await self._serve(request, body, [(prompt, None) for prompt in body.prompt], chat=False)

    async def create_chat_completion(self, body: ChatCompletionRequest, request: Request) -> Response:
        self.check_model(body.model)
        try:
            text, ids = self.llm.engine.processor.encode_chat(body.conversation())  # reads only the tokenizer
        except ValueError as error:
            raise bad_request(str(error), param="messages") from None
        return await self._serve(request, body, [(ids, text)], chat=True)

    # -- one HTTP request -------------------------------------------------------------------

    async def _serve(self, request: Request, body: GenerationRequest, prompts: list[Prompt], *, chat: bool) -> Response:
        params = body.sampling_params()
        response_id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        streams = await self._submit(response_id, prompts, params, body, "messages" if chat else "prompt")
        watcher = asyncio.create_task(_abort_on_disconnect(request, streams))
        formatter = ResponseFormatter(
            chat=chat, response_id=response_id, created=int(time.time()), model=self.model_name,
            tokenizer=self.llm.tokenizer, n=params.n, top_logprobs=params.logprobs, include_usage=body.include_usage,
        )
        trackers = [self.metrics.track() for _ in streams]
        if body.stream:
            events = self._events(streams, trackers, formatter, watcher)
            return StreamingResponse(events, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        try:
            finals = await _collect(streams, trackers)
        finally:
            _end(streams, trackers, watcher)
        if finals is None:
            return Response(status_code=CLIENT_CLOSED)
        return JSONResponse(formatter.response(finals))

    async def _submit(
        self, response_id: str, prompts: list[Prompt], params: SamplingParams, body: GenerationRequest, param: str
    ) -> list[RequestStream]:
        """One engine request per prompt; none is left running if one is refused."""
        streams: list[RequestStream] = []
        try:
            for index, (prompt, text) in enumerate(prompts):
                streams.append(await self.llm.add_request(prompt, params, f"{response_id}-{index}", prompt_text=text))
        except BaseException as error:
            for stream in streams:
                stream.abort()
            if isinstance(error, Exception):
                raise _submit_error(error, body, param) from None
            raise
        return streams

    async def _events(
        self, streams: list[RequestStream], trackers: list[RequestTracker], formatter: ResponseFormatter,
        watcher: asyncio.Task[None],
    ) -> AsyncIterator[str]:
        """The SSE body: chunks as outputs come, [usage], [DONE]; nothing more once the client left."""
        try:
            for chunk in formatter.first_chunks(len(streams)):
                yield _event(chunk)
            async for index, output in _merge(streams):
                trackers[index].observe(output)
                for chunk in formatter.chunks(index, output):
                    yield _event(chunk)
            if not all(stream.finished for stream in streams):
                return  # aborted: the client is gone
            if formatter.include_usage:
                yield _event(formatter.usage_chunk())
            yield "data: [DONE]\n\n"
        except Exception as error:  # noqa: BLE001 - the status line is sent: the error goes in the stream
            if not isinstance(error, EngineClosedError):
                logger.exception("a streamed request failed")
            yield _event(APIError(503 if isinstance(error, EngineClosedError) else 500, str(error),
                                  type="server_error").body())
            yield "data: [DONE]\n\n"
        finally:
            _end(streams, trackers, watcher)


def _submit_error(error: Exception, body: GenerationRequest, param: str) -> Exception:
    if isinstance(error, QueueFullError):
        return APIError(503, f"the server is busy: {error}; retry later", type="server_error", code="queue_full")
    if isinstance(error, EngineClosedError):
        return APIError(503, "the server is shutting down", type="server_error", code="shutting_down")
    if isinstance(error, ContextLengthError):
        return bad_request(str(error), param=param, code="context_length_exceeded")
    if isinstance(error, (ValueError, TypeError)):
        message = str(error)
        if message.startswith("SamplingParams."):
            return body.field_error(ValueError(message))
        first_word = re.match(r"\w+", message)
        named = first_word.group(0) if first_word and first_word.group(0) in type(body).model_fields else param
        return bad_request(message, param=named)
    return error


async def _abort_on_disconnect(request: Request, streams: list[RequestStream]) -> None:
    """Wait for the client to disconnect, then abort its requests (waiting or running)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
    for stream in streams:
        stream.abort()


async def _merge(streams: list[RequestStream]) -> AsyncIterator[tuple[int, RequestOutput]]:
    """(stream index, output) from all streams as they come."""
    if len(streams) == 1:
        async for output in streams[0]:
            yield 0, output
        return
    queue: asyncio.Queue[tuple[int, RequestOutput | BaseException | None]] = asyncio.Queue()

    async def pump(index: int, stream: RequestStream) -> None:
        try:
            async for output in stream:
                queue.put_nowait((index, output))
        except Exception as error:  # noqa: BLE001 - re-raised by the consumer
            queue.put_nowait((index, error))
        else:
            queue.put_nowait((index, None))

    tasks = [asyncio.create_task(pump(index, stream)) for index, stream in enumerate(streams)]
    try:
        remaining = len(streams)
        while remaining:
            index, item = await queue.get()
            if item is None:
                remaining -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield index, item
    finally:
        for task in tasks:
            task.cancel()


async def _collect(streams: list[RequestStream], trackers: list[RequestTracker]) -> list[RequestOutput] | None:
    """The final output of every stream, or None if they were aborted (the client left)."""
    finals: list[RequestOutput | None] = [None] * len(streams)
    async for index, output in _merge(streams):
        trackers[index].observe(output)
        finals[index] = output
    if not all(stream.finished for stream in streams):
        return None
    return finals  # type: ignore[return-value]


def _end(streams: list[RequestStream], trackers: list[RequestTracker], watcher: asyncio.Task[None]) -> None:
    watcher.cancel()
    for stream, tracker in zip(streams, trackers):
        stream.abort()  # a no-op for a finished one
        tracker.end("abort")  # a no-op for one that ended


def _event(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False, separators=(',', ':'))}\n\n"

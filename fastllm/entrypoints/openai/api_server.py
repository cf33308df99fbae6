"""`fastllm serve`: an OpenAI-compatible HTTP server (FastAPI + uvicorn) over one AsyncLLM.

    POST /v1/completions, /v1/chat/completions   (server-sent events with "stream": true)
    GET  /v1/models
    POST /tokenize, /detokenize
    GET  /health, /metrics                       (no API key needed)

Bodies are read here, once, up to `max_request_bytes`, and validated by the pydantic models of
`protocol`; every error leaves in OpenAI's shape (`errors`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hmac
import logging
import signal
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import uvicorn
from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from fastllm.engine.async_llm import AsyncLLM
from fastllm.entrypoints.openai.args import DEFAULT_MAX_REQUEST_BYTES
from fastllm.entrypoints.openai.errors import APIError, bad_request, from_validation_error
from fastllm.entrypoints.openai.metrics import ServerMetrics
from fastllm.entrypoints.openai.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    TokenizeRequest,
)
from fastllm.entrypoints.openai.serving import OpenAIServing

logger = logging.getLogger("fastllm.serve")
Body = TypeVar("Body", bound=BaseModel)


@dataclass(frozen=True)
class ServerSettings:
    model_name: str
    api_key: str | None = None  # None: no authentication
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES


async def read_body(request: Request, model: type[Body], limit: int) -> Body:
    """The request's JSON body as `model`: 413 past `limit` bytes (read no further), 400 if invalid."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise APIError(413, f"the request body has {declared} bytes; the limit is {limit}", code="request_too_large")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise APIError(413, f"the request body exceeds the limit of {limit} bytes", code="request_too_large")
        chunks.append(chunk)
    try:
        return model.model_validate_json(b"".join(chunks))
    except ValidationError as error:
        raise from_validation_error(error) from None


def build_app(llm: AsyncLLM, settings: ServerSettings) -> FastAPI:
    """The FastAPI app serving `llm` (which the caller starts and shuts down)."""
    metrics = ServerMetrics(llm)
    serving = OpenAIServing(llm, settings.model_name, metrics)
    created = int(time.time())
    expected_authorization = None if settings.api_key is None else f"Bearer {settings.api_key}".encode()

    async def authorize(request: Request) -> None:
        if expected_authorization is None:
            return
        given = request.headers.get("authorization", "").encode()
        if not hmac.compare_digest(given, expected_authorization):
            raise APIError(401, "a valid API key is required: send 'Authorization: Bearer <key>'",
                           code="invalid_api_key")

    app = FastAPI(title="fastllm", docs_url=None, redoc_url=None, openapi_url=None)
    protected = [Depends(authorize)]

    @app.exception_handler(APIError)
    async def api_error(_: Request, error: APIError) -> JSONResponse:
        return error.response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, error: StarletteHTTPException) -> JSONResponse:
        kind = "not_found" if error.status_code == 404 else "invalid_request_error"
        return APIError(error.status_code, str(error.detail), type=kind).response()

    @app.exception_handler(Exception)
    async def server_error(_: Request, error: Exception) -> JSONResponse:
        logger.error("request failed", exc_info=error)
        return APIError(500, f"internal server error: {type(error).__name__}: {error}", type="server_error").response()

    @app.post("/v1/completions", dependencies=protected)
    async def completions(request: Request) -> Response:
        body = await read_body(request, CompletionRequest, settings.max_request_bytes)
        return await serving.create_completion(body, request)

    @app.post("/v1/chat/completions", dependencies=protected)
    async def chat_completions(request: Request) -> Response:
        body = await read_body(request, ChatCompletionRequest, settings.max_request_bytes)
        return await serving.create_chat_completion(body, request)

    @app.get("/v1/models", dependencies=protected)
    async def models() -> dict[str, Any]:
        model = {"id": settings.model_name, "object": "model", "created": created, "owned_by": "fastllm",
                 "max_model_len": llm.engine.max_model_len}
        return {"object": "list", "data": [model]}

    @app.post("/tokenize", dependencies=protected)
    async def tokenize(request: Request) -> dict[str, Any]:
        body = await read_body(request, TokenizeRequest, settings.max_request_bytes)
        serving.check_model(body.model)
        body.check()
        processor = llm.engine.processor  # its text methods only read the tokenizer and template
        try:
            if body.messages is not None:
                tokens = processor.encode_chat([m.model_dump(exclude_none=True) for m in body.messages])[1]
            elif body.add_special_tokens:
                tokens = processor.encode(body.prompt)
            else:
                tokens = llm.tokenizer.encode(body.prompt)
        except ValueError as error:
            raise bad_request(str(error), param="messages" if body.messages is not None else "prompt") from None
        return {"tokens": tokens, "count": len(tokens), "max_model_len": llm.engine.max_model_len}

    @app.post("/detokenize", dependencies=protected)
    async def detokenize(request: Request) -> dict[str, Any]:
        body = await read_body(request, DetokenizeRequest, settings.max_request_bytes)
        serving.check_model(body.model)
        vocab = llm.tokenizer.vocab_size
        for index, token in enumerate(body.tokens):
            if not 0 <= token < vocab:
                raise bad_request(f"tokens[{index}] = {token} is outside the vocabulary [0, {vocab})",
                                  param=f"tokens[{index}]")
        return {"prompt": llm.tokenizer.decode(body.tokens)}

    @app.get("/health")
    async def health() -> Response:
        if not llm.is_running:
            return APIError(503, "the engine is not running", type="server_error").response()
        return JSONResponse({"status": "ok"})

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return app


# -- the command ---------------------------------------------------------------------------------


def _model_name(model: str | None) -> str:
    from fastllm.loader.default_model import default_model_path

    path = Path(model if model is not None else default_model_path())
    return path.stem if path.is_file() else path.name


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family, backlog=2048)


async def _serve(server: uvicorn.Server, sock: socket.socket, url: str) -> None:
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started and not task.done():
        await asyncio.sleep(0.02)
    if server.started:
        print(f"fastllm serve: ready on {url} (Ctrl-C stops)", file=sys.stderr, flush=True)
    await task


def run(args: argparse.Namespace) -> int:
    """Load the model, serve until SIGINT/SIGTERM, stop cleanly; returns the exit status."""
    for name in ("max_waiting_requests", "max_request_bytes", "shutdown_timeout"):
        if getattr(args, name) < 0:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    llm = AsyncLLM(
        args.model, max_waiting_requests=args.max_waiting_requests, device=args.device, dtype=args.dtype,
        backend=args.backend, max_num_seqs=args.max_num_seqs, max_model_len=args.max_model_len,
        max_num_batched_tokens=args.max_num_batched_tokens, num_kv_blocks=args.num_kv_blocks,
        block_size=args.block_size, enable_prefix_caching=not args.no_prefix_caching,
        gpu_memory_utilization=args.gpu_memory_utilization, enforce_eager=args.enforce_eager,
        tensor_parallel_size=args.tensor_parallel_size,
    )
    try:
        settings = ServerSettings(
            model_name=args.served_model_name or _model_name(args.model), api_key=args.api_key or None,
            max_request_bytes=args.max_request_bytes,
        )
        try:
            sock = _bind(args.host, args.port)
        except OSError as error:
            raise ValueError(f"cannot listen on {args.host}:{args.port}: {error}") from None
        host, port = sock.getsockname()[:2]
        url = f"http://{f'[{host}]' if ':' in host else host}:{port}"
        config = uvicorn.Config(
            build_app(llm, settings), log_level=args.log_level, access_log=args.log_level == "debug",
            timeout_graceful_shutdown=args.shutdown_timeout,
        )
        # uvicorn handles SIGINT and SIGTERM while it serves (stop accepting, let the requests in
        # flight finish up to the timeout, then cancel them: their requests are aborted), then
        # raises the signal again; both land here as KeyboardInterrupt: a clean stop.
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(_serve(uvicorn.Server(config), sock, url))
    finally:
        llm.shutdown()
    print("fastllm serve: stopped", file=sys.stderr, flush=True)
    return 0

"""The public generation API: `LLM` (an engine you keep) and `generate` (one call, cached engine).

Every method is a short loop over `LLMEngine.add_request` / `step` / `abort`. Outputs of a step
go to the queue of the request they belong to, so several consumers (streams, a generate call)
can share one engine: whichever steps it, each reads its own requests' outputs.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Iterator, Sequence as Seq
from typing import TYPE_CHECKING, Any, Union

import torch
from tqdm.auto import tqdm

from fastllm.engine.config import engine_config
from fastllm.engine.ids_tokenizer import TokenIdsTokenizer
from fastllm.engine.llm_engine import LLMEngine
from fastllm.engine.outputs import CompletionOutput, RequestOutput
from fastllm.engine.sampling_params import SamplingParams
from fastllm.model.llama import LlamaForCausalLM

if TYPE_CHECKING:
    from fastllm.tokenizer import Tokenizer

__all__ = ["LLM", "CompletionOutput", "RequestOutput", "TextStream", "generate", "get_llm"]

# A prompt is text or token ids; `generate` takes one text or a list of either.
Prompt = Union[str, Seq[int]]
Messages = Seq[dict[str, Any]]


class LLM:
    """A model loaded with its tokenizer, a paged KV cache and a continuous-batching scheduler.

    `LLM(model=None, **engine_options)`: `model` is a GGUF file or an HF folder (None = the
    bundled SmolLM2-135M-Instruct); the options are the other fields of
    `fastllm.engine.config.EngineConfig`, documented there.
    """

    def __init__(self, model: str | os.PathLike | None = None, **engine_options: Any) -> None:
        self._attach(LLMEngine.from_config(engine_config({"model": model, **engine_options})))

    def _attach(self, engine: LLMEngine) -> None:
        self.engine = engine
        self._outputs: dict[str, deque[RequestOutput]] = {}  # per request of this LLM: outputs not read yet

    @classmethod
    def from_model(cls, model: LlamaForCausalLM, tokenizer: Tokenizer | None = None, **engine_options: Any) -> LLM:
        """An LLM over a model already built in memory (e.g. random weights for benchmarking).

        The model's device, dtype and backend are used as they are; `engine_options` are the
        other options of `LLM()`. Without a tokenizer, prompts must be token ids and outputs
        have empty text.
        """
        if not isinstance(model, LlamaForCausalLM):
            raise TypeError(f"model must be a fastllm LlamaForCausalLM, got {type(model).__name__}")
        taken = engine_options.keys() & {"model", "device", "dtype", "backend", "tensor_parallel_size"}
        if taken:
            raise TypeError(f"from_model takes the model's own {', '.join(sorted(taken))}; do not pass them")
        llm = cls.__new__(cls)
        engine = LLMEngine(model.eval(), tokenizer or TokenIdsTokenizer(model.config), engine_config(engine_options))
        llm._attach(engine)
        return llm

    def __repr__(self) -> str:
        model = self.engine.model
        return (
            f"LLM({model.config.name!r}, device={model.device}, dtype={str(model.dtype).removeprefix('torch.')}, "
            f"backend={model.backend.name})"
        )

    @property
    def tokenizer(self) -> Tokenizer:
        """The model's tokenizer (fastllm.Tokenizer)."""
        return self.engine.tokenizer

    def close(self) -> None:
        """Stop the other ranks of a tensor-parallel model (their processes exit); nothing to do on
        one rank. They are also stopped when the LLM is garbage-collected or the interpreter exits."""
        self.engine.close()

    # -- the engine loop ----------------------------------------------------------------------

    def _submit(self, prompt: Prompt, params: SamplingParams, prompt_text: str | None = None) -> str:
        request_id = self.engine.add_request(prompt, params, prompt_text=prompt_text)
        self._outputs[request_id] = deque()
        return request_id

    def _step(self) -> list[str]:
        """One engine step; its outputs go to their requests' queues. Returns the ids that got one."""
        if not self.engine.has_unfinished_requests():
            raise RuntimeError("the engine has no request left to step: was one aborted through llm.engine?")
        advanced = []
        for output in self.engine.step():
            queue = self._outputs.get(output.request_id)
            if queue is not None:
                queue.append(output)
                advanced.append(output.request_id)
        return advanced

    def _drop(self, request_id: str) -> None:
        """Abort a request (a no-op once it finished) and forget its queue."""
        self.engine.abort(request_id)
        self._outputs.pop(request_id, None)

    def _run(
        self, prompts: list[tuple[Prompt, str | None]], params_list: list[SamplingParams], use_tqdm: bool
    ) -> list[RequestOutput]:
        """Run (prompt, prompt text) requests to completion; final outputs in input order. An
        interrupted or failed call leaves nothing behind, its finished requests included."""
        request_ids: list[str] = []
        try:
            for (prompt, text), params in zip(prompts, params_list):
                request_ids.append(self._submit(prompt, params, text))
            finals = self._finish(request_ids, use_tqdm)
        except BaseException:
            for request_id in request_ids:
                self._drop(request_id)
            raise
        return [finals[request_id] for request_id in request_ids]

    def _finish(self, request_ids: list[str], use_tqdm: bool) -> dict[str, RequestOutput]:
        pending, finals = set(request_ids), {}
        started: set[str] = set()
        prompt_tokens = output_tokens = 0
        start = time.perf_counter()
        with tqdm(total=len(pending), desc="Generating", unit="req", disable=not use_tqdm, dynamic_ncols=True) as bar:
            while pending:
                for request_id in pending.intersection(self._step()):
                    queue = self._outputs[request_id]
                    if request_id not in started:
                        started.add(request_id)
                        prompt_tokens += len(queue[0].prompt_token_ids)
                    output_tokens += sum(len(o.delta_token_ids) for out in queue for o in out.outputs)
                    last = queue[-1]
                    queue.clear()  # a final output holds everything: the earlier ones are not needed
                    if last.finished:
                        finals[request_id] = last
                        pending.discard(request_id)
                        del self._outputs[request_id]
                        bar.update(1)
                elapsed = max(time.perf_counter() - start, 1e-9)
                bar.set_postfix_str(
                    f"prompt {prompt_tokens / elapsed:.0f} tok/s, output {output_tokens / elapsed:.0f} tok/s",
                    refresh=False,
                )
        return finals

    # -- batch generation, streaming and chat -------------------------------------------------

    def generate(
        self,
        prompts: Prompt | Seq[Prompt],
        sampling_params: SamplingParams | Seq[SamplingParams] | None = None,
        *,
        use_tqdm: bool = True,
    ) -> list[RequestOutput]:
        """Generate for every prompt (continuously batched); outputs come back in input order.

        prompts: a str, a list of str, or a list of token-id lists. sampling_params: one for all
        prompts, or one per prompt; None = SamplingParams(). use_tqdm shows a progress bar over
        requests with the prompt and output tokens/s so far.
        """
        prompt_list = _as_prompt_list(prompts)
        params_list = _as_params_list(sampling_params, len(prompt_list))
        return self._run([(prompt, None) for prompt in prompt_list], params_list, use_tqdm)

    def stream(self, prompt: Prompt, sampling_params: SamplingParams | None = None) -> TextStream:
        """Generate for one prompt (SamplingParams.n = 1), yielding text deltas as they are decoded.

        Deltas never split a UTF-8 character and never show (part of) a stop string. The request
        is checked and queued right away and generates as the engine steps (as the stream is
        consumed, or as another consumer of this LLM steps it); closing or dropping the stream
        aborts it. Once exhausted, `stream.output` holds the final RequestOutput.
        """
        params = _check_params(sampling_params if sampling_params is not None else SamplingParams())
        if params.n != 1:
            raise ValueError(f"stream takes SamplingParams.n = 1, got n={params.n}: use generate() for several samples")
        return TextStream(self, self._submit(_check_prompt(prompt, "prompt"), params))

    def apply_chat_template(self, messages: Messages, *, add_generation_prompt: bool = True) -> str:
        """The prompt text the model's own chat template makes of `messages`."""
        return self.engine.processor.apply_chat_template(messages, add_generation_prompt=add_generation_prompt)

    def chat(
        self,
        messages: Messages | Seq[Messages],
        sampling_params: SamplingParams | Seq[SamplingParams] | None = None,
        *,
        use_tqdm: bool = True,
    ) -> list[RequestOutput]:
        """Reply to one conversation (a list of {"role", "content"} dicts) or to a list of them.

        Renders each with the model's chat template (add_generation_prompt=True) and generates;
        returns one RequestOutput per conversation, its `prompt` the rendered text.
        """
        is_batch = (
            isinstance(messages, Seq) and bool(messages) and isinstance(messages[0], Seq)
            and not isinstance(messages[0], str)
        )
        conversations = list(messages) if is_batch else [messages]
        rendered = [self.engine.processor.encode_chat(conversation) for conversation in conversations]
        prompts = [(ids, text) for text, ids in rendered]
        return self._run(prompts, _as_params_list(sampling_params, len(prompts)), use_tqdm)


class TextStream(Iterator[str]):
    """The text deltas of one streamed request (see `LLM.stream`); `output` is set when it ends.

    Written without a generator, so that nothing refers back to the stream: dropping the last
    reference to it aborts its request at once.
    """

    def __init__(self, llm: LLM, request_id: str) -> None:
        self.output: RequestOutput | None = None
        self._llm = llm
        self._request_id = request_id
        self._queue = llm._outputs[request_id]
        self._closed = False

    def __next__(self) -> str:
        if self._closed:
            raise StopIteration
        try:
            delta = self._next_delta()
        except BaseException:  # a failed or interrupted step: the request goes too
            self.close()
            raise
        if delta is None:
            self.close()
            raise StopIteration
        return delta

    def _next_delta(self) -> str | None:
        """The next non-empty text delta, or None once the request has finished."""
        while self.output is None:
            if not self._queue:
                self._llm._step()
                continue
            output = self._queue.popleft()
            if output.finished:
                self.output = output
            if output.outputs[0].delta_text:
                return output.outputs[0].delta_text
        return None

    def close(self) -> None:
        """Stop generating and free the request's KV cache (nothing to do once it finished)."""
        if not self._closed:
            self._closed = True
            self._llm._drop(self._request_id)

    def __del__(self) -> None:
        self.close()


def _check_prompt(prompt: object, name: str) -> Prompt:
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, torch.Tensor):
        prompt = prompt.tolist()
    if isinstance(prompt, Seq) and not isinstance(prompt, bytes) and all(
        isinstance(t, int) and not isinstance(t, bool) for t in prompt
    ):
        return list(prompt)
    raise TypeError(f"{name} must be a str or a list of token ids, got {type(prompt).__name__}")


def _as_prompt_list(prompts: object) -> list[Prompt]:
    if isinstance(prompts, str):
        return [prompts]
    if isinstance(prompts, Seq) and prompts and all(isinstance(t, int) and not isinstance(t, bool) for t in prompts):
        raise TypeError("prompts must be a str, a list of str or a list of token-id lists; for one prompt of "
                        "token ids, wrap it in a list: [[1, 2, 3]]")
    if not isinstance(prompts, Seq) or isinstance(prompts, bytes):
        raise TypeError(f"prompts must be a str, a list of str or a list of token-id lists, got {type(prompts).__name__}")
    return [_check_prompt(p, f"prompts[{i}]") for i, p in enumerate(prompts)]


def _check_params(params: object) -> SamplingParams:
    if not isinstance(params, SamplingParams):
        raise TypeError(f"sampling_params must be a SamplingParams, got {type(params).__name__}")
    return params


def _as_params_list(params: object, count: int) -> list[SamplingParams]:
    if params is None:
        return [SamplingParams()] * count
    if isinstance(params, SamplingParams):
        return [params] * count
    if not isinstance(params, Seq):
        raise TypeError(f"sampling_params must be a SamplingParams or a list of them, got {type(params).__name__}")
    if len(params) != count:
        raise ValueError(f"got {len(params)} sampling_params for {count} prompts: give one, or one per prompt")
    return [_check_params(p) for p in params]


# -- fastllm.generate: one call, one cached engine ----------------------------------------------

_cached: tuple[str | None, LLM] | None = None


def get_llm(model: str | os.PathLike | None = None) -> LLM:
    """The LLM that `generate` (and the `fastllm` command) use for `model`: built once, then reused.

    Only one is kept: asking for another model replaces it.
    """
    global _cached
    key = os.fspath(model) if model is not None else None
    if _cached is None or _cached[0] != key:
        _cached = None  # drop the old engine (and its KV cache) before building the new one
        _cached = (key, LLM(model))
    return _cached[1]


def generate(
    prompt_or_prompts: Prompt | Seq[Prompt],
    sampling_params: SamplingParams | Seq[SamplingParams] | None = None,
    *,
    model: str | os.PathLike | None = None,
    **sampling_kwargs: Any,
) -> str | list[str]:
    """Generate text: a str for a str prompt, else a list of str (one per prompt, in order).

    The LLM for `model` (None = the bundled default) is built on first use and kept for the next
    calls. Sampling options come as a SamplingParams or as its fields by keyword, e.g.
    `fastllm.generate("Hello", max_tokens=32, temperature=0)`.
    """
    if sampling_kwargs:
        if sampling_params is not None:
            raise TypeError("pass either sampling_params or sampling keyword arguments, not both")
        try:
            sampling_params = SamplingParams(**sampling_kwargs)
        except TypeError as exc:
            raise TypeError(f"{exc}: sampling keywords must be SamplingParams fields") from None
    single = isinstance(prompt_or_prompts, str)
    outputs = get_llm(model).generate(prompt_or_prompts, sampling_params, use_tqdm=not single)
    return outputs[0].text if single else [o.text for o in outputs]

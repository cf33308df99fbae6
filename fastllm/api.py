"""The public generation API: `LLM` (an engine you keep) and `generate` (one call, cached engine)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence as Seq
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Union

import torch
from tqdm.auto import tqdm

from fastllm.engine.chat_template import render_chat_template
from fastllm.engine.ids_tokenizer import TokenIdsTokenizer
from fastllm.engine.llm_engine import EngineConfig, LLMEngine
from fastllm.engine.sampling_params import SamplingParams
from fastllm.engine.sequence import RequestMetrics, Sequence
from fastllm.model.llama import LlamaForCausalLM

if TYPE_CHECKING:
    from fastllm.tokenizer import Tokenizer

# A prompt is text or token ids; `generate` takes one text or a list of either.
Prompt = Union[str, Seq[int]]
Messages = Seq[dict[str, Any]]


@dataclass
class RequestOutput:
    """One finished request.

    Attributes:
        request_id: the engine's id for the request.
        prompt: the prompt text (None when the prompt was given as token ids).
        prompt_token_ids: the prompt as the model saw it.
        text: the generated text (without a matched stop string or the final EOS / stop token).
        token_ids: the generated token ids (a final EOS / stop token included).
        finish_reason: "stop" (EOS, a stop token id or a stop string) or "length" (max_tokens or
            the context length).
        stop_reason: the stop string or stop token id that ended generation; None for EOS or length.
        logprobs: with SamplingParams.logprobs, one {token id: log-probability} dict per generated
            token (the top-N plus the sampled token, from the model's raw distribution).
        metrics: arrival, first-token and finish times, prefix-cache hits, preemptions.
    """

    request_id: int
    prompt: str | None
    prompt_token_ids: list[int]
    text: str
    token_ids: list[int]
    finish_reason: str
    stop_reason: str | int | None
    logprobs: list[dict[int, float]] | None
    metrics: RequestMetrics


class LLM:
    """A model loaded with its tokenizer, a paged KV cache and a continuous-batching scheduler.

    Args:
        model: a GGUF file or an HF folder (config.json + *.safetensors + tokenizer.json);
            None = the bundled SmolLM2-135M-Instruct.
        device: "auto" (CUDA if available, else CPU), "cpu", "cuda" or "cuda:N".
        dtype: "auto" (bfloat16 on CUDA, float32 on CPU), "float32", "bfloat16" or "float16".
        backend: "auto" (triton on CUDA, cpu on a CPU), "torch" (the PyTorch reference ops),
            "triton" (the Triton kernels) or "cpu" (the reference ops with C++ decode attention,
            RMSNorm and rotary).
        block_size: tokens per KV cache block (a power of two).
        num_kv_blocks: KV pool size in blocks; None = sized from memory: `gpu_memory_utilization`
            of the free GPU memory, or 1 GiB on CPU.
        max_num_seqs: most sequences decoded together.
        max_num_batched_tokens: most tokens per model step (longer prompts are prefilled in
            chunks); None = 4096.
        max_model_len: longest prompt + generation; None = the model's context length.
        enable_prefix_caching: reuse the KV cache of prompt prefixes seen before.
        gpu_memory_utilization: fraction of free GPU memory the KV cache may take, together with
            what the model steps need besides it (activations, CUDA graphs), measured at start-up.
        enforce_eager: never replay CUDA graphs. By default, on CUDA with the triton backend,
            decode steps replay graphs captured at start-up for batch sizes 1, 2, 4, 8, 16, ...
            up to the largest decode batch, min(max_num_seqs, max_num_batched_tokens) (no Python
            or kernel-launch overhead per step; their memory is held back from the KV pool).
    """

    def __init__(
        self,
        model: str | os.PathLike | None = None,
        *,
        device: str | torch.device = "auto",
        dtype: str | torch.dtype = "auto",
        backend: str = "auto",
        block_size: int = 16,
        num_kv_blocks: int | None = None,
        max_num_seqs: int = 256,
        max_num_batched_tokens: int | None = None,
        max_model_len: int | None = None,
        enable_prefix_caching: bool = True,
        gpu_memory_utilization: float = 0.9,
        enforce_eager: bool = False,
    ) -> None:
        config = EngineConfig(
            model=model, device=device, dtype=dtype, backend=backend, block_size=block_size,
            num_kv_blocks=num_kv_blocks, max_num_seqs=max_num_seqs, max_num_batched_tokens=max_num_batched_tokens,
            max_model_len=max_model_len, enable_prefix_caching=enable_prefix_caching,
            gpu_memory_utilization=gpu_memory_utilization, enforce_eager=enforce_eager,
        )
        self.engine = LLMEngine.from_config(config)

    @classmethod
    def from_model(cls, model: LlamaForCausalLM, tokenizer: Tokenizer | None = None, **engine_options: Any) -> LLM:
        """An LLM over a model already built in memory (e.g. random weights for benchmarking).

        The model's device, dtype and backend are used as they are; `engine_options` are the
        engine settings of `LLM()` (block_size, num_kv_blocks, max_num_seqs, ..., enforce_eager).
        Without a tokenizer, prompts must be token ids and outputs have empty text.
        """
        if not isinstance(model, LlamaForCausalLM):
            raise TypeError(f"model must be a fastllm LlamaForCausalLM, got {type(model).__name__}")
        unknown = engine_options.keys() & {"model", "device", "dtype", "backend"}
        if unknown:
            raise TypeError(f"from_model takes the model's own {', '.join(sorted(unknown))}; do not pass them")
        llm = cls.__new__(cls)
        llm.engine = LLMEngine(model.eval(), tokenizer or TokenIdsTokenizer(model.config), EngineConfig(**engine_options))
        return llm

    @property
    def tokenizer(self) -> Tokenizer:
        """The model's tokenizer (fastllm.Tokenizer)."""
        return self.engine.tokenizer

    # -- batch generation ---------------------------------------------------------------------

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
        requests with live prefill and decode throughput.
        """
        prompt_list = _as_prompt_list(prompts)
        params_list = _as_params_list(sampling_params, len(prompt_list))
        encoded = [(p, self._encode(p)) if isinstance(p, str) else (None, p) for p in prompt_list]
        return self._generate(encoded, params_list, use_tqdm)

    def _encode(self, prompt: str) -> list[int]:
        if prompt == "":
            raise ValueError("a prompt is empty: give at least one character")
        return self.engine.encode_prompt(prompt)

    def _generate(
        self, prompts: list[tuple[str | None, list[int]]], params_list: list[SamplingParams], use_tqdm: bool
    ) -> list[RequestOutput]:
        """Run (prompt text or None, prompt ids) requests to completion; outputs in input order."""
        seqs = [self.engine.make_sequence(ids, params) for (_, ids), params in zip(prompts, params_list)]
        for seq in seqs:
            self.engine.add_sequence(seq)
        try:
            self._run_until_finished(seqs, use_tqdm)
        except BaseException:
            for seq in seqs:  # an interrupted call leaves nothing behind, finished requests included
                self.engine.abort(seq)
            raise
        return [_request_output(self.engine, seq, text) for seq, (text, _) in zip(seqs, prompts)]

    def _run_until_finished(self, seqs: list[Sequence], use_tqdm: bool) -> None:
        mine = {seq.seq_id for seq in seqs}
        remaining = len(seqs)
        throughput = {True: 0.0, False: 0.0}  # is_prefill -> tokens/s of the latest such step
        with tqdm(total=len(seqs), desc="Generating", unit="req", disable=not use_tqdm, dynamic_ncols=True) as bar:
            while remaining:
                start = time.perf_counter()
                step = self.engine.step()
                throughput[step.is_prefill] = step.num_tokens / max(time.perf_counter() - start, 1e-9)
                done = sum(1 for seq in step.seqs if seq.is_finished and seq.seq_id in mine)
                remaining -= done
                bar.set_postfix_str(
                    f"prefill {throughput[True]:.0f} tok/s, decode {throughput[False]:.0f} tok/s", refresh=False
                )
                bar.update(done)

    # -- streaming and chat -------------------------------------------------------------------

    def stream(self, prompt: Prompt, sampling_params: SamplingParams | None = None) -> TextStream:
        """Generate for one prompt, yielding text deltas as they are decoded.

        Deltas never split a UTF-8 character and never show (part of) a stop string. The prompt
        is validated right away; generation runs as the stream is consumed, and closing or
        abandoning the stream aborts the request. Once exhausted, `stream.output` holds the
        RequestOutput.
        """
        params = _check_params(sampling_params if sampling_params is not None else SamplingParams())
        prompt = _check_prompt(prompt, "prompt")
        ids = self._encode(prompt) if isinstance(prompt, str) else prompt
        text = prompt if isinstance(prompt, str) else None
        return TextStream(self.engine, self.engine.make_sequence(ids, params), text)

    def apply_chat_template(self, messages: Messages, *, add_generation_prompt: bool = True) -> str:
        """The prompt text the model's own chat template makes of `messages`."""
        tokenizer = self.engine.tokenizer
        return render_chat_template(
            tokenizer.chat_template, messages, add_generation_prompt=add_generation_prompt,
            bos_token=tokenizer.bos_token, eos_token=tokenizer.eos_token,
        )

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
        texts = [self.apply_chat_template(c) for c in conversations]
        # The template writes BOS itself when the model wants one: encode without adding it.
        prompts = [(text, self.engine.tokenizer.encode(text, allow_special=True)) for text in texts]
        return self._generate(prompts, _as_params_list(sampling_params, len(prompts)), use_tqdm)


class TextStream(Iterator[str]):
    """The text deltas of one streamed request (see `LLM.stream`); `output` is set when it ends."""

    def __init__(self, engine: LLMEngine, seq: Sequence, prompt: str | None) -> None:
        self.output: RequestOutput | None = None
        self._engine = engine
        self._seq = seq
        self._prompt = prompt
        self._deltas = self._generate()

    def __next__(self) -> str:
        return next(self._deltas)

    def close(self) -> None:
        """Stop generating and free the request's KV cache."""
        self._deltas.close()

    def _generate(self) -> Iterator[str]:
        engine, seq = self._engine, self._seq
        engine.add_sequence(seq)
        detokenizer = engine.detokenizer(seq)
        shown = 0
        try:
            while True:
                finished = seq.is_finished
                end = detokenizer.stream_safe_length(finished)
                if end > shown:
                    yield detokenizer.text[shown:end]
                    shown = end
                if finished:
                    self.output = _request_output(engine, seq, self._prompt)
                    return
                engine.step()
        finally:
            if self.output is None:  # closed or failed early: drop the request, finished or not
                engine.abort(seq)


def _request_output(engine: LLMEngine, seq: Sequence, prompt: str | None) -> RequestOutput:
    """The RequestOutput of a finished sequence (releases its text state in the engine)."""
    return RequestOutput(
        request_id=seq.seq_id,
        prompt=prompt,
        prompt_token_ids=seq.prompt_token_ids,
        text=engine.release(seq),
        token_ids=seq.output_token_ids,
        finish_reason=seq.finish_reason,
        stop_reason=seq.stop_reason,
        logprobs=seq.logprobs,
        metrics=seq.metrics,
    )


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

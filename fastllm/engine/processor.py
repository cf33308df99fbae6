"""InputProcessor: what `add_request` is given, turned into a checked Request.

Text prompts are encoded (special tokens written in them recognized, BOS first where the model
wants it); token ids and sampling parameters are checked against the vocabulary; the generation
limit is resolved and checked against the context length and the KV pool. Everything is checked
here, so a request that is accepted always finishes: it fits the model's context and the KV pool
on its own, and the scheduler preempts other work to make room for it when needed.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence as Seq
from typing import TYPE_CHECKING, Any

import torch

from fastllm.engine.chat_template import render_chat_template
from fastllm.engine.detokenizer import IncrementalDetokenizer
from fastllm.engine.outputs import RequestMetrics
from fastllm.engine.request import Request
from fastllm.engine.sampling_params import SamplingParams
from fastllm.engine.sequence import Sequence
from fastllm.loader.prompt_format import PromptFormat

if TYPE_CHECKING:
    from fastllm.tokenizer import Tokenizer


class ContextLengthError(ValueError):
    """A prompt, or prompt + max_tokens, that does not fit max_model_len or the KV pool."""


class InputProcessor:
    """Checks and builds requests for a model with `vocab_size` ids, `max_model_len` positions and
    a KV pool of `num_kv_blocks` blocks of `block_size` tokens."""

    def __init__(
        self,
        tokenizer: Tokenizer,
        prompt_format: PromptFormat,
        *,
        vocab_size: int,
        max_model_len: int,
        num_kv_blocks: int,
        block_size: int,
    ) -> None:
        self.tokenizer = tokenizer
        self.prompt_format = prompt_format
        self.vocab_size = vocab_size
        self.max_model_len = max_model_len
        self.num_kv_blocks = num_kv_blocks
        self.block_size = block_size
        self.add_bos_token = prompt_format.add_bos_token and tokenizer.bos_id is not None
        self._seq_ids = itertools.count()

    # -- text --------------------------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        """Token ids of a text prompt: special tokens written in it are recognized; BOS first if the model wants it."""
        if text == "":
            raise ValueError("a prompt is empty: give at least one character")
        ids = self.tokenizer.encode(text, allow_special=True)
        return [self.tokenizer.bos_id, *ids] if self.add_bos_token else ids

    def apply_chat_template(self, messages: Any, *, add_generation_prompt: bool = True) -> str:
        """The prompt text the model's own chat template makes of `messages`."""
        return render_chat_template(
            self.prompt_format.chat_template, messages, add_generation_prompt=add_generation_prompt,
            bos_token=self.tokenizer.bos_token, eos_token=self.tokenizer.eos_token,
        )

    def encode_chat(self, messages: Any) -> tuple[str, list[int]]:
        """(rendered text, its token ids) of a conversation to reply to. The template writes BOS
        itself where the model wants one, so none is added."""
        text = self.apply_chat_template(messages)
        return text, self.tokenizer.encode(text, allow_special=True)

    # -- requests ----------------------------------------------------------------------------

    def make_request(
        self, request_id: str, prompt: object, params: object, *, prompt_text: str | None = None
    ) -> Request:
        """A checked Request; raises ValueError / TypeError naming what is wrong."""
        if not isinstance(params, SamplingParams):
            raise TypeError(f"sampling_params must be a SamplingParams, got {type(params).__name__}")
        if isinstance(prompt, str):
            if prompt_text is not None:
                raise TypeError("prompt_text goes with a prompt of token ids, not with a text prompt")
            prompt_text, prompt_ids = prompt, self.encode(prompt)
        else:
            prompt_ids = self._check_prompt_ids(prompt)
        self._check_params(params)
        max_tokens = self._max_tokens(len(prompt_ids), params)
        metrics = RequestMetrics(arrival_time=time.perf_counter())
        samples = [
            Sequence(
                next(self._seq_ids), prompt_ids, params, max_tokens, index=index, request_id=request_id,
                metrics=metrics,
                detokenizer=IncrementalDetokenizer(self.tokenizer, params.stop, params.skip_special_tokens),
            )
            for index in range(params.n)
        ]
        return Request(request_id, prompt_text, samples)

    def _check_prompt_ids(self, prompt: object) -> list[int]:
        if isinstance(prompt, torch.Tensor):
            prompt = prompt.tolist()
        if not isinstance(prompt, Seq) or isinstance(prompt, (bytes, str)):
            raise TypeError(f"prompt must be a str or a list of token ids, got {type(prompt).__name__}")
        if not prompt:
            raise ValueError("the prompt is empty: give at least one token")
        for token in prompt:
            if not isinstance(token, int) or isinstance(token, bool):
                raise ValueError(f"prompt token id {token!r} is not an int")
            if not 0 <= token < self.vocab_size:
                raise ValueError(f"prompt token id {token!r} is outside the vocabulary [0, {self.vocab_size})")
        return list(prompt)

    def _check_params(self, params: SamplingParams) -> None:
        for token in params.stop_token_ids:
            if token >= self.vocab_size:
                raise ValueError(f"stop_token_ids contains {token}, outside the vocabulary [0, {self.vocab_size})")
        if params.logprobs is not None and params.logprobs > self.vocab_size:
            raise ValueError(f"logprobs ({params.logprobs}) must be <= the vocabulary size ({self.vocab_size})")

    def _max_tokens(self, prompt_len: int, params: SamplingParams) -> int:
        """The request's generation limit, checked against the context length and the KV pool."""
        # The last generated token is never fed back, so the KV cache holds at most prompt + max_tokens - 1.
        pool_tokens = self.num_kv_blocks * self.block_size
        capacity = min(self.max_model_len, pool_tokens + 1)
        if prompt_len >= capacity:
            limit = "max_model_len" if capacity == self.max_model_len else "the KV cache (num_kv_blocks * block_size)"
            raise ContextLengthError(
                f"the prompt has {prompt_len} tokens, but {limit} allows at most {capacity - 1} "
                f"prompt tokens (plus one generated)"
            )
        if params.max_tokens is None:
            return capacity - prompt_len
        total = prompt_len + params.max_tokens
        if total > self.max_model_len:
            raise ContextLengthError(
                f"prompt ({prompt_len} tokens) + max_tokens ({params.max_tokens}) = {total} exceeds "
                f"max_model_len ({self.max_model_len})"
            )
        if total - 1 > pool_tokens:
            raise ContextLengthError(
                f"prompt ({prompt_len} tokens) + max_tokens ({params.max_tokens}) needs "
                f"{-(-(total - 1) // self.block_size)} KV blocks but the pool has {self.num_kv_blocks}; "
                f"raise num_kv_blocks or lower max_tokens"
            )
        return params.max_tokens

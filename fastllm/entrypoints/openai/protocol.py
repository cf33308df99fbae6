"""The request bodies the server accepts (pydantic, strict), and their SamplingParams.

Types are checked here (strictly: "0.5" is not a number, 1 is not a bool); ranges are checked
once, by SamplingParams, whose ValueError names the field. Unknown fields are refused, so a
client never believes an option took effect when it did not.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from fastllm.engine.sampling_params import SamplingParams
from fastllm.entrypoints.openai.errors import bad_request

MAX_TOP_LOGPROBS = 20  # per token, as vLLM's default limit (OpenAI allows 5 for completions, 20 for chat)


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class StreamOptions(_Body):
    include_usage: bool | None = None


class GenerationRequest(_Body):
    """Fields that completions and chat completions share: OpenAI's, then fastllm's own."""

    model: str | None = None
    temperature: float | None = None
    top_p: float | None = None
    n: int | None = None
    stop: Any = None  # a string or a list of them: checked by SamplingParams
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    user: str | None = None
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    min_tokens: int | None = None
    ignore_eos: bool | None = None
    stop_token_ids: list[int] | None = None

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def check_stream_options(self) -> None:
        if self.stream_options is not None and not self.stream:
            raise bad_request("stream_options is only allowed when stream is true", param="stream_options")

    # What each kind of request calls max_tokens and logprobs (and SamplingParams' names, where they differ).
    def _max_tokens(self) -> int | None:
        raise NotImplementedError

    def _num_logprobs(self) -> int | None:
        raise NotImplementedError

    def _http_names(self) -> dict[str, str]:
        return {}

    def sampling_params(self) -> SamplingParams:
        """The SamplingParams of this request; a bad value is a 400 naming the field."""
        self.check_stream_options()
        given = {
            "temperature": self.temperature, "top_p": self.top_p, "n": self.n, "stop": self.stop, "seed": self.seed,
            "presence_penalty": self.presence_penalty, "frequency_penalty": self.frequency_penalty,
            "top_k": self.top_k, "min_p": self.min_p, "repetition_penalty": self.repetition_penalty,
            "min_tokens": self.min_tokens, "ignore_eos": self.ignore_eos, "stop_token_ids": self.stop_token_ids,
            "logprobs": self._num_logprobs(),
        }
        options: dict[str, Any] = {name: value for name, value in given.items() if value is not None}
        options["max_tokens"] = self._max_tokens()
        try:
            return SamplingParams(**options)
        except ValueError as error:
            raise self.field_error(error) from None

    def field_error(self, error: ValueError) -> Exception:
        """A SamplingParams error ("SamplingParams.top_p must be ...") as a 400 naming the HTTP field."""
        message = str(error)
        match = re.match(r"SamplingParams\.(\w+)", message)
        if match is None:
            return bad_request(message)
        field = self._http_names().get(match.group(1), match.group(1))
        return bad_request(field + message[match.end() :], param=field)


def _top_logprobs(value: int | None, name: str) -> int | None:
    if value is not None and not 0 <= value <= MAX_TOP_LOGPROBS:
        raise ValueError(f"{name} must be an int in [0, {MAX_TOP_LOGPROBS}], got {value}")
    return value


class CompletionRequest(GenerationRequest):
    """POST /v1/completions."""

    prompt: Any  # text, a list of texts, token ids, or a list of token-id lists
    max_tokens: int | None = 16  # OpenAI's default for completions
    logprobs: int | None = None

    @field_validator("prompt")
    @classmethod
    def _check_prompt(cls, prompt: Any) -> list[str | list[int]]:
        """Normalized to a non-empty list of prompts, each text or token ids."""
        if isinstance(prompt, str):
            return [prompt]
        if isinstance(prompt, list) and prompt:
            if all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
                return [prompt]
            if all(isinstance(p, str) for p in prompt):
                return list(prompt)
            if all(isinstance(p, list) and p and all(isinstance(t, int) and not isinstance(t, bool) for t in p)
                   for p in prompt):
                return list(prompt)
        raise ValueError(
            "must be a string, a non-empty list of strings, a non-empty list of token ids, or a list of "
            f"non-empty token-id lists; got {prompt!r:.80}"
        )

    @field_validator("logprobs")
    @classmethod
    def _check_logprobs(cls, value: int | None) -> int | None:
        return _top_logprobs(value, "logprobs")

    def _max_tokens(self) -> int | None:
        return self.max_tokens

    def _num_logprobs(self) -> int | None:
        return self.logprobs


class ChatMessage(_Body):
    role: str
    content: Any  # a string, or a list of {"type": "text", "text": ...} parts
    name: str | None = None

    @field_validator("content")
    @classmethod
    def _text_content(cls, content: Any) -> str:
        if isinstance(content, str):
            return content
        if isinstance(content, list) and all(
            isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)
            for part in content
        ):
            return "".join(part["text"] for part in content)
        raise ValueError(
            f"must be a string or a list of {{'type': 'text', 'text': ...}} parts (only text is supported), "
            f"got {content!r:.80}"
        )


class ChatCompletionRequest(GenerationRequest):
    """POST /v1/chat/completions."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = None  # None: as many as the context leaves
    max_completion_tokens: int | None = None  # OpenAI's newer name; wins over max_tokens
    logprobs: bool | None = None
    top_logprobs: int | None = None

    @field_validator("top_logprobs")
    @classmethod
    def _check_top_logprobs(cls, value: int | None) -> int | None:
        return _top_logprobs(value, "top_logprobs")

    def conversation(self) -> list[dict[str, str]]:
        return [message.model_dump(exclude_none=True) for message in self.messages]

    def _max_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def _http_names(self) -> dict[str, str]:
        max_tokens = "max_tokens" if self.max_completion_tokens is None else "max_completion_tokens"
        return {"logprobs": "top_logprobs", "max_tokens": max_tokens}

    def _num_logprobs(self) -> int | None:
        if self.top_logprobs is not None and not self.logprobs:
            raise bad_request("top_logprobs requires logprobs to be true", param="top_logprobs")
        return (self.top_logprobs or 0) if self.logprobs else None


class TokenizeRequest(_Body):
    """POST /tokenize: a text (`prompt`) or a conversation (`messages`, through the chat template)."""

    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    add_special_tokens: bool = True  # text: BOS first where the model wants one, as generation does

    def check(self) -> None:
        if (self.prompt is None) == (self.messages is None):
            raise bad_request("give exactly one of prompt and messages", param="prompt")


class DetokenizeRequest(_Body):
    """POST /detokenize."""

    model: str | None = None
    tokens: list[int]

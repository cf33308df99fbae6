"""Engine outputs as OpenAI's JSON: completion and chat completion responses, stream chunks,
usage and logprobs.

A request with several prompts (completions) runs one engine request per prompt, each with
SamplingParams.n samples; choice `prompt_index * n + sample_index` is one sample, as in OpenAI
and vLLM.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastllm.engine.outputs import CompletionOutput, RequestOutput

if TYPE_CHECKING:
    from fastllm.tokenizer import Tokenizer

LOGPROB_FLOOR = -9999.0  # JSON has no -Infinity


class ResponseFormatter:
    """Builds the bodies of one HTTP request (`chat`: chat completions, else completions)."""

    def __init__(
        self, *, chat: bool, response_id: str, created: int, model: str, tokenizer: Tokenizer,
        n: int, top_logprobs: int | None, include_usage: bool = False,
    ) -> None:
        self.chat = chat
        self.response_id = response_id
        self.created = created
        self.model = model
        self.tokenizer = tokenizer
        self.n = n
        self.top_logprobs = top_logprobs  # None: no logprobs asked for
        self.include_usage = include_usage
        self._text_offsets: dict[int, int] = {}  # completions logprobs: each choice's text offset so far
        self._prompt_tokens: dict[int, int] = {}  # streaming usage, by prompt index
        self._completion_tokens = 0

    # -- whole responses --------------------------------------------------------------------

    def response(self, finals: list[RequestOutput]) -> dict[str, Any]:
        choices = [
            self._choice(prompt_index * self.n + sample.index, sample)
            for prompt_index, final in enumerate(finals)
            for sample in final.outputs
        ]
        prompt_tokens = sum(len(final.prompt_token_ids) for final in finals)
        completion_tokens = sum(len(sample.token_ids) for final in finals for sample in final.outputs)
        return {
            **self._header("chat.completion" if self.chat else "text_completion"),
            "choices": choices,
            "usage": _usage(prompt_tokens, completion_tokens),
        }

    def _choice(self, index: int, sample: CompletionOutput) -> dict[str, Any]:
        logprobs = self._logprobs(index, sample.token_ids, sample.logprobs)
        if self.chat:
            message = {"role": "assistant", "content": sample.text}
            return {"index": index, "message": message, "logprobs": logprobs, "finish_reason": sample.finish_reason}
        return {"index": index, "text": sample.text, "logprobs": logprobs, "finish_reason": sample.finish_reason}

    # -- streams ----------------------------------------------------------------------------

    def first_chunks(self, num_prompts: int) -> list[dict[str, Any]]:
        """Chat streams open each choice with the assistant's role (as OpenAI's do)."""
        if not self.chat:
            return []
        return [
            self._chunk({"index": index, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                         "finish_reason": None})
            for index in range(num_prompts * self.n)
        ]

    def chunks(self, prompt_index: int, output: RequestOutput) -> list[dict[str, Any]]:
        """The chunks one engine output makes: one per sample that has news."""
        self._prompt_tokens[prompt_index] = len(output.prompt_token_ids)
        chunks = []
        for sample in output.outputs:
            self._completion_tokens += len(sample.delta_token_ids)
            if not (sample.delta_text or sample.finish_reason or (self.top_logprobs is not None and sample.delta_token_ids)):
                continue
            index = prompt_index * self.n + sample.index
            new_logprobs = sample.logprobs[len(sample.logprobs) - len(sample.delta_token_ids):] if sample.logprobs else []
            logprobs = self._logprobs(index, sample.delta_token_ids, new_logprobs)
            if self.chat:
                delta = {"content": sample.delta_text} if sample.delta_text else {}
                choice = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": sample.finish_reason}
            else:
                choice = {"index": index, "text": sample.delta_text, "logprobs": logprobs,
                          "finish_reason": sample.finish_reason}
            chunks.append(self._chunk(choice))
        return chunks

    def usage_chunk(self) -> dict[str, Any]:
        """The last chunk of a stream with include_usage: no choices, the whole usage."""
        chunk = self._header("chat.completion.chunk" if self.chat else "text_completion")
        chunk["choices"] = []
        chunk["usage"] = _usage(sum(self._prompt_tokens.values()), self._completion_tokens)
        return chunk

    def _chunk(self, choice: dict[str, Any]) -> dict[str, Any]:
        chunk = self._header("chat.completion.chunk" if self.chat else "text_completion")
        chunk["choices"] = [choice]
        if self.include_usage:
            chunk["usage"] = None
        return chunk

    def _header(self, kind: str) -> dict[str, Any]:
        return {"id": self.response_id, "object": kind, "created": self.created, "model": self.model}

    # -- logprobs ---------------------------------------------------------------------------

    def _logprobs(
        self, index: int, token_ids: list[int], logprobs: list[dict[int, float]] | None
    ) -> dict[str, Any] | None:
        """OpenAI's logprobs of these tokens (chat: `content` entries; completions: the legacy
        parallel lists). Each engine entry holds the top N in order, then the sampled token."""
        if self.top_logprobs is None or logprobs is None:
            return None
        entries = list(zip(token_ids, logprobs))
        if self.chat:
            return {"content": [
                {**self._token_entry(token, entry[token]),
                 "top_logprobs": [self._token_entry(t, lp) for t, lp in list(entry.items())[: self.top_logprobs]]}
                for token, entry in entries
            ]}
        tokens = [self.tokenizer.decode([token]) for token, _ in entries]
        offsets = []
        offset = self._text_offsets.get(index, 0)
        for text in tokens:
            offsets.append(offset)
            offset += len(text)
        self._text_offsets[index] = offset
        return {
            "tokens": tokens,
            "token_logprobs": [_finite(entry[token]) for token, entry in entries],
            "top_logprobs": [
                {self.tokenizer.decode([t]): _finite(lp) for t, lp in list(entry.items())[: self.top_logprobs]}
                for _, entry in entries
            ],
            "text_offset": offsets,
        }

    def _token_entry(self, token: int, logprob: float) -> dict[str, Any]:
        return {
            "token": self.tokenizer.decode([token]),
            "logprob": _finite(logprob),
            "bytes": list(self.tokenizer.decode_bytes([token])),
        }


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def _finite(logprob: float) -> float:
    return max(logprob, LOGPROB_FLOOR)

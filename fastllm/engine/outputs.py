"""What the engine hands out: one `RequestOutput` per request per step, each sample a `CompletionOutput`.

Outputs are snapshots: nothing in them changes after `LLMEngine.step` returns them, and nothing
needs to be handed back to the engine.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class RequestMetrics:
    """Wall-clock timestamps (time.perf_counter seconds) of one request's life, shared by its samples."""

    arrival_time: float
    first_scheduled_time: float | None = None
    first_token_time: float | None = None  # the first token of any sample
    last_token_time: float | None = None  # the latest token of any sample (inter-token latency)
    finished_time: float | None = None  # when the last sample finished
    num_cached_tokens: int = 0  # prompt tokens found in the prefix cache at the first admission
    num_preemptions: int = 0

    @property
    def time_to_first_token(self) -> float | None:
        if self.first_token_time is None:
            return None
        return self.first_token_time - self.arrival_time

    @property
    def latency(self) -> float | None:
        if self.finished_time is None:
            return None
        return self.finished_time - self.arrival_time


@dataclass
class CompletionOutput:
    """One sample of a request, as of the step that produced it.

    Attributes:
        index: which sample (0 .. SamplingParams.n - 1).
        text: the text so far; once finished, all of it (without a matched stop string or the final
            EOS / stop token). While generating it lags the tokens by what may begin a stop string
            (or end in the middle of a UTF-8 character), so the deltas never show either.
        token_ids: the generated token ids so far (a final EOS / stop token included).
        delta_text, delta_token_ids: what `text` and `token_ids` gained since this request's
            previous output: joined over all outputs they give `text` and `token_ids`.
        finish_reason: None while generating, then "stop" (EOS, a stop token id or a stop string),
            "length" (max_tokens or the context length) or "abort".
        stop_reason: the stop string or stop token id that ended generation; None otherwise.
        logprobs: with SamplingParams.logprobs, one {token id: log-probability} dict per generated
            token, from the model's raw distribution: the top N in descending order, then the
            sampled token when it is not among them (so the first N items are the top N, and
            `logprobs[i][token_ids[i]]` is the sampled token's).
    """

    index: int
    text: str
    token_ids: list[int]
    delta_text: str
    delta_token_ids: list[int]
    finish_reason: str | None = None
    stop_reason: str | int | None = None
    logprobs: list[dict[int, float]] | None = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass
class RequestOutput:
    """A request's state after a step: its samples (`outputs`, one per SamplingParams.n, in order).

    `text`, `token_ids`, `finish_reason`, `stop_reason` and `logprobs` are those of the first
    sample (the only one when n = 1).
    """

    request_id: str
    prompt: str | None  # None when the prompt was given as token ids
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool  # every sample finished
    metrics: RequestMetrics

    @property
    def text(self) -> str:
        return self.outputs[0].text

    @property
    def token_ids(self) -> list[int]:
        return self.outputs[0].token_ids

    @property
    def finish_reason(self) -> str | None:
        return self.outputs[0].finish_reason

    @property
    def stop_reason(self) -> str | int | None:
        return self.outputs[0].stop_reason

    @property
    def logprobs(self) -> list[dict[int, float]] | None:
        return self.outputs[0].logprobs


@dataclass(frozen=True)
class EngineStats:
    """The engine's load at one moment (`LLMEngine.stats`), e.g. for a server's metrics.

    A request is running while one of its samples holds KV blocks (being prefilled or decoded),
    waiting otherwise (queued, or preempted). KV blocks in use are those some running sequence
    holds; a free block may still hold a cached prefix. The prefix-cache counts are cumulative
    prompt tokens looked up and found at admissions.
    """

    num_running_requests: int
    num_waiting_requests: int
    num_kv_blocks: int
    num_free_kv_blocks: int
    prefix_cache_queries: int
    prefix_cache_hits: int
    num_preemptions: int

    @property
    def num_used_kv_blocks(self) -> int:
        return self.num_kv_blocks - self.num_free_kv_blocks

    @property
    def prefix_cache_hit_rate(self) -> float:
        return self.prefix_cache_hits / self.prefix_cache_queries if self.prefix_cache_queries else 0.0

"""Sequence: one sample of a request, with everything it owns: tokens, KV blocks, text, progress.

A request with SamplingParams.n = 1 is one Sequence; with n > 1 it is n of them (see
`fastllm.engine.request`), sharing the request's metrics.
"""

from __future__ import annotations

import enum
import time
from typing import TYPE_CHECKING

from fastllm.engine.outputs import CompletionOutput, RequestMetrics
from fastllm.engine.sampling_params import SamplingParams

if TYPE_CHECKING:
    from fastllm.engine.detokenizer import IncrementalDetokenizer
    from fastllm.engine.sampler import PenaltyCounts


class SequenceStatus(enum.Enum):
    WAITING = enum.auto()  # queued: not admitted yet, or preempted (its KV blocks were freed)
    RUNNING = enum.auto()  # holds KV blocks; being prefilled or decoded
    FINISHED = enum.auto()


class Sequence:
    """A sample inside the engine.

    `token_ids` holds the prompt followed by the generated tokens. `num_computed_tokens` of them
    have their keys/values in the KV cache; the step that computes the last one samples the next
    token. After preemption the whole of `token_ids` is treated as a prompt to recompute, so the
    tokens generated so far are kept.

    index: which sample of its request; a seeded request's sample i draws with seed `params.seed + i`.
    detokenizer: grows the output text token by token (None: no text, e.g. in scheduler tests).
    """

    def __init__(
        self,
        seq_id: int,
        prompt_token_ids: list[int],
        params: SamplingParams,
        max_tokens: int,
        *,
        index: int = 0,
        request_id: str | None = None,
        metrics: RequestMetrics | None = None,
        detokenizer: IncrementalDetokenizer | None = None,
    ) -> None:
        self.seq_id = seq_id
        self.params = params
        self.max_tokens = max_tokens  # resolved limit: params.max_tokens, or what the context leaves
        self.index = index
        self.seed = None if params.seed is None else params.seed + index
        self.request_id = request_id
        self.token_ids: list[int] = list(prompt_token_ids)
        self.num_prompt_tokens = len(prompt_token_ids)
        self.num_computed_tokens = 0
        self.status = SequenceStatus.WAITING
        # KV state, owned by the BlockManager: physical block ids in order, and the chained hashes
        # of the full blocks computed so far (a pure function of token_ids, kept across preemption).
        self.block_table: list[int] = []
        self.block_hashes: list[int] = []
        self.num_registered_blocks = 0  # leading blocks of block_table already offered to the prefix cache
        self.finish_reason: str | None = None  # "stop" | "length" | "abort"
        self.stop_reason: str | int | None = None  # the stop string or stop token id that ended it
        self.logprobs: list[dict[int, float]] | None = [] if params.logprobs is not None else None
        self.metrics = metrics if metrics is not None else RequestMetrics(arrival_time=time.perf_counter())
        self.detokenizer = detokenizer
        # How much of the output the request's outputs have carried so far (for their deltas).
        self.num_sent_tokens = 0
        self.num_sent_chars = 0
        # With penalties: its token counts on the device, kept up to date by the Sampler.
        self.penalty_counts: PenaltyCounts | None = None

    def __repr__(self) -> str:
        return (
            f"Sequence(id={self.seq_id}, status={self.status.name}, tokens={self.num_tokens}, "
            f"computed={self.num_computed_tokens}, blocks={len(self.block_table)})"
        )

    @property
    def status(self) -> SequenceStatus:
        return self._status

    @status.setter
    def status(self, status: SequenceStatus) -> None:
        self._status = status
        if status is SequenceStatus.FINISHED:
            self.penalty_counts = None  # a vocabulary-sized tensor or two: freed as soon as it ends

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def prompt_token_ids(self) -> list[int]:
        return self.token_ids[: self.num_prompt_tokens]

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens :]

    @property
    def num_uncomputed_tokens(self) -> int:
        return len(self.token_ids) - self.num_computed_tokens

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED

    def append_token(self, token_id: int) -> None:
        self.token_ids.append(token_id)

    def visible_text(self) -> str:
        """The output text an output may show now: all of it once finished, else all but what may
        begin a stop string."""
        if self.detokenizer is None:
            return ""
        text = self.detokenizer.text
        return text[: self.detokenizer.stream_safe_length(self.finish_reason is not None)]

    def take_output(self) -> CompletionOutput:
        """This sample's CompletionOutput now, its deltas counted from the previous call."""
        text, token_ids = self.visible_text(), self.output_token_ids
        output = CompletionOutput(
            index=self.index,
            text=text,
            token_ids=token_ids,
            delta_text=text[self.num_sent_chars :],
            delta_token_ids=token_ids[self.num_sent_tokens :],
            finish_reason=self.finish_reason,
            stop_reason=self.stop_reason,
            logprobs=None if self.logprobs is None else list(self.logprobs),
        )
        self.num_sent_chars, self.num_sent_tokens = len(text), len(token_ids)
        return output

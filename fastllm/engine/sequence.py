"""Sequence: one request's tokens, KV blocks and progress as it moves through the engine."""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fastllm.engine.sampling_params import SamplingParams

if TYPE_CHECKING:
    from fastllm.engine.sampler import PenaltyCounts


class SequenceStatus(enum.Enum):
    WAITING = enum.auto()  # queued: not admitted yet, or preempted (its KV blocks were freed)
    RUNNING = enum.auto()  # holds KV blocks; being prefilled or decoded
    FINISHED = enum.auto()


@dataclass
class RequestMetrics:
    """Wall-clock timestamps (time.perf_counter seconds) of one request's life."""

    arrival_time: float
    first_scheduled_time: float | None = None
    first_token_time: float | None = None
    finished_time: float | None = None
    num_cached_tokens: int = 0  # prompt tokens found in the prefix cache at first admission
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


class Sequence:
    """A request inside the engine.

    `token_ids` holds the prompt followed by the generated tokens. `num_computed_tokens` of them
    have their keys/values in the KV cache; the step that computes the last one samples the next
    token. After preemption the whole of `token_ids` is treated as a prompt to recompute, so the
    tokens generated so far are kept.
    """

    def __init__(self, seq_id: int, prompt_token_ids: list[int], params: SamplingParams, max_tokens: int) -> None:
        self.seq_id = seq_id
        self.params = params
        self.max_tokens = max_tokens  # resolved limit: params.max_tokens, or what the context leaves
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
        self.metrics = RequestMetrics(arrival_time=time.perf_counter())
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

"""Scheduler: which sequences run in the next model step, and how many tokens each.

Continuous batching with prefill first: a step either prefills (prompt chunks of several
sequences packed together, up to `max_num_batched_tokens` tokens) or decodes (one token for
every running sequence). Prompts longer than the token budget are prefilled in chunks over
several steps. A sequence is admitted only when the free blocks hold all its tokens, so a chunked
prefill never stalls halfway; when decoding runs out of blocks, the newest running sequence is
preempted: its blocks are freed and it goes back to the front of the queue, to be recomputed
(prompt and generated tokens alike, often straight from the prefix cache) when room frees up.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

from fastllm.engine.block_manager import BlockManager
from fastllm.engine.sequence import Sequence, SequenceStatus


@dataclass
class ScheduledBatch:
    """One model step: `num_new_tokens[i]` tokens of `seqs[i]`, from its `num_computed_tokens` on."""

    seqs: list[Sequence]
    num_new_tokens: list[int]
    is_prefill: bool
    samples: list[bool] = field(init=False)  # per sequence: does this step sample its next token?

    def __post_init__(self) -> None:
        # Fixed when scheduled: a sequence samples when this step computes its last token.
        self.samples = [
            seq.num_computed_tokens + count == seq.num_tokens for seq, count in zip(self.seqs, self.num_new_tokens)
        ]

    @property
    def num_tokens(self) -> int:
        return sum(self.num_new_tokens)

    @property
    def sampled_seqs(self) -> list[Sequence]:
        return [seq for seq, samples in zip(self.seqs, self.samples) if samples]


class Scheduler:
    def __init__(self, block_manager: BlockManager, *, max_num_seqs: int, max_num_batched_tokens: int) -> None:
        self.block_manager = block_manager
        self.max_num_batched_tokens = max_num_batched_tokens
        # Every running sequence must fit in one decode step.
        self.max_running = min(max_num_seqs, max_num_batched_tokens)
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []  # in admission order: the last is the newest
        self.num_preemptions = 0

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> ScheduledBatch | None:
        """The next step's work; None when there is none."""
        return self._schedule_prefill() or self._schedule_decode()

    def _schedule_prefill(self) -> ScheduledBatch | None:
        budget = self.max_num_batched_tokens
        seqs: list[Sequence] = []
        counts: list[int] = []
        # Chunked prefills already under way continue first, oldest first.
        for seq in self.running:
            if budget == 0:
                break
            if seq.num_uncomputed_tokens > 1:
                count = min(seq.num_uncomputed_tokens, budget)
                seqs.append(seq)
                counts.append(count)
                budget -= count
        # Then new (or preempted) sequences, first come first served while blocks last.
        while self.waiting and budget > 0 and len(self.running) < self.max_running:
            seq = self.waiting[0]
            if not self.block_manager.allocate(seq):
                break
            self.waiting.popleft()
            seq.status = SequenceStatus.RUNNING
            if seq.metrics.first_scheduled_time is None:
                seq.metrics.first_scheduled_time = time.perf_counter()
                seq.metrics.num_cached_tokens = seq.num_computed_tokens
            self.running.append(seq)
            count = min(seq.num_uncomputed_tokens, budget)
            seqs.append(seq)
            counts.append(count)
            budget -= count
        return ScheduledBatch(seqs, counts, is_prefill=True) if seqs else None

    def _schedule_decode(self) -> ScheduledBatch | None:
        scheduled: list[Sequence] = []
        candidates = deque(self.running)
        while candidates:
            seq = candidates.popleft()
            while not self.block_manager.can_append(seq):
                # Out of blocks: give up the newest running sequence, which may be this one.
                victim = candidates.pop() if candidates else seq
                self._preempt(victim)
                if victim is seq:
                    break
            else:
                self.block_manager.append_slot(seq)
                scheduled.append(seq)
        self.running = scheduled
        return ScheduledBatch(scheduled, [1] * len(scheduled), is_prefill=False) if scheduled else None

    def _preempt(self, seq: Sequence) -> None:
        self.block_manager.free_blocks(seq)
        seq.num_computed_tokens = 0
        seq.status = SequenceStatus.WAITING
        seq.metrics.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(seq)

    def update_after_step(self, batch: ScheduledBatch) -> None:
        """Record the tokens the step computed and offer newly full blocks to the prefix cache."""
        for seq, count in zip(batch.seqs, batch.num_new_tokens):
            seq.num_computed_tokens += count
            self.block_manager.register_computed_blocks(seq)

    def finish(self, seq: Sequence) -> None:
        """Retire a running (or waiting) sequence and release its blocks."""
        if seq.status is SequenceStatus.RUNNING:
            self.running.remove(seq)
        elif seq.status is SequenceStatus.WAITING:
            self.waiting.remove(seq)
        self.block_manager.free_blocks(seq)
        seq.status = SequenceStatus.FINISHED

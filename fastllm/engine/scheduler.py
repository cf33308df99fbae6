"""Scheduler: which sequences run in the next model step, and how many tokens each.

Continuous batching with chunked prefill, decode first (vLLM's chunked-prefill policy): a step
holds one token of every running sequence that is decoding, then prompt chunks (of prefills under
way first, then of newly admitted sequences) in what is left of `max_num_batched_tokens`. So a
long prompt is prefilled over several steps while the running sequences keep producing a token
every step. A sequence is admitted only when the free blocks hold all its tokens, so a chunked
prefill never stalls halfway; when decoding runs out of blocks, the newest running sequence is
preempted: its blocks are freed and it goes back to the front of the queue, to be recomputed
(prompt and generated tokens alike, often straight from the prefix cache) when room frees up.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from fastllm.engine.block_manager import BlockManager
from fastllm.engine.sequence import Sequence, SequenceStatus


@dataclass
class ScheduledBatch:
    """One model step: the last token of each of `decode_seqs`, then `prefill_counts[i]` tokens of
    `prefill_seqs[i]` from its `num_computed_tokens` on.

    A decode row computes a sequence's last token (so it samples); that includes a prompt whose
    chunks left exactly one token.
    """

    decode_seqs: list[Sequence]
    prefill_seqs: list[Sequence] = field(default_factory=list)
    prefill_counts: list[int] = field(default_factory=list)
    prefill_samples: list[bool] = field(init=False)  # per prefill sequence: does this step sample its next token?

    def __post_init__(self) -> None:
        # Fixed when scheduled: a sequence samples when this step computes its last token.
        self.prefill_samples = [
            seq.num_computed_tokens + count == seq.num_tokens for seq, count in zip(self.prefill_seqs, self.prefill_counts)
        ]

    @property
    def seqs(self) -> list[Sequence]:
        return self.decode_seqs + self.prefill_seqs

    @property
    def num_new_tokens(self) -> list[int]:
        return [1] * len(self.decode_seqs) + self.prefill_counts

    @property
    def num_tokens(self) -> int:
        return len(self.decode_seqs) + sum(self.prefill_counts)

    @property
    def is_decode_only(self) -> bool:
        return not self.prefill_seqs

    @property
    def sampled_seqs(self) -> list[Sequence]:
        """The sequences this step samples for: every decode row, then the prefills it completes."""
        completed = [seq for seq, samples in zip(self.prefill_seqs, self.prefill_samples) if samples]
        return self.decode_seqs + completed


class Scheduler:
    def __init__(self, block_manager: BlockManager, *, max_num_seqs: int, max_num_batched_tokens: int) -> None:
        self.block_manager = block_manager
        self.max_num_batched_tokens = max_num_batched_tokens
        # Every running sequence must fit in one step's decode rows.
        self.max_running = min(max_num_seqs, max_num_batched_tokens)
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []  # in admission order: the last is the newest
        self.num_preemptions = 0

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def add_first(self, seqs: Iterable[Sequence]) -> None:
        """Queue `seqs` (in order) ahead of everything waiting."""
        self.waiting.extendleft(reversed(list(seqs)))

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> ScheduledBatch | None:
        """The next step's work; None when there is none."""
        decode, preempted = self._schedule_decode()
        budget = self.max_num_batched_tokens - len(decode)
        prefill: list[Sequence] = []
        counts: list[int] = []
        # Chunked prefills already under way continue first, oldest first.
        for seq in self.running:
            if budget == 0:
                break
            if seq.num_uncomputed_tokens > 1:
                count = min(seq.num_uncomputed_tokens, budget)
                prefill.append(seq)
                counts.append(count)
                budget -= count
        # Then new (or preempted) sequences, first come first served while blocks last; not in a
        # step that had to preempt (the blocks it freed would only go back to what it preempted).
        while not preempted and self.waiting and budget > 0 and len(self.running) < self.max_running:
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
            prefill.append(seq)
            counts.append(count)
            budget -= count
        if not decode and not prefill:
            return None
        return ScheduledBatch(decode, prefill, counts)

    def _schedule_decode(self) -> tuple[list[Sequence], bool]:
        """The running sequences with one token left to compute, each given a slot for it; and
        whether that took preempting. Sequences mid-prefill already hold all their blocks."""
        kept: list[Sequence] = []
        decode: list[Sequence] = []
        preempted = False
        candidates = deque(self.running)
        while candidates:
            seq = candidates.popleft()
            if seq.num_uncomputed_tokens > 1:
                kept.append(seq)
                continue
            while not self.block_manager.can_append(seq):
                # Out of blocks: give up the newest running sequence, which may be this one.
                victim = candidates.pop() if candidates else seq
                self._preempt(victim)
                preempted = True
                if victim is seq:
                    break
            else:
                self.block_manager.append_slot(seq)
                kept.append(seq)
                decode.append(seq)
        self.running = kept
        return decode, preempted

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

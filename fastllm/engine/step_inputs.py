"""StepInputs: what a model step needs from the scheduler, as plain integers.

The ModelRunner builds its input tensors from these, not from Sequences, so that the same step can
run where no Sequence exists: on the other ranks of a tensor-parallel group, which receive a step
packed into one int64 tensor (`pack` / `unpack`) from rank 0, whose scheduler made it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fastllm.engine.scheduler import ScheduledBatch


@dataclass(frozen=True)
class PrefillChunk:
    """`token_ids` of a sequence computed from position `start` on, over its KV blocks `block_table`;
    `samples`: this chunk ends the prompt, so the step samples its next token."""

    token_ids: list[int]
    start: int
    block_table: list[int]
    samples: bool


@dataclass(frozen=True)
class StepInputs:
    """One step: a token per decode row (its position and blocks), then the prefill chunks."""

    decode_token_ids: list[int]
    decode_positions: list[int]
    decode_block_tables: list[list[int]]
    prefill_chunks: list[PrefillChunk]

    @classmethod
    def from_batch(cls, batch: ScheduledBatch) -> StepInputs:
        decode = batch.decode_seqs
        chunks = [
            PrefillChunk(seq.token_ids[seq.num_computed_tokens : seq.num_computed_tokens + count],
                         seq.num_computed_tokens, seq.block_table, samples)
            for seq, count, samples in zip(batch.prefill_seqs, batch.prefill_counts, batch.prefill_samples)
        ]
        return cls([seq.token_ids[-1] for seq in decode], [seq.num_tokens - 1 for seq in decode],
                   [seq.block_table for seq in decode], chunks)

    @property
    def is_decode_only(self) -> bool:
        return not self.prefill_chunks

    @property
    def block_tables(self) -> list[list[int]]:
        """Every row's sequence's blocks: decode rows first, then the prefill chunks."""
        return self.decode_block_tables + [chunk.block_table for chunk in self.prefill_chunks]

    def pack(self) -> torch.Tensor:
        """This step as one int64 tensor: the counts, then each decode row (token, position, its
        table's length, the table), then each chunk (start, samples, token count, table length,
        tokens, table)."""
        values = [len(self.decode_token_ids), len(self.prefill_chunks)]
        for token, position, table in zip(self.decode_token_ids, self.decode_positions, self.decode_block_tables):
            values += (token, position, len(table), *table)
        for chunk in self.prefill_chunks:
            values += (chunk.start, int(chunk.samples), len(chunk.token_ids), len(chunk.block_table))
            values += chunk.token_ids
            values += chunk.block_table
        return torch.tensor(values, dtype=torch.int64)

    @classmethod
    def unpack(cls, packed: torch.Tensor) -> StepInputs:
        """The inverse of `pack`."""
        values = packed.tolist()
        num_decode, num_chunks = values[0], values[1]
        at = 2
        tokens, positions, tables = [], [], []
        for _ in range(num_decode):
            token, position, width = values[at : at + 3]
            tokens.append(token)
            positions.append(position)
            tables.append(values[at + 3 : at + 3 + width])
            at += 3 + width
        chunks = []
        for _ in range(num_chunks):
            start, samples, count, width = values[at : at + 4]
            at += 4
            chunks.append(PrefillChunk(values[at : at + count], start, values[at + count : at + count + width], bool(samples)))
            at += count + width
        if at != len(values):
            raise ValueError(f"packed StepInputs has {len(values)} values, its counts describe {at}")
        return cls(tokens, positions, tables, chunks)

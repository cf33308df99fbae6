"""ModelRunner: owns the KV cache and turns a ScheduledBatch into one forward pass and a sample.

Step inputs are flat tensors (input_ids, positions, slot_mapping, cu_seqlens / context_lens,
block_tables), built from Python lists with one asynchronous host-to-device copy each: decode
rows first, then prefill chunks. With `cuda_graph_max_batch`, steps that only decode replay CUDA
graphs over static input buffers instead (fastllm/engine/cuda_graphs.py); steps with a prefill
chunk, and decode batches a graph cannot hold, run eagerly. Logits are computed only for the rows
that sample.
"""

from __future__ import annotations

import math
import mmap
from collections.abc import Callable

import torch

from fastllm.engine.cuda_graphs import DecodeGraphs, graph_blocks_per_seq
from fastllm.engine.sampler import Sampler, SamplerOutput
from fastllm.engine.scheduler import ScheduledBatch
from fastllm.engine.step_inputs import StepInputs
from fastllm.model.backend import AttentionMetadata
from fastllm.model.config import ModelConfig
from fastllm.model.llama import LlamaForCausalLM


def kv_cache_bytes_per_block(config: ModelConfig, block_size: int, dtype: torch.dtype) -> int:
    """Bytes one KV block takes across all layers (keys and values)."""
    return config.num_hidden_layers * 2 * block_size * config.num_key_value_heads * config.head_dim * dtype.itemsize


def zeroed_cache(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The KV pool, zeroed: attention reads whole blocks and masks the unused tail, and a NaN left
    in memory would survive the mask (0 * NaN).

    On a CPU the pool is an anonymous memory mapping, whose pages the OS zeroes on first touch:
    start-up does not write the whole pool, and a session holds only the pages its blocks touch.
    Ordinary 4 KiB pages, on purpose: numpy's large allocations ask for 2 MiB pages, with which
    every layer's first block made 4 MiB resident.
    """
    if torch.device(device).type != "cpu":
        return torch.zeros(shape, dtype=dtype, device=device)
    pages = mmap.mmap(-1, max(math.prod(shape) * dtype.itemsize, 1))
    return torch.frombuffer(pages, dtype=torch.uint8)[: math.prod(shape) * dtype.itemsize].view(dtype).view(shape)


def slots_of(block_table: list[int], start: int, end: int, block_size: int) -> list[int]:
    """Cache slots of token positions [start, end) of a sequence with this block table."""
    slots: list[int] = []
    position = start
    while position < end:
        index, offset = divmod(position, block_size)
        stop = min(end, (index + 1) * block_size)
        base = block_table[index] * block_size
        slots.extend(range(base + offset, base + offset + stop - position))
        position = stop
    return slots


class ModelRunner:
    """Owns the KV cache; runs one scheduled step (forward, logits, sample).

    cuda_graph_max_batch: capture decode CUDA graphs for batches of up to this many sequences
    (the model must be on CUDA with a graph-safe backend: see `supports_cuda_graphs`);
    max_model_len bounds the graphs' block tables. None = every step runs eagerly.
    step_sink: on rank 0 of a tensor-parallel group, sends each step to the other ranks (whose
    runners, without a sampler, only call `forward`) before running it here.
    """

    def __init__(
        self,
        model: LlamaForCausalLM,
        sampler: Sampler | None,
        *,
        num_blocks: int,
        block_size: int,
        cuda_graph_max_batch: int | None = None,
        max_model_len: int | None = None,
        step_sink: Callable[[StepInputs], None] | None = None,
    ) -> None:
        config = model.config
        self.model = model
        self.sampler = sampler
        self.step_sink = step_sink
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.device = model.device
        shape = (config.num_hidden_layers, 2, num_blocks, block_size, config.num_key_value_heads, config.head_dim)
        self.kv_cache = zeroed_cache(shape, model.dtype, self.device)
        self.decode_graphs: DecodeGraphs | None = None
        if cuda_graph_max_batch is not None:
            width = graph_blocks_per_seq(max_model_len or config.max_position_embeddings, block_size, num_blocks)
            self.decode_graphs = DecodeGraphs(
                model, self.kv_cache, max_batch_size=cuda_graph_max_batch, max_blocks_per_seq=width,
                block_size=block_size,
            )
            self.decode_graphs.capture()

    def _tensor(self, data: list[int] | list[list[int]], dtype: torch.dtype) -> torch.Tensor:
        if self.device.type == "cpu":
            return torch.tensor(data, dtype=dtype)
        return torch.tensor(data, dtype=dtype, pin_memory=True).to(self.device, non_blocking=True)

    def _prepare(self, step: StepInputs) -> tuple[torch.Tensor, torch.Tensor, AttentionMetadata, list[int] | None]:
        """input_ids, positions, metadata and the rows to sample (None: every row) of a step.

        Rows are the decode tokens first, then the prefill chunks packed back to back; a step with
        both is a prefill step whose first `num_decode_tokens` rows decode (see AttentionMetadata).
        """
        size = self.block_size
        input_ids = list(step.decode_token_ids)
        positions = list(step.decode_positions)
        slots = [table[p // size] * size + p % size for table, p in zip(step.decode_block_tables, positions)]
        context_lens = [p + 1 for p in positions]
        num_decode = len(input_ids)
        cu_q, cu_k = [0], [0]
        sample_rows = list(range(num_decode))
        attends_to_cache = num_decode > 0
        for chunk in step.prefill_chunks:
            start, count = chunk.start, len(chunk.token_ids)
            end = start + count
            input_ids.extend(chunk.token_ids)
            positions.extend(range(start, end))
            slots.extend(slots_of(chunk.block_table, start, end, size))
            cu_q.append(cu_q[-1] + count)
            cu_k.append(cu_k[-1] + end)
            attends_to_cache |= start > 0
            if chunk.samples:
                sample_rows.append(num_decode + cu_q[-1] - 1)
        prefill = not step.is_decode_only
        meta = AttentionMetadata(
            is_prefill=prefill,
            slot_mapping=self._tensor(slots, torch.int64),
            cu_seqlens_q=self._tensor(cu_q, torch.int32) if prefill else None,
            cu_seqlens_k=self._tensor(cu_k, torch.int32) if prefill else None,
            max_seqlen_q=max((b - a for a, b in zip(cu_q, cu_q[1:])), default=0),
            max_seqlen_k=max((b - a for a, b in zip(cu_k, cu_k[1:])), default=0),
            context_lens=self._tensor(context_lens, torch.int32) if num_decode else None,
            block_tables=self._block_tables(step.block_tables) if attends_to_cache else None,
            num_decode_tokens=num_decode if prefill else 0,
        )
        rows = None if len(sample_rows) == len(input_ids) else sample_rows
        return self._tensor(input_ids, torch.int64), self._tensor(positions, torch.int64), meta, rows

    def _block_tables(self, tables: list[list[int]]) -> torch.Tensor:
        # Rows padded with block 0: padding is never read unmasked.
        width = max(len(table) for table in tables)
        return self._tensor([table + [0] * (width - len(table)) for table in tables], torch.int32)

    @torch.inference_mode()
    def forward(self, step: StepInputs) -> torch.Tensor | None:
        """The logits of the rows `step` samples (decode rows, then the prompts it completes), or
        None when it samples none."""
        graphs = self.decode_graphs
        if step.is_decode_only and graphs is not None and graphs.fits(step.decode_block_tables):
            hidden = graphs.run(step.decode_token_ids, step.decode_positions, step.decode_block_tables)
            sample_rows = None
        else:
            input_ids, positions, meta, sample_rows = self._prepare(step)
            hidden = self.model(input_ids, positions, meta, self.kv_cache)
        if sample_rows == []:
            return None
        if sample_rows is not None:
            hidden = hidden[self._tensor(sample_rows, torch.int64)]
        return self.model.compute_logits(hidden)

    @torch.inference_mode()
    def run(self, batch: ScheduledBatch) -> SamplerOutput:
        """Run one step; returns the sampled tokens of `batch.sampled_seqs`, in that order."""
        step = StepInputs.from_batch(batch)
        if self.step_sink is not None:
            self.step_sink(step)
        logits = self.forward(step)
        if logits is None:
            return SamplerOutput([], [])
        return self.sampler(logits, batch.sampled_seqs)

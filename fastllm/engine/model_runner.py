"""ModelRunner: owns the KV cache and turns a ScheduledBatch into one forward pass and a sample.

Step inputs are flat tensors (input_ids, positions, slot_mapping, cu_seqlens / context_lens,
block_tables), built from Python lists with one asynchronous host-to-device copy each. With
`cuda_graph_max_batch`, decode steps replay CUDA graphs over static input buffers instead
(fastllm/engine/cuda_graphs.py); prefills, and decode batches a graph cannot hold, run eagerly.
Logits are computed only for the rows that sample.
"""

from __future__ import annotations

import math
import mmap

import torch

from fastllm.engine.cuda_graphs import DecodeGraphs, graph_blocks_per_seq
from fastllm.engine.sampler import Sampler, SamplerOutput
from fastllm.engine.scheduler import ScheduledBatch
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
    start-up does not write the whole pool (0.6 s for the default 1 GiB), and a session holds only
    the pages its blocks touch. Ordinary 4 KiB pages, on purpose: numpy's large allocations ask
    for 2 MiB pages, and with those every layer's first block made 4 MiB resident.
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
    """

    def __init__(
        self,
        model: LlamaForCausalLM,
        sampler: Sampler,
        *,
        num_blocks: int,
        block_size: int,
        cuda_graph_max_batch: int | None = None,
        max_model_len: int | None = None,
    ) -> None:
        config = model.config
        self.model = model
        self.sampler = sampler
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

    def _prepare_prefill(self, batch: ScheduledBatch) -> tuple[torch.Tensor, torch.Tensor, AttentionMetadata, list[int]]:
        input_ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        cu_q, cu_k = [0], [0]
        sample_rows: list[int] = []
        attends_to_cache = False
        for index, (seq, count) in enumerate(zip(batch.seqs, batch.num_new_tokens)):
            start = seq.num_computed_tokens
            end = start + count
            input_ids.extend(seq.token_ids[start:end])
            positions.extend(range(start, end))
            slots.extend(slots_of(seq.block_table, start, end, self.block_size))
            cu_q.append(cu_q[-1] + count)
            cu_k.append(cu_k[-1] + end)
            attends_to_cache |= start > 0
            if batch.samples[index]:
                sample_rows.append(cu_q[-1] - 1)
        block_tables = self._block_tables(batch) if attends_to_cache else None
        meta = AttentionMetadata(
            is_prefill=True,
            slot_mapping=self._tensor(slots, torch.int64),
            cu_seqlens_q=self._tensor(cu_q, torch.int32),
            cu_seqlens_k=self._tensor(cu_k, torch.int32),
            max_seqlen_q=max(batch.num_new_tokens),
            max_seqlen_k=max(b - a for a, b in zip(cu_k, cu_k[1:])),
            block_tables=block_tables,
        )
        return self._tensor(input_ids, torch.int64), self._tensor(positions, torch.int64), meta, sample_rows

    def _prepare_decode(self, batch: ScheduledBatch) -> tuple[torch.Tensor, torch.Tensor, AttentionMetadata]:
        size = self.block_size
        positions = [seq.num_tokens - 1 for seq in batch.seqs]
        slots = [seq.block_table[p // size] * size + p % size for seq, p in zip(batch.seqs, positions)]
        meta = AttentionMetadata(
            is_prefill=False,
            slot_mapping=self._tensor(slots, torch.int64),
            context_lens=self._tensor([p + 1 for p in positions], torch.int32),
            block_tables=self._block_tables(batch),
        )
        input_ids = [seq.token_ids[-1] for seq in batch.seqs]
        return self._tensor(input_ids, torch.int64), self._tensor(positions, torch.int64), meta

    def _block_tables(self, batch: ScheduledBatch) -> torch.Tensor:
        # Rows padded with block 0: padding is never read unmasked.
        width = max(len(seq.block_table) for seq in batch.seqs)
        return self._tensor([seq.block_table + [0] * (width - len(seq.block_table)) for seq in batch.seqs], torch.int32)

    @torch.inference_mode()
    def run(self, batch: ScheduledBatch) -> SamplerOutput:
        """Run one step; returns the sampled tokens of the sequences whose last token it computed, in batch order."""
        sample_rows = None
        if batch.is_prefill:
            input_ids, positions, meta, sample_rows = self._prepare_prefill(batch)
            hidden = self.model(input_ids, positions, meta, self.kv_cache)
        else:
            seqs, graphs = batch.seqs, self.decode_graphs
            tables = [seq.block_table for seq in seqs]
            if graphs is not None and graphs.fits(tables):
                hidden = graphs.run([seq.token_ids[-1] for seq in seqs], [seq.num_tokens - 1 for seq in seqs], tables)
            else:
                hidden = self.model(*self._prepare_decode(batch), self.kv_cache)
        sampling = batch.sampled_seqs
        if not sampling:
            return SamplerOutput([], [])
        if sample_rows is not None:
            hidden = hidden[self._tensor(sample_rows, torch.int64)]
        return self.sampler(self.model.compute_logits(hidden), sampling)

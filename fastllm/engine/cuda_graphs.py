"""CUDA graphs for decode steps: a whole forward pass replayed with one launch.

A decode step feeds one token per sequence, and once the block table has a fixed width its
inputs have fixed shapes for a given batch size. So the forward pass is captured once per batch
size of a ladder (1, 2, 4, 8, then steps of 8 up to 64 and of 16 beyond, up to the largest
batch) over preallocated input buffers, and each step replays the graph of the smallest captured
size that holds the batch: no Python per layer, no kernel-launch latency.

Padding rows (between the batch and its captured size) write nothing to the KV cache (slot -1)
and attend to a single key of block 0, so every kernel sees finite inputs; their outputs are
never read. Step inputs reach the GPU in two host-to-device copies from pinned staging buffers,
issued without waiting: the step's only host-device sync is the sampler reading its tokens.

Only ops that never read GPU data back to the host may be captured: the Triton backend qualifies,
the PyTorch reference ops (which read lengths with .tolist()) do not and always run eagerly.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

import numpy as np
import torch

from fastllm.model.backend import AttentionMetadata
from fastllm.model.llama import LlamaForCausalLM

# Backends whose decode path is free of host syncs, hence capturable.
GRAPH_SAFE_BACKENDS = frozenset({"triton"})
# Longest context a graph covers (vLLM's default `max_seq_len_to_capture`): the block table of
# a graph is this wide, and the decode kernel sizes its splits by that width, so a table sized
# for a 128k-token context would spread a short sequence's work over mostly empty splits.
# Batches holding a longer sequence run eagerly.
MAX_GRAPH_CONTEXT = 8192


def capture_batch_sizes(max_batch_size: int) -> list[int]:
    """The batch sizes to capture: 1, 2, 4, 8, 16, 24, ..., 64, 80, 96, ... up to `max_batch_size` (included)."""
    if isinstance(max_batch_size, bool) or not isinstance(max_batch_size, int) or max_batch_size < 1:
        raise ValueError(f"max_batch_size must be an int >= 1, got {max_batch_size!r}")
    ladder = [1, 2, 4, 8, *range(16, 65, 8), *range(80, max_batch_size + 1, 16)]
    return sorted({size for size in ladder if size < max_batch_size} | {max_batch_size})


def padded_batch_size(batch_size: int, sizes: Sequence[int]) -> int:
    """The smallest captured size (sizes ascending) that holds `batch_size` sequences."""
    index = bisect.bisect_left(sizes, batch_size)
    if batch_size < 1 or index == len(sizes):
        raise ValueError(f"batch size must be in [1, {sizes[-1]}] to replay a CUDA graph, got {batch_size}")
    return sizes[index]


def graph_blocks_per_seq(max_model_len: int, block_size: int, num_kv_blocks: int | None = None) -> int:
    """Block-table width of the graphs: enough for the longest sequence a graph covers (and no
    more than the pool's `num_kv_blocks`, when known)."""
    width = -(-min(max_model_len, MAX_GRAPH_CONTEXT) // block_size)
    return width if num_kv_blocks is None else min(width, num_kv_blocks)


def supports_cuda_graphs(model: LlamaForCausalLM) -> bool:
    """Whether decode steps of this model can be captured: on CUDA, with a sync-free backend whose
    kernels are compiled (the Triton interpreter runs them through host copies)."""
    if model.device.type != "cuda" or model.backend.name not in GRAPH_SAFE_BACKENDS:
        return False
    from fastllm.kernels._runtime import INTERPRETER  # loaded with the triton backend

    return not INTERPRETER


class DecodeInputs:
    """The static inputs of a decode step: device buffers that graphs read, and their host staging twins.

    The three int64 rows (token ids, positions, slots) live in one [3, max_batch] tensor and the
    int32 context lengths and block tables in one flat tensor, so a step uploads two buffers.
    """

    def __init__(self, max_batch_size: int, max_blocks_per_seq: int, block_size: int, device: torch.device) -> None:
        self.max_batch_size = max_batch_size
        self.max_blocks_per_seq = max_blocks_per_seq
        self.block_size = block_size
        self.device = device
        pinned = device.type == "cuda"
        self._host_longs = torch.zeros((3, max_batch_size), dtype=torch.int64, pin_memory=pinned)
        self._host_ints = torch.zeros(max_batch_size * (1 + max_blocks_per_seq), dtype=torch.int32, pin_memory=pinned)
        self._longs = torch.zeros_like(self._host_longs, device=device)
        self._ints = torch.zeros_like(self._host_ints, device=device)
        self.input_ids, self.positions, self.slot_mapping = self._longs.unbind(0)
        self.context_lens = self._ints[:max_batch_size]
        self.block_tables = self._ints[max_batch_size:].view(max_batch_size, max_blocks_per_seq)
        # numpy views of the staging buffers: filled with vectorized writes, no tensor per row.
        self._ids, self._positions, self._slots = self._host_longs.numpy()
        host_ints = self._host_ints.numpy()
        self._context_lens = host_ints[:max_batch_size]
        self._tables = host_ints[max_batch_size:].reshape(max_batch_size, max_blocks_per_seq)
        # Marks the end of the last upload: its staging rows must not be rewritten before.
        self._uploaded = torch.cuda.Event() if pinned else None

    def fill(
        self, token_ids: Sequence[int], positions: Sequence[int], block_tables: Sequence[Sequence[int]], size: int
    ) -> None:
        """Stage one step's inputs, pad rows up to `size` and upload them (asynchronously on CUDA).

        Row i: sequence i's last token at `positions[i]` (its length - 1), whose KV goes to the
        slot its block table gives that position.
        """
        count = len(token_ids)
        if not 1 <= count <= size <= self.max_batch_size:
            raise ValueError(f"need 1 <= batch ({count}) <= size ({size}) <= max_batch_size ({self.max_batch_size})")
        self._wait_for_upload()
        rows = np.arange(count)
        self._ids[:count] = token_ids
        self._positions[:count] = positions
        for row, table in enumerate(block_tables):
            if len(table) > self.max_blocks_per_seq:
                raise ValueError(
                    f"block table of row {row} has {len(table)} blocks, the graphs hold {self.max_blocks_per_seq}"
                )
            self._tables[row, : len(table)] = table
        position = self._positions[:count]
        self._slots[:count] = self._tables[rows, position // self.block_size] * self.block_size + position % self.block_size
        self._context_lens[:count] = position + 1
        self._pad(count, size)
        self._upload(size)

    def fill_padding(self, size: int) -> None:
        """Make the first `size` rows padding (for warm-up and capture)."""
        self._wait_for_upload()
        self._pad(0, size)
        self._upload(size)

    def _wait_for_upload(self) -> None:
        if self._uploaded is not None:
            self._uploaded.synchronize()  # normally long done: each step ends with the sampler's sync

    def _pad(self, start: int, end: int) -> None:
        self._ids[start:end] = 0
        self._positions[start:end] = 0
        self._slots[start:end] = -1  # write nothing
        self._context_lens[start:end] = 1  # attend to one key: block 0, offset 0
        self._tables[start:end, 0] = 0

    def _upload(self, size: int) -> None:
        ints = self.max_batch_size + size * self.max_blocks_per_seq  # context lengths, then `size` table rows
        self._longs.copy_(self._host_longs, non_blocking=True)
        self._ints[:ints].copy_(self._host_ints[:ints], non_blocking=True)
        if self._uploaded is not None:
            self._uploaded.record(torch.cuda.current_stream(self.device))

    def metadata(self, size: int) -> AttentionMetadata:
        """Decode metadata over the first `size` rows (views: graphs see later fills)."""
        return AttentionMetadata(
            is_prefill=False,
            slot_mapping=self.slot_mapping[:size],
            context_lens=self.context_lens[:size],
            block_tables=self.block_tables[:size],
        )


class DecodeGraphs:
    """Decode forward passes over static inputs, one CUDA graph per captured batch size.

    `run` pads a batch to the next captured size and replays its graph. Sizes not captured (none
    are, before `capture` or off CUDA) run the same padded forward eagerly, which lets the
    padding logic be tested anywhere.
    """

    def __init__(
        self,
        model: LlamaForCausalLM,
        kv_cache: torch.Tensor,
        *,
        max_batch_size: int,
        max_blocks_per_seq: int,
        block_size: int,
    ) -> None:
        self.model = model
        self.kv_cache = kv_cache
        self.batch_sizes = capture_batch_sizes(max_batch_size)
        self.inputs = DecodeInputs(max_batch_size, max_blocks_per_seq, block_size, model.device)
        self.hidden = torch.zeros(max_batch_size, model.config.hidden_size, dtype=model.dtype, device=model.device)
        self._graphs: dict[int, torch.cuda.CUDAGraph] = {}

    @property
    def max_batch_size(self) -> int:
        return self.batch_sizes[-1]

    @property
    def captured_sizes(self) -> list[int]:
        return sorted(self._graphs)

    def fits(self, block_tables: Sequence[Sequence[int]]) -> bool:
        """Whether a decode batch with these block tables can run here."""
        width = self.inputs.max_blocks_per_seq
        return len(block_tables) <= self.max_batch_size and all(len(table) <= width for table in block_tables)

    def _forward(self, size: int) -> None:
        inputs = self.inputs
        hidden = self.model(inputs.input_ids[:size], inputs.positions[:size], inputs.metadata(size), self.kv_cache)
        self.hidden[:size] = hidden

    @torch.inference_mode()
    def capture(self) -> None:
        """Capture a graph for every batch size, largest first so that smaller ones reuse its memory pool."""
        if self.model.device.type != "cuda":
            raise ValueError(f"CUDA graphs need a model on a CUDA device, got {self.model.device}")
        pool = None
        with torch.cuda.device(self.model.device):
            for size in reversed(self.batch_sizes):
                self.inputs.fill_padding(size)
                self._forward(size)  # warm-up: Triton compiles its kernels outside the capture
                torch.cuda.synchronize()
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=pool):
                    self._forward(size)
                pool = graph.pool() if pool is None else pool
                self._graphs[size] = graph
            torch.cuda.synchronize()

    def run(
        self, token_ids: Sequence[int], positions: Sequence[int], block_tables: Sequence[Sequence[int]]
    ) -> torch.Tensor:
        """Final hidden states [batch, hidden] of one decode step (a view, valid until the next run)."""
        size = padded_batch_size(len(token_ids), self.batch_sizes)
        self.inputs.fill(token_ids, positions, block_tables, size)
        graph = self._graphs.get(size)
        if graph is None:
            self._forward(size)
        else:
            with torch.cuda.device(self.model.device):
                graph.replay()
        return self.hidden[: len(token_ids)]

"""The KV pool's size: a memory budget, less what a model step needs besides the KV cache.

On a CPU the budget is a fixed `CPU_KV_CACHE_BYTES`. On CUDA the KV pool takes what is left of
`gpu_memory_utilization` of the free memory once this is held back: the activations of the largest prefill step (with the logits it samples) and, when decode
steps replay CUDA graphs, the graphs' private memory pool. Both are measured with dummy steps
on a one-block KV cache: a prefill of `max_num_batched_tokens` tokens, and an eager decode step
at the largest captured batch (its peak is what the graph pool keeps, since graphs are captured
largest first and the smaller ones reuse that pool). The sampler's few temporaries the size of
the logits are left to the (1 - gpu_memory_utilization) headroom.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from fastllm.engine.config import EngineConfig
from fastllm.engine.cuda_graphs import DecodeGraphs
from fastllm.engine.model_runner import kv_cache_bytes_per_block
from fastllm.model.backend import AttentionMetadata
from fastllm.model.llama import LlamaForCausalLM

# KV pool budget on CPU, where "free memory" is shared with everything else on the machine.
CPU_KV_CACHE_BYTES = 1 << 30


def peak_bytes(run: Callable[[], object], device: torch.device) -> int:
    """Peak CUDA memory `run` allocates above what is allocated before it (its tensors freed after)."""
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    run()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - before


def dummy_prefill(
    model: LlamaForCausalLM, kv_cache: torch.Tensor, *, max_prefill_tokens: int, max_model_len: int,
    max_sampled_rows: int,
) -> Callable[[], None]:
    """The largest prefill step: `max_prefill_tokens` tokens in sequences of at most `max_model_len`,
    then the logits of `max_sampled_rows` rows. It writes nothing to `kv_cache` (slots -1)."""
    device = model.device
    lengths = [max_model_len] * (max_prefill_tokens // max_model_len)
    if max_prefill_tokens % max_model_len:
        lengths.append(max_prefill_tokens % max_model_len)
    cu_seqlens = torch.tensor([0, *lengths], device=device).cumsum(0).to(torch.int32)
    meta = AttentionMetadata(
        is_prefill=True,
        slot_mapping=torch.full((max_prefill_tokens,), -1, dtype=torch.int64, device=device),
        cu_seqlens_q=cu_seqlens,
        cu_seqlens_k=cu_seqlens,
        max_seqlen_q=max(lengths),
        max_seqlen_k=max(lengths),
    )
    input_ids = torch.zeros(max_prefill_tokens, dtype=torch.int64, device=device)
    positions = torch.cat([torch.arange(n, device=device) for n in lengths])

    def step() -> None:
        hidden = model(input_ids, positions, meta, kv_cache)
        model.compute_logits(hidden[:max_sampled_rows])

    return step


def dummy_decode(graphs: DecodeGraphs) -> Callable[[], None]:
    """A decode step of the largest batch `graphs` holds, every sequence one token long in block 0."""
    count = graphs.max_batch_size
    return lambda: graphs.run([0] * count, [0] * count, [[0]] * count)


@torch.inference_mode()
def step_memory_reserve(
    model: LlamaForCausalLM,
    *,
    block_size: int,
    max_prefill_tokens: int,
    max_model_len: int,
    max_sampled_rows: int,
    graph_batch_size: int | None,
    graph_blocks_per_seq: int,
) -> int:
    """Bytes of GPU memory to hold back from the KV pool (see the module docstring).

    graph_batch_size: the largest decode batch captured in a CUDA graph, or None without graphs.
    """
    config = model.config
    kv_cache = torch.zeros(  # one block: the dummy steps need a cache of the right shape, not room
        config.num_hidden_layers, 2, 1, block_size, config.num_key_value_heads, config.head_dim,
        dtype=model.dtype, device=model.device,
    )
    prefill = dummy_prefill(
        model, kv_cache, max_prefill_tokens=max_prefill_tokens, max_model_len=max_model_len,
        max_sampled_rows=max_sampled_rows,
    )
    reserve = peak_bytes(prefill, model.device)
    if graph_batch_size is not None:
        graphs = DecodeGraphs(
            model, kv_cache, max_batch_size=graph_batch_size, max_blocks_per_seq=graph_blocks_per_seq,
            block_size=block_size,
        )
        reserve += peak_bytes(dummy_decode(graphs), model.device)
    return reserve


def num_kv_blocks(config: EngineConfig, model: LlamaForCausalLM, reserve: Callable[[], int]) -> int:
    """The pool size: `config.num_kv_blocks` if given, else the memory budget divided by the bytes per block.

    On CUDA the budget is `gpu_memory_utilization` of the free memory less `reserve()` (see
    `step_memory_reserve`), called only when the pool is sized here. On a CPU it is
    `CPU_KV_CACHE_BYTES` for the whole model: tensor-parallel ranks share the host's memory.
    """
    if config.num_kv_blocks is not None:
        return config.num_kv_blocks
    per_block = kv_cache_bytes_per_block(model.config, config.block_size, model.dtype)
    if model.device.type == "cuda":
        reserved = reserve()
        torch.cuda.empty_cache()  # the measuring steps' cached blocks count as free below
        free, _total = torch.cuda.mem_get_info(model.device)
        budget = int(free * config.gpu_memory_utilization) - reserved
    else:
        budget = CPU_KV_CACHE_BYTES // config.tensor_parallel_size
    blocks = budget // per_block
    if blocks < 1:
        raise ValueError(
            f"no room for the KV cache: {max(budget, 0)} bytes available, one block of {config.block_size} tokens "
            f"needs {per_block}; free memory, raise gpu_memory_utilization or pass num_kv_blocks"
        )
    return blocks

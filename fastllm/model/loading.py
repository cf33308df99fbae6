"""`load_model`: a loaded checkpoint -> a ready LlamaForCausalLM on the requested device and dtype."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from fastllm.model import host_heap
from fastllm.model.backend import Backend
from fastllm.model.llama import LlamaForCausalLM

from fastllm.distributed.group import TensorParallel

if TYPE_CHECKING:  # the loaders build on fastllm.model (ModelConfig), not the other way round
    from fastllm.distributed.group import TensorParallelGroup
    from fastllm.loader import Checkpoint


def load_model(
    checkpoint: Checkpoint,
    *,
    dtype: torch.dtype,
    device: torch.device | str,
    backend: Backend,
    group: TensorParallelGroup | None = None,
) -> LlamaForCausalLM:
    """The model of `checkpoint` (from `fastllm.loader.load` or `load_checkpoint`), in eval mode.

    A checkpoint loaded for one tensor-parallel rank (`checkpoint.shard`) needs that rank's `group`.
    """
    if (checkpoint.shard is None) != (group is None):
        raise ValueError("a checkpoint loaded with a shard needs its rank's group, and only such a checkpoint takes one")
    parallel = None if group is None else TensorParallel(group, checkpoint.shard)
    model = LlamaForCausalLM(checkpoint.config, backend, dtype=dtype, device=device, parallel=parallel)
    model.load_weights(checkpoint.weights)
    if model.device.type == "cpu":
        host_heap.keep_step_buffers()
    host_heap.return_freed_memory()
    return model.eval()

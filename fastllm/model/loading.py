"""`load_model`: a loaded checkpoint -> a ready LlamaForCausalLM on the requested device and dtype."""

from __future__ import annotations

import ctypes
import ctypes.util
from typing import TYPE_CHECKING

import torch

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
    _return_freed_heap()
    return model.eval()


def _return_freed_heap() -> None:
    """Give the C heap's free memory back to the system, where the C library can (glibc).

    Loading frees tens of MB it used for a while (weights decoded or un-permuted, the inputs and
    outputs of the matmul timings): glibc keeps such memory mapped once its allocation threshold
    has grown, and a CPU process's resident memory would then carry it for its whole life.
    """
    library = ctypes.util.find_library("c")
    trim = getattr(ctypes.CDLL(library), "malloc_trim", None) if library else None
    if trim is not None:
        trim(0)

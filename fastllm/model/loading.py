"""`load_model`: a loaded checkpoint -> a ready LlamaForCausalLM on the requested device and dtype."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from fastllm.model.backend import Backend
from fastllm.model.llama import LlamaForCausalLM

if TYPE_CHECKING:  # the loaders build on fastllm.model (ModelConfig), not the other way round
    from fastllm.loader import Checkpoint


def load_model(
    checkpoint: Checkpoint,
    *,
    dtype: torch.dtype,
    device: torch.device | str,
    backend: Backend,
) -> LlamaForCausalLM:
    """The model of `checkpoint` (from `fastllm.loader.load` or `load_checkpoint`), in eval mode."""
    model = LlamaForCausalLM(checkpoint.config, backend, dtype=dtype, device=device)
    model.load_weights(checkpoint.weights)
    return model.eval()

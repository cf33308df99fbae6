"""`load_model`: a checkpoint on disk -> a ready LlamaForCausalLM on the requested device and dtype."""

from __future__ import annotations

import os

import torch

from fastllm.loader import default_model_path, load_checkpoint
from fastllm.model.backend import Backend
from fastllm.model.config import ModelConfig
from fastllm.model.linear import encoded_types
from fastllm.model.llama import LlamaForCausalLM


def load_model(
    path: str | os.PathLike | None,
    *,
    dtype: torch.dtype,
    device: torch.device | str,
    backend: Backend,
) -> tuple[LlamaForCausalLM, ModelConfig]:
    """Load a GGUF file or HF folder (None = the default SmolLM2-135M-Instruct) into a model in eval mode.

    GGUF matrices the model reads encoded (float32 on a CPU with backend "cpu") stay in the file's
    memory mapping; everything else is decoded once, straight to the model's dtype.
    """
    keep = encoded_types(backend.name, torch.device(device), dtype)
    checkpoint = load_checkpoint(default_model_path() if path is None else path, keep_encoded=keep)
    model = LlamaForCausalLM(checkpoint.config, backend, dtype=dtype, device=device)
    model.load_weights(checkpoint.weights)
    return model.eval(), checkpoint.config

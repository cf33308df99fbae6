"""The Llama-family decoder and the backend seam its ops go through."""

from __future__ import annotations

import importlib
from typing import Any

# Names resolve lazily: the tokenizer reaches ModelConfig through fastllm.loader, and must not
# import torch (which every other module here does) on the way.
_EXPORTS = {
    "AttentionMetadata": "fastllm.model.backend",
    "Backend": "fastllm.model.backend",
    "get_backend": "fastllm.model.backend",
    "resolve_backend": "fastllm.model.backend",
    "ModelConfig": "fastllm.model.config",
    "LlamaForCausalLM": "fastllm.model.llama",
    "load_model": "fastllm.model.loading",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'fastllm.model' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)

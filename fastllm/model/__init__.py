"""The Llama-family decoder and the backend seam its ops go through."""

from __future__ import annotations

from fastllm._lazy import lazy_exports

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

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

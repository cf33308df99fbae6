"""fastllm: a small, fast LLM inference engine.

Public API (see README.md):
    generate, LLM, SamplingParams, RequestOutput, CompletionOutput  -- text generation
    Tokenizer                                     -- the C++ byte-level BPE tokenizer
    default_model_path                            -- the bundled SmolLM2-135M-Instruct GGUF file

Names are imported lazily so that, e.g., using only the tokenizer does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "generate": "fastllm.api",
    "LLM": "fastllm.api",
    "RequestOutput": "fastllm.api",
    "CompletionOutput": "fastllm.api",
    "SamplingParams": "fastllm.engine.sampling_params",
    "Tokenizer": "fastllm.tokenizer",
    "default_model_path": "fastllm.loader.default_model",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'fastllm' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)

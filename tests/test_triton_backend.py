"""backend="triton" (the kernels, through the interpreter) generates what backend="torch" does.

The default model (SmolLM2-135M) is built twice from one loaded checkpoint, once per backend,
and each drives an engine through a batched prefill of two prompts of different lengths (one
longer than a KV-cache block) and a few decode steps. Greedy tokens must match exactly.
"""

from __future__ import annotations

import pytest
import torch

from fastllm.engine.config import EngineConfig
from fastllm.engine.llm_engine import LLMEngine
from fastllm.engine.sampling_params import SamplingParams
from fastllm.loader import Checkpoint, load_checkpoint
from fastllm.loader.default_model import default_model_path
from fastllm.model import LlamaForCausalLM, get_backend
from fastllm.tokenizer import Tokenizer
from tests.engine_testing import generate

NEW_TOKENS = 3


@pytest.fixture(scope="module")
def checkpoint() -> Checkpoint:
    return load_checkpoint(default_model_path())


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.from_gguf(default_model_path())


def _greedy(checkpoint: Checkpoint, tokenizer: Tokenizer, backend: str, prompts: list[list[int]]) -> list[list[int]]:
    model = LlamaForCausalLM(checkpoint.config, get_backend(backend), dtype=torch.float32, device="cpu")
    model.load_weights(checkpoint.weights)
    config = EngineConfig(device="cpu", dtype="float32", backend=backend, block_size=16, num_kv_blocks=8)
    engine = LLMEngine(model.eval(), tokenizer, config)
    return [o.token_ids for o in generate(engine, prompts, SamplingParams(max_tokens=NEW_TOKENS, temperature=0.0))]


def test_triton_backend_generates_the_torch_backends_greedy_tokens(checkpoint: Checkpoint, tokenizer: Tokenizer) -> None:
    prompts = [
        tokenizer.encode("The capital of France is"),
        tokenizer.encode("Here is a short list of fruits that are red or green: apples, cherries,"),
    ]
    assert len(prompts[1]) > 16  # its prefill spans two KV-cache blocks
    expected = _greedy(checkpoint, tokenizer, "torch", prompts)
    assert _greedy(checkpoint, tokenizer, "triton", prompts) == expected
    assert all(len(tokens) == NEW_TOKENS for tokens in expected)

"""Helpers for the engine tests: a tiny random Llama, a one-character-per-token tokenizer, and a
cache-free greedy reference to hold the paged engine against."""

from __future__ import annotations

import torch

from fastllm.engine.config import EngineConfig
from fastllm.engine.llm_engine import LLMEngine
from fastllm.engine.outputs import RequestOutput
from fastllm.engine.sampling_params import SamplingParams
from fastllm.model import AttentionMetadata, LlamaForCausalLM, ModelConfig, get_backend
from fastllm.model.weights import llama_weight_shapes

TINY_VOCAB = 101
TINY_EOS = 2


def tiny_model(
    seed: int = 0, *, backend: str = "torch", head_dim: int = 8, max_position_embeddings: int = 256
) -> LlamaForCausalLM:
    """A 2-layer GQA Llama with random weights (float32)."""
    config = ModelConfig(
        vocab_size=TINY_VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=head_dim, max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=True, eos_token_id=TINY_EOS,
    )
    model = LlamaForCausalLM(config, get_backend(backend))
    generator = torch.Generator().manual_seed(seed)
    weights = {}
    for name, shape in llama_weight_shapes(config).items():
        noise = torch.randn(shape, generator=generator)
        weights[name] = 1.0 + 0.1 * noise if name.endswith("norm.weight") else 0.5 * noise
    model.load_weights(weights)
    return model.eval()


class _CharStream:
    def __init__(self, tokenizer: CharTokenizer) -> None:
        self.tokenizer = tokenizer

    def step(self, token_id: int) -> str:
        return self.tokenizer.decode([token_id])

    def flush(self) -> str:
        return ""


class CharTokenizer:
    """Token i is the letter chr(97 + i % 26); EOS decodes to nothing."""

    eos_id = TINY_EOS
    bos_id = None
    vocab_size = TINY_VOCAB

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        return "".join("" if i == TINY_EOS else chr(97 + i % 26) for i in ids)

    def stream_decoder(self, *, skip_special_tokens: bool = False) -> _CharStream:
        return _CharStream(self)


def tiny_engine(model: LlamaForCausalLM, **config) -> LLMEngine:
    config.setdefault("num_kv_blocks", 64)
    config.setdefault("block_size", 4)
    return LLMEngine(model, CharTokenizer(), EngineConfig(**config))


def run_to_completion(engine: LLMEngine, max_steps: int = 10_000) -> dict[str, RequestOutput]:
    """Step until idle (failing instead of hanging); returns the final output of every request
    that finished meanwhile, by request id."""
    finals: dict[str, RequestOutput] = {}
    for _ in range(max_steps):
        if not engine.has_unfinished_requests():
            return finals
        for output in engine.step():
            if output.finished:
                finals[output.request_id] = output
    raise AssertionError(f"engine still busy after {max_steps} steps")


def generate(
    engine: LLMEngine, prompts: list[list[int]], params: SamplingParams | list[SamplingParams]
) -> list[RequestOutput]:
    """Add every prompt, run to completion; final outputs in prompt order."""
    params = params if isinstance(params, list) else [params] * len(prompts)
    request_ids = [engine.add_request(p, sp) for p, sp in zip(prompts, params)]
    finals = run_to_completion(engine)
    return [finals[request_id] for request_id in request_ids]


@torch.inference_mode()
def dense_greedy(model: LlamaForCausalLM, prompt: list[int], steps: int) -> list[int]:
    """Greedy tokens by recomputing the whole sequence every step (no cache reuse at all)."""
    config = model.config
    ids = list(prompt)
    for _ in range(steps):
        length = len(ids)
        cache = torch.zeros(
            config.num_hidden_layers, 2, length, 1, config.num_key_value_heads, config.head_dim, dtype=model.dtype
        )
        lengths = torch.tensor([0, length], dtype=torch.int32)
        meta = AttentionMetadata(
            is_prefill=True, slot_mapping=torch.arange(length), cu_seqlens_q=lengths, cu_seqlens_k=lengths,
            max_seqlen_q=length, max_seqlen_k=length,
        )
        hidden = model(torch.tensor(ids), torch.arange(length), meta, cache)
        ids.append(int(model.compute_logits(hidden[-1:]).argmax()))
    return ids[len(prompt) :]


def random_prompts(lengths: list[int], seed: int = 0) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(3, TINY_VOCAB, (n,), generator=generator).tolist() for n in lengths]

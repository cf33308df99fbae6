"""Correctness on a CUDA GPU: the triton backend against the torch backend, on the default model.

- Greedy in float32: the triton backend, with CUDA-graph decode and with `enforce_eager=True`,
  makes the same tokens as the torch backend (the plain PyTorch reference ops) on every prompt.
- Logits in bfloat16: on the prompts' prefill, each backend's bf16 logits against the torch
  backend's float32 logits (max error relative to the largest |logit|, top-1 agreement). The
  triton backend passes when its error is at most twice the reference path's own bf16 error.

    python -m benchmarks.gpu_correctness     (CUDA only; `python -m benchmarks.run --suites correctness`)

It needs the C++ tokenizer (to encode the prompts) and the default model: `benchmarks.run`
records it as skipped where either is missing.
"""

from __future__ import annotations

import gc
import json
from typing import Any

import torch

from fastllm import LLM, SamplingParams, Tokenizer, default_model_path
from fastllm.loader import load_checkpoint
from fastllm.model import AttentionMetadata, get_backend, load_model

NEW_TOKENS = 48
KV_BLOCKS = 512  # plenty for the prompts, small enough that several engines fit side by side
TEXTS = (
    "The quick brown fox jumps over the lazy dog. Then it",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    "In 1905, Albert Einstein published four papers that",
    "Paged attention stores the key-value cache in fixed-size blocks so that",
    "Liste des capitales européennes : Paris, Berlin,",
    "Q: What is the boiling point of water at sea level?\nA:",
    "Once upon a time, in a kingdom by the sea, there lived",
    "SELECT name, COUNT(*) FROM orders GROUP BY",
)


def _prompts() -> list[list[int]]:
    tokenizer = Tokenizer.from_gguf(default_model_path())
    return [tokenizer.encode(text) for text in TEXTS]


def _free() -> None:
    gc.collect()
    torch.cuda.empty_cache()


def _greedy(prompts: list[list[int]], backend: str, *, enforce_eager: bool = False) -> list[list[int]]:
    llm = LLM(backend=backend, dtype="float32", device="cuda", num_kv_blocks=KV_BLOCKS, max_num_seqs=len(prompts),
              enforce_eager=enforce_eager)
    params = SamplingParams(temperature=0, max_tokens=NEW_TOKENS, ignore_eos=True)
    tokens = [o.token_ids for o in llm.generate(prompts, params, use_tqdm=False)]
    del llm
    _free()
    return tokens


def _agreement(candidate: list[list[int]], reference: list[list[int]]) -> dict[str, Any]:
    first_differences = [next((i for i, (a, b) in enumerate(zip(c, r)) if a != b), None)
                         for c, r in zip(candidate, reference)]
    return {
        "identical": sum(d is None for d in first_differences),
        "prompts": len(reference),
        "first_difference_positions": [d for d in first_differences if d is not None],
        "passed": all(d is None for d in first_differences),
    }


@torch.inference_mode()
def _prefill_logits(prompts: list[list[int]], backend: str, dtype: torch.dtype) -> list[torch.Tensor]:
    """float32 logits [len, vocab] of every prompt position, one contiguous prefill per prompt."""
    model = load_model(load_checkpoint(default_model_path()), dtype=dtype, device=torch.device("cuda"),
                       backend=get_backend(backend))
    config = model.config
    logits = []
    for prompt in prompts:
        length = len(prompt)
        # One token per block: the step writes its keys and values, and attends to them contiguously.
        kv_cache = torch.zeros(config.num_hidden_layers, 2, length, 1, config.num_key_value_heads, config.head_dim,
                               dtype=dtype, device="cuda")
        cu = torch.tensor([0, length], dtype=torch.int32, device="cuda")
        meta = AttentionMetadata(is_prefill=True, slot_mapping=torch.arange(length, device="cuda"), cu_seqlens_q=cu,
                                 cu_seqlens_k=cu, max_seqlen_q=length, max_seqlen_k=length)
        hidden = model(torch.tensor(prompt, device="cuda"), torch.arange(length, device="cuda"), meta, kv_cache)
        logits.append(model.compute_logits(hidden).cpu())
    del model
    _free()
    return logits


def _logits_error(candidate: list[torch.Tensor], reference: list[torch.Tensor]) -> dict[str, float]:
    a, b = torch.cat(candidate).double(), torch.cat(reference).double()
    return {
        "max_relative_error": ((a - b).abs().max() / b.abs().max()).item(),
        "top1_agreement": (a.argmax(-1) == b.argmax(-1)).double().mean().item(),
    }


def run() -> dict[str, Any]:
    """Both checks; every entry has `passed`."""
    if not torch.cuda.is_available():
        raise ValueError("the GPU correctness checks need a CUDA device")
    prompts = _prompts()
    reference_tokens = _greedy(prompts, "torch")
    greedy = {
        "new_tokens": NEW_TOKENS,
        "triton_cuda_graphs_vs_torch": _agreement(_greedy(prompts, "triton"), reference_tokens),
        "triton_eager_vs_torch": _agreement(_greedy(prompts, "triton", enforce_eager=True), reference_tokens),
    }
    reference_logits = _prefill_logits(prompts, "torch", torch.float32)
    torch_bf16 = _logits_error(_prefill_logits(prompts, "torch", torch.bfloat16), reference_logits)
    triton_bf16 = _logits_error(_prefill_logits(prompts, "triton", torch.bfloat16), reference_logits)
    logits = {
        "reference": "torch backend, float32",
        "torch_bf16": torch_bf16,
        "triton_bf16": triton_bf16,
        "passed": triton_bf16["max_relative_error"] <= 2 * torch_bf16["max_relative_error"],
    }
    return {"model": default_model_path(), "greedy_float32": greedy, "logits_bfloat16": logits,
            "passed": greedy["triton_cuda_graphs_vs_torch"]["passed"] and greedy["triton_eager_vs_torch"]["passed"]
            and logits["passed"]}


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))

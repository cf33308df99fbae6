"""EngineConfig: every engine option, its default and its meaning, in one place."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from typing import Any

import torch

DEFAULT_MAX_NUM_BATCHED_TOKENS = 4096
MAX_BLOCK_SIZE = 256


def _positive_int(name: str, value: object, *, optional: bool = False) -> None:
    if optional and value is None:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be an int >= 1{' or None' if optional else ''}, got {value!r}")


@dataclass(frozen=True)
class EngineConfig:
    """The options of `fastllm.LLM(model, **options)` and `LLMEngine.from_config`; checked on construction.

    Attributes:
        model: a GGUF file or an HF folder (config.json + *.safetensors + tokenizer.json);
            None = the bundled SmolLM2-135M-Instruct.
        device: "auto" (CUDA if available, else CPU), "cpu", "cuda" or "cuda:N".
        dtype: "auto" (bfloat16 on CUDA, float32 on CPU), "float32", "bfloat16" or "float16".
        backend: "auto" (triton on CUDA, cpu on a CPU), "torch" (the PyTorch reference ops),
            "triton" (the Triton kernels) or "cpu" (the reference ops with C++ decode attention,
            RMSNorm and rotary).
        block_size: tokens per KV cache block (a power of two).
        num_kv_blocks: KV pool size in blocks; None = sized from memory: `gpu_memory_utilization`
            of the free GPU memory, or 1 GiB on CPU (shared by the tensor-parallel ranks).
        max_num_seqs: most sequences running together.
        max_num_batched_tokens: most tokens per model step; None = 4096. A step holds one decode
            token of every running sequence first, then prompt chunks up to this budget (longer
            prompts are prefilled over several steps).
        max_model_len: longest prompt + generation; None = the model's context length.
        enable_prefix_caching: reuse the KV cache of prompt prefixes seen before (which also lets
            the samples of a request with SamplingParams.n > 1 share their prompt's blocks).
        gpu_memory_utilization: fraction of free GPU memory the KV cache may take, together with
            what the model steps need besides it (activations, CUDA graphs), measured at start-up.
        enforce_eager: never replay CUDA graphs. By default, on CUDA with the triton backend,
            pure decode steps replay graphs captured at start-up for batch sizes 1, 2, 4, 8, 16, ...
            up to the largest decode batch, min(max_num_seqs, max_num_batched_tokens) (no Python
            or kernel-launch overhead per step; their memory is held back from the KV pool).
        tensor_parallel_size: ranks the model is split over (Megatron-style: attention heads and
            MLP features, vocabulary for the embedding and lm_head), one process each: this one
            and N-1 it spawns; on CUDA one device per rank (NCCL), on a CPU processes sharing its
            cores (gloo). It must divide the query heads, and divide the KV heads or be a multiple
            of them (KV heads are then replicated).
    """

    model: str | os.PathLike | None = None
    device: str | torch.device = "auto"
    dtype: str | torch.dtype = "auto"
    backend: str = "auto"
    block_size: int = 16
    num_kv_blocks: int | None = None
    max_num_seqs: int = 256
    max_num_batched_tokens: int | None = None
    max_model_len: int | None = None
    enable_prefix_caching: bool = True
    gpu_memory_utilization: float = 0.9
    enforce_eager: bool = False
    tensor_parallel_size: int = 1

    def __post_init__(self) -> None:
        _positive_int("block_size", self.block_size)
        if self.block_size > MAX_BLOCK_SIZE or self.block_size & (self.block_size - 1):
            raise ValueError(f"block_size must be a power of two in [1, {MAX_BLOCK_SIZE}], got {self.block_size}")
        _positive_int("num_kv_blocks", self.num_kv_blocks, optional=True)
        _positive_int("max_num_seqs", self.max_num_seqs)
        _positive_int("max_num_batched_tokens", self.max_num_batched_tokens, optional=True)
        _positive_int("max_model_len", self.max_model_len, optional=True)
        _positive_int("tensor_parallel_size", self.tensor_parallel_size)
        for name in ("enable_prefix_caching", "enforce_eager"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")
        u = self.gpu_memory_utilization
        if isinstance(u, bool) or not isinstance(u, (int, float)) or not 0 < u <= 1:
            raise ValueError(f"gpu_memory_utilization must be a float in (0, 1], got {u!r}")

    @property
    def token_budget(self) -> int:
        """max_num_batched_tokens with its default filled in."""
        return self.max_num_batched_tokens or DEFAULT_MAX_NUM_BATCHED_TOKENS


ENGINE_OPTIONS = tuple(field.name for field in fields(EngineConfig) if field.name != "model")


def engine_config(options: dict[str, Any]) -> EngineConfig:
    """EngineConfig(**options), with a TypeError naming the valid options for an unknown one."""
    unknown = sorted(options.keys() - set(ENGINE_OPTIONS) - {"model"})
    if unknown:
        raise TypeError(f"unknown engine option {', '.join(unknown)}: the options are {', '.join(ENGINE_OPTIONS)}")
    return EngineConfig(**options)

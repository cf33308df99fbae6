"""What a loader returns (`Checkpoint`) and how it fails (`CheckpointError`)."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fastllm.model.config import ModelConfig

if TYPE_CHECKING:  # annotations only: the tokenizer reads GGUF headers through this package without torch
    import torch

    from fastllm.distributed.sharding import ModelShard

# What a loader takes to load one tensor-parallel rank's part: the whole model's config -> that part.
ShardFor = Callable[[ModelConfig], "ModelShard"]


class CheckpointError(ValueError):
    """A model file or folder that cannot be loaded; the message names the path and the problem."""

    def __init__(self, path: str | os.PathLike, problem: str) -> None:
        super().__init__(f"{os.fspath(path)}: {problem}")
        self.path = os.fspath(path)
        self.problem = problem


@dataclass
class Checkpoint:
    """A model's configuration and weights, independent of the file format they came from.

    `config` is the whole model's, also when `shard` says the weights are one rank's part.
    `weights` use HF LlamaForCausalLM names ("model.embed_tokens.weight", "model.layers.{i}.self_attn.q_proj.weight",
    ..., "lm_head.weight" unless tied) in float32 (dequantized) or the file's own float dtype;
    a GGUF file's llama3 rope factors come as "rope_freqs" [head_dim // 2].
    """

    config: ModelConfig
    weights: dict[str, torch.Tensor]
    path: str
    format: str  # "gguf" | "hf"
    # Loaded for one tensor-parallel rank: `weights` are its parts (fastllm.distributed.sharding).
    shard: ModelShard | None = None

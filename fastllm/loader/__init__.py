"""Model loading: a GGUF file or a Hugging Face folder -> `Checkpoint` (ModelConfig + HF-named weights),
or with `load` everything the engine needs from it (`ModelFiles`: also the tokenizer and the prompt format)."""

from __future__ import annotations

import os
from collections.abc import Collection
from typing import TYPE_CHECKING

from fastllm.loader.checkpoint import Checkpoint, CheckpointError, ShardFor
from fastllm.loader.default_model import default_model_path
from fastllm.loader.model_files import ModelFiles, load, model_location
from fastllm.loader.prompt_format import PromptFormat

if TYPE_CHECKING:
    from fastllm.ggml_types import GGMLType

__all__ = [
    "Checkpoint", "CheckpointError", "ModelFiles", "PromptFormat", "default_model_path", "load", "load_checkpoint",
]


def load_checkpoint(
    path: str | os.PathLike,
    *,
    keep_encoded: Collection[GGMLType] = (),
    shard: ShardFor | None = None,
) -> Checkpoint:
    """Load a model from a GGUF file or an HF folder (config.json + *.safetensors).

    GGUF matrices of a type in `keep_encoded` stay in their encoding (`QuantizedTensor`); every
    other weight comes as a float tensor (see `Checkpoint`). With `shard` (the whole model's config
    -> a `fastllm.distributed.sharding.ModelShard`), the weights are that tensor-parallel rank's
    parts, each tensor cut as soon as it is read.

    Raises FileNotFoundError for a path that does not exist and CheckpointError (a ValueError
    naming the path) for anything that cannot be loaded.
    """
    # The loaders import torch; the tokenizer, which reads GGUF headers through this package, must not.
    from fastllm.loader.gguf_loader import load_gguf
    from fastllm.loader.hf_loader import load_hf_folder

    location = model_location(path)
    if location.is_dir():
        return load_hf_folder(location, shard=shard)
    return load_gguf(location, keep_encoded=keep_encoded, shard=shard)

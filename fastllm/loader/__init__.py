"""Model loading: a GGUF file or a Hugging Face folder -> `Checkpoint` (ModelConfig + HF-named weights)."""

from __future__ import annotations

import os
from collections.abc import Collection
from pathlib import Path
from typing import TYPE_CHECKING

from fastllm.loader.checkpoint import Checkpoint, CheckpointError
from fastllm.loader.default_model import default_model_path
from fastllm.loader.gguf_file import GGUF_MAGIC

if TYPE_CHECKING:
    from gguf import GGMLQuantizationType

__all__ = ["Checkpoint", "CheckpointError", "default_model_path", "load_checkpoint"]


def load_checkpoint(path: str | os.PathLike, *, keep_encoded: Collection[GGMLQuantizationType] = ()) -> Checkpoint:
    """Load a model from a GGUF file or an HF folder (config.json + *.safetensors).

    GGUF matrices of a type in `keep_encoded` stay in their encoding (`QuantizedTensor`); every
    other weight comes as a float tensor (see `Checkpoint`).

    Raises FileNotFoundError for a path that does not exist and CheckpointError (a ValueError
    naming the path) for anything that cannot be loaded.
    """
    # The loaders import torch; the tokenizer, which reads GGUF headers through this package, must not.
    from fastllm.loader.gguf_loader import load_gguf
    from fastllm.loader.hf_loader import load_hf_folder

    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    location = Path(path)
    if location.is_dir():
        return load_hf_folder(location)
    if not location.is_file():
        raise FileNotFoundError(f"model path does not exist: {os.fspath(path)}")
    with open(location, "rb") as f:
        magic = f.read(len(GGUF_MAGIC))
    if magic == GGUF_MAGIC:
        return load_gguf(location, keep_encoded=keep_encoded)
    if location.suffix == ".safetensors" or location.name == "config.json":
        raise CheckpointError(location, "pass the model folder (config.json + *.safetensors), not one of its files")
    raise CheckpointError(location, "not a GGUF file (bad magic) and not a Hugging Face model folder")

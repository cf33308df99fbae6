"""`load(path)`: one pass over a model file or folder for everything the engine needs from it.

A GGUF file's header is parsed once and gives the config, the weights, the tokenizer and the
prompt format; an HF folder's config.json + *.safetensors give the config and the weights, its
tokenizer.json + tokenizer_config.json (read once each) the tokenizer, and those with
generation_config.json the prompt format.
"""

from __future__ import annotations

import os
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from fastllm.loader.checkpoint import Checkpoint, CheckpointError, ShardFor
from fastllm.loader.default_model import default_model_path
from fastllm.loader.gguf_file import GGUF_MAGIC
from fastllm.loader.prompt_format import PromptFormat, gguf_prompt_format, hf_prompt_format

if TYPE_CHECKING:
    from fastllm.ggml_types import GGMLType

    from fastllm.model.config import ModelConfig
    from fastllm.tokenizer import Tokenizer


def model_location(path: str | os.PathLike) -> Path:
    """`path` checked to be an HF folder (a directory) or a GGUF file (by its magic).

    Raises TypeError for a non-path, FileNotFoundError for a path that does not exist and
    CheckpointError for a file that is not GGUF (with a hint for an HF folder's own files).
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    location = Path(path)
    if location.is_dir():
        return location
    if not location.is_file():
        raise FileNotFoundError(f"model path does not exist: {os.fspath(path)}")
    with open(location, "rb") as f:
        magic = f.read(len(GGUF_MAGIC))
    if magic == GGUF_MAGIC:
        return location
    if location.suffix == ".safetensors" or location.name == "config.json":
        raise CheckpointError(location, "pass the model folder (config.json + *.safetensors), not one of its files")
    raise CheckpointError(location, "not a GGUF file (bad magic) and not a Hugging Face model folder")


@dataclass
class ModelFiles:
    """What a model file or folder holds: weights and config, tokenizer, prompt format."""

    checkpoint: Checkpoint
    tokenizer: Tokenizer
    prompt_format: PromptFormat

    @property
    def config(self) -> ModelConfig:
        return self.checkpoint.config


def load(
    path: str | os.PathLike | None = None,
    *,
    keep_encoded: Collection[GGMLType] = (),
    shard: ShardFor | None = None,
) -> ModelFiles:
    """Load a GGUF file or an HF folder (None = the bundled SmolLM2-135M-Instruct) in one pass.

    GGUF matrices of a type in `keep_encoded` stay in their encoding (as `load_checkpoint`'s);
    `shard` loads one tensor-parallel rank's part of the weights (as `load_checkpoint`'s).
    Errors as `load_checkpoint`'s; an HF folder must also hold a tokenizer.json.
    """
    # Imported here: the loaders import torch, and the tokenizer (which reads GGUF headers through
    # this package) must not need it.
    from fastllm.loader.gguf_file import GGUFFile
    from fastllm.loader.gguf_loader import load_gguf
    from fastllm.tokenizer import Tokenizer

    location = model_location(default_model_path() if path is None else path)
    if not location.is_dir():
        gguf = GGUFFile(location)
        tokenizer = Tokenizer.from_gguf_metadata(gguf.metadata, source=gguf.path)
        checkpoint = load_gguf(gguf, keep_encoded=keep_encoded, shard=shard)
        return ModelFiles(checkpoint, tokenizer, gguf_prompt_format(gguf.metadata, tokenizer))
    from fastllm.loader.hf_loader import load_hf_folder, read_json  # and safetensors: only for folders

    tokenizer_file = location / "tokenizer.json"
    if not tokenizer_file.is_file():
        raise CheckpointError(location, "the folder has no tokenizer.json (fastllm reads the tokenizer from it)")
    config_file = location / "tokenizer_config.json"
    spec = read_json(tokenizer_file)
    tokenizer_config = read_json(config_file) if config_file.is_file() else {}
    tokenizer = Tokenizer.from_json(spec, tokenizer_config, source=str(tokenizer_file))
    prompt_format = hf_prompt_format(location, tokenizer, spec, tokenizer_config, read_json)
    return ModelFiles(load_hf_folder(location, shard=shard), tokenizer, prompt_format)

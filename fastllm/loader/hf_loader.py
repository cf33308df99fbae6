"""Hugging Face folders (config.json + *.safetensors, sharded or not) of a LlamaForCausalLM -> Checkpoint."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError, safe_open

from fastllm.loader.checkpoint import Checkpoint, CheckpointError, ShardFor
from fastllm.model.config import ModelConfig
from fastllm.model.weights import shape_problems, weight_problems

if TYPE_CHECKING:
    from fastllm.distributed.sharding import ModelShard

SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM",)
INDEX_FILE = "model.safetensors.index.json"
# Non-weight buffers some older checkpoints saved; the model recomputes them.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


def read_json(path: Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(path, f"invalid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise CheckpointError(path, f"expected a JSON object, got {type(data).__name__}")
    return data


def _rope(hf: dict[str, Any]) -> tuple[float, dict[str, Any] | None]:
    """(rope_theta, rope_scaling) from either transformers 5's `rope_parameters` or the older top-level keys."""
    params = dict(hf.get("rope_parameters") or {})
    theta = params.pop("rope_theta", hf.get("rope_theta", 10000.0))
    scaling = params or hf.get("rope_scaling") or None
    if scaling and scaling.get("partial_rotary_factor", 1.0) != 1.0:
        raise ValueError(f"partial rotary embeddings are not supported, got {scaling['partial_rotary_factor']}")
    if scaling and scaling.get("rope_type", scaling.get("type")) == "default":
        scaling = None
    return float(theta), scaling


def _config(hf: dict[str, Any], path: Path) -> ModelConfig:
    architectures = hf.get("architectures") or []
    if hf.get("model_type") != "llama" or not set(architectures) & set(SUPPORTED_ARCHITECTURES):
        raise CheckpointError(
            path, f"unsupported model: model_type {hf.get('model_type')!r}, architectures {architectures}; "
            f"supported: model_type 'llama' with {', '.join(SUPPORTED_ARCHITECTURES)}"
        )
    for flag in ("attention_bias", "mlp_bias"):
        if hf.get(flag):
            raise CheckpointError(path, f"{flag}=true is not supported (Llama projections without biases only)")
    if hf.get("hidden_act", "silu") != "silu":
        raise CheckpointError(path, f"hidden_act {hf['hidden_act']!r} is not supported (only 'silu')")
    eos = hf.get("eos_token_id")  # an id or a list of them (all of which fastllm.loader.prompt_format reads)
    eos_ids = list(eos) if isinstance(eos, list) else [] if eos is None else [eos]
    try:
        theta, scaling = _rope(hf)
        heads = hf["num_attention_heads"]
        return ModelConfig(
            vocab_size=hf["vocab_size"],
            hidden_size=hf["hidden_size"],
            intermediate_size=hf["intermediate_size"],
            num_hidden_layers=hf["num_hidden_layers"],
            num_attention_heads=heads,
            num_key_value_heads=hf.get("num_key_value_heads") or heads,
            head_dim=hf.get("head_dim") or hf["hidden_size"] // heads,
            max_position_embeddings=hf.get("max_position_embeddings", 2048),
            rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            rope_theta=theta,
            rope_scaling=scaling,
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
            bos_token_id=hf.get("bos_token_id"),
            eos_token_id=eos_ids[0] if eos_ids else None,
            name=hf.get("_name_or_path") or path.parent.name,
            extra={"architecture": "llama"},
        )
    except KeyError as exc:
        raise CheckpointError(path, f"missing required key {exc.args[0]!r}") from None
    except (TypeError, ZeroDivisionError, ValueError) as exc:
        raise CheckpointError(path, f"invalid model hyper-parameters: {exc}") from None


def _weight_files(folder: Path) -> list[Path]:
    index = folder / INDEX_FILE
    if index.is_file():
        weight_map = read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(index, "has no 'weight_map' object")
        files = [folder / name for name in sorted(set(weight_map.values()))]
        absent = [f.name for f in files if not f.is_file()]
        if absent:
            raise CheckpointError(index, f"lists shard files that do not exist: {', '.join(absent)}")
        return files
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise CheckpointError(folder, "no *.safetensors weight files in the folder")
    return files


def _tensor_shapes(file: Path, shapes: dict[str, tuple[int, ...]]) -> None:
    try:
        with safe_open(file, framework="pt") as f:
            for name in f.keys():
                if name.endswith(_IGNORED_SUFFIXES):
                    continue
                if name in shapes:
                    raise CheckpointError(file, f"tensor {name!r} appears in more than one weight file")
                shapes[name] = tuple(f.get_slice(name).get_shape())
    except SafetensorError as exc:
        raise CheckpointError(file, f"cannot read safetensors file (truncated or corrupt?): {exc}") from None


def _read_safetensors(file: Path, weights: dict[str, torch.Tensor], cut: ModelShard | None) -> None:
    try:
        with safe_open(file, framework="pt") as f:
            for name in f.keys():
                if not name.endswith(_IGNORED_SUFFIXES):
                    weights[name] = f.get_tensor(name) if cut is None else cut(name, f.get_tensor(name))
    except SafetensorError as exc:
        raise CheckpointError(file, f"cannot read safetensors file (truncated or corrupt?): {exc}") from None


def load_hf_folder(path: str | os.PathLike, *, shard: ShardFor | None = None) -> Checkpoint:
    """Load an HF LlamaForCausalLM folder: config.json plus one or more safetensors files.

    Shapes are checked from the files' headers before any tensor is read; with `shard`, each
    tensor is cut to `shard(config)`'s part as soon as it is read.
    """
    folder = Path(path)
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise CheckpointError(folder, "not a model folder: it has no config.json")
    config = _config(read_json(config_file), config_file)
    files = _weight_files(folder)
    shapes: dict[str, tuple[int, ...]] = {}
    for file in files:
        _tensor_shapes(file, shapes)
    problems = shape_problems(shapes, config)
    if problems:
        raise CheckpointError(folder, "; ".join(problems))
    cut = shard(config) if shard is not None else None
    weights: dict[str, torch.Tensor] = {}
    for file in files:
        _read_safetensors(file, weights, cut)
    problems = weight_problems(weights, config if cut is None else cut.config)
    if problems:
        raise CheckpointError(folder, "; ".join(problems))
    return Checkpoint(config=config, weights=weights, path=str(folder), format="hf", shard=cut)

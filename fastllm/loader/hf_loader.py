"""Hugging Face folders (config.json + *.safetensors, sharded or not) -> Checkpoint.

Llama, Mistral, Qwen2, Qwen3 and Gemma 3 (text) models: each family's config.json keys map to the
ModelConfig fields where it departs from Llama (`FAMILIES`); weights keep HF's names.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError, safe_open

from fastllm.loader.checkpoint import Checkpoint, CheckpointError, ShardFor
from fastllm.model.config import ModelConfig
from fastllm.model.weights import shape_problems, weight_problems

if TYPE_CHECKING:
    from fastllm.distributed.sharding import ModelShard

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


def _rope(params: dict[str, Any], default_theta: float) -> tuple[float, dict[str, Any] | None]:
    """(rope_theta, rope_scaling) from one HF rope-parameters dict (the theta popped, the rest the scaling)."""
    params = dict(params)
    theta = params.pop("rope_theta", default_theta)
    scaling = params or None
    if scaling and scaling.get("partial_rotary_factor", 1.0) != 1.0:
        raise ValueError(f"partial rotary embeddings are not supported, got {scaling['partial_rotary_factor']}")
    if scaling and scaling.get("rope_type", scaling.get("type")) == "default":
        scaling = None
    return float(theta), scaling


def _global_rope(hf: dict[str, Any]) -> tuple[float, dict[str, Any] | None]:
    """transformers 5's `rope_parameters` or the older top-level `rope_theta`/`rope_scaling` keys."""
    params = hf.get("rope_parameters") or {}
    if "full_attention" in params:  # one dict per layer type (Gemma 3)
        params = params["full_attention"] or {}
    theta = params.get("rope_theta", hf.get("rope_theta", 10000.0))
    scaling = {key: value for key, value in params.items() if key != "rope_theta"} or hf.get("rope_scaling") or {}
    return _rope({**scaling, "rope_theta": theta}, theta)


def _window_layers(hf: dict[str, Any], default_types: list[str] | None) -> dict[str, Any]:
    """sliding_window and layer_types: the config's own layer_types, else the family's default."""
    window = hf.get("sliding_window")
    types = hf.get("layer_types") or default_types
    if window is None or not types or "sliding_attention" not in types:
        return {}
    return {"sliding_window": window, "layer_types": tuple(types)}


def _qwen_windows(hf: dict[str, Any]) -> dict[str, Any]:
    # Qwen2/Qwen3: with use_sliding_window, layers from max_window_layers on slide (HF's default layer_types).
    if not hf.get("use_sliding_window"):
        return {}
    first = hf.get("max_window_layers", 28)
    return _window_layers(hf, ["sliding_attention" if i >= first else "full_attention"
                               for i in range(hf["num_hidden_layers"])])


def _llama(hf: dict[str, Any]) -> dict[str, Any]:
    for flag in ("attention_bias", "mlp_bias"):
        if hf.get(flag):
            raise ValueError(f"{flag}=true is not supported (Llama projections without biases only)")
    return {}


def _mistral(hf: dict[str, Any]) -> dict[str, Any]:
    # Mistral 7B v0.1 slides every layer over 4,096 tokens; later versions set sliding_window null.
    return _window_layers(hf, ["sliding_attention"] * hf["num_hidden_layers"])


def _qwen2(hf: dict[str, Any]) -> dict[str, Any]:
    return {"attention_bias": True, **_qwen_windows(hf)}  # q/k/v always have biases, o_proj never


def _qwen3(hf: dict[str, Any]) -> dict[str, Any]:
    if hf.get("attention_bias"):
        raise ValueError("attention_bias=true is not supported for Qwen3 (its o_proj would need a bias too)")
    return {"qk_norm": True, **_qwen_windows(hf)}


def _gemma3(hf: dict[str, Any]) -> dict[str, Any]:
    for key in ("final_logit_softcapping", "attn_logit_softcapping", "use_bidirectional_attention"):
        if hf.get(key):
            raise ValueError(f"{key}={hf[key]!r} is not supported")
    params = hf.get("rope_parameters") or {}
    local = params.get("sliding_attention") or {}
    local_theta, local_scaling = _rope(local, hf.get("rope_local_base_freq", 10000.0))
    if local_scaling is not None:
        raise ValueError(f"rope scaling of the sliding layers is not supported, got {local_scaling}")
    pattern = hf.get("sliding_window_pattern", 6)  # HF's default layer_types: every pattern-th layer global
    default_types = ["sliding_attention" if (i + 1) % pattern else "full_attention"
                     for i in range(hf["num_hidden_layers"])]
    return {
        "qk_norm": True, "sandwich_norms": True, "norm_weight_offset": 1.0,
        "embedding_multiplier": hf["hidden_size"] ** 0.5, "query_pre_attn_scalar": hf.get("query_pre_attn_scalar", 256),
        "local_rope_theta": local_theta, **_window_layers(hf, default_types),
    }


@dataclass(frozen=True)
class _Family:
    """A model family HF folders may hold: its config.json model_type and architecture, the MLP
    activation it must have, whether its embeddings are tied when config.json does not say, and
    its ModelConfig fields (`fields(config.json) -> {field: value}`, ValueError when unsupported)."""

    architecture: str
    hidden_act: str
    tied_by_default: bool
    fields: Callable[[dict[str, Any]], dict[str, Any]]


FAMILIES = {
    "llama": _Family("LlamaForCausalLM", "silu", False, _llama),
    "mistral": _Family("MistralForCausalLM", "silu", False, _mistral),
    "qwen2": _Family("Qwen2ForCausalLM", "silu", False, _qwen2),
    "qwen3": _Family("Qwen3ForCausalLM", "silu", False, _qwen3),
    "gemma3_text": _Family("Gemma3ForCausalLM", "gelu_pytorch_tanh", True, _gemma3),
}
SUPPORTED_ARCHITECTURES = tuple(family.architecture for family in FAMILIES.values())


def _config(hf: dict[str, Any], path: Path) -> ModelConfig:
    architectures = hf.get("architectures") or []
    model_type = hf.get("model_type")
    family = FAMILIES.get(model_type)
    if family is None or (architectures and family.architecture not in architectures):
        supported = ", ".join(f"{name!r} ({f.architecture})" for name, f in FAMILIES.items())
        raise CheckpointError(
            path, f"unsupported model: model_type {model_type!r}, architectures {architectures}; "
            f"supported model types: {supported}"
        )
    activation = hf.get("hidden_activation") or hf.get("hidden_act", family.hidden_act)
    if activation != family.hidden_act:
        raise CheckpointError(path, f"hidden_act {activation!r} is not supported (a {model_type} model has "
                                    f"{family.hidden_act!r})")
    eos = hf.get("eos_token_id")  # an id or a list of them (all of which fastllm.loader.prompt_format reads)
    eos_ids = list(eos) if isinstance(eos, list) else [] if eos is None else [eos]
    try:
        theta, scaling = _global_rope(hf)
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
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", family.tied_by_default)),
            bos_token_id=hf.get("bos_token_id"),
            eos_token_id=eos_ids[0] if eos_ids else None,
            hidden_act=activation,
            name=hf.get("_name_or_path") or path.parent.name,
            extra={"architecture": model_type},
            **family.fields(hf),
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
    """Load an HF model folder (a family of `FAMILIES`): config.json plus one or more safetensors files.

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

"""Tiny random models of each family transformers builds (Llama, Mistral, Qwen2, Qwen3, Gemma 3),
saved as HF folders and written as GGUF files the way llama.cpp's converter writes them.

Weights are rounded to float16 values (and norm weights to multiples of 2^-10, so that Gemma's
stored 1 + w is exact): an F16 GGUF file then holds exactly the HF model's weights, and the HF
model is the reference for both.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import torch

from benchmarks import make_gguf
from fastllm.loader.gguf_loader import ARCHITECTURES
from fastllm.model.config import ModelConfig

BASE = dict(
    vocab_size=320, hidden_size=128, intermediate_size=192, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, head_dim=32, max_position_embeddings=256, rms_norm_eps=1e-6, bos_token_id=1,
    eos_token_id=2, tie_word_embeddings=False,
)
# family -> (transformers config and model classes, settings over BASE, GGUF architecture or None)
FAMILIES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", dict(rope_theta=500000.0), "llama"),
    "mistral": ("MistralConfig", "MistralForCausalLM", dict(sliding_window=7), None),  # llama.cpp drops the window
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", dict(tie_word_embeddings=True, rope_theta=1e6), "qwen2"),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", dict(rope_theta=1e6), "qwen3"),
    # Six layers: the fifth and sixth differ (sliding with the local rope base, then global).
    "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM", dict(
        num_hidden_layers=6, sliding_window=5, query_pre_attn_scalar=32, tie_word_embeddings=True,
        hidden_activation="gelu_pytorch_tanh", pad_token_id=0,
    ), "gemma3"),
}


def build(family: str, *, seed: int = 0) -> torch.nn.Module:
    """A random transformers model of `family` (float32, eval) with float16-exact weights."""
    import transformers

    config_class, model_class, settings, _ = FAMILIES[family]
    config = getattr(transformers, config_class)(**{**BASE, **settings})
    torch.manual_seed(seed)
    model = getattr(transformers, model_class)(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):  # HF initializes norms to constants: make the test see them
                center = 0.0 if family == "gemma3" else 1.0  # Gemma's scale is 1 + w
                param.copy_(torch.round((center + (torch.rand_like(param) - 0.5)) * 1024) / 1024)
            else:
                param.copy_(param * 4 if param.dim() == 1 else param)  # biases: big enough to matter
                param.copy_(param.half().float())
    return model


def save_folder(model: torch.nn.Module, folder: Path) -> Path:
    model.save_pretrained(folder)
    return folder


def _gguf_names(arch: str, num_layers: int) -> dict[str, str]:
    """HF name -> GGUF name for architecture `arch` (the inverse of the loader's mapping)."""
    architecture = ARCHITECTURES[arch]
    candidates = ["token_embd.weight", "output_norm.weight", "output.weight"]
    suffixes = {"attn_norm.weight", "attn_q.weight", "attn_k.weight", "attn_v.weight", "attn_output.weight",
                "ffn_norm.weight", "ffn_gate.weight", "ffn_up.weight", "ffn_down.weight", *architecture.layer_names}
    candidates += [f"blk.{i}.{suffix}" for i in range(num_layers) for suffix in suffixes]
    return {architecture.hf_name(name): name for name in candidates}


def write_gguf(model: torch.nn.Module, path: Path, *, matrix_type: gguf.GGMLQuantizationType) -> Path:
    """`model` as llama.cpp's converter writes it: Q/K rows permuted for llama, Gemma norms + 1,
    1-D tensors F32, matrices `matrix_type`; the default model's tokenizer fitted to the vocabulary."""
    family = next(name for name, (_, cls, _, _) in FAMILIES.items() if type(model).__name__ == cls)
    arch = FAMILIES[family][3]
    config = model.config
    architecture = ARCHITECTURES[arch]
    rope = config.rope_parameters
    shape = ModelConfig(
        vocab_size=config.vocab_size, hidden_size=config.hidden_size, intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_hidden_layers, num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_key_value_heads, head_dim=config.head_dim,
        max_position_embeddings=config.max_position_embeddings, rms_norm_eps=config.rms_norm_eps,
        rope_theta=float((rope.get("full_attention") or rope)["rope_theta"]),
        tie_word_embeddings=config.tie_word_embeddings, bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id, name=f"tiny random {family}",
    )
    writer = gguf.GGUFWriter(path, arch)
    make_gguf._add_model_metadata(writer, shape, matrix_type)
    if arch == "gemma3":
        writer.add_sliding_window(config.sliding_window)
        # Per layer, as converters write it where the layers follow no period (Gemma 3n): a bool
        # array (true: sliding), which the GGUF reader returns as a numpy array.
        writer.add_sliding_window_pattern([kind == "sliding_attention" for kind in config.layer_types])
    make_gguf._add_tokenizer(writer, make_gguf.fit_tokenizer(make_gguf.default_tokenizer_metadata(), config.vocab_size))
    names = _gguf_names(arch, config.num_hidden_layers)
    for hf_name, tensor in model.state_dict().items():
        if hf_name == "lm_head.weight" and config.tie_word_embeddings:
            continue
        name, data = names[hf_name], tensor.float().numpy()
        if architecture.permuted_qk and name.endswith(("attn_q.weight", "attn_k.weight")):
            heads = config.num_attention_heads if "attn_q" in name else config.num_key_value_heads
            data = make_gguf.permute_qk(data, heads)
        if architecture.norm_shift and name.endswith("norm.weight"):
            data = data + np.float32(architecture.norm_shift)
        qtype = gguf.GGMLQuantizationType.F32 if data.ndim == 1 else matrix_type
        writer.add_tensor(name, make_gguf.quantize(np.ascontiguousarray(data), qtype), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path

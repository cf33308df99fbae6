"""Hugging Face folders written by transformers' save_pretrained: loading, logits parity, errors."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from fastllm.loader import CheckpointError, load_checkpoint
from fastllm.model import LlamaForCausalLM, get_backend
from llama_testing import hf_greedy, paged_logits, save_tiny_llama

LLAMA3_SCALING = {
    "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
    "original_max_position_embeddings": 16,
}
FOLDERS = {
    "gqa": dict(),
    # Tiny original context and 16-dim heads so that all three llama3 frequency bands occur.
    "llama3_tied_sharded": dict(
        rope_scaling=dict(LLAMA3_SCALING), rope_theta=500000.0, tie_word_embeddings=True, head_dim=16,
        max_shard_size="40KB",
    ),
    "linear_mha": dict(rope_scaling={"rope_type": "linear", "factor": 2.0}, num_key_value_heads=6),
}


@pytest.fixture(scope="module")
def tiny_folders(tmp_path_factory):
    """name -> (folder, the HF model saved there)."""
    root = tmp_path_factory.mktemp("hf")
    return {
        name: (root / name, save_tiny_llama(root / name, seed=i, **settings))
        for i, (name, settings) in enumerate(FOLDERS.items())
    }


def load_ours(folder, dtype=torch.float32) -> LlamaForCausalLM:
    checkpoint = load_checkpoint(folder)
    model = LlamaForCausalLM(checkpoint.config, get_backend("torch"), dtype=dtype)
    model.load_weights(checkpoint.weights)
    return model.eval()


def test_config_from_folder(tiny_folders):
    folder, hf = tiny_folders["llama3_tied_sharded"]
    assert (folder / "model.safetensors.index.json").is_file()
    checkpoint = load_checkpoint(folder)
    config = checkpoint.config
    assert checkpoint.format == "hf" and checkpoint.path == str(folder)
    assert (config.vocab_size, config.hidden_size, config.intermediate_size) == (97, 48, 80)
    assert config.num_hidden_layers == 2
    assert (config.num_attention_heads, config.num_key_value_heads, config.head_dim) == (6, 2, 16)
    assert config.rope_theta == 500000.0 and config.rope_scaling == LLAMA3_SCALING
    assert config.tie_word_embeddings and "lm_head.weight" not in checkpoint.weights
    assert (config.bos_token_id, config.eos_token_id) == (1, 2)
    for name, tensor in hf.state_dict().items():
        if name != "lm_head.weight":
            assert torch.equal(checkpoint.weights[name], tensor), name


@pytest.mark.parametrize("name", FOLDERS)
def test_logits_match_hf(tiny_folders, name):
    folder, hf = tiny_folders[name]
    model = load_ours(folder)
    prompts = [[5, 9, 3, 77, 1, 2, 60, 14, 33, 8, 90, 41, 7, 7, 23, 11, 64, 2, 19, 50], [4, 8, 15], [96]]
    references = [hf_greedy(hf, prompt, steps=3) for prompt in prompts]
    got = paged_logits(model, prompts, [fed for _, fed in references], block_size=4)
    for (expected, _), logits in zip(references, got):
        torch.testing.assert_close(logits, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_logits_match_hf_in_the_same_dtype(tiny_folders, dtype):
    folder, hf = tiny_folders["gqa"]
    model = load_ours(folder, dtype)
    hf_half = type(hf)(hf.config).to(dtype).eval()
    hf_half.load_state_dict(hf.state_dict())
    prompt = [5, 9, 3, 77, 1, 2, 60, 14]
    expected, fed = hf_greedy(hf_half, prompt, steps=2)
    [got] = paged_logits(model, [prompt], [fed])
    # HF rotates q/k in the half dtype, fastllm in float32: a few half-precision ulps apart.
    torch.testing.assert_close(got, expected, rtol=0, atol=0.05)


def test_weights_keep_the_file_dtype(tmp_path):
    hf = save_tiny_llama(tmp_path / "f32")
    hf.to(torch.bfloat16).save_pretrained(tmp_path / "bf16")
    checkpoint = load_checkpoint(tmp_path / "bf16")
    assert {t.dtype for t in checkpoint.weights.values()} == {torch.bfloat16}


# -- errors --------------------------------------------------------------------------------


@pytest.fixture
def folder_copy(tiny_folders, tmp_path):
    destination = tmp_path / "model"
    shutil.copytree(tiny_folders["gqa"][0], destination)
    return destination


def edit_config(folder, **changes):
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))


def test_missing_path_and_missing_config(tmp_path):
    with pytest.raises(FileNotFoundError, match="does-not-exist"):
        load_checkpoint(tmp_path / "does-not-exist")
    with pytest.raises(CheckpointError, match="no config.json"):
        load_checkpoint(tmp_path)
    with pytest.raises(TypeError, match="path must be a str or os.PathLike"):
        load_checkpoint(3)


def test_invalid_config_json(folder_copy):
    (folder_copy / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"config\.json: invalid JSON"):
        load_checkpoint(folder_copy)
    (folder_copy / "config.json").write_bytes(b'{"model_type": "ll\xffama"}')  # not UTF-8
    with pytest.raises(CheckpointError, match=r"config\.json: invalid JSON"):
        load_checkpoint(folder_copy)


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(model_type="gpt2", architectures=["GPT2LMHeadModel"]), "unsupported model: model_type 'gpt2'"),
        (dict(architectures=["Qwen2ForCausalLM"]), "unsupported model: model_type 'llama', architectures"),
        (dict(attention_bias=True), "attention_bias=true is not supported"),
        (dict(hidden_act="gelu"), "hidden_act 'gelu' is not supported"),
        (dict(num_key_value_heads=4), r"num_attention_heads \(6\) must be a multiple of num_key_value_heads \(4\)"),
        (dict(rope_parameters={"rope_type": "longrope", "rope_theta": 1e4}), "rope_scaling type must be one of"),
        (dict(rope_parameters={"rope_type": "linear", "rope_theta": 1e4}), "needs a positive number 'factor'"),
        (dict(rope_parameters={"rope_type": "default", "rope_theta": 1e4, "partial_rotary_factor": 0.5}), "partial"),
        (dict(rope_parameters={"rope_type": "default", "rope_theta": "fast"}), "could not convert string to float"),
    ],
)
def test_unsupported_configs(folder_copy, changes, message):
    edit_config(folder_copy, **changes)
    with pytest.raises(CheckpointError, match=rf"config\.json: .*{message}"):
        load_checkpoint(folder_copy)


def test_missing_key_in_config(folder_copy):
    config = json.loads((folder_copy / "config.json").read_text())
    del config["hidden_size"]
    (folder_copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="missing required key 'hidden_size'"):
        load_checkpoint(folder_copy)


def test_missing_tensor_and_shape_mismatch(folder_copy):
    file = folder_copy / "model.safetensors"
    tensors = load_file(file)
    del tensors["model.layers.1.self_attn.v_proj.weight"]
    save_file(tensors, file, metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"model: missing tensors 'model\.layers\.1\.self_attn\.v_proj\.weight'"):
        load_checkpoint(folder_copy)
    edit_config(folder_copy, intermediate_size=64)
    with pytest.raises(CheckpointError, match=r"mlp\.gate_proj\.weight' has shape \(80, 48\), expected \(64, 48\)"):
        load_checkpoint(folder_copy)


def test_truncated_safetensors(folder_copy):
    file = folder_copy / "model.safetensors"
    data = file.read_bytes()
    file.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"model\.safetensors: cannot read safetensors file"):
        load_checkpoint(folder_copy)


def test_sharded_index_naming_a_missing_shard(tiny_folders, tmp_path):
    folder = tmp_path / "sharded"
    shutil.copytree(tiny_folders["llama3_tied_sharded"][0], folder)
    shard = sorted(folder.glob("*.safetensors"))[-1]
    shard.unlink()
    with pytest.raises(CheckpointError, match=f"lists shard files that do not exist: {shard.name}"):
        load_checkpoint(folder)


def test_a_file_of_the_folder_or_an_empty_folder(folder_copy):
    with pytest.raises(CheckpointError, match="pass the model folder"):
        load_checkpoint(folder_copy / "model.safetensors")
    (folder_copy / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"no \*\.safetensors weight files"):
        load_checkpoint(folder_copy)


def test_pre_transformers_5_rope_keys(folder_copy):
    config = json.loads((folder_copy / "config.json").read_text())
    del config["rope_parameters"]
    config.update(rope_theta=20000.0, rope_scaling={"type": "linear", "factor": 2.0})
    (folder_copy / "config.json").write_text(json.dumps(config))
    loaded = load_checkpoint(folder_copy).config
    assert loaded.rope_theta == 20000.0 and loaded.rope_scaling == {"type": "linear", "factor": 2.0}

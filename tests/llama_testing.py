"""Helpers for the loader and model tests: tiny HF Llama folders and logits of HF vs fastllm on the same tokens."""

from __future__ import annotations

from pathlib import Path

import torch

from fastllm.model import AttentionMetadata, LlamaForCausalLM
from fastllm.model.config import ModelConfig
from fastllm.model.weights import llama_weight_shapes


def save_tiny_llama(folder: Path, *, seed: int = 0, max_shard_size: str | None = None, **overrides) -> torch.nn.Module:
    """Write a randomly initialized transformers LlamaForCausalLM with save_pretrained; return it (float32, eval)."""
    from transformers import LlamaConfig, LlamaForCausalLM as HFLlama

    settings = dict(
        vocab_size=97, hidden_size=48, intermediate_size=80, num_hidden_layers=2, num_attention_heads=6,
        num_key_value_heads=2, max_position_embeddings=128, rms_norm_eps=1e-5, tie_word_embeddings=False,
    )
    settings.update(overrides)
    torch.manual_seed(seed)
    model = HFLlama(LlamaConfig(**settings)).eval()
    with torch.no_grad():  # HF initializes norms to ones: randomize them so the test sees them
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.uniform_(0.5, 1.5)
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(folder, **kwargs)
    return model


@torch.no_grad()
def hf_greedy(hf_model: torch.nn.Module, prompt: list[int], steps: int) -> tuple[torch.Tensor, list[int]]:
    """HF's greedy decoding with its KV cache: logits [1 + steps, vocab] (the prompt's last position,
    then each decode step) and the `steps` tokens it fed back."""
    # logits_to_keep=1 as HF's generate() does: the lm_head matmul then has one row, like fastllm's.
    out = hf_model(torch.tensor([prompt]), use_cache=True, logits_to_keep=1)
    rows, tokens = [out.logits[0, -1].float()], []
    for _ in range(steps):
        tokens.append(int(rows[-1].argmax()))
        out = hf_model(torch.tensor([[tokens[-1]]]), past_key_values=out.past_key_values, use_cache=True)
        rows.append(out.logits[0, -1].float())
    return torch.stack(rows), tokens


@torch.no_grad()
def paged_logits(
    model: LlamaForCausalLM,
    prompts: list[list[int]],
    next_tokens: list[list[int]],
    *,
    block_size: int = 4,
    seed: int = 0,
) -> list[torch.Tensor]:
    """fastllm logits [1 + steps, vocab] per prompt on the same tokens as `hf_greedy`, all prompts at once.

    The prompts are prefilled packed in one varlen step; then each step decodes one given token
    per sequence. Blocks of the paged cache are handed out in a random order.
    """
    config = model.config
    steps = len(next_tokens[0])
    lengths = [len(p) for p in prompts]
    blocks_per_seq = -(-(max(lengths) + steps) // block_size)
    num_blocks = blocks_per_seq * len(prompts) + 3
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(num_blocks, generator=generator)
    tables = order[: blocks_per_seq * len(prompts)].view(len(prompts), blocks_per_seq).to(torch.int32)
    kv_cache = torch.zeros(
        config.num_hidden_layers, 2, num_blocks, block_size, config.num_key_value_heads, config.head_dim,
        dtype=model.dtype,
    )

    def slots(seq: int, positions: torch.Tensor) -> torch.Tensor:
        return tables[seq, positions // block_size].long() * block_size + positions % block_size

    positions = torch.cat([torch.arange(n) for n in lengths])
    cu_seqlens = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    meta = AttentionMetadata(
        is_prefill=True,
        slot_mapping=torch.cat([slots(i, torch.arange(n)) for i, n in enumerate(lengths)]),
        cu_seqlens_q=cu_seqlens,
        cu_seqlens_k=cu_seqlens,
        max_seqlen_q=max(lengths),
        max_seqlen_k=max(lengths),
    )
    hidden = model(torch.tensor(sum(prompts, [])), positions, meta, kv_cache)
    rows = [model.compute_logits(hidden[cu_seqlens[1:].long() - 1])]
    current = torch.tensor(lengths)
    for step in range(steps):
        meta = AttentionMetadata(
            is_prefill=False,
            slot_mapping=torch.stack([slots(i, current[i : i + 1])[0] for i in range(len(prompts))]),
            context_lens=(current + 1).to(torch.int32),
            block_tables=tables,
        )
        tokens = torch.tensor([seq_tokens[step] for seq_tokens in next_tokens])
        rows.append(model.compute_logits(model(tokens, current.clone(), meta, kv_cache)))
        current += 1
    stacked = torch.stack(rows, dim=1)  # [B, 1 + steps, vocab]
    return list(stacked.unbind(0))


def tiny_config(**overrides) -> ModelConfig:
    """A 2-layer GQA config small enough for any test (6 query heads over 2 KV heads)."""
    settings = dict(
        vocab_size=50, hidden_size=24, intermediate_size=40, num_hidden_layers=2, num_attention_heads=6,
        num_key_value_heads=2, head_dim=4, max_position_embeddings=64,
    )
    settings.update(overrides)
    return ModelConfig(**settings)


def random_weights(model: LlamaForCausalLM) -> dict[str, torch.Tensor]:
    """Random checkpoint tensors of every shape the model expects."""
    return {name: torch.randn(shape) * 0.2 for name, shape in llama_weight_shapes(model.config).items()}

"""The backend seam: names, resolution, the triton guard, and `attention` over its three paths."""

from __future__ import annotations

import pytest
import torch

import fastllm.kernels.reference as reference
from fastllm.model.backend import OP_NAMES, AttentionMetadata, Backend, get_backend, resolve_backend


def test_torch_backend_wraps_the_reference_ops():
    backend = get_backend("torch")
    assert backend.name == "torch" and get_backend("torch") is backend
    for op in OP_NAMES:
        assert getattr(backend, op) is getattr(reference, op)


def test_unknown_names():
    with pytest.raises(ValueError, match="backend must be one of 'torch', 'triton', 'cpu', got 'cuda'"):
        get_backend("cuda")
    with pytest.raises(ValueError, match="backend must be 'auto' or one of 'torch', 'triton', 'cpu', got 'fast'"):
        resolve_backend("fast", "cpu")


def test_resolve_backend():
    assert resolve_backend("auto", "cpu") == "cpu"
    assert resolve_backend("auto", "mps") == "torch"
    assert resolve_backend("auto", torch.device("cuda", 0)) == "triton"
    assert resolve_backend("triton", "cpu") == "triton"
    assert resolve_backend("torch", "cuda") == "torch"


def test_triton_needs_cuda_or_the_interpreter(monkeypatch):
    import fastllm.kernels._runtime as runtime

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(runtime, "INTERPRETER", False)
    with pytest.raises(ValueError, match="backend 'triton' needs a CUDA GPU .or TRITON_INTERPRET=1"):
        get_backend("triton")


def test_triton_runs_where_the_kernels_chose_the_interpreter(monkeypatch):
    """The kernels decided at import (tests/conftest.py set TRITON_INTERPRET=1): the guard asks them,
    not the environment now, which Triton parses more loosely ("true", "on") and may have changed."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("TRITON_INTERPRET", "true")
    assert get_backend("triton").name == "triton"
    monkeypatch.delenv("TRITON_INTERPRET")
    assert get_backend("triton").name == "triton"


def test_a_module_lacking_ops_is_rejected():
    import types

    with pytest.raises(ValueError, match="lacks the ops rms_norm, "):
        Backend.from_module("partial", types.ModuleType("partial_ops"))


# 32: a head dim the C++ kernel takes. Its exp is a polynomial good to ~2 float32 ulps, so its
# decode output (a weighted mean of O(1) values) can sit ~1e-6 from SDPA's: 1.07e-6 in 3,000 draws.
@pytest.mark.parametrize(("name", "dim", "atol"), [("torch", 8, 1e-6), ("cpu", 32, 4e-6)])
def test_attention_paths_agree_with_dense_causal_attention(name, dim, atol):
    """Prefill over new k/v, prefill over the paged cache (prefix hit), decode: all equal plain SDPA."""
    backend = get_backend(name)
    heads, kv_heads, block_size, length = 4, 2, 4, 11
    q, k, v = torch.randn(length, heads, dim), torch.randn(length, kv_heads, dim), torch.randn(length, kv_heads, dim)
    expected = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None], is_causal=True, enable_gqa=True,
        scale=0.3,
    )[0].transpose(0, 1)
    table = torch.tensor([[2, 0, 3]], dtype=torch.int32)
    slots = table[0, torch.arange(length) // block_size].long() * block_size + torch.arange(length) % block_size
    k_cache, v_cache = torch.zeros(4, block_size, kv_heads, dim), torch.zeros(4, block_size, kv_heads, dim)

    def cu(*lengths):
        return torch.tensor([0, *lengths], dtype=torch.int32)

    split = 7
    first = backend.attention(
        q[:split], k[:split], v[:split], k_cache, v_cache,
        AttentionMetadata(True, slots[:split], cu(split), cu(split), split, split), 0.3,
    )
    second = backend.attention(
        q[split:-1], k[split:-1], v[split:-1], k_cache, v_cache,
        AttentionMetadata(True, slots[split:-1], cu(length - 1 - split), cu(length - 1), 3, length - 1, None, table),
        0.3,
    )
    last = backend.attention(
        q[-1:], k[-1:], v[-1:], k_cache, v_cache,
        AttentionMetadata(
            False, slots[-1:], context_lens=torch.tensor([length], dtype=torch.int32), block_tables=table
        ),
        0.3,
    )
    torch.testing.assert_close(torch.cat([first, second, last]), expected, rtol=0, atol=atol)


def _mixed_step(dim: int, seed: int):
    """A mixed step over a paged cache: two decode rows (contexts 9 and 14), then an 11-token
    sequence's last 6 tokens (5 cached). Returns the attention inputs and the float64 dense result."""
    generator = torch.Generator().manual_seed(seed)
    heads, kv_heads, block_size, num_blocks = 4, 2, 4, 16
    lengths, new = [9, 14, 11], [1, 1, 6]
    order = torch.randperm(num_blocks, generator=generator).tolist()
    tables = [order[0:3], order[3:7], order[7:10]]
    k_cache = torch.randn(num_blocks, block_size, kv_heads, dim, generator=generator)
    v_cache = torch.randn(num_blocks, block_size, kv_heads, dim, generator=generator)
    q_rows, k_rows, v_rows, slots, expected = [], [], [], [], []
    for length, count, table in zip(lengths, new, tables):
        positions = torch.arange(length)
        seq_slots = torch.tensor(table)[positions // block_size] * block_size + positions % block_size
        keys = k_cache.view(-1, kv_heads, dim)[seq_slots].clone()
        values = v_cache.view(-1, kv_heads, dim)[seq_slots].clone()
        keys[-count:] = torch.randn(count, kv_heads, dim, generator=generator)  # the step's new tokens
        values[-count:] = torch.randn(count, kv_heads, dim, generator=generator)
        q = torch.randn(count, heads, dim, generator=generator)
        mask = torch.arange(length)[None, :] <= torch.arange(length - count, length)[:, None]
        expected.append(torch.nn.functional.scaled_dot_product_attention(
            q.double().transpose(0, 1), keys.double().transpose(0, 1), values.double().transpose(0, 1),
            attn_mask=mask, scale=0.3, enable_gqa=True,
        ).transpose(0, 1))
        q_rows.append(q), k_rows.append(keys[-count:]), v_rows.append(values[-count:]), slots.append(seq_slots[-count:])
    width = max(map(len, tables))
    meta = AttentionMetadata(
        True, torch.cat(slots), cu_seqlens_q=torch.tensor([0, 6], dtype=torch.int32),
        cu_seqlens_k=torch.tensor([0, 11], dtype=torch.int32), max_seqlen_q=6, max_seqlen_k=11,
        context_lens=torch.tensor([9, 14], dtype=torch.int32),
        block_tables=torch.tensor([t + [0] * (width - len(t)) for t in tables], dtype=torch.int32),
        num_decode_tokens=2,
    )
    inputs = (torch.cat(q_rows), torch.cat(k_rows), torch.cat(v_rows), k_cache, v_cache, meta)
    return inputs, torch.cat(expected)


# Largest errors against float64 over seeds 0-299: torch 4.9e-7, cpu 1.0e-6, triton (interpreter) 8.2e-7.
@pytest.mark.parametrize(("name", "dim", "atol"), [("torch", 8, 2e-6), ("cpu", 32, 4e-6), ("triton", 16, 4e-6)])
def test_mixed_steps_decode_their_first_rows_and_prefill_the_rest(name, dim, atol):
    backend = get_backend(name)
    inputs, expected = _mixed_step(dim, seed=0)
    out = backend.attention(*inputs, 0.3)
    torch.testing.assert_close(out.double(), expected, rtol=0, atol=atol)

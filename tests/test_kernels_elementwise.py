"""Triton softmax, RMSNorm, rotary, SiLU-and-mul and KV-cache store vs their float64 PyTorch twins.

Runs through the Triton interpreter (tests/conftest.py sets TRITON_INTERPRET=1), where the
kernels use small tiles, so modest shapes already cover rows longer than one tile.
"""

from __future__ import annotations

import pytest
import torch
from kernel_testing import assert_close

import fastllm.kernels as kernels
from fastllm.kernels import reference

DTYPES = [torch.float32, torch.float16]


def _randn(*shape: int, dtype: torch.dtype, seed: int, scale: float = 1.0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=generator) * scale).to(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("shape", "dim"),
    [
        ((7, 33), -1),  # one tile
        ((3, 700), -1),  # rows longer than one tile (interpreter tiles hold 256 columns)
        ((2, 300, 5), 1),  # a strided softmax dimension
        ((4, 3, 2), 0),
        ((19,), 0),
    ],
)
def test_softmax(shape: tuple[int, ...], dim: int, dtype: torch.dtype) -> None:
    x = _randn(*shape, dtype=dtype, seed=len(shape) * 100 + shape[-1], scale=4.0)
    assert_close(kernels.softmax(x, dim), reference.softmax(x.double(), dim), dtype)


def test_softmax_extreme_values() -> None:
    x = _randn(3, 600, dtype=torch.float32, seed=1, scale=80.0)
    x[0, 5] = float("-inf")
    x[1, 450:] = float("-inf")
    out = kernels.softmax(x)
    assert_close(out, reference.softmax(x.double()), torch.float32)
    assert out[0, 5] == 0 and torch.all(out[1, 450:] == 0)


@pytest.mark.parametrize(("shape", "dim"), [((3, 700), -1), ((2, 700, 3), 1)])
def test_softmax_row_starting_with_a_masked_tile(shape: tuple[int, ...], dim: int) -> None:
    """A row whose first tile is all -inf (the online pass starts from max -inf) is not NaN."""
    x = _randn(*shape, dtype=torch.float32, seed=17, scale=4.0)
    x[0, :300] = float("-inf")  # more than one interpreter tile (256 columns)
    out = kernels.softmax(x, dim)
    assert not out.isnan().any()
    assert_close(out, reference.softmax(x.double(), dim), torch.float32)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(5, 96), (2, 3, 257)])
def test_rms_norm(shape: tuple[int, ...], dtype: torch.dtype) -> None:
    x = _randn(*shape, dtype=dtype, seed=2, scale=3.0)
    weight = _randn(shape[-1], dtype=dtype, seed=3)
    assert_close(kernels.rms_norm(x, weight, 1e-5), reference.rms_norm(x.double(), weight.double(), 1e-5), dtype)


@pytest.mark.parametrize("op", ["rms_norm", "fused_add_rms_norm"])
def test_rms_norm_with_a_float32_weight_scales_before_the_cast(op: str) -> None:
    # Gemma's norms keep 1 + w in float32 and scale before rounding to the activation dtype (HF's order).
    x = _randn(9, 130, dtype=torch.float16, seed=21, scale=3.0)
    residual = _randn(9, 130, dtype=torch.float16, seed=22)
    weight = 1.0 + _randn(130, dtype=torch.float32, seed=23, scale=0.05)
    args = (x, residual) if op == "fused_add_rms_norm" else (x,)
    out = getattr(kernels, op)(*args, weight, 1e-6)
    expected = getattr(reference, op)(*args, weight, 1e-6)
    out, expected = (out[0], expected[0]) if op == "fused_add_rms_norm" else (out, expected)
    assert out.dtype == torch.float16
    summed = (x + residual if op == "fused_add_rms_norm" else x).float()
    exact = (summed * torch.rsqrt(summed.pow(2).mean(-1, keepdim=True) + 1e-6) * weight).half()
    assert torch.equal(expected, exact)  # the twin is HF Gemma's expression
    torch.testing.assert_close(out, expected, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_add_rms_norm(dtype: torch.dtype) -> None:
    x = _randn(9, 130, dtype=dtype, seed=4)
    residual = _randn(9, 130, dtype=dtype, seed=5, scale=2.0)
    weight = _randn(130, dtype=dtype, seed=6)
    normed, summed = kernels.fused_add_rms_norm(x, residual, weight, 1e-6)
    ref_normed, ref_summed = reference.fused_add_rms_norm(x.double(), residual.double(), weight.double(), 1e-6)
    assert_close(summed, ref_summed, dtype)
    assert_close(normed, ref_normed, dtype)


def test_fused_add_rms_norm_transposed_input() -> None:
    """x dense but not row-major: the summed output must still have x's values, not its strides' order."""
    x = _randn(8, 6, dtype=torch.float32, seed=18).t()  # shape (6, 8), strides (1, 6)
    residual = _randn(6, 8, dtype=torch.float32, seed=19)
    weight = _randn(8, dtype=torch.float32, seed=20)
    normed, summed = kernels.fused_add_rms_norm(x, residual, weight, 1e-5)
    ref_normed, ref_summed = reference.fused_add_rms_norm(x.double(), residual.double(), weight.double(), 1e-5)
    assert_close(summed, ref_summed, torch.float32)
    assert_close(normed, ref_normed, torch.float32)


def test_rms_norm_strided_rows_and_float32_weight() -> None:
    x = _randn(6, 200, dtype=torch.float16, seed=7)[:, :100]  # row stride 200
    weight = _randn(100, dtype=torch.float32, seed=8)
    out = kernels.rms_norm(x, weight, 1e-5)
    assert out.dtype == torch.float16  # x's dtype: a float32 weight scales before the cast (HF Gemma)
    assert_close(out, reference.rms_norm(x.double(), weight.double(), 1e-5), torch.float16)


@pytest.mark.parametrize(("num_q_heads", "num_kv_heads", "head_dim", "dtype"), [
    (4, 4, 32, torch.float32), (6, 2, 64, torch.float16), (12, 3, 128, torch.float32),
])
def test_rotary_embedding(num_q_heads: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype) -> None:
    tokens, max_position = 11, 50
    # q and k as strided slices of one fused qkv projection, as the model produces them.
    qkv = _randn(tokens, (num_q_heads + 2 * num_kv_heads) * head_dim, dtype=dtype, seed=9)
    q = qkv[:, : num_q_heads * head_dim].view(tokens, num_q_heads, head_dim)
    k = qkv[:, num_q_heads * head_dim: (num_q_heads + num_kv_heads) * head_dim].view(tokens, num_kv_heads, head_dim)
    positions = torch.randint(0, max_position, (tokens,), generator=torch.Generator().manual_seed(10))
    angles = _randn(max_position, head_dim // 2, dtype=torch.float32, seed=11, scale=3.0)
    cos, sin = angles.cos(), angles.sin()
    q_out, k_out = kernels.rotary_embedding(q, k, positions, cos, sin)
    q_ref, k_ref = reference.rotary_embedding(q.double(), k.double(), positions, cos.double(), sin.double())
    assert_close(q_out, q_ref, dtype)
    assert_close(k_out, k_ref, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(5, 2 * 40), (2, 3, 2 * 300)])
def test_silu_and_mul(shape: tuple[int, ...], dtype: torch.dtype) -> None:
    x = _randn(*shape, dtype=dtype, seed=12, scale=3.0)
    assert_close(kernels.silu_and_mul(x), reference.silu_and_mul(x.double()), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(5, 2 * 40), (2, 3, 2 * 300)])
def test_gelu_tanh_and_mul(shape: tuple[int, ...], dtype: torch.dtype) -> None:
    x = _randn(*shape, dtype=dtype, seed=13, scale=3.0)
    assert_close(kernels.gelu_tanh_and_mul(x), reference.gelu_tanh_and_mul(x.double()), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ["silu_and_mul", "gelu_tanh_and_mul"])
def test_gated_activations_write_into_strided_out(name: str, dtype: torch.dtype) -> None:
    activation = getattr(kernels, name)
    x = _randn(4, 2 * 300, dtype=dtype, seed=14, scale=3.0)
    wide = torch.full((4, 400), 7.0, dtype=dtype)
    assert activation(x, out=wide[:, 50:350]).data_ptr() == wide[:, 50:350].data_ptr()
    assert torch.equal(wide[:, 50:350], activation(x))
    assert (wide[:, :50] == 7).all() and (wide[:, 350:] == 7).all()


@pytest.mark.parametrize(("block_size", "dtype"), [(16, torch.float32), (32, torch.float16)])
def test_store_kv_cache(block_size: int, dtype: torch.dtype) -> None:
    num_kv_heads, head_dim, num_blocks = 3, 64, 5
    tokens = 9
    kv = _randn(tokens, 2 * num_kv_heads * head_dim, dtype=dtype, seed=13)
    k = kv[:, : num_kv_heads * head_dim].view(tokens, num_kv_heads, head_dim)  # strided views
    v = kv[:, num_kv_heads * head_dim:].view(tokens, num_kv_heads, head_dim)
    slots = torch.randperm(num_blocks * block_size, generator=torch.Generator().manual_seed(14))[:tokens]
    slots[[2, 6]] = -1  # padding tokens are skipped
    # The caches as the engine allocates them: views into one [layers, 2, ...] tensor.
    kv_cache = _randn(2, 2, num_blocks, block_size, num_kv_heads, head_dim, dtype=dtype, seed=15)
    expected = kv_cache.clone()
    kernels.store_kv_cache(k, v, kv_cache[1, 0], kv_cache[1, 1], slots)
    reference.store_kv_cache(k, v, expected[1, 0], expected[1, 1], slots)
    assert torch.equal(kv_cache, expected)


def test_store_kv_cache_skips_out_of_range_slots() -> None:
    k = _randn(2, 1, 16, dtype=torch.float32, seed=16)
    k_cache = torch.zeros(2, 16, 1, 16)
    v_cache = torch.zeros(2, 16, 1, 16)
    kernels.store_kv_cache(k, k, k_cache, v_cache, torch.tensor([5, 32], dtype=torch.int32))
    assert torch.equal(k_cache.view(-1, 16)[5], k[0, 0]) and k_cache.count_nonzero() == 16


class TestInputChecks:
    def test_float64_and_bfloat16_are_refused(self) -> None:
        with pytest.raises(ValueError, match="x must have dtype in"):
            kernels.softmax(torch.randn(3, 4, dtype=torch.float64))
        with pytest.raises(ValueError, match="no bfloat16"):
            kernels.silu_and_mul(torch.randn(3, 4, dtype=torch.bfloat16))

    def test_device(self) -> None:
        with pytest.raises(ValueError, match="x must be on a CUDA device or on the CPU; got device meta"):
            kernels.softmax(torch.empty(3, 4, device="meta"))

    def test_softmax_dim(self) -> None:
        with pytest.raises(ValueError, match=r"dim must be an int in \[-2, 2\), got 2"):
            kernels.softmax(torch.randn(3, 4), dim=2)

    def test_rms_norm_shapes_and_eps(self) -> None:
        x = torch.randn(3, 8)
        with pytest.raises(ValueError, match=r"weight must have shape \(8,\)"):
            kernels.rms_norm(x, torch.ones(7), 1e-5)
        for eps in (0.0, float("inf"), float("nan")):
            with pytest.raises(ValueError, match="eps must be a positive finite float"):
                kernels.rms_norm(x, torch.ones(8), eps)
        with pytest.raises(ValueError, match="residual must have the shape of x"):
            kernels.fused_add_rms_norm(x, torch.randn(3, 7), torch.ones(8), 1e-5)
        with pytest.raises(ValueError, match="x, residual must share one dtype"):
            kernels.fused_add_rms_norm(x, torch.randn(3, 8).half(), torch.ones(8), 1e-5)

    def test_rotary_shapes(self) -> None:
        q, k = torch.randn(4, 2, 8), torch.randn(4, 1, 8)
        cos = torch.ones(10, 4)
        with pytest.raises(ValueError, match="must agree on the token count"):
            kernels.rotary_embedding(q, k, torch.arange(3), cos, cos)
        with pytest.raises(ValueError, match="cos_cache and sin_cache must have shape"):
            kernels.rotary_embedding(q, k, torch.arange(4), torch.ones(10, 3), torch.ones(10, 3))
        with pytest.raises(ValueError, match="positions must have dtype in"):
            kernels.rotary_embedding(q, k, torch.arange(4.0), cos, cos)
        with pytest.raises(ValueError, match="positions must be contiguous"):
            kernels.rotary_embedding(q, k, torch.arange(8)[::2], cos, cos)

    def test_silu_and_mul_odd_width(self) -> None:
        with pytest.raises(ValueError, match="last dimension must be even"):
            kernels.silu_and_mul(torch.randn(3, 5))

    def test_store_kv_cache(self) -> None:
        k = torch.randn(2, 1, 16)
        cache = torch.zeros(2, 16, 1, 16)
        with pytest.raises(ValueError, match="slot_mapping must have one slot per token"):
            kernels.store_kv_cache(k, k, cache, cache, torch.tensor([0]))
        with pytest.raises(ValueError, match="must match caches"):
            kernels.store_kv_cache(k, k, torch.zeros(2, 16, 2, 16), torch.zeros(2, 16, 2, 16), torch.tensor([0, 1]))
        with pytest.raises(ValueError, match="must share one dtype"):
            kernels.store_kv_cache(k, k, cache.half(), cache.half(), torch.tensor([0, 1]))
        with pytest.raises(ValueError, match="contiguous in its last dimension"):
            strided = torch.randn(2, 1, 32)[:, :, ::2]
            kernels.store_kv_cache(strided, strided, cache, cache, torch.tensor([0, 1]))
        with pytest.raises(ValueError, match="slot_mapping must be contiguous"):
            kernels.store_kv_cache(k, k, cache, cache, torch.tensor([0, 5, 1, 5])[::2])

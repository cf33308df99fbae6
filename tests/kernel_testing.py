"""Helpers for the kernel tests: tolerances against float64 references, packed lengths, paged caches."""

from __future__ import annotations

import torch

# Max |kernel - reference| over max |reference|, the reference computed in float64 from the same
# (rounded) inputs. float16 allows for the kernels' half-precision roundings (outputs, P tiles).
TOLERANCE = {torch.float32: 1e-4, torch.float16: 5e-3}


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.double(), ref.double()
    return ((out - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item()


def assert_close(out: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype) -> None:
    assert out.shape == ref.shape, (out.shape, ref.shape)
    assert out.dtype == dtype, out.dtype
    error = relative_error(out, ref)
    assert error < TOLERANCE[dtype], f"relative error {error:.3g} >= {TOLERANCE[dtype]:g} ({dtype})"


def cu_seqlens(lengths: list[int]) -> torch.Tensor:
    """int32 [B + 1] cumulative lengths starting at 0."""
    return torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)


def paged_cache(
    lengths: list[int], block_size: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype,
    generator: torch.Generator, spare_blocks: int = 3,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random (k_cache, v_cache, block_table) where each sequence owns ceil(length / block_size)
    blocks handed out in a shuffled order; unused table entries point at a spare block."""
    blocks_per_seq = [-(-n // block_size) for n in lengths]
    num_blocks = sum(blocks_per_seq) + spare_blocks
    order = torch.randperm(num_blocks, generator=generator).to(torch.int32)
    width = max(max(blocks_per_seq), 1) + 1  # one spare column: tables are wider than needed
    table = torch.full((len(lengths), width), int(order[-1]), dtype=torch.int32)
    taken = 0
    for row, count in enumerate(blocks_per_seq):
        table[row, :count] = order[taken:taken + count]
        taken += count
    shape = (num_blocks, block_size, num_kv_heads, head_dim)
    k_cache = torch.randn(shape, generator=generator).to(dtype)
    v_cache = torch.randn(shape, generator=generator).to(dtype)
    return k_cache, v_cache, table

"""Write the new tokens' keys and values into the paged KV cache, by slot.

One program per token copies all of its KV heads for both k and v. A slot is
block * block_size + offset; negative slots mark padding tokens and are skipped.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fastllm.kernels._checks import check_contiguous_last_dim, check_store_kv_cache
from fastllm.kernels._runtime import INTERPRETER, check_launchable, next_power_of_2


@triton.jit
def _store_kv_cache_kernel(
    k_ptr, v_ptr, k_cache_ptr, v_cache_ptr, slot_mapping_ptr,
    num_slots, num_kv_heads,
    stride_kt, stride_kh, stride_vt, stride_vh,
    stride_kc_block, stride_kc_token, stride_kc_head,
    stride_vc_block, stride_vc_token, stride_vc_head,
    HEAD_DIM: tl.constexpr, KV_BLOCK_SIZE: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr,
):
    token = tl.program_id(0).to(tl.int64)
    slot = tl.load(slot_mapping_ptr + token).to(tl.int64)
    # Padding (slot < 0) is skipped; so is an out-of-range slot, which must never write past the cache.
    if (slot >= 0) & (slot < num_slots):
        block = slot // KV_BLOCK_SIZE
        offset = slot % KV_BLOCK_SIZE
        h = tl.arange(0, BLOCK_H)[:, None]
        d = tl.arange(0, BLOCK_D)[None, :]
        mask = (h < num_kv_heads) & (d < HEAD_DIM)
        k = tl.load(k_ptr + token * stride_kt + h * stride_kh + d, mask=mask)
        v = tl.load(v_ptr + token * stride_vt + h * stride_vh + d, mask=mask)
        k_dst = k_cache_ptr + block * stride_kc_block + offset * stride_kc_token + h * stride_kc_head + d
        v_dst = v_cache_ptr + block * stride_vc_block + offset * stride_vc_token + h * stride_vc_head + d
        tl.store(k_dst, k, mask=mask)
        tl.store(v_dst, v, mask=mask)


def store_kv_cache(
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    """Write new keys/values into the paged caches, in place.

    k, v: [T, Hkv, D]; caches: [num_blocks, block_size, Hkv, D]; slot_mapping: int [T] with
    slot = block * block_size + offset. Slots < 0 are padding and skipped (so are slots past the
    end of the cache: they are the caller's bug, and must not corrupt memory).
    """
    check_store_kv_cache(k, v, k_cache, v_cache, slot_mapping)
    check_launchable(("k", k), ("v", v), ("k_cache", k_cache), ("v_cache", v_cache), ("slot_mapping", slot_mapping))
    for name, t in (("k", k), ("v", v), ("k_cache", k_cache), ("v_cache", v_cache), ("slot_mapping", slot_mapping)):
        check_contiguous_last_dim(name, t)
    num_tokens, num_kv_heads, head_dim = k.shape
    if num_tokens == 0:
        return
    num_blocks, block_size = k_cache.shape[:2]
    _store_kv_cache_kernel[(num_tokens,)](
        k, v, k_cache, v_cache, slot_mapping,
        num_blocks * block_size, num_kv_heads,
        k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        HEAD_DIM=head_dim, KV_BLOCK_SIZE=block_size,
        BLOCK_H=next_power_of_2(num_kv_heads), BLOCK_D=next_power_of_2(head_dim),
        num_warps=1 if INTERPRETER else 4,
    )

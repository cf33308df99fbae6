"""Hand-written Triton kernels, with the names and signatures of their PyTorch twins.

Every function here has a plain-PyTorch twin of the same name in `fastllm.kernels.reference`
(the engine's `backend="torch"`); this module is `backend="triton"`. Importing it needs no GPU:
launching does, or TRITON_INTERPRET=1 set before the import, which runs the kernels on the CPU
(fp16/fp32 only; the interpreter has no bfloat16).

    softmax(x, dim=-1)
    rms_norm(x, weight, eps) / fused_add_rms_norm(x, residual, weight, eps)
    rotary_embedding(q, k, positions, cos_cache, sin_cache)
    silu_and_mul(x)
    store_kv_cache(k, v, k_cache, v_cache, slot_mapping)
    varlen_attention(q, k, v, cu_seqlens_q, cu_seqlens_k, *, causal, softmax_scale, block_table, ...)
    paged_decode_attention(q, k_cache, v_cache, cache_seqlens, block_table, *, softmax_scale)
    sample(logits, temperature, top_k, top_p, min_p, seeds)
"""

from fastllm.kernels.activation import silu_and_mul
from fastllm.kernels.attention import varlen_attention
from fastllm.kernels.decode_attention import paged_decode_attention
from fastllm.kernels.kv_cache import store_kv_cache
from fastllm.kernels.norm import fused_add_rms_norm, rms_norm
from fastllm.kernels.rotary import rotary_embedding
from fastllm.kernels.sampling import sample
from fastllm.kernels.softmax import softmax

__all__ = [
    "fused_add_rms_norm",
    "paged_decode_attention",
    "rms_norm",
    "rotary_embedding",
    "sample",
    "silu_and_mul",
    "softmax",
    "store_kv_cache",
    "varlen_attention",
]

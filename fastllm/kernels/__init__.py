"""Hand-written Triton kernels, with the names and signatures of their PyTorch twins.

Every function here has a plain-PyTorch twin of the same name in `fastllm.kernels.reference`
(the engine's `backend="torch"`); this module is `backend="triton"`. Importing it needs no GPU:
launching does, or TRITON_INTERPRET=1 set before the import, which runs the kernels on the CPU
(fp16/fp32 only; the interpreter has no bfloat16).

    softmax(x, dim=-1)
    rms_norm(x, weight, eps) / fused_add_rms_norm(x, residual, weight, eps)
    rotary_embedding(q, k, positions, cos_cache, sin_cache)
    silu_and_mul(x) / gelu_tanh_and_mul(x)
    store_kv_cache(k, v, k_cache, v_cache, slot_mapping)
    varlen_attention(q, k, v, cu_seqlens_q, cu_seqlens_k, *, causal, softmax_scale, block_table, ..., window)
    paged_decode_attention(q, k_cache, v_cache, cache_seqlens, block_table, *, softmax_scale, window)
    sample(logits, temperature, top_k, top_p, min_p, seeds)
"""

from __future__ import annotations

from fastllm._lazy import lazy_exports

# Imported on first use: the "torch" and "cpu" backends import this package's reference and C++
# ops, and must not pay for Triton (about 70 MB of resident memory, and its start-up time). No
# module is named like a function here: importing it would bind its name to the module.
_EXPORTS = {
    "fused_add_rms_norm": "fastllm.kernels.norm",
    "gelu_tanh_and_mul": "fastllm.kernels.activation",
    "paged_decode_attention": "fastllm.kernels.decode_attention",
    "rms_norm": "fastllm.kernels.norm",
    "rotary_embedding": "fastllm.kernels.rotary",
    "sample": "fastllm.kernels.sampling",
    "silu_and_mul": "fastllm.kernels.activation",
    "softmax": "fastllm.kernels.fused_softmax",
    "store_kv_cache": "fastllm.kernels.kv_cache",
    "varlen_attention": "fastllm.kernels.attention",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

"""The seam between the model and its ops: one `Backend` class over three op modules.

`get_backend("torch")` wraps `fastllm.kernels.reference` (plain PyTorch, any device);
`get_backend("triton")` wraps `fastllm.kernels` (Triton, CUDA or TRITON_INTERPRET=1);
`get_backend("cpu")` wraps `fastllm.kernels.cpu` (the PyTorch ops, some of them in C++).
The modules expose the same function names and signatures, so the model never knows which it runs.
"""

from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass
from types import ModuleType

import torch

BACKEND_NAMES = ("torch", "triton", "cpu")
BACKEND_MODULES = {"torch": "fastllm.kernels.reference", "triton": "fastllm.kernels", "cpu": "fastllm.kernels.cpu"}
# The ops every backend module must provide (same names and signatures as fastllm.kernels.reference).
OP_NAMES = (
    "rms_norm",
    "fused_add_rms_norm",
    "rotary_embedding",
    "silu_and_mul",
    "store_kv_cache",
    "varlen_attention",
    "paged_decode_attention",
    "softmax",
    "sample",
)


@dataclass
class AttentionMetadata:
    """Where the tokens of one model step sit: built by the engine's runner for each step.

    Prefill steps pack prompt chunks of several sequences back to back (varlen); decode steps
    carry exactly one new token per sequence.
    """

    is_prefill: bool
    slot_mapping: torch.Tensor  # int64 [T]: cache slot (block * block_size + offset) per new token; -1 = skip
    cu_seqlens_q: torch.Tensor | None = None  # prefill: int32 [B + 1]
    cu_seqlens_k: torch.Tensor | None = None  # prefill: int32 [B + 1], total (cached + new) lengths
    max_seqlen_q: int = 0
    max_seqlen_k: int = 0
    context_lens: torch.Tensor | None = None  # decode: int32 [B], new token included
    # int32 [B, max_blocks]: decode always; prefill only when some sequence attends to cached
    # tokens (prefix-cache hit or a later chunk of a chunked prefill).
    block_tables: torch.Tensor | None = None


class Backend:
    """A named set of ops (the functions of one op module) plus `attention` built on them."""

    def __init__(self, name: str, ops: ModuleType) -> None:
        missing = [op for op in OP_NAMES if not callable(getattr(ops, op, None))]
        if missing:
            raise ValueError(f"backend {name!r}: module {ops.__name__} lacks the ops {', '.join(missing)}")
        self.name = name
        self.ops = ops
        for op in OP_NAMES:
            setattr(self, op, getattr(ops, op))

    def __repr__(self) -> str:
        return f"Backend({self.name!r}, ops={self.ops.__name__})"

    def attention(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        meta: AttentionMetadata,
        scale: float,
    ) -> torch.Tensor:
        """Store the new k/v in the paged cache, then attend; q [T, Hq, D], k/v [T, Hkv, D] -> [T, Hq, D].

        Prefill with no block table attends over the new (contiguous) k/v; prefill with one
        attends over the paged cache, which by then holds the cached prefix and the new tokens;
        decode attends over the paged cache.
        """
        self.store_kv_cache(k, v, k_cache, v_cache, meta.slot_mapping)
        if not meta.is_prefill:
            return self.paged_decode_attention(
                q, k_cache, v_cache, meta.context_lens, meta.block_tables, softmax_scale=scale
            )
        paged = meta.block_tables is not None
        return self.varlen_attention(
            q,
            k_cache if paged else k,
            v_cache if paged else v,
            meta.cu_seqlens_q,
            meta.cu_seqlens_k,
            causal=True,
            softmax_scale=scale,
            block_table=meta.block_tables,
            max_seqlen_q=meta.max_seqlen_q,
            max_seqlen_k=meta.max_seqlen_k,
        )


def _check_triton_runnable() -> None:
    # The kernels chose GPU or interpreter when fastllm.kernels was imported: ask them, not the
    # environment now (which may have changed since, and which Triton parses more loosely).
    from fastllm.kernels._runtime import INTERPRETER

    if torch.cuda.is_available() or INTERPRETER:
        return
    raise ValueError(
        "backend 'triton' needs a CUDA GPU (or TRITON_INTERPRET=1, set before fastllm.kernels is imported, "
        "to run its kernels slowly on the CPU); no CUDA device is available here: use backend='torch' or "
        "backend='auto'"
    )


def get_backend(name: str) -> Backend:
    """The backend called `name`: "torch" (PyTorch reference ops), "triton" (Triton kernels) or "cpu"."""
    if name not in BACKEND_NAMES:
        raise ValueError(f"backend must be one of {', '.join(map(repr, BACKEND_NAMES))}, got {name!r}")
    backend = _load_backend(name)  # imports fastllm.kernels for "triton": the check below reads it
    if name == "triton":
        _check_triton_runnable()
    return backend


@functools.cache
def _load_backend(name: str) -> Backend:
    module_name = BACKEND_MODULES[name]
    try:
        ops = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"backend {name!r} is unavailable: importing {module_name} failed ({exc})") from exc
    return Backend(name, ops)


def resolve_backend(name: str, device: torch.device | str) -> str:
    """Resolve "auto" for `device`: "triton" on CUDA, "cpu" on a CPU, "torch" elsewhere; other names
    pass through checked."""
    if name == "auto":
        return {"cuda": "triton", "cpu": "cpu"}.get(torch.device(device).type, "torch")
    if name not in BACKEND_NAMES:
        raise ValueError(f"backend must be 'auto' or one of {', '.join(map(repr, BACKEND_NAMES))}, got {name!r}")
    return name

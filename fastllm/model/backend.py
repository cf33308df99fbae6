"""The seam between the model and its ops: `Backend`, one typed record of the ops, filled from one of
three op modules.

`get_backend("torch")` takes them from `fastllm.kernels.reference` (plain PyTorch, any device);
`get_backend("triton")` from `fastllm.kernels` (Triton, CUDA or TRITON_INTERPRET=1);
`get_backend("cpu")` from `fastllm.kernels.cpu` (the PyTorch ops, some of them in C++).
The modules define functions of the same names and signatures, the ones `Backend`'s fields
declare here, so the model never knows which it runs.
"""

from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass, fields
from types import ModuleType
from typing import Protocol

import torch

BACKEND_NAMES = ("torch", "triton", "cpu")
BACKEND_MODULES = {"torch": "fastllm.kernels.reference", "triton": "fastllm.kernels", "cpu": "fastllm.kernels.cpu"}


# -- the ops' signatures (those of fastllm.kernels.reference, which documents their semantics) --------


class RmsNorm(Protocol):
    def __call__(self, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor: ...


class FusedAddRmsNorm(Protocol):
    def __call__(
        self, x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
    ) -> tuple[torch.Tensor, torch.Tensor]: ...


class RotaryEmbedding(Protocol):
    def __call__(
        self, q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, cos_cache: torch.Tensor, sin_cache: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]: ...


class GatedActivation(Protocol):  # silu_and_mul, gelu_tanh_and_mul: [..., 2I] = [gate | up] -> act(gate) * up
    def __call__(self, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor: ...


class StoreKVCache(Protocol):
    def __call__(
        self, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, slot_mapping: torch.Tensor
    ) -> None: ...


class VarlenAttention(Protocol):
    def __call__(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        cu_seqlens_q: torch.Tensor,
        cu_seqlens_k: torch.Tensor,
        *,
        causal: bool = True,
        softmax_scale: float | None = None,
        block_table: torch.Tensor | None = None,
        max_seqlen_q: int | None = None,
        max_seqlen_k: int | None = None,
        window: int | None = None,
    ) -> torch.Tensor: ...


class PagedDecodeAttention(Protocol):
    def __call__(
        self,
        q: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        cache_seqlens: torch.Tensor,
        block_table: torch.Tensor,
        *,
        softmax_scale: float | None = None,
        window: int | None = None,
    ) -> torch.Tensor: ...


class Softmax(Protocol):
    def __call__(self, x: torch.Tensor, dim: int = -1) -> torch.Tensor: ...


class Sample(Protocol):
    def __call__(
        self,
        logits: torch.Tensor,
        temperature: torch.Tensor,
        top_k: torch.Tensor,
        top_p: torch.Tensor,
        min_p: torch.Tensor,
        seeds: torch.Tensor,
    ) -> torch.Tensor: ...


@dataclass
class AttentionMetadata:
    """Where the tokens of one model step sit: built by the engine's runner for each step.

    A decode step (`is_prefill` False) carries one new token per sequence: `context_lens` and
    `block_tables` describe them. A prefill step packs prompt chunks of several sequences back to
    back (varlen, `cu_seqlens_*`). A mixed step is a prefill step whose first `num_decode_tokens`
    rows are decode tokens of other sequences: those rows are described by `context_lens` and the
    first `num_decode_tokens` rows of `block_tables`, the rest by `cu_seqlens_*` (counted from the
    first prefill row) and the remaining rows of `block_tables`.
    """

    is_prefill: bool
    slot_mapping: torch.Tensor  # int64 [T]: cache slot (block * block_size + offset) per new token; -1 = skip
    cu_seqlens_q: torch.Tensor | None = None  # prefill: int32 [B + 1]
    cu_seqlens_k: torch.Tensor | None = None  # prefill: int32 [B + 1], total (cached + new) lengths
    max_seqlen_q: int = 0
    max_seqlen_k: int = 0
    context_lens: torch.Tensor | None = None  # decode rows: int32 [B], new token included
    # int32 [B, max_blocks]: decode rows always; prefill only when some sequence attends to cached
    # tokens (prefix-cache hit, a later chunk of a chunked prefill, or any prefill of a mixed step).
    block_tables: torch.Tensor | None = None
    num_decode_tokens: int = 0  # mixed steps: the leading rows that are decode tokens


@dataclass(frozen=True)
class Backend:
    """A named set of ops, plus `attention` built on them. Build one with `get_backend`."""

    name: str
    rms_norm: RmsNorm
    fused_add_rms_norm: FusedAddRmsNorm
    rotary_embedding: RotaryEmbedding
    silu_and_mul: GatedActivation
    gelu_tanh_and_mul: GatedActivation
    store_kv_cache: StoreKVCache
    varlen_attention: VarlenAttention
    paged_decode_attention: PagedDecodeAttention
    softmax: Softmax
    sample: Sample

    @classmethod
    def from_module(cls, name: str, module: ModuleType) -> Backend:
        """The backend whose ops are `module`'s functions of the same names."""
        ops = {op: getattr(module, op, None) for op in OP_NAMES}
        missing = [op for op, function in ops.items() if not callable(function)]
        if missing:
            raise ValueError(f"backend {name!r}: module {module.__name__} lacks the ops {', '.join(missing)}")
        return cls(name, **ops)

    def __repr__(self) -> str:
        return f"Backend({self.name!r})"

    def attention(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        meta: AttentionMetadata,
        scale: float,
        *,
        window: int | None = None,
    ) -> torch.Tensor:
        """Store the new k/v in the paged cache, then attend; q [T, Hq, D], k/v [T, Hkv, D] -> [T, Hq, D].

        Decode rows attend over the paged cache; prefill rows over the new (contiguous) k/v when
        there is no block table, else over the paged cache, which by then holds their cached
        prefix and the new tokens. With a `window`, each query sees only the last `window` tokens
        up to itself (sliding-window layers).
        """
        self.store_kv_cache(k, v, k_cache, v_cache, meta.slot_mapping)
        if not meta.is_prefill:
            return self._decode(q, k_cache, v_cache, meta.context_lens, meta.block_tables, scale, window)
        num_decode = meta.num_decode_tokens
        if num_decode == 0:
            return self._prefill(q, k, v, k_cache, v_cache, meta, meta.block_tables, scale, window)
        tables = meta.block_tables
        decoded = self._decode(q[:num_decode], k_cache, v_cache, meta.context_lens, tables[:num_decode], scale, window)
        prefilled = self._prefill(q[num_decode:], k, v, k_cache, v_cache, meta, tables[num_decode:], scale, window)
        return torch.cat([decoded, prefilled])

    def _decode(
        self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, context_lens: torch.Tensor,
        block_tables: torch.Tensor, scale: float, window: int | None,
    ) -> torch.Tensor:
        return self.paged_decode_attention(
            q, k_cache, v_cache, context_lens, block_tables, softmax_scale=scale, window=window
        )

    def _prefill(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
        meta: AttentionMetadata, block_tables: torch.Tensor | None, scale: float, window: int | None,
    ) -> torch.Tensor:
        paged = block_tables is not None
        return self.varlen_attention(
            q,
            k_cache if paged else k,
            v_cache if paged else v,
            meta.cu_seqlens_q,
            meta.cu_seqlens_k,
            causal=True,
            softmax_scale=scale,
            block_table=block_tables,
            max_seqlen_q=meta.max_seqlen_q,
            max_seqlen_k=meta.max_seqlen_k,
            window=window,
        )


# The ops every backend module must provide: Backend's fields after its name.
OP_NAMES = tuple(field.name for field in fields(Backend))[1:]


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
    return Backend.from_module(name, ops)


def resolve_backend(name: str, device: torch.device | str) -> str:
    """Resolve "auto" for `device`: "triton" on CUDA, "cpu" on a CPU, "torch" elsewhere; other names
    pass through checked."""
    if name == "auto":
        return {"cuda": "triton", "cpu": "cpu"}.get(torch.device(device).type, "torch")
    if name not in BACKEND_NAMES:
        raise ValueError(f"backend must be 'auto' or one of {', '.join(map(repr, BACKEND_NAMES))}, got {name!r}")
    return name

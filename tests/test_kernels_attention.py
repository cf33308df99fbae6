"""Triton varlen (prefill) and paged decode attention vs their float64 PyTorch twins.

In the interpreter the kernels use 16 x 16 tiles, so sequence lengths 1, 15, 16, 17 and 40
cover one token, a tile minus one, exactly one tile, one past it and several tiles, and the
KV-cache block sizes 16 and 32 put block edges on and between tile edges.
"""

from __future__ import annotations

import pytest
import torch
from kernel_testing import assert_close, cu_seqlens, paged_cache

import fastllm.kernels as kernels
from fastllm.kernels import reference
from fastllm.kernels.decode_attention import _paged_decode, num_splits_for

GQA_CASES = [  # (query heads, KV heads, head dim, dtype): groups 1, 3 and 4; head dims 32, 64, 128
    (2, 2, 32, torch.float32),
    (6, 2, 64, torch.float16),
    (4, 1, 128, torch.float32),
    (3, 1, 64, torch.float32),
]


def _randn(*shape: int, dtype: torch.dtype, generator: torch.Generator) -> torch.Tensor:
    return torch.randn(shape, generator=generator).to(dtype)


def _packed(lengths_q: list[int], lengths_k: list[int], num_q_heads: int, num_kv_heads: int, head_dim: int,
            dtype: torch.dtype, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
    """Random packed q, k, v and their cu_seqlens for sequences of these query and key lengths."""
    q = _randn(sum(lengths_q), num_q_heads, head_dim, dtype=dtype, generator=generator)
    k = _randn(sum(lengths_k), num_kv_heads, head_dim, dtype=dtype, generator=generator)
    v = _randn(sum(lengths_k), num_kv_heads, head_dim, dtype=dtype, generator=generator)
    return q, k, v, cu_seqlens(lengths_q), cu_seqlens(lengths_k)


@pytest.mark.parametrize(("num_q_heads", "num_kv_heads", "head_dim", "dtype"), GQA_CASES)
@pytest.mark.parametrize("causal", [True, False])
def test_varlen_attention(num_q_heads: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype, causal: bool) -> None:
    generator = torch.Generator().manual_seed(num_q_heads * 1000 + head_dim + causal)
    # (queries, keys) per sequence: equal lengths around the tile edge and several tiles, then
    # fewer queries than keys (bottom-right causal) and more (leading queries see no key).
    q, k, v, cu_q, cu_k = _packed([1, 15, 16, 17, 40, 3, 20], [1, 15, 16, 17, 40, 21, 4], num_q_heads,
                                  num_kv_heads, head_dim, dtype, generator)
    out = kernels.varlen_attention(q, k, v, cu_q, cu_k, causal=causal)
    ref = reference.varlen_attention(q.double(), k.double(), v.double(), cu_q, cu_k, causal=causal)
    assert_close(out, ref, dtype)


@pytest.mark.parametrize(("num_q_heads", "num_kv_heads", "head_dim", "dtype"), GQA_CASES[:3])
@pytest.mark.parametrize("block_size", [16, 32])
def test_varlen_attention_paged(num_q_heads: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype,
                                block_size: int) -> None:
    """Prefix-cache hits and chunked prefill: the new queries attend over a shuffled paged cache."""
    generator = torch.Generator().manual_seed(block_size * 100 + head_dim)
    lengths_k = [1, block_size - 1, block_size, block_size + 1, 3 * block_size + 5]  # cached + new
    lengths_q = [1, block_size - 1, 5, 1, 2 * block_size]  # the new tokens, the last of each sequence
    k_cache, v_cache, table = paged_cache(lengths_k, block_size, num_kv_heads, head_dim, dtype, generator)
    q = _randn(sum(lengths_q), num_q_heads, head_dim, dtype=dtype, generator=generator)
    cu_q, cu_k = cu_seqlens(lengths_q), cu_seqlens(lengths_k)
    out = kernels.varlen_attention(
        q, k_cache, v_cache, cu_q, cu_k, block_table=table, max_seqlen_q=max(lengths_q), max_seqlen_k=max(lengths_k)
    )
    ref = reference.varlen_attention(q.double(), k_cache.double(), v_cache.double(), cu_q, cu_k, block_table=table)
    assert_close(out, ref, dtype)


def test_varlen_attention_scale_and_strided_inputs() -> None:
    generator = torch.Generator().manual_seed(7)
    lengths = [9, 18]
    qkv = _randn(sum(lengths), 3, 2, 32, dtype=torch.float32, generator=generator)
    q, k, v = qkv.unbind(1)  # strided [T, H, D] views of a packed qkv tensor
    cu = cu_seqlens(lengths)
    out = kernels.varlen_attention(q, k, v, cu, cu, softmax_scale=0.3)
    ref = reference.varlen_attention(q.double(), k.double(), v.double(), cu, cu, softmax_scale=0.3)
    assert_close(out, ref, torch.float32)


@pytest.mark.parametrize(("num_q_heads", "num_kv_heads", "head_dim", "dtype"), GQA_CASES)
@pytest.mark.parametrize(("block_size", "num_splits"), [(16, 1), (32, 3), (16, None)])
def test_paged_decode_attention(num_q_heads: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype,
                                block_size: int, num_splits: int | None) -> None:
    generator = torch.Generator().manual_seed(num_q_heads * 10 + head_dim + block_size)
    lengths = [1, block_size - 1, block_size, block_size + 1, 4 * block_size + 3]
    k_cache, v_cache, table = paged_cache(lengths, block_size, num_kv_heads, head_dim, dtype, generator)
    q = _randn(len(lengths), num_q_heads, head_dim, dtype=dtype, generator=generator)
    seqlens = torch.tensor(lengths, dtype=torch.int32)
    if num_splits is None:
        out = kernels.paged_decode_attention(q, k_cache, v_cache, seqlens, table)
    else:
        out = _paged_decode(q, k_cache, v_cache, seqlens, table, softmax_scale=None, num_splits=num_splits)
    ref = reference.paged_decode_attention(q.double(), k_cache.double(), v_cache.double(), seqlens, table)
    assert_close(out, ref, dtype)


def test_paged_decode_attention_matches_varlen_with_one_query() -> None:
    """A decode step is a paged prefill chunk of one token: both kernels must agree."""
    generator = torch.Generator().manual_seed(8)
    lengths = [5, 33, 70]
    k_cache, v_cache, table = paged_cache(lengths, 16, 2, 64, torch.float32, generator)
    q = _randn(len(lengths), 8, 64, dtype=torch.float32, generator=generator)
    decode = _paged_decode(q, k_cache, v_cache, torch.tensor(lengths, dtype=torch.int32), table,
                           softmax_scale=0.2, num_splits=4)
    prefill = kernels.varlen_attention(q, k_cache, v_cache, cu_seqlens([1, 1, 1]), cu_seqlens(lengths),
                                       softmax_scale=0.2, block_table=table)
    assert_close(decode, prefill.double(), torch.float32)


# -- sliding windows --------------------------------------------------------------------------------

# Windows of one key, inside a 16-key tile, across tile edges, and longer than every sequence.
WINDOWS = [1, 5, 16, 23, 1000]


def _naive_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int | None) -> torch.Tensor:
    """One sequence, float64, by definition: query i (of lq, bottom-right aligned over lk keys) sees
    keys j with i + lk - lq - window < j <= i + lk - lq; softmax over them (zeros if none)."""
    lq, lk, group = q.shape[0], k.shape[0], q.shape[1] // k.shape[1]
    out = torch.zeros(q.shape, dtype=torch.float64)
    for i in range(lq):
        last = i + lk - lq
        first = 0 if window is None else max(0, last - window + 1)
        if last < 0:
            continue
        for h in range(q.shape[1]):
            keys, values = k[first:last + 1, h // group].double(), v[first:last + 1, h // group].double()
            weights = torch.softmax(keys @ q[i, h].double() / q.shape[-1] ** 0.5, dim=0)
            out[i, h] = weights @ values
    return out


@pytest.mark.parametrize("window", [1, 4, 9, 100])
def test_reference_window_is_the_definition(window: int) -> None:
    generator = torch.Generator().manual_seed(window)
    q, k, v, cu_q, cu_k = _packed([1, 7, 12, 9], [1, 7, 20, 5], 4, 2, 8, torch.float64, generator)
    out = reference.varlen_attention(q, k, v, cu_q, cu_k, window=window)
    for b in range(len(cu_q) - 1):
        q0, q1, k0, k1 = cu_q[b], cu_q[b + 1], cu_k[b], cu_k[b + 1]
        torch.testing.assert_close(out[q0:q1], _naive_attention(q[q0:q1], k[k0:k1], v[k0:k1], window))


@pytest.mark.parametrize(("num_q_heads", "num_kv_heads", "head_dim", "dtype"), GQA_CASES[:2])
@pytest.mark.parametrize("window", WINDOWS)
def test_varlen_attention_window(num_q_heads: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype,
                                 window: int) -> None:
    generator = torch.Generator().manual_seed(window * 10 + head_dim)
    q, k, v, cu_q, cu_k = _packed([1, 15, 17, 40, 3, 20], [1, 15, 17, 40, 37, 4], num_q_heads, num_kv_heads,
                                  head_dim, dtype, generator)
    out = kernels.varlen_attention(q, k, v, cu_q, cu_k, window=window)
    ref = reference.varlen_attention(q.double(), k.double(), v.double(), cu_q, cu_k, window=window)
    assert_close(out, ref, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("window", WINDOWS)
def test_varlen_attention_paged_window(dtype: torch.dtype, window: int) -> None:
    """Chunked prefill and prefix hits through a sliding window over a shuffled paged cache."""
    generator = torch.Generator().manual_seed(window)
    lengths_k = [1, 15, 16, 17, 53]
    lengths_q = [1, 15, 5, 1, 32]
    k_cache, v_cache, table = paged_cache(lengths_k, 16, 2, 32, dtype, generator)
    q = _randn(sum(lengths_q), 6, 32, dtype=dtype, generator=generator)
    cu_q, cu_k = cu_seqlens(lengths_q), cu_seqlens(lengths_k)
    out = kernels.varlen_attention(q, k_cache, v_cache, cu_q, cu_k, block_table=table, window=window)
    ref = reference.varlen_attention(q.double(), k_cache.double(), v_cache.double(), cu_q, cu_k,
                                     block_table=table, window=window)
    assert_close(out, ref, dtype)


def test_varlen_attention_never_reads_tiles_before_the_window() -> None:
    # One 16-query tile over 100 keys with a window of 20: its first row sees keys 65..84, so the
    # kernel starts at tile 64; NaN before it would poison the output if it were read.
    generator = torch.Generator().manual_seed(11)
    k_cache, v_cache, table = paged_cache([100], 16, 1, 32, torch.float32, generator)
    q = _randn(16, 2, 32, dtype=torch.float32, generator=generator)
    cu_q, cu_k = cu_seqlens([16]), cu_seqlens([100])
    ref = reference.varlen_attention(q.double(), k_cache.double(), v_cache.double(), cu_q, cu_k,
                                     block_table=table, window=20)
    for block in table[0, :4].tolist():  # tokens 0..63
        k_cache[block] = v_cache[block] = float("nan")
    out = kernels.varlen_attention(q, k_cache, v_cache, cu_q, cu_k, block_table=table, window=20)
    assert_close(out, ref, torch.float32)


@pytest.mark.parametrize(("num_q_heads", "num_kv_heads", "head_dim", "dtype"), GQA_CASES[:2])
@pytest.mark.parametrize("num_splits", [1, 3, None])
@pytest.mark.parametrize("window", WINDOWS)
def test_paged_decode_attention_window(num_q_heads: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype,
                                       num_splits: int | None, window: int) -> None:
    generator = torch.Generator().manual_seed(window + head_dim)
    lengths = [1, 15, 16, 17, 67]
    k_cache, v_cache, table = paged_cache(lengths, 16, num_kv_heads, head_dim, dtype, generator)
    q = _randn(len(lengths), num_q_heads, head_dim, dtype=dtype, generator=generator)
    seqlens = torch.tensor(lengths, dtype=torch.int32)
    ref = reference.paged_decode_attention(q.double(), k_cache.double(), v_cache.double(), seqlens, table,
                                           window=window)
    # What lies before each sequence's window is never read: NaN there changes nothing.
    for row, length in enumerate(lengths):
        for position in range(max(0, length - window)):
            block, offset = divmod(position, 16)
            k_cache[table[row, block], offset] = v_cache[table[row, block], offset] = float("nan")
    out = _paged_decode(q, k_cache, v_cache, seqlens, table, softmax_scale=None, window=window, num_splits=num_splits)
    assert_close(out, ref, dtype)


def test_bad_windows_are_refused() -> None:
    q, kv, cu = torch.randn(5, 4, 16), torch.randn(5, 2, 16), cu_seqlens([2, 3])
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="window must be a positive int or None"):
            kernels.varlen_attention(q, kv, kv, cu, cu, window=bad)
        with pytest.raises(ValueError, match="window must be a positive int or None"):
            reference.paged_decode_attention(q[:2], kv.view(5, 1, 2, 16), kv.view(5, 1, 2, 16),
                                             torch.ones(2, dtype=torch.int32), torch.zeros(2, 1, dtype=torch.int32),
                                             window=bad)
    with pytest.raises(ValueError, match="window needs causal=True"):
        reference.varlen_attention(q, kv, kv, cu, cu, causal=False, window=4)


def test_num_splits_fills_the_gpu_only_when_needed() -> None:
    assert num_splits_for(programs=512, kv_capacity=4096, block_n=64, sms=132) == 1
    assert num_splits_for(programs=8, kv_capacity=32768, block_n=64, sms=132) == 33
    assert num_splits_for(programs=8, kv_capacity=256, block_n=64, sms=132) == 1  # too short to split
    assert num_splits_for(programs=1, kv_capacity=1 << 20, block_n=64, sms=132) == 64  # capped


class TestInputChecks:
    def setup_method(self) -> None:
        self.q = torch.randn(5, 4, 16)
        self.kv = torch.randn(5, 2, 16)
        self.cu = cu_seqlens([2, 3])

    def test_gqa_heads(self) -> None:
        with pytest.raises(ValueError, match=r"query heads \(4\) must be a multiple of .* key/value heads \(3\)"):
            kernels.varlen_attention(self.q, torch.randn(5, 3, 16), torch.randn(5, 3, 16), self.cu, self.cu)

    def test_cu_seqlens(self) -> None:
        with pytest.raises(ValueError, match=r"cu_seqlens_q\[-1\] \(4\) must equal the number of query tokens \(5\)"):
            kernels.varlen_attention(self.q, self.kv, self.kv, cu_seqlens([2, 2]), self.cu)
        with pytest.raises(ValueError, match="must be non-decreasing"):
            bad = torch.tensor([0, 3, 2, 5], dtype=torch.int32)
            kernels.varlen_attention(self.q, self.kv, self.kv, bad, bad)
        with pytest.raises(ValueError, match="cu_seqlens_q must have dtype in"):
            kernels.varlen_attention(self.q, self.kv, self.kv, self.cu.long(), self.cu)

    def test_strided_index_tensors(self) -> None:
        """The kernels read cu_seqlens, cache_seqlens and block-table rows with unit stride."""
        strided_cu = torch.tensor([0, 9, 2, 9, 5, 9], dtype=torch.int32)[::2]
        with pytest.raises(ValueError, match="cu_seqlens_q must be contiguous"):
            kernels.varlen_attention(self.q, self.kv, self.kv, strided_cu, self.cu)
        with pytest.raises(ValueError, match="cu_seqlens_k must be contiguous"):
            kernels.varlen_attention(self.q, self.kv, self.kv, self.cu, strided_cu)
        cache = torch.randn(4, 16, 2, 16)
        table = torch.zeros(2, 4, dtype=torch.int32)
        with pytest.raises(ValueError, match="block_table must be contiguous in its last dimension"):
            kernels.varlen_attention(self.q, cache, cache, self.cu, self.cu, block_table=table[:, ::2])
        q = torch.randn(2, 4, 16)
        seqlens = torch.ones(4, dtype=torch.int32)
        with pytest.raises(ValueError, match="cache_seqlens must be contiguous"):
            kernels.paged_decode_attention(q, cache, cache, seqlens[::2], table)
        with pytest.raises(ValueError, match="block_table must be contiguous in its last dimension"):
            kernels.paged_decode_attention(q, cache, cache, seqlens[:2], table[:, ::2])

    def test_hints_and_scale(self) -> None:
        with pytest.raises(ValueError, match="max_seqlen_q must be a non-negative int or None, got -1"):
            kernels.varlen_attention(self.q, self.kv, self.kv, self.cu, self.cu, max_seqlen_q=-1)
        for scale in (0.0, float("inf"), float("nan")):
            with pytest.raises(ValueError, match="softmax_scale must be a positive finite float"):
                kernels.varlen_attention(self.q, self.kv, self.kv, self.cu, self.cu, softmax_scale=scale)

    def test_paged_capacity(self) -> None:
        cache = torch.randn(4, 16, 2, 16)
        table = torch.zeros(2, 1, dtype=torch.int32)
        with pytest.raises(ValueError, match="sequence 1 has 20 cached tokens but its block_table row holds only 16"):
            kernels.varlen_attention(self.q, cache, cache, self.cu, cu_seqlens([3, 20]), block_table=table)

    def test_decode_shapes(self) -> None:
        cache = torch.randn(4, 16, 2, 16)
        table = torch.zeros(3, 2, dtype=torch.int32)
        seqlens = torch.ones(3, dtype=torch.int32)
        with pytest.raises(ValueError, match=r"cache_seqlens must have shape \(3,\)"):
            kernels.paged_decode_attention(torch.randn(3, 4, 16), cache, cache, seqlens[:2], table)
        with pytest.raises(ValueError, match="block_table must have 3 rows"):
            kernels.paged_decode_attention(torch.randn(3, 4, 16), cache, cache, seqlens, table[:2])
        with pytest.raises(ValueError, match="q and k_cache must have the same head dim"):
            kernels.paged_decode_attention(torch.randn(3, 4, 32), cache, cache, seqlens, table)
        with pytest.raises(ValueError, match="num_splits must be an int in"):
            _paged_decode(torch.randn(3, 4, 16), cache, cache, seqlens, table, softmax_scale=None, num_splits=0)
        with pytest.raises(ValueError, match="q must have dtype in"):
            kernels.paged_decode_attention(torch.randn(3, 4, 16).double(), cache.double(), cache.double(), seqlens, table)


# -- decode: splits, and one compiled variant whatever the split count ------------------------------


def test_paged_decode_merges_many_splits_some_empty() -> None:
    """More splits than the merge reads per iteration (16), over sequences that leave most of
    them empty (and one with no keys at all, which must give zeros)."""
    generator = torch.Generator().manual_seed(9)
    lengths = [700, 1, 37]
    k_cache, v_cache, table = paged_cache(lengths, 16, 1, 32, torch.float32, generator)
    q = _randn(len(lengths) + 1, 3, 32, dtype=torch.float32, generator=generator)
    table = torch.cat([table, table[:1]])
    seqlens = torch.tensor([*lengths, 0], dtype=torch.int32)
    out = _paged_decode(q, k_cache, v_cache, seqlens, table, softmax_scale=None, num_splits=40)
    ref = reference.paged_decode_attention(q[:3].double(), k_cache.double(), v_cache.double(), seqlens[:3], table[:3])
    assert_close(out[:3], ref, torch.float32)
    assert torch.equal(out[3], torch.zeros_like(out[3]))


class _LaunchSpy:
    """Stands in for a Triton kernel: records what a launch would specialize on (its constexprs
    and the dtypes of its tensor arguments), then runs the kernel."""

    def __init__(self, kernel) -> None:
        self.kernel = kernel
        self.launches: list[tuple] = []

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            dtypes = tuple(a.dtype for a in args if isinstance(a, torch.Tensor))
            self.launches.append((dtypes, tuple(sorted(kwargs.items()))))
            return self.kernel[grid](*args, **kwargs)
        return launch


def test_growing_contexts_launch_one_variant_of_each_decode_kernel(monkeypatch) -> None:
    """Eager decode widens the block table step by step, so the split count grows from 1: the
    launches must not differ in anything that compiles a new variant, and the merge must be
    launched (compiled) at the first step already, before any split needs it."""
    from fastllm.kernels import decode_attention

    spies = {name: _LaunchSpy(getattr(decode_attention, name)) for name in ("_paged_decode_kernel", "_merge_splits_kernel")}
    for name, spy in spies.items():
        monkeypatch.setattr(decode_attention, name, spy)
    monkeypatch.setattr(decode_attention, "_merged_shapes", set())
    generator = torch.Generator().manual_seed(10)
    k_cache, v_cache, _ = paged_cache([400], 16, 1, 32, torch.float16, generator)
    q = _randn(1, 4, 32, dtype=torch.float16, generator=generator)
    splits = []
    for context in (5, 16, 40, 130, 260, 400):
        table = torch.arange(-(-context // 16), dtype=torch.int32).unsqueeze(0)
        splits.append(decode_attention.decode_splits(q, k_cache, table))
        kernels.paged_decode_attention(q, k_cache, v_cache, torch.tensor([context], dtype=torch.int32), table)
        if context == 5:
            assert len(spies["_merge_splits_kernel"].launches) == 1  # warmed up, though unsplit
    assert splits[0] == 1 and len(set(splits)) >= 3  # the contexts did take the split count through several values
    for spy in spies.values():
        assert len(set(spy.launches)) == 1, spy.launches


# Triton's own compiler and ptxas for sm_90 (Hopper) without a GPU: a stand-in for the CUDA
# driver, kernels "launched" as warm-ups (compiled, not run); each script below starts with this.
SM90_COMPILE_ONLY = r"""
import json, torch
from triton.backends.compiler import GPUTarget
from triton.backends.nvidia.driver import CudaDriver
from triton.runtime import driver


class CompileOnlyDriver(CudaDriver):
    def __init__(self):  # no libcuda here
        pass

    def get_current_target(self):
        return GPUTarget("cuda", 90, 32)

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0


driver.set_active(CompileOnlyDriver())


def compile_only(module, name):  # module.name (a kernel) replaced by its warm-up; returns the kernel
    kernel = getattr(module, name)
    setattr(module, name, type("Warmup", (), {"__getitem__": lambda self, grid, k=kernel: (
        lambda *args, **kwargs: k.warmup(*args, grid=grid, **kwargs))})())
    return kernel
"""


def _compile_for_sm90(script: str) -> object:
    """Run SM90_COMPILE_ONLY + script in a fresh interpreter (TRITON_INTERPRET off); its last
    printed line, parsed as JSON."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {**os.environ, "TRITON_INTERPRET": "0", "TRITON_DEFAULT_FP_FUSION": "1"}
    done = subprocess.run([sys.executable, "-c", SM90_COMPILE_ONLY + script], env=env, capture_output=True,
                          text=True, cwd=Path(__file__).resolve().parents[1], timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1])


SM90_DECODE_COMPILES = r"""
from fastllm.kernels import _runtime, decode_attention

decode_attention.check_launchable = lambda *named: None  # CPU tensors stand for device ones
decode_attention.num_sms = lambda device: 132
kernels = {name: compile_only(decode_attention, name) for name in ("_paged_decode_kernel", "_merge_splits_kernel")}
q = torch.empty(1, 32, 64, dtype=torch.bfloat16)
cache = torch.empty(1024, 16, 8, 64, dtype=torch.bfloat16)
counts = []
for context in (16, 256, 1024, 4096, 16384):  # 1 split, then 2, 8, 32 and 64
    table = torch.zeros(1, context // 16, dtype=torch.int32)
    decode_attention.paged_decode_attention(q, cache, cache, torch.ones(1, dtype=torch.int32), table)
    counts.append({name: sum(len(c[0]) for c in k.device_caches.values()) for name, k in kernels.items()})
for name, kernel in kernels.items():
    setattr(decode_attention, name, kernel)
print(json.dumps({"per_step": counts, "compiled_variants": _runtime.compiled_variants()}))
"""


def test_growing_contexts_compile_each_decode_kernel_once_for_sm90() -> None:
    """The real specialization: Triton's own cache of compiled variants, counted after each step."""
    counts = _compile_for_sm90(SM90_DECODE_COMPILES)
    once = {"_paged_decode_kernel": 1, "_merge_splits_kernel": 1}
    assert counts["per_step"] == [once] * 5
    assert counts["compiled_variants"] == {f"decode_attention.{name}": n for name, n in once.items()}


# The prefill and decode kernels with and without a sliding window, at Gemma 3's head dim and a
# common one: the window is a constexpr branch, which must compile (and fit) on Hopper too.
SM90_WINDOW_COMPILES = r"""
from fastllm.kernels import attention, decode_attention

for module in (attention, decode_attention):
    module.check_launchable = lambda *named: None
compile_only(attention, "_varlen_attention_kernel")
compile_only(decode_attention, "_paged_decode_kernel")
compile_only(decode_attention, "_merge_splits_kernel")
decode_attention.num_sms = lambda device: 132
compiled = []
for head_dim in (128, 256):
    q = torch.empty(64, 8, head_dim, dtype=torch.bfloat16)
    cache = torch.empty(64, 16, 2, head_dim, dtype=torch.bfloat16)
    table = torch.zeros(2, 8, dtype=torch.int32)
    cu = torch.tensor([0, 32, 64], dtype=torch.int32)
    for window in (None, 512):
        attention.varlen_attention(q, cache, cache, cu, cu, block_table=table, max_seqlen_q=32, window=window)
        decode_attention.paged_decode_attention(q[:2], cache, cache, torch.ones(2, dtype=torch.int32), table,
                                                window=window)
        compiled.append([head_dim, window])
print(json.dumps(compiled))
"""


def test_sliding_window_kernels_compile_for_sm90() -> None:
    assert _compile_for_sm90(SM90_WINDOW_COMPILES) == [[128, None], [128, 512], [256, None], [256, 512]]

"""backend="cpu": the C++ kernels (fastllm._cpu_kernels) vs their PyTorch twins.

Decode attention works in blocks of the paged cache with 16-float vectors, so lengths 1,
block - 1, block, block + 1 and several blocks, block sizes 1, 16 and 24 (not a whole number of
vectors), and every head dim it is built for cover its edges; a sequence of more than 16 blocks
is split into spans whose softmaxes are merged, so long sequences (windowed too) cover that;
thread counts 1, 2 and 3 cover the work split. RMSNorm and rotary run on the calling thread
below 65,536 floats and on the pool above, so both sizes are tested; rotary must equal its twin
bit for bit.
"""

from __future__ import annotations

import pytest
import torch
from kernel_testing import assert_close, paged_cache

from fastllm import _cpu_kernels
from fastllm.kernels import cpu, reference
from fastllm.model.backend import OP_NAMES, get_backend


def _decode_case(num_q_heads, num_kv_heads, head_dim, block_size, lengths, seed, dtype=torch.float32):
    generator = torch.Generator().manual_seed(seed)
    k_cache, v_cache, table = paged_cache(lengths, block_size, num_kv_heads, head_dim, dtype, generator)
    q = torch.randn(len(lengths), num_q_heads, head_dim, generator=generator).to(dtype)
    return q, k_cache, v_cache, torch.tensor(lengths, dtype=torch.int32), table


def _reference(q, k_cache, v_cache, seqlens, table, softmax_scale=None, window=None):
    return reference.paged_decode_attention(
        q.double(), k_cache.double(), v_cache.double(), seqlens, table, softmax_scale=softmax_scale, window=window
    )


@pytest.fixture
def threads(request):
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


@pytest.mark.parametrize("head_dim", _cpu_kernels.head_dims)
@pytest.mark.parametrize(("num_q_heads", "num_kv_heads"), [(2, 2), (9, 3), (8, 2)])
@pytest.mark.parametrize("block_size", [1, 16, 24])
def test_paged_decode_attention_matches_the_reference(head_dim, num_q_heads, num_kv_heads, block_size):
    lengths = [1, max(block_size - 1, 1), block_size, block_size + 1, 4 * block_size + 3]
    case = _decode_case(num_q_heads, num_kv_heads, head_dim, block_size, lengths, seed=head_dim + block_size)
    assert_close(cpu.paged_decode_attention(*case), _reference(*case), torch.float32)


@pytest.mark.parametrize("head_dim", [64, 256])
@pytest.mark.parametrize("block_size", [1, 16, 24])
@pytest.mark.parametrize("window", [1, 7, 16, 40, 1000])
def test_sliding_window_decode_reads_only_the_window(head_dim, block_size, window):
    lengths = [1, max(block_size - 1, 1), block_size + 1, 4 * block_size + 3, 70]
    q, k_cache, v_cache, seqlens, table = _decode_case(4, 1, head_dim, block_size, lengths, seed=window + block_size)
    expected = _reference(q, k_cache, v_cache, seqlens, table, window=window)
    for row, length in enumerate(lengths):  # NaN before each window: read, it would poison the output
        for position in range(max(0, length - window)):
            block, offset = divmod(position, block_size)
            k_cache[table[row, block], offset] = v_cache[table[row, block], offset] = float("nan")
    assert_close(cpu.paged_decode_attention(q, k_cache, v_cache, seqlens, table, window=window), expected,
                 torch.float32)


@pytest.mark.parametrize("threads", [1, 2, 3], indirect=True)
def test_any_thread_count_gives_the_same_answer(threads):
    case = _decode_case(12, 4, 64, 16, [3, 70, 16, 129, 1, 33, 48], seed=threads)
    assert_close(cpu.paged_decode_attention(*case, softmax_scale=0.2), _reference(*case, softmax_scale=0.2),
                 torch.float32)


@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("window", [None, 40, 300, 700])
@pytest.mark.parametrize("threads", [1, 2, 3], indirect=True)
def test_long_sequences_split_into_spans(head_dim, window, threads):
    # 16-token blocks: 1,000 tokens are 63 blocks, four spans; 257 tokens two, the last of one block.
    lengths = [1000, 3, 257, 512, 90]
    q, k_cache, v_cache, seqlens, table = _decode_case(8, 2, head_dim, 16, lengths, seed=head_dim + threads)
    q = q * 4  # peaked scores: the spans' maxima differ, so their merge must rescale
    expected = _reference(q, k_cache, v_cache, seqlens, table, window=window)
    for row, length in enumerate(lengths):  # NaN before each window: read, it would poison the output
        for position in range(max(0, length - (window or length))):
            block, offset = divmod(position, 16)
            k_cache[table[row, block], offset] = v_cache[table[row, block], offset] = float("nan")
    got = cpu.paged_decode_attention(q, k_cache, v_cache, seqlens, table, window=window)
    assert_close(got, expected, torch.float32)


def test_a_sequence_gets_the_same_bits_alone_in_a_batch_and_on_any_thread_count():
    # Spans follow each sequence's own length, and a span split by KV heads (a short sequence alone)
    # computes each head as a whole one does: neither the batch nor the threads change its sums.
    case = _decode_case(8, 2, 64, 16, [700, 40, 1300, 5], seed=11)
    q, k_cache, v_cache, seqlens, table = case
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        batched = cpu.paged_decode_attention(*case)
        for threads in (1, 3):
            torch.set_num_threads(threads)
            assert torch.equal(cpu.paged_decode_attention(*case), batched)
            for row in range(len(seqlens)):
                alone = cpu.paged_decode_attention(q[row : row + 1], k_cache, v_cache, seqlens[row : row + 1],
                                                   table[row : row + 1])
                assert torch.equal(alone[0], batched[row])
    finally:
        torch.set_num_threads(before)


def test_peaked_scores_across_blocks():
    # Scores up to hundreds apart: the online softmax rescales earlier blocks (and underflows
    # most weights to 0) as a later block brings a larger maximum.
    q, k_cache, v_cache, seqlens, table = _decode_case(4, 2, 64, 16, [5, 90, 200], seed=7)
    q = q * 30
    assert_close(cpu.paged_decode_attention(q, k_cache, v_cache, seqlens, table),
                 _reference(q, k_cache, v_cache, seqlens, table), torch.float32)


def test_nan_in_a_query_stays_in_its_heads():
    q, k_cache, v_cache, seqlens, table = _decode_case(4, 2, 32, 16, [20, 20], seed=3)
    q[1, 2, 5] = float("nan")
    out = cpu.paged_decode_attention(q, k_cache, v_cache, seqlens, table)
    # Query heads 2 and 3 of sequence 1 share KV head 1; only head 2 saw the NaN.
    assert torch.isnan(out[1, 2]).all() and not torch.isnan(out[1, 3]).any() and not torch.isnan(out[0]).any()


def test_non_contiguous_queries():
    q, k_cache, v_cache, seqlens, table = _decode_case(6, 2, 64, 16, [9, 40], seed=4)
    wide = torch.randn(2, 6, 128)
    wide[..., :64] = q
    assert_close(cpu.paged_decode_attention(wide[..., :64], k_cache, v_cache, seqlens, table),
                 _reference(q, k_cache, v_cache, seqlens, table), torch.float32)


@pytest.mark.parametrize("case", ["float16", "head_dim 48", "strided cache"])
def test_what_the_kernel_does_not_take_goes_to_the_reference(case):
    dtype, head_dim = (torch.float16, 64) if case == "float16" else (torch.float32, 48 if case == "head_dim 48" else 64)
    q, k_cache, v_cache, seqlens, table = _decode_case(4, 2, head_dim, 16, [7, 30], seed=5, dtype=dtype)
    if case == "strided cache":
        k_cache = torch.cat([k_cache, k_cache], dim=1)[:, ::2]
        assert not k_cache.is_contiguous()
    out = cpu.paged_decode_attention(q, k_cache, v_cache, seqlens, table)
    expected = reference.paged_decode_attention(q, k_cache, v_cache, seqlens, table)
    assert out.dtype == dtype and torch.equal(out, expected)


class TestBadInput:
    def setup_method(self):
        self.q, self.k_cache, self.v_cache, self.seqlens, self.table = _decode_case(4, 2, 64, 16, [7, 30], seed=6)

    def call(self, seqlens=None, table=None):
        return cpu.paged_decode_attention(
            self.q, self.k_cache, self.v_cache,
            self.seqlens if seqlens is None else seqlens, self.table if table is None else table,
        )

    def test_block_ids_outside_the_cache(self):
        num_blocks = self.k_cache.shape[0]
        for bad in (num_blocks, -1):
            table = self.table.clone()
            table[1, 1] = bad
            with pytest.raises(ValueError, match=rf"block_table\[1, 1\] = {bad} is not a block of the cache"):
                self.call(table=table)

    def test_lengths_outside_the_table(self):
        capacity = self.table.shape[1] * 16
        for bad in (0, capacity + 1):
            with pytest.raises(ValueError, match=rf"cache_seqlens\[0\] = {bad} is outside 1\.\.{capacity}"):
                self.call(seqlens=torch.tensor([bad, 30], dtype=torch.int32))

    def test_shapes_and_dtypes_are_checked_as_the_reference_does(self):
        with pytest.raises(ValueError, match="cache_seqlens must have dtype"):
            self.call(seqlens=self.seqlens.long())
        with pytest.raises(ValueError, match="block_table must have 2 rows"):
            self.call(table=self.table[:1])
        with pytest.raises(TypeError, match="q must be a torch.Tensor"):
            cpu.paged_decode_attention([1.0], self.k_cache, self.v_cache, self.seqlens, self.table)

    def test_the_binding_refuses_what_python_would_have_checked(self):
        args = [t.numpy() for t in (self.q, self.k_cache, self.v_cache, self.seqlens, self.table)]
        out = torch.empty_like(self.q).numpy()
        with pytest.raises(ValueError, match="k_cache must be a C-contiguous 4-D array"):
            _cpu_kernels.paged_decode_attention(args[0], args[1][:, ::2], args[2], *args[3:], 1.0, 0, out, 1)
        with pytest.raises(TypeError):  # float64 where float32 is expected: no silent copy
            _cpu_kernels.paged_decode_attention(args[0].astype("float64"), *args[1:], 1.0, 0, out, 1)
        with pytest.raises(ValueError, match="head_dim 48 is not one of the kernel's"):
            _cpu_kernels.paged_decode_attention(
                args[0][..., :48].copy(), args[1][..., :48].copy(), args[2][..., :48].copy(), *args[3:], 1.0, 0,
                out[..., :48].copy(), 1,
            )


@pytest.mark.parametrize(("rows", "hidden"), [(1, 24), (7, 576), (300, 1000)])
@pytest.mark.parametrize("threads", [1, 2], indirect=True)
def test_rms_norms_match_the_reference(rows, hidden, threads):
    generator = torch.Generator().manual_seed(rows + hidden)
    wide = torch.randn(rows, hidden + 8, generator=generator)
    x = wide[:, 3 : 3 + hidden]  # rows with a stride: what a slice of a fused projection gives
    residual = torch.randn(rows, hidden, generator=generator)
    weight = torch.randn(hidden, generator=generator)
    assert_close(cpu.rms_norm(x, weight, 1e-5), reference.rms_norm(x.double(), weight.double(), 1e-5).float(),
                 torch.float32)
    normed, summed = cpu.fused_add_rms_norm(x, residual, weight, 1e-6)
    expected, _ = reference.fused_add_rms_norm(x.double(), residual.double(), weight.double(), 1e-6)
    assert torch.equal(summed, x + residual)
    assert_close(normed, expected.float(), torch.float32)


@pytest.mark.parametrize("tokens", [1, 5, 700])
@pytest.mark.parametrize("threads", [1, 2], indirect=True)
def test_rotary_equals_the_reference_bit_for_bit(tokens, threads):
    generator = torch.Generator().manual_seed(tokens)
    qkv = torch.randn(tokens, (6 + 2 + 2) * 64, generator=generator)
    q, k = qkv[:, : 6 * 64].view(tokens, 6, 64), qkv[:, 6 * 64 : 8 * 64].view(tokens, 2, 64)  # strided views
    positions = torch.randint(0, 4096, (tokens,), generator=generator, dtype=torch.int32)
    cos, sin = torch.randn(4096, 32, generator=generator), torch.randn(4096, 32, generator=generator)
    got, expected = cpu.rotary_embedding(q, k, positions, cos, sin), reference.rotary_embedding(q, k, positions, cos, sin)
    assert all(g.is_contiguous() and torch.equal(g, e) for g, e in zip(got, expected))


def test_rotary_refuses_positions_outside_its_tables():
    q, k, cos = torch.randn(3, 2, 8), torch.randn(3, 1, 8), torch.randn(16, 4)
    for bad in (16, -1):
        with pytest.raises(ValueError, match=rf"positions\[2\] = {bad} is outside the rotary tables' 0\.\.15"):
            cpu.rotary_embedding(q, k, torch.tensor([0, 1, bad]), cos, cos)


@pytest.mark.parametrize("case", ["float16", "3-D", "float64 weight"])
def test_norms_and_rotary_the_kernels_do_not_take_go_to_the_reference(case):
    x = torch.randn(2, 3, 16) if case == "3-D" else torch.randn(6, 16, dtype=torch.float16 if case == "float16" else None)
    weight = torch.randn(16, dtype=torch.float64 if case == "float64 weight" else x.dtype)
    assert torch.equal(cpu.rms_norm(x, weight, 1e-5), reference.rms_norm(x, weight, 1e-5))
    for got, expected in zip(cpu.fused_add_rms_norm(x, x, weight, 1e-5), reference.fused_add_rms_norm(x, x, weight, 1e-5)):
        assert torch.equal(got, expected)
    if case == "float16":
        q, cos = torch.randn(4, 2, 8, dtype=torch.float16), torch.randn(10, 4)
        for got, expected in zip(cpu.rotary_embedding(q, q, torch.arange(4), cos, cos),
                                 reference.rotary_embedding(q, q, torch.arange(4), cos, cos)):
            assert torch.equal(got, expected)


def test_tensors_that_require_grad_go_to_the_reference_and_keep_their_graph():
    x = torch.randn(3, 16, requires_grad=True)
    weight = torch.randn(16)
    cpu.rms_norm(x, weight, 1e-5).sum().backward()
    assert x.grad is not None and x.grad.shape == x.shape
    q, k_cache, v_cache, seqlens, table = _decode_case(4, 2, 64, 16, [7, 30], seed=8)
    q.requires_grad_()
    out = cpu.paged_decode_attention(q, k_cache, v_cache, seqlens, table)
    assert out.requires_grad


# SwiGLU's error against float64 over the largest |output| (its exp is Cephes' to float32
# rounding; gates below -87 give 0 where the true value is under 1e-35): measured over 500 draws
# of 7 x 2 * 1537 gates scaled 1..30, worst 1.5e-7; the kernel tests' float32 bound is 1e-4.


@pytest.mark.parametrize(("rows", "inter"), [(1, 1), (3, 17), (7, 1537), (64, 300)])
@pytest.mark.parametrize("threads", [1, 2], indirect=True)
def test_silu_and_mul_matches_the_reference(rows, inter, threads):
    generator = torch.Generator().manual_seed(rows * inter)
    x = torch.randn(rows, 2 * inter, generator=generator) * 8
    assert_close(cpu.silu_and_mul(x), reference.silu_and_mul(x.double()), torch.float32)


def test_silu_and_mul_edges_are_torchs():
    gates = torch.tensor([float("nan"), float("inf"), -float("inf"), -200.0, 200.0, 0.0, -0.0, 1e-30])
    x = torch.cat([gates, torch.full_like(gates, 2.0)]).unsqueeze(0)
    torch.testing.assert_close(cpu.silu_and_mul(x), reference.silu_and_mul(x), equal_nan=True)


# GeGLU's error against float64 over the largest |output| (the sigmoid form of tanh-gelu, its exp
# Cephes' to float32 rounding): measured over 500 draws of 7 x 2 * 1537 gates scaled 1..30, worst
# 1.4e-7; the kernel tests' float32 bound is 1e-4.


@pytest.mark.parametrize(("rows", "inter"), [(1, 1), (3, 17), (7, 1537), (64, 300)])
@pytest.mark.parametrize("threads", [1, 2], indirect=True)
def test_gelu_tanh_and_mul_matches_the_reference(rows, inter, threads):
    generator = torch.Generator().manual_seed(rows * inter + 1)
    x = torch.randn(rows, 2 * inter, generator=generator) * 8
    assert_close(cpu.gelu_tanh_and_mul(x), reference.gelu_tanh_and_mul(x.double()), torch.float32)


def test_gelu_tanh_and_mul_edges_are_torchs():
    gates = torch.tensor([float("nan"), float("inf"), -200.0, 200.0, 0.0, -0.0, 1e-30, -1e13, 1e13])
    x = torch.cat([gates, torch.full_like(gates, 2.0)]).unsqueeze(0)
    torch.testing.assert_close(cpu.gelu_tanh_and_mul(x), reference.gelu_tanh_and_mul(x), equal_nan=True)


@pytest.mark.parametrize("module", [cpu, reference], ids=["cpu", "reference"])
@pytest.mark.parametrize("name", ["silu_and_mul", "gelu_tanh_and_mul"])
def test_gated_activations_write_into_strided_out(module, name):
    # out= as dequantized_gated_matmul passes it: a slice of a wider tensor's columns.
    activation = getattr(module, name)
    x = torch.randn(5, 2 * 37, generator=torch.Generator().manual_seed(3)) * 4
    wide = torch.full((5, 100), 7.0)
    got = activation(x, out=wide[:, 20:57])
    assert got.data_ptr() == wide[:, 20:57].data_ptr()
    assert torch.equal(wide[:, 20:57], activation(x))
    assert (wide[:, :20] == 7).all() and (wide[:, 57:] == 7).all()
    for bad, message in (
        (torch.empty(5, 36), r"out must have shape \(5, 37\)"),
        (torch.empty(5, 37, dtype=torch.float64), "out must have dtype in"),
        (torch.empty(37, 5).t(), "out must have a contiguous last axis"),
    ):
        with pytest.raises(ValueError, match=message):
            activation(x, out=bad)


def test_store_kv_cache_equals_the_reference_and_skips_negative_slots():
    generator = torch.Generator().manual_seed(2)
    k, v = torch.randn(6, 2, 8, generator=generator), torch.randn(6, 2, 8, generator=generator)
    slots = torch.tensor([3, 0, 15, -1, 7, 8])
    caches = [torch.zeros(4, 4, 2, 8) for _ in range(4)]
    cpu.store_kv_cache(k, v, caches[0], caches[1], slots)
    reference.store_kv_cache(k, v, caches[2], caches[3], slots)
    assert torch.equal(caches[0], caches[2]) and torch.equal(caches[1], caches[3])
    with pytest.raises(ValueError, match=r"slot_mapping\[1\] = 16 is past the cache's 16 slots"):
        cpu.store_kv_cache(k[:2], v[:2], caches[0], caches[1], torch.tensor([0, 16]))


NATIVE_OPS = ("paged_decode_attention", "rms_norm", "fused_add_rms_norm", "rotary_embedding", "silu_and_mul",
              "gelu_tanh_and_mul", "store_kv_cache")
# The reference op itself, its result written into the step's buffers.
BUFFERED_OPS = ("varlen_attention",)


def test_cpu_backend_is_the_reference_with_native_ops():
    backend = get_backend("cpu")
    assert backend.name == "cpu"
    own = NATIVE_OPS + BUFFERED_OPS
    for op in OP_NAMES:
        expected = getattr(cpu, op) if op in own else getattr(reference, op)
        assert getattr(backend, op) is expected
    assert all(getattr(cpu, op) is not getattr(reference, op) for op in own)


def test_varlen_attention_writes_the_references_result_into_the_step_buffers():
    from fastllm.kernels import cpu_buffers
    from fastllm.kernels.cpu_buffers import StepBuffers

    generator = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(9, heads, 16, generator=generator) for heads in (6, 2, 2))
    cu = torch.tensor([0, 4, 9], dtype=torch.int32)
    expected = reference.varlen_attention(q, k, v, cu, cu)
    buffers = StepBuffers()
    with buffers():
        buffers.begin_phase()
        earlier = cpu_buffers.output(4, 4)
        got = cpu.varlen_attention(q, k, v, cu, cu)
        assert torch.equal(got, expected)
        assert got.untyped_storage().data_ptr() == earlier.untyped_storage().data_ptr()  # the same step buffer
    with pytest.raises(ValueError, match="out must be a tensor of q's shape"):
        reference.varlen_attention(q, k, v, cu, cu, out=torch.empty(9, 6, 8))

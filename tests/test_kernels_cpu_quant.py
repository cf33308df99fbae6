"""GGUF-encoded matmuls on a CPU (fastllm.kernels.cpu_quant) against gguf and float64.

Decoding must equal `gguf.quants.dequantize` bit for bit, on every instruction set this CPU runs
(each forced in turn), for random blocks whose half-float scales take any finite value (subnormals
and zeros included), and NaN / Inf scales must come out as NaN / Inf in their own values only.
Both matmuls must match float64 x @ W^T for every type, 1, 3, 17 and 300 rows of x (one tile, a
partial tile, several tiles of the kernels' 8 rows), output widths that are not a multiple
of any tile, and 1, 2 and 3 threads.

Matmul errors are measured as max |out - ref| / max (|x| @ |W|^T), the scale float32 rounding
errors of the products and sums are bounded by. Over 2,700 random draws of the cases below (every
ISA, both implementations) the worst was 2.7e-7; TOLERANCE allows 7x that. (Against max |ref|
instead, cancellation in a single output made the worst 5.4e-6: a flaky measure.)
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as Q
from gguf import quants

from fastllm import _cpu_kernels
from fastllm.kernels import cpu_quant
from fastllm.kernels.cpu_buffers import StepBuffers

TOLERANCE = 2e-6
ISAS = cpu_quant.available_isas()
TYPES = cpu_quant.QUANTIZED_TYPES
# Byte offsets of each block's half-float scales (d, and m / dmin where the type has one).
SCALE_OFFSETS = {Q.Q4_0: (0,), Q.Q4_1: (0, 2), Q.Q5_0: (0,), Q.Q5_1: (0, 2), Q.Q8_0: (0,), Q.Q4_K: (0, 2),
                 Q.Q5_K: (0, 2), Q.Q6_K: (208,)}
# NaN, signaling NaN, +-inf, subnormals, +-0: as IEEE halves and as bfloat16.
SPECIAL_HALVES = (0x7E00, 0x7C01, 0x7C00, 0xFC00, 0x0001, 0x83FF, 0x0000, 0x8000)
SPECIAL_BFLOAT16 = (0x7FC0, 0x7F81, 0x7F80, 0xFF80, 0x0001, 0x807F, 0x0000, 0x8000)


def finite_bits(count: int, bits: int, exponent_mask: int, generator: torch.Generator) -> torch.Tensor:
    """`count` random bit patterns of an IEEE format (int64), any finite value: a pattern whose
    exponent is all ones loses its top exponent bit."""
    patterns = torch.randint(0, 1 << bits, (count,), generator=generator, dtype=torch.int64)
    top_exponent_bit = 1 << (bits - 2)
    patterns[(patterns & exponent_mask) == exponent_mask] &= ~top_exponent_bit
    return patterns


def moderate_halves(count: int, generator: torch.Generator) -> torch.Tensor:
    """Half floats spread over [2^-8, 2^4] in magnitude, either sign: products stay far from overflow."""
    magnitude = torch.exp2(torch.empty(count).uniform_(-8, 4, generator=generator))
    sign = torch.randint(0, 2, (count,), generator=generator) * 2 - 1
    return (magnitude * sign).half()


def random_weights(qtype: Q, rows: int, cols: int, generator: torch.Generator, any_finite: bool = False) -> torch.Tensor:
    """Valid random blocks, uint8 [rows, row bytes]: random quantized values with half scales
    (float types: values) that are, with any_finite, any finite number (subnormals and zeros
    included), else moderate (F32 and BF16 values: N(0, 1))."""
    if any_finite:
        halves = finite_bits(rows * cols, 16, 0x7C00, generator).to(torch.int16).view(torch.float16)
        floats = {Q.F16: halves, Q.BF16: finite_bits(rows * cols, 16, 0x7F80, generator).to(torch.int16).view(torch.bfloat16),
                  Q.F32: finite_bits(rows * cols, 32, 0x7F800000, generator).to(torch.int32).view(torch.float32)}
    else:
        halves = moderate_halves(rows * cols, generator)
        normal = torch.randn(rows * cols, generator=generator)
        floats = {Q.F16: halves, Q.BF16: normal.bfloat16(), Q.F32: normal}
    if qtype in floats:
        return floats[qtype].view(rows, cols).contiguous().view(torch.uint8).view(rows, -1)
    values, size = GGML_QUANT_SIZES[qtype]
    blocks = torch.randint(0, 256, (rows * cols // values, size), generator=generator, dtype=torch.uint8)
    for i, offset in enumerate(SCALE_OFFSETS[qtype]):
        scales = halves[i * blocks.shape[0] : (i + 1) * blocks.shape[0]]
        blocks[:, offset : offset + 2] = scales.view(torch.uint8).view(-1, 2)
    return blocks.view(rows, -1)


def gguf_dequantize(data: torch.Tensor, qtype: Q) -> torch.Tensor:
    with np.errstate(invalid="ignore", over="ignore"):  # NaN and Inf scales are tested on purpose
        decoded = quants.dequantize(data.numpy(), qtype)
    return torch.from_numpy(decoded.reshape(data.shape[0], -1).copy())


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and torch.equal(a.view(torch.int32), b.view(torch.int32))


def error(out: torch.Tensor, x: torch.Tensor, weights: torch.Tensor) -> float:
    """max |out - x @ W^T| / max (|x| @ |W|^T), in float64."""
    x, weights = x.double(), weights.double()
    scale = (x.abs() @ weights.abs().T).max().clamp_min(1e-300)
    return ((out.double() - x @ weights.T).abs().max() / scale).item()


def block_columns(qtype: Q) -> tuple[int, ...]:
    values = GGML_QUANT_SIZES[qtype][0]
    return {256: (256, 512), 32: (32, 64, 96)}.get(values, (32, 77, 96))  # float types: any width


@pytest.fixture
def generator() -> torch.Generator:
    seed = random.randrange(1 << 32)
    print(f"seed {seed}")  # shown with a failure
    return torch.Generator().manual_seed(seed)


@pytest.fixture
def threads():
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


def test_types_and_isas():
    assert set(TYPES) == {Q.F32, Q.F16, Q.BF16, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q8_0, Q.Q4_K, Q.Q5_K, Q.Q6_K}
    assert ISAS[-1] == "generic" and cpu_quant.isa() == ISAS[0]
    assert all(cpu_quant.block_bytes(t, 512) == 512 // GGML_QUANT_SIZES[t][0] * GGML_QUANT_SIZES[t][1] for t in TYPES)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_decoding_is_gguf_bit_for_bit(isa, qtype, generator):
    cols = max(block_columns(qtype))
    data = random_weights(qtype, 9, cols, generator, any_finite=True)
    expected = gguf_dequantize(data, qtype)
    rows = torch.tensor([[8, 0, 3], [3, 3, 5]])
    with cpu_quant.forced_isa(isa):
        assert same_bits(cpu_quant.dequantize_rows(data, qtype), expected)
        assert same_bits(cpu_quant.dequantize_rows(data, qtype, rows), expected[rows])
        assert same_bits(cpu_quant.dequantize_rows(data, qtype, rows[0].int()), expected[rows[0]])


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_both_matmuls_match_float64(isa, qtype, generator, threads):
    case = 0
    with cpu_quant.forced_isa(isa):
        for cols in block_columns(qtype):
            for out_features in (1, 7, 33, 131):
                data = random_weights(qtype, out_features, cols, generator)
                weights = gguf_dequantize(data, qtype)
                for rows in (1, 3, 17, 300):
                    threads(1 + case % 3)
                    case += 1
                    x = torch.randn(rows, cols, generator=generator)
                    for matmul in (cpu_quant.quantized_matmul, cpu_quant.dequantized_matmul):
                        out = matmul(x, [(data, qtype)])
                        assert out.shape == (rows, out_features) and out.dtype == torch.float32
                        assert error(out, x, weights) < TOLERANCE, (matmul.__name__, cols, out_features, rows)


@pytest.mark.parametrize("isa", ISAS)
def test_stacked_parts_of_mixed_types(isa, generator, threads):
    threads(3)
    shapes = [(Q.Q4_K, 33), (Q.Q6_K, 7), (Q.F16, 5), (Q.Q8_0, 19), (Q.BF16, 1), (Q.Q5_K, 4)]
    parts = [(random_weights(qtype, rows, 512, generator), qtype) for qtype, rows in shapes]
    weights = torch.cat([gguf_dequantize(data, qtype) for data, qtype in parts])
    x = torch.randn(20, 512, generator=generator)
    with cpu_quant.forced_isa(isa):
        direct = cpu_quant.quantized_matmul(x, parts)
        panels = cpu_quant.dequantized_matmul(x, parts, panel_rows=6)  # partial panels, several per part
        out = torch.full((20, weights.shape[0]), float("nan"))
        assert cpu_quant.quantized_matmul(x, parts, out=out) is out
    for result in (direct, panels, out):
        assert error(result, x, weights) < TOLERANCE


@pytest.mark.parametrize("isa", ISAS)
def test_gated_matmul_and_row_orders_read_the_stack_as_decoded(isa, generator, threads):
    """Gate and up rows from parts of mixed types (a chunk's rows straddling parts), some parts
    stored in another order: the same weights as decoding the stack and reordering it."""
    threads(2)
    shapes = [(Q.Q4_K, 13), (Q.Q6_K, 9), (Q.Q8_0, 20)]  # 42 rows: gate 0..20, up 21..41
    parts = [(random_weights(qtype, rows, 256, generator), qtype) for qtype, rows in shapes]
    orders = [torch.randperm(13, generator=generator), None, torch.randperm(20, generator=generator)]
    weights = torch.cat([gguf_dequantize(data, qtype)[order] if order is not None else gguf_dequantize(data, qtype)
                         for (data, qtype), order in zip(parts, orders)])
    x = torch.randn(17, 256, generator=generator)
    with cpu_quant.forced_isa(isa):
        panels = cpu_quant.dequantized_matmul(x, parts, panel_rows=5, row_orders=orders)
        assert error(panels, x, weights) < TOLERANCE
        # gate * up, each within TOLERANCE * scale of float64: the product within the bound that gives.
        gate, up = (x.double() @ weights.double().T).chunk(2, dim=1)
        slack = TOLERANCE * (x.double().abs() @ weights.double().abs().T).max()
        for chunk in (1, 4, 21, None):
            gated = cpu_quant.dequantized_gated_matmul(x, parts, _glu, chunk_rows=chunk, row_orders=orders)
            assert ((gated.double() - gate * up).abs() <= slack * (gate.abs() + up.abs() + slack)).all(), chunk


def test_step_buffers_change_no_result(generator):
    """Inside a StepBuffers block, with a phase begun before each call, the kernels' results and
    temporaries come from the step's buffer (the first step's with room to spare, the second's
    sized from it); they equal the results outside any block, also when an activation runs a
    kernel itself."""
    parts = [(random_weights(Q.Q4_0, 64, 128, generator), Q.Q4_0), (random_weights(Q.Q8_0, 30, 128, generator), Q.Q8_0)]
    inputs = [torch.randn(rows, 128, generator=generator) for rows in (40, 7, 300, 40)]
    buffers = StepBuffers()

    def run(phases: bool) -> list[tuple[torch.Tensor, torch.Tensor]]:
        results = []
        for x in inputs:
            if phases:
                buffers.begin_phase()
            results.append((cpu_quant.dequantized_matmul(x, parts, panel_rows=16).clone(),
                            cpu_quant.dequantized_gated_matmul(x, parts, _glu, chunk_rows=20).clone()))
        return results

    def nested(gate_up: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:  # runs the kernel itself first
        cpu_quant.dequantized_gated_matmul(inputs[2], parts, _glu, chunk_rows=20)
        return _glu(gate_up, out)

    outside = run(phases=False)
    for _ in range(2):  # the first step's buffer has spare room, the second's is sized from it
        with buffers():
            inside = run(phases=True)
            buffers.begin_phase()
            activated = cpu_quant.dequantized_gated_matmul(inputs[0], parts, nested, chunk_rows=20)
        for (a, b), (c, d) in zip(inside, outside):
            assert torch.equal(a, c) and torch.equal(b, d)
        assert torch.equal(activated, outside[0][1])


def _glu(gate_up: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    gate, up = gate_up.chunk(2, dim=1)
    return torch.mul(gate, up, out=out)


def test_transposed_x_is_made_contiguous(generator):
    data = random_weights(Q.Q4_1, 10, 64, generator)
    x = torch.randn(64, 6, generator=generator).T
    assert error(cpu_quant.quantized_matmul(x, [(data, Q.Q4_1)]), x, gguf_dequantize(data, Q.Q4_1)) < TOLERANCE


def special_bits(patterns: tuple[int, ...]) -> torch.Tensor:
    """16-bit patterns as little-endian byte pairs, uint8 [len(patterns), 2]."""
    return torch.tensor(patterns, dtype=torch.int32).to(torch.int16).view(torch.uint8).view(-1, 2)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("qtype", [t for t in TYPES if t != Q.F32], ids=lambda t: t.name)
def test_nan_and_inf_scales_reach_their_own_outputs_only(isa, qtype, generator):
    """Blocks whose scales (float types: values) are NaN, Inf, subnormal or zero decode as gguf
    does, bit for bit; in a matmul, the weight rows holding a NaN or an Inf give NaN or Inf in
    their columns and only there."""
    cols = max(block_columns(qtype))
    data = random_weights(qtype, 12, cols, generator)
    if qtype in SCALE_OFFSETS:  # every third block gets the next pattern in one of its scales
        patterns = special_bits(SPECIAL_HALVES)
        blocks = data.view(-1, GGML_QUANT_SIZES[qtype][1])
        for j, i in enumerate(range(0, blocks.shape[0], 3)):
            offset = SCALE_OFFSETS[qtype][j % len(SCALE_OFFSETS[qtype])]
            blocks[i, offset : offset + 2] = patterns[j % len(patterns)]
    else:  # F16, BF16: every 37th value of the first six rows
        patterns = special_bits(SPECIAL_BFLOAT16 if qtype == Q.BF16 else SPECIAL_HALVES)
        values = data.view(-1, 2)[: data.numel() // 4 : 37]
        values[:] = patterns[torch.arange(values.shape[0]) % len(patterns)]
    expected = gguf_dequantize(data, qtype)
    x = torch.randn(3, cols, generator=generator)
    with cpu_quant.forced_isa(isa):
        decoded = cpu_quant.dequantize_rows(data, qtype)
        direct = cpu_quant.quantized_matmul(x, [(data, qtype)])
        panels = cpu_quant.dequantized_matmul(x, [(data, qtype)])
    assert same_bits(decoded, expected)  # NaN payloads too: a block has one special scale, whose NaN propagates
    bad_rows = ~torch.isfinite(expected).all(dim=1)
    assert bad_rows.any() and not bad_rows.all()
    for out in (direct, panels):
        assert not torch.isfinite(out[:, bad_rows]).any()
        assert torch.isfinite(out[:, ~bad_rows]).all()
        assert error(out[:, ~bad_rows], x, expected[~bad_rows]) < TOLERANCE


class TestBadInput:
    def setup_method(self):
        generator = torch.Generator().manual_seed(0)
        self.data = random_weights(Q.Q4_K, 6, 512, generator)
        self.x = torch.randn(2, 512, generator=generator)

    @pytest.mark.parametrize("matmul", [cpu_quant.quantized_matmul, cpu_quant.dequantized_matmul])
    def test_matmul_arguments(self, matmul):
        data, x = self.data, self.x
        cases = [
            (TypeError, "x must be a torch.Tensor", ([[1.0]], [(data, Q.Q4_K)])),
            (ValueError, "x must have dtype in \\(float32\\)", (x.double(), [(data, Q.Q4_K)])),
            (ValueError, "x must have 2 dimensions", (x[0], [(data, Q.Q4_K)])),
            (ValueError, "x must not require grad", (x.clone().requires_grad_(), [(data, Q.Q4_K)])),
            (TypeError, "parts must be a non-empty list or tuple", (x, [])),
            (TypeError, "parts\\[0\\] must be a \\(data, qtype\\) pair", (x, [data])),
            (ValueError, "parts\\[0\\] qtype must be one of", (x, [(data, Q.Q2_K)])),
            (TypeError, "parts\\[0\\] qtype must be a GGMLType", (x, [(data, "Q4_K")])),
            (ValueError, "parts\\[1\\] data must have dtype in \\(uint8\\)", (x, [(data, Q.Q4_K), (data.int(), Q.Q4_K)])),
            (ValueError, "parts\\[0\\] data must be contiguous", (x, [(data[:, :144], Q.Q4_K)])),
            (ValueError, r"parts\[0\] data must have rows of 288 bytes \(512 values of Q4_K\)", (x, [(data[:, :144].contiguous(), Q.Q4_K)])),
            (ValueError, "parts\\[0\\] data must have rows of 2048 bytes", (x, [(data, Q.F32)])),
            (ValueError, "cols must be a non-negative multiple of Q4_K's 256-value blocks", (x[:, :100], [(data, Q.Q4_K)])),
        ]
        for error_type, message, args in cases:
            with pytest.raises(error_type, match=message):
                matmul(*args)
        with pytest.raises(ValueError, match="out must be a contiguous tensor of shape \\(2, 6\\)"):
            matmul(x, [(data, Q.Q4_K)], out=torch.empty(6, 2).T)
        with pytest.raises(ValueError, match="out must have dtype in \\(float32\\)"):
            matmul(x, [(data, Q.Q4_K)], out=torch.empty(2, 6, dtype=torch.float64))

    def test_panel_rows(self):
        for bad in (0, -3, 2.5, True):
            with pytest.raises(ValueError, match="panel_rows must be a positive int or None"):
                cpu_quant.dequantized_matmul(self.x, [(self.data, Q.Q4_K)], panel_rows=bad)
            with pytest.raises(ValueError, match="chunk_rows must be a positive int or None"):
                cpu_quant.dequantized_gated_matmul(self.x, [(self.data, Q.Q4_K)], _glu, chunk_rows=bad)

    def test_gated_matmul_needs_gate_and_up_rows(self):
        with pytest.raises(ValueError, match="must stack gate and up rows, an even count; got 5"):
            cpu_quant.dequantized_gated_matmul(self.x, [(self.data[:5].contiguous(), Q.Q4_K)], _glu)

    def test_row_orders(self):
        parts = [(self.data, Q.Q4_K)]
        with pytest.raises(ValueError, match="row_orders must be a list or tuple with one entry per part \\(1\\)"):
            cpu_quant.dequantized_matmul(self.x, parts, row_orders=[None, None])
        with pytest.raises(ValueError, match="row_orders\\[0\\] must have dtype in \\(int64\\)"):
            cpu_quant.dequantized_matmul(self.x, parts, row_orders=[torch.arange(6, dtype=torch.int32)])
        with pytest.raises(ValueError, match="row_orders\\[0\\] must have shape \\(6,\\)"):
            cpu_quant.dequantized_matmul(self.x, parts, row_orders=[torch.arange(5)])
        with pytest.raises(ValueError, match="row_orders\\[0\\] must hold rows 0..5, got 1..6"):
            cpu_quant.dequantized_matmul(self.x, parts, row_orders=[torch.arange(1, 7)])

    def test_dequantize_arguments(self):
        data = self.data
        with pytest.raises(ValueError, match=r"rows\[1\] = 6 is not a row of w \(0\.\.5\)"):
            cpu_quant.dequantize_rows(data, Q.Q4_K, torch.tensor([0, 6]))
        with pytest.raises(ValueError, match=r"rows\[0\] = -1 is not a row of w"):
            cpu_quant.dequantize_rows(data, Q.Q4_K, torch.tensor([-1]))
        with pytest.raises(ValueError, match="rows must have dtype in \\(int32, int64\\)"):
            cpu_quant.dequantize_rows(data, Q.Q4_K, torch.tensor([0.0]))
        with pytest.raises(ValueError, match="data's rows of 100 bytes are not whole Q4_K blocks of 144 bytes"):
            cpu_quant.dequantize_rows(data[:, :100].contiguous(), Q.Q4_K)
        with pytest.raises(ValueError, match="qtype must be one of"):
            cpu_quant.dequantize_rows(data, Q.IQ2_XXS)
        with pytest.raises(ValueError, match="cols must be a non-negative multiple of Q8_0's 32-value blocks"):
            cpu_quant.block_bytes(Q.Q8_0, 48)

    def test_forced_isa(self):
        before = cpu_quant.isa()
        with pytest.raises(ValueError, match="quant ISA 'sve' is not one this CPU runs"):
            with cpu_quant.forced_isa("sve"):
                pass
        with pytest.raises(RuntimeError):
            with cpu_quant.forced_isa("generic"):
                assert cpu_quant.isa() == "generic"
                raise RuntimeError
        assert cpu_quant.isa() == before

    def test_the_binding_checks_sizes_before_reading(self):
        """What the C++ core refuses with std::invalid_argument (ValueError here), should the
        Python checks above be bypassed."""
        data, x = self.data.numpy(), self.x.numpy()
        out = np.empty((2, 6), np.float32)
        calls = [
            ("parts\\[0\\] has rows of 144 bytes, but 512 values of Q4_K take 288",
             lambda: _cpu_kernels.quantized_matmul(x, [(data[:, :144].copy(), int(Q.Q4_K))], out, 1)),
            ("ggml type id 10 is not supported",
             lambda: _cpu_kernels.quantized_matmul(x, [(data, int(Q.Q2_K))], out, 1)),
            ("K \\(x's columns\\) = 100 is not a whole number of Q4_K blocks \\(256 values\\)",
             lambda: _cpu_kernels.quantized_matmul(x[:, :100].copy(), [(data, int(Q.Q4_K))], out, 1)),
            ("out must have shape \\[2, 12\\]",
             lambda: _cpu_kernels.quantized_matmul(x, [(data, int(Q.Q4_K))] * 2, out, 1)),
            ("parts\\[0\\] must be a C-contiguous 2-D array",
             lambda: _cpu_kernels.quantized_matmul(x, [(data[:, ::2], int(Q.Q4_K))], out, 1)),
            ("rows 4\\.\\.7 are not rows of w \\(0\\.\\.5\\)",
             lambda: _cpu_kernels.dequantize_row_range(data, int(Q.Q4_K), 4, np.empty((4, 512), np.float32), 1)),
            ("out must have one row per index",
             lambda: _cpu_kernels.dequantize_rows(data, int(Q.Q4_K), np.zeros(3, np.int64), np.empty((2, 512), np.float32), 1)),
            ("w has rows of 288 bytes, but 256 values of Q4_K take 144",
             lambda: _cpu_kernels.dequantize_rows(data, int(Q.Q4_K), np.zeros(2, np.int64), np.empty((2, 256), np.float32), 1)),
        ]
        for message, call in calls:
            with pytest.raises(ValueError, match=message):
                call()
        with pytest.raises(TypeError):  # float64 x: no silent copy
            _cpu_kernels.quantized_matmul(x.astype(np.float64), [(data, int(Q.Q4_K))], out, 1)

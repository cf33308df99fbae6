"""x @ W^T on a CPU with W kept in its GGUF encoding (csrc/cpu_quant_matmul.cpp, fastllm._cpu_kernels).

Every weight is decoded to the float32 number `gguf.quants.dequantize` gives (bit for bit), x is
never quantized, and each x * w is a float32 product of those numbers summed in float32: the
result differs from a float32 matmul against the decoded matrix only in the order of the sums.
Two implementations, each correct for any number of rows of x; the model layer times both per
shape and keeps the faster:

- `quantized_matmul`: the C++ kernel decodes each block in registers and uses it for every row of
  x (up to 8 at a time), one pass over the encoded weights: the few rows of a decode step.
- `dequantized_matmul`: decodes a panel of weight rows at a time into a float32 buffer (the same
  C++ decoding, in parallel) and multiplies it with torch's float32 matmul: many rows (prefill).
  `dequantized_gated_matmul` does the same for a gated MLP's [gate; up] weight, activating each
  chunk of features as it is computed.

A weight may be stacked from parts of different types (a Q4_K_M file mixes Q4_K and Q6_K inside
one fused projection): `parts` is a list or tuple of (uint8 data [rows_i, row bytes], type),
stacked by rows. The types are `QUANTIZED_TYPES` (float types included, so that any part of a
stack can be one).
Everything runs on torch's intra-op threads (torch.get_num_threads()). Inside a model step the
results and the panels and products come from the step's buffers (`fastllm.kernels.cpu_buffers`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch

from fastllm import _cpu_kernels
from fastllm.ggml_types import BLOCK_SIZES, GGMLType
from fastllm.kernels import cpu_buffers
from fastllm.kernels._checks import check_shape, check_tensor

__all__ = [
    "QUANTIZED_TYPES",
    "available_isas",
    "block_bytes",
    "dequantize_rows",
    "dequantized_gated_matmul",
    "dequantized_matmul",
    "forced_isa",
    "isa",
    "quantized_matmul",
]

QUANTIZED_TYPES: tuple[GGMLType, ...] = tuple(GGMLType(t) for t in _cpu_kernels.quant_types)

Part = tuple[torch.Tensor, GGMLType]

# dequantized_matmul's default panel: this many bytes of float32 weights, never fewer than
# _MIN_PANEL_ROWS rows. Each panel's torch.mm packs x anew, so small panels lose to F.linear on
# the whole matrix, while the panel is part of a prefill's peak memory: 4 MB prefilled as fast as
# 8 MB, smaller panels slower (benchmarks/README.md, "CPU quantized matmul").
_PANEL_BYTES = 4 << 20
_MIN_PANEL_ROWS = 64
# A gated chunk's torch.mm has 2x its rows as columns: below 512 of them sgemm runs 5-15% slower.
_MIN_GATED_ROWS = 256


_CPU = torch.device("cpu")
_TYPE_IDS = frozenset(int(t) for t in QUANTIZED_TYPES)


# The checks run on every call, ahead of kernels that take a few microseconds at decode sizes.
def _check_qtype(name: str, qtype: object) -> GGMLType:
    if isinstance(qtype, bool) or not isinstance(qtype, int):
        raise TypeError(f"{name} must be a GGMLType (or a gguf.GGMLQuantizationType), got {type(qtype).__name__}")
    if qtype not in _TYPE_IDS:
        supported = ", ".join(t.name for t in QUANTIZED_TYPES)
        raise ValueError(f"{name} must be one of {supported}, got {qtype!r}")
    return qtype if isinstance(qtype, GGMLType) else GGMLType(qtype)


def _row_bytes(qtype: GGMLType, cols: int) -> int:
    values, size = BLOCK_SIZES[qtype]
    if isinstance(cols, bool) or not isinstance(cols, int) or cols < 0 or cols % values:
        raise ValueError(f"cols must be a non-negative multiple of {qtype.name}'s {values}-value blocks, got {cols!r}")
    return cols // values * size


def block_bytes(qtype: GGMLType, cols: int) -> int:
    """Bytes of one row of `cols` values of `qtype` (cols a multiple of the type's block size)."""
    return _row_bytes(_check_qtype("qtype", qtype), cols)


def _check_data(name: str, data: object, qtype: GGMLType, cols: int | None) -> torch.Tensor:
    """A uint8 [rows, row bytes] contiguous CPU tensor whose rows hold `cols` values (any whole
    number of blocks when cols is None)."""
    check_tensor(name, data, ndim=2, dtypes=(torch.uint8,), device=_CPU)
    if not data.is_contiguous():
        raise ValueError(f"{name} must be contiguous, got strides {data.stride()}")
    if cols is None:
        size = BLOCK_SIZES[qtype][1]
        if data.shape[1] % size:
            raise ValueError(f"{name}'s rows of {data.shape[1]} bytes are not whole {qtype.name} blocks of {size} bytes")
    elif data.shape[1] != _row_bytes(qtype, cols):
        raise ValueError(
            f"{name} must have rows of {_row_bytes(qtype, cols)} bytes ({cols} values of {qtype.name}), "
            f"got shape {tuple(data.shape)}"
        )
    return data


def _check_part(index: int, part: object, cols: int) -> tuple[torch.Tensor, GGMLType]:
    if not isinstance(part, (tuple, list)) or len(part) != 2:
        raise TypeError(f"parts[{index}] must be a (data, qtype) pair, got {type(part).__name__}")
    data, qtype = part
    qtype = _check_qtype(f"parts[{index}] qtype", qtype)
    return _check_data(f"parts[{index}] data", data, qtype, cols), qtype


def _check_operands(
    x: torch.Tensor, parts: Sequence[Part]
) -> tuple[torch.Tensor, list[tuple[torch.Tensor, GGMLType]]]:
    """x made contiguous, and the checked parts."""
    check_tensor("x", x, ndim=2, dtypes=(torch.float32,), device=_CPU)
    if x.requires_grad:
        raise ValueError("x must not require grad: these kernels record no autograd graph")
    if not isinstance(parts, (tuple, list)) or not parts:
        raise TypeError(f"parts must be a non-empty list or tuple of (data, qtype) pairs, got {type(parts).__name__}")
    return x.contiguous(), [_check_part(i, part, x.shape[1]) for i, part in enumerate(parts)]


def _output(out: torch.Tensor | None, shape: tuple[int, int]) -> torch.Tensor:
    """out checked against `shape`, or when None a result buffer of it (`cpu_buffers.output`)."""
    if out is None:
        return cpu_buffers.output(*shape)
    check_tensor("out", out, ndim=2, dtypes=(torch.float32,), device=_CPU)
    if tuple(out.shape) != shape or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous tensor of shape {shape}, got {tuple(out.shape)} "
                         f"with strides {out.stride()}")
    return out


def _stacked_rows(parts: Sequence[tuple[torch.Tensor, GGMLType]]) -> int:
    return sum(data.shape[0] for data, _ in parts)


def quantized_matmul(x: torch.Tensor, parts: Sequence[Part], out: torch.Tensor | None = None) -> torch.Tensor:
    """x [M, K] float32 @ (the parts stacked by rows, decoded)^T -> float32 [M, sum of rows], into `out` if given."""
    x, checked = _check_operands(x, parts)
    out = _output(out, (x.shape[0], _stacked_rows(checked)))
    _cpu_kernels.quantized_matmul(
        x.numpy(), [(data.numpy(), int(qtype)) for data, qtype in checked], out.numpy(), torch.get_num_threads()
    )
    return out


def _panel_rows(cols: int) -> int:
    return max(_MIN_PANEL_ROWS, _PANEL_BYTES // (4 * max(cols, 1)))


def _gated_chunk_rows(cols: int, features: int) -> int:
    """Features per chunk of a gated matmul: gate and up rows in one panel of about _PANEL_BYTES,
    at least _MIN_GATED_ROWS, the features split into equal chunks (multiples of 16)."""
    limit = max(_MIN_GATED_ROWS, _PANEL_BYTES // (8 * max(cols, 1)))
    chunks = -(-features // limit)
    if chunks == 1:
        return features
    return (-(-features // chunks) + 15) // 16 * 16


def dequantized_matmul(
    x: torch.Tensor,
    parts: Sequence[Part],
    out: torch.Tensor | None = None,
    panel_rows: int | None = None,
    row_orders: Sequence[torch.Tensor | None] | None = None,
) -> torch.Tensor:
    """`quantized_matmul`'s product, computed panel by panel: `panel_rows` weight rows (default:
    about 4 MB of float32) decoded into a buffer, then torch.mm into their columns of out.

    row_orders: per part, None or the order in which its stored rows fill its columns (int64
    [rows_i], as `QuantizedTensor.row_order`): the panels are decoded in that order, at no cost.
    """
    x, checked = _check_operands(x, parts)
    out = _output(out, (x.shape[0], _stacked_rows(checked)))
    if panel_rows is None:
        panel_rows = _panel_rows(x.shape[1])
    else:
        _check_positive("panel_rows", panel_rows)
    stack = _DecodedStack(checked, _check_row_orders(row_orders, checked))
    with cpu_buffers.temporary(min(panel_rows, out.shape[1]), x.shape[1]) as buffer:
        for first in range(0, out.shape[1], panel_rows):
            panel = stack.decode(first, min(first + panel_rows, out.shape[1]), buffer)
            torch.mm(x, panel.t(), out=out[:, first : first + panel.shape[0]])
    return out


def dequantized_gated_matmul(
    x: torch.Tensor,
    parts: Sequence[Part],
    activation: Callable[..., torch.Tensor],
    chunk_rows: int | None = None,
    row_orders: Sequence[torch.Tensor | None] | None = None,
) -> torch.Tensor:
    """activation(x @ W^T) -> float32 [M, I] for W = [gate; up] (the parts stacked by rows, 2 * I
    rows in all) and a gated activation [rows, 2n] -> [rows, n] that writes into its `out=` (strided
    rows: each chunk's columns of the result; e.g. `fastllm.kernels.cpu.silu_and_mul`),
    without the [M, 2 * I] product: chunk by chunk of `chunk_rows` features (default: gate and up
    rows of about 4 MB of float32 together, at least 256), their gate and up rows are decoded
    into one panel, multiplied by one torch.mm, and activated: activation(dequantized_matmul(x,
    parts)) up to the order sgemm sums in (the same bits on every shape tested). row_orders as
    `dequantized_matmul`'s.
    """
    x, checked = _check_operands(x, parts)
    rows = _stacked_rows(checked)
    if rows % 2:
        raise ValueError(f"a gated matmul's parts must stack gate and up rows, an even count; got {rows}")
    features = rows // 2
    if chunk_rows is None:
        chunk_rows = _gated_chunk_rows(x.shape[1], features)
    else:
        _check_positive("chunk_rows", chunk_rows)
    stack = _DecodedStack(checked, _check_row_orders(row_orders, checked))
    out = cpu_buffers.output(x.shape[0], features)
    chunk = min(chunk_rows, features)
    with (cpu_buffers.temporary(2 * chunk, x.shape[1]) as buffer,
          cpu_buffers.temporary(x.shape[0], 2 * chunk) as product):
        for first in range(0, features, chunk):
            count = min(chunk, features - first)
            stack.decode(first, first + count, buffer[:count])
            stack.decode(features + first, features + first + count, buffer[count : 2 * count])
            gate_up = product if count == chunk else product.view(-1)[: x.shape[0] * 2 * count].view(x.shape[0], -1)
            torch.mm(x, buffer[: 2 * count].t(), out=gate_up)
            activation(gate_up, out=out[:, first : first + count])
    return out


def _check_positive(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int or None, got {value!r}")


class _DecodedStack:
    """Decodes rows of the parts stacked by rows (each read through its row order, if any)."""

    def __init__(
        self, parts: Sequence[tuple[torch.Tensor, GGMLType]], orders: Sequence[torch.Tensor | None]
    ) -> None:
        self._pieces = []  # (first stacked row, encoded rows, type id, order)
        first = 0
        for (data, qtype), order in zip(parts, orders):
            self._pieces.append((first, data.numpy(), int(qtype), order))
            first += data.shape[0]
        self._threads = torch.get_num_threads()

    def decode(self, start: int, stop: int, buffer: torch.Tensor) -> torch.Tensor:
        """Stacked rows [start, stop) decoded into the first rows of `buffer`; those rows."""
        panel = buffer[: stop - start]
        for first, encoded, qtype, order in self._pieces:
            low, high = max(start, first), min(stop, first + encoded.shape[0])
            if low >= high:
                continue
            rows = panel[low - start : high - start].numpy()
            if order is None:
                _cpu_kernels.dequantize_row_range(encoded, qtype, low - first, rows, self._threads)
            else:
                _cpu_kernels.dequantize_rows(encoded, qtype, order[low - first : high - first].numpy(), rows,
                                             self._threads)
        return panel


def _check_row_orders(
    row_orders: Sequence[torch.Tensor | None] | None, parts: Sequence[tuple[torch.Tensor, GGMLType]]
) -> list[torch.Tensor | None]:
    if row_orders is None:
        return [None] * len(parts)
    if not isinstance(row_orders, (list, tuple)) or len(row_orders) != len(parts):
        raise ValueError(
            f"row_orders must be a list or tuple with one entry per part ({len(parts)}), got {row_orders!r}"
        )
    for index, (order, (data, _)) in enumerate(zip(row_orders, parts)):
        if order is not None:
            name = f"row_orders[{index}]"
            check_tensor(name, order, dtypes=(torch.int64,), device=_CPU)
            check_shape(name, order, (data.shape[0],))
            low, high = order.aminmax() if order.numel() else (0, 0)
            if low < 0 or high >= data.shape[0]:
                raise ValueError(f"{name} must hold rows 0..{data.shape[0] - 1}, got {int(low)}..{int(high)}")
    return [None if order is None else order.contiguous() for order in row_orders]


def dequantize_rows(
    data: torch.Tensor, qtype: GGMLType, rows: torch.Tensor | None = None
) -> torch.Tensor:
    """The float32 rows `rows` (int32/int64 indices of any shape; None: all rows) of the encoded
    matrix `data` -> [*rows.shape, cols]: an embedding lookup, or the whole matrix decoded."""
    qtype = _check_qtype("qtype", qtype)
    _check_data("data", data, qtype, None)
    values, size = BLOCK_SIZES[qtype]
    cols = data.shape[1] // size * values
    threads = torch.get_num_threads()
    if rows is None:
        out = torch.empty(data.shape[0], cols)
        _cpu_kernels.dequantize_row_range(data.numpy(), int(qtype), 0, out.numpy(), threads)
        return out
    check_tensor("rows", rows, dtypes=(torch.int32, torch.int64), device=torch.device("cpu"))
    out = torch.empty(*rows.shape, cols)
    flat = rows.reshape(-1).to(torch.int64).contiguous()
    _cpu_kernels.dequantize_rows(data.numpy(), int(qtype), flat.numpy(), out.view(-1, cols).numpy(), threads)
    return out


def isa() -> str:
    """The instruction set the kernels run on now ("avx512", "avx2" or "generic")."""
    return _cpu_kernels.quant_isa()


def available_isas() -> tuple[str, ...]:
    """The instruction sets this CPU runs, widest (the default) first."""
    return tuple(_cpu_kernels.quant_isas())


@contextmanager
def forced_isa(name: str) -> Iterator[None]:
    """Run the kernels on `name` (one of available_isas()) inside the block, for tests and
    benchmarks; ValueError for an instruction set this CPU lacks. Process-wide: not for threads
    that run kernels concurrently."""
    before = isa()
    _cpu_kernels.set_quant_isa(name)
    try:
        yield
    finally:
        _cpu_kernels.set_quant_isa(before)

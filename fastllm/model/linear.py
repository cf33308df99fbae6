"""Weight matrices and their matmuls: `Linear` (y = x @ W^T) and `Embedding` (rows of a table).

A weight takes one of three forms, chosen when it is loaded:

- dense, in the model's dtype on its device: `F.linear` (on a CPU, MKL's sgemm);
- dense float32 reordered once into oneDNN's blocked layout (CPU, backend "cpu"), for the machines
  where oneDNN's matmul reads it faster than MKL reads the plain matrix;
- encoded: the checkpoint's own GGUF blocks (or 16-bit floats), never expanded in memory (CPU,
  float32, backend "cpu"). `fastllm.kernels.cpu_quant` multiplies by them either decoding each block
  in registers (few rows) or decoding panels to float32 for torch's sgemm (many rows). Every
  decoded weight is the float32 number `gguf.quants.dequantize` gives, every product an exact
  float32 product: the result differs from a float32 matmul only in the order of the sums.

Where two implementations could run, the one that runs is the one measured faster on this machine
(`fastllm.model.matmul_tuning`), never a choice made on another CPU.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from fastllm.model.backend import GatedActivation
from fastllm.model.quantized import QuantizedTensor
from fastllm.model import matmul_tuning

WeightPart = torch.Tensor | QuantizedTensor


def encoded_types(backend_name: str, device: torch.device, dtype: torch.dtype) -> frozenset:
    """The GGUF types a model keeps encoded: those the C++ kernels read, for float32 CPU models of
    backend "cpu"; none otherwise (weights are then dequantized to the model's dtype at load)."""
    if backend_name != "cpu" or torch.device(device).type != "cpu" or dtype != torch.float32:
        return frozenset()
    from fastllm.kernels import cpu_quant

    return frozenset(cpu_quant.QUANTIZED_TYPES)


class Linear:
    """y = x @ W^T for a weight W [out_features, in_features], in the form `make_linear` chose."""

    in_features: int
    out_features: int

    def __call__(self, x: torch.Tensor) -> torch.Tensor:  # x [..., in_features] -> [..., out_features]
        raise NotImplementedError

    def gated(self, x: torch.Tensor, activation: GatedActivation) -> torch.Tensor:
        """activation(self(x)) for a [gate; up] weight and a gated activation (SwiGLU, GeGLU):
        x [T, in_features] -> [T, out_features / 2] (the activation takes 2-D rows)."""
        return activation(self(x))

    def dense(self) -> torch.Tensor:
        """W as a float tensor (a copy for packed and encoded weights): for tests and inspection."""
        raise NotImplementedError

    @property
    def nbytes(self) -> int:
        """Bytes the weight occupies in memory."""
        raise NotImplementedError


class DenseLinear(Linear):
    """A float matrix: F.linear, or oneDNN's matmul on a prepacked copy (which then replaces it)."""

    def __init__(self, weight: torch.Tensor, *, may_prepack: bool = False) -> None:
        self.out_features, self.in_features = weight.shape
        self.weight = weight
        if may_prepack and onednn_applies(weight) and matmul_tuning.prepacking_is_faster(weight):
            self.weight = prepack(weight)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight.is_mkldnn:
            return torch.ops.mkldnn._linear_pointwise(x, self.weight, None, "none", [], "")
        return F.linear(x, self.weight)

    def dense(self) -> torch.Tensor:
        return self.weight.to_dense() if self.weight.is_mkldnn else self.weight

    @property
    def packed(self) -> bool:
        return self.weight.is_mkldnn

    @property
    def nbytes(self) -> int:
        return self.weight.numel() * self.weight.element_size()


class EncodedLinear(Linear):
    """GGUF-encoded row blocks stacked into one matrix (e.g. q, k and v, each in its own type).

    Up to `direct_max_rows` rows of x the kernel decodes blocks in registers; above, panels of W are
    decoded to float32 for torch's sgemm. The crossover is measured per shape on this machine.

    Parts whose rows are stored in another order (`QuantizedTensor.row_order`) are read through
    it: the panels are decoded in order, and the register kernel's output columns are gathered by
    `output_order` (None when every part is stored in order).
    """

    def __init__(self, parts: Sequence[QuantizedTensor]) -> None:
        from fastllm.kernels import cpu_quant

        cols = {part.shape[1] for part in parts}
        if len(cols) != 1:
            raise ValueError(f"stacked weight parts must have the same number of columns, got {sorted(cols)}")
        self._kernels = cpu_quant
        self.parts = tuple(parts)
        self._operands = [(part.data, part.qtype) for part in self.parts]
        self._row_orders = [part.row_order for part in self.parts]
        self.in_features = cols.pop()
        self.out_features = sum(part.shape[0] for part in self.parts)
        self.output_order = _output_order(self.parts)
        self.direct_max_rows = matmul_tuning.direct_kernel_max_rows(self._operands, self.in_features)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        if rows.shape[0] <= self.direct_max_rows:
            out = self._kernels.quantized_matmul(rows, self._operands)
            if self.output_order is not None:
                out = out.index_select(1, self.output_order)
        else:
            out = self._kernels.dequantized_matmul(rows, self._operands, row_orders=self._row_orders)
        return out.view(*x.shape[:-1], self.out_features)

    def gated(self, x: torch.Tensor, activation: GatedActivation) -> torch.Tensor:
        # Above the register kernel's rows, chunks of gate and up features are decoded, multiplied
        # and activated together: the [T, 2I] product, the prefill's largest activation, never exists.
        rows = x.reshape(-1, self.in_features)
        if rows.shape[0] <= self.direct_max_rows:
            return activation(self(x))
        out = self._kernels.dequantized_gated_matmul(rows, self._operands, activation, row_orders=self._row_orders)
        return out.view(*x.shape[:-1], self.out_features // 2)

    def dense(self) -> torch.Tensor:
        return torch.cat([part.dequantize() for part in self.parts])

    @property
    def nbytes(self) -> int:
        return sum(part.nbytes for part in self.parts)


def _output_order(parts: Sequence[QuantizedTensor]) -> torch.Tensor | None:
    """For the parts stacked by rows: which stored row's column of the stack is each output, or
    None when every part is stored in order."""
    if all(part.row_order is None for part in parts):
        return None
    orders, first = [], 0
    for part in parts:  # numpy, not torch: see fastllm.model.quantized._NUMPY_FLOATS
        rows = part.shape[0]
        orders.append(first + (np.arange(rows) if part.row_order is None else part.row_order.numpy()))
        first += rows
    return torch.from_numpy(np.concatenate(orders))


def make_linear(
    parts: Sequence[WeightPart], *, dtype: torch.dtype, device: torch.device, encoded_types: frozenset
) -> Linear:
    """The weight stacked from `parts` (by rows), in the form a model of this dtype and device reads.

    With `encoded_types` (see `encoded_types()`): parts of those types stay encoded, float parts join
    them as 16/32-bit float blocks, and an all-float32 weight stays dense (oneDNN-packed where that
    measures faster). Without: every part becomes a dense tensor of `dtype` on `device`.
    """
    if encoded_types and any(isinstance(p, QuantizedTensor) or p.dtype != torch.float32 for p in parts):
        if all(not isinstance(p, QuantizedTensor) or p.qtype in encoded_types for p in parts):
            return EncodedLinear([p if isinstance(p, QuantizedTensor) else QuantizedTensor.from_float(p) for p in parts])
    dense = [
        (p.dequantize() if isinstance(p, QuantizedTensor) else p).to(device=device, dtype=dtype) for p in parts
    ]
    weight = dense[0].contiguous() if len(dense) == 1 else torch.cat(dense)
    return DenseLinear(weight, may_prepack=bool(encoded_types))


class Embedding:
    """Rows of a [vocab, hidden] table by token id: dense, or encoded (only the rows looked up are decoded)."""

    def __init__(self, weight: torch.Tensor | QuantizedTensor) -> None:
        self.weight = weight

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        if isinstance(self.weight, QuantizedTensor):
            from fastllm.kernels import cpu_quant

            if self.weight.row_order is not None:
                ids = self.weight.row_order[ids]
            return cpu_quant.dequantize_rows(self.weight.data, self.weight.qtype, ids)
        return F.embedding(ids, self.weight)

    def dense(self) -> torch.Tensor:
        return self.weight.dequantize() if isinstance(self.weight, QuantizedTensor) else self.weight

    @property
    def nbytes(self) -> int:
        if isinstance(self.weight, QuantizedTensor):
            return self.weight.nbytes
        return self.weight.numel() * self.weight.element_size()


# oneDNN picks its blocked layout for a typical row count; measured insensitive to it from 16 to
# 2176 rows (a hint of 1 row gave a layout 40% slower at 16 rows).
_PACKING_ROWS_HINT = 64


def onednn_applies(weight: torch.Tensor) -> bool:
    """Whether `prepack` takes this weight: dense float32 on a CPU, with a torch built with oneDNN."""
    return (
        weight.device.type == "cpu" and weight.dtype == torch.float32 and not weight.is_mkldnn
        and torch.backends.mkldnn.is_available()
    )


def prepack(weight: torch.Tensor) -> torch.Tensor:
    """`weight` [out, in] reordered once into oneDNN's blocked layout: an opaque mkldnn tensor of the
    same shape and dtype that only `DenseLinear` reads (`.to_dense()` gives the matrix back)."""
    if weight.dim() != 2 or not onednn_applies(weight):
        raise ValueError(
            f"prepack needs a dense 2-D float32 CPU weight and a torch built with oneDNN, got a "
            f"{weight.dim()}-D {weight.dtype} {weight.layout} tensor on {weight.device}"
        )
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach(), _PACKING_ROWS_HINT)

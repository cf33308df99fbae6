"""GGUF tensor encodings: `QuantizedTensor` (a matrix kept in its blocks) and `dequantize` (bytes -> floats).

Float types are reinterpreted in place. The common llama.cpp block formats (Q8_0, Q4_0, Q4_1)
are decoded by the whole-tensor numpy code below, faster than `gguf.quants` (which builds
temporaries 16 rows at a time); every other supported type goes through `gguf.quants`. Both do
the same float32 operations in the same order, so results are bit-identical (tests hold them to
it). numpy rather than torch on purpose: it runs single-threaded, where torch's parallel ops kept
waiting on each other on a busy machine (the README has the timings).

The loaders produce these; the model reads them (`fastllm.model.linear`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from fastllm.ggml_types import BLOCK_SIZES, GGMLType

Q = GGMLType

FLOAT_TYPES = {Q.F32: torch.float32, Q.F16: torch.float16, Q.BF16: torch.bfloat16}
# The load's array work is numpy's where numpy can do it: each torch op run only at load (views,
# sorts, aranges) brings pages of libtorch's code into memory that no step reads again.
_NUMPY_FLOATS = {Q.F32: np.float32, Q.F16: np.float16}
# Block formats decoded through gguf.quants: the rest of the llama.cpp "legacy" and K-quant families.
GGUF_QUANTS_TYPES = (Q.Q5_0, Q.Q5_1, Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K)


def _f16_scales(blocks: np.ndarray, count: int) -> np.ndarray:
    """The `count` float16 numbers at the start of every block, as float32 [n_blocks, count]."""
    return blocks[:, : 2 * count].copy().view(np.float16).astype(np.float32)


def _nibbles(packed: np.ndarray) -> np.ndarray:
    """float32 [n_blocks, 2 * bytes]: ggml packs value j in the low nibble of byte j, value j + half in its high one."""
    half = packed.shape[1]
    out = np.empty((packed.shape[0], 2 * half), np.float32)
    out[:, :half] = packed & 0x0F
    out[:, half:] = packed >> 4
    return out


# In-place arithmetic on one output array: a third of the memory traffic of expression temporaries.
def _q8_0(blocks: np.ndarray) -> np.ndarray:  # d: f16, qs: int8[32]; value = q * d
    out = blocks[:, 2:].view(np.int8).astype(np.float32)
    out *= _f16_scales(blocks, 1)
    return out


def _q4_0(blocks: np.ndarray) -> np.ndarray:  # d: f16, qs: u8[16]; value = d * (q - 8)
    out = _nibbles(blocks[:, 2:])
    out -= 8
    out *= _f16_scales(blocks, 1)
    return out


def _q4_1(blocks: np.ndarray) -> np.ndarray:  # d: f16, m: f16, qs: u8[16]; value = d * q + m
    scales = _f16_scales(blocks, 2)
    out = _nibbles(blocks[:, 4:])
    out *= scales[:, :1]
    out += scales[:, 1:]
    return out


BLOCK_DECODERS: dict[GGMLType, Callable[[np.ndarray], np.ndarray]] = {
    Q.Q8_0: _q8_0,
    Q.Q4_0: _q4_0,
    Q.Q4_1: _q4_1,
}
SUPPORTED_TYPES = (*FLOAT_TYPES, *BLOCK_DECODERS, *GGUF_QUANTS_TYPES)


def dequantize(raw: np.ndarray, qtype: GGMLType, shape: tuple[int, ...]) -> torch.Tensor:
    """Decode a GGUF tensor's bytes (uint8 [..., bytes per row]) to a tensor of `shape`.

    Float tensors keep their dtype (float32, float16, bfloat16); block-quantized ones become
    float32. Raises ValueError for a type outside SUPPORTED_TYPES.
    """
    if qtype in FLOAT_TYPES:
        flat = raw.reshape(-1)
        if qtype in _NUMPY_FLOATS:  # viewed by numpy: see _NUMPY_FLOATS
            return torch.from_numpy(flat.view(_NUMPY_FLOATS[qtype]).reshape(shape))
        return torch.from_numpy(flat).view(FLOAT_TYPES[qtype]).reshape(shape)
    decoder = BLOCK_DECODERS.get(qtype)
    if decoder is not None:
        block_bytes = BLOCK_SIZES[qtype][1]
        return torch.from_numpy(decoder(raw.reshape(-1, block_bytes))).reshape(shape)
    if qtype in GGUF_QUANTS_TYPES:
        from gguf import quants as gguf_quants  # only for these types: see fastllm.ggml_types

        return torch.from_numpy(gguf_quants.dequantize(raw, qtype)).reshape(shape)
    supported = ", ".join(t.name for t in SUPPORTED_TYPES)
    raise ValueError(f"unsupported tensor type {qtype.name}; supported: {supported}")


@dataclass(frozen=True)
class QuantizedTensor:
    """A 2-D weight [rows, cols] stored as `data`, uint8 [rows, bytes per row] in ggml's layout of `qtype`.

    `data` may be a view of a memory-mapped file: nothing is copied until a kernel reads it.
    `row_order`, when set, is a permutation of the stored rows (int64 [rows]): row i of the matrix is
    stored row `row_order[i]`. The loader reads llama.cpp's permuted Q/K rows this way instead of
    copying them; the kernels read such rows through it (`fastllm.model.linear.EncodedLinear`).
    """

    data: torch.Tensor
    qtype: GGMLType
    shape: tuple[int, int]
    row_order: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.data, torch.Tensor) or self.data.dtype != torch.uint8 or self.data.dim() != 2:
            raise ValueError(f"QuantizedTensor data must be a 2-D uint8 tensor, got {_describe(self.data)}")
        rows, cols = self.shape
        block_size, type_size = BLOCK_SIZES[self.qtype]
        if cols % block_size or tuple(self.data.shape) != (rows, cols // block_size * type_size):
            raise ValueError(
                f"QuantizedTensor of type {self.qtype.name} and shape {self.shape} needs data of shape "
                f"({rows}, {cols // block_size * type_size}) with {cols} a multiple of {block_size}, "
                f"got {tuple(self.data.shape)}"
            )
        order = self.row_order
        if order is not None and not (
            isinstance(order, torch.Tensor) and order.dtype == torch.int64 and order.shape == (rows,)
            and _is_permutation(order.cpu().numpy())
        ):
            raise ValueError(f"QuantizedTensor row_order must be a permutation of range({rows}) as an int64 tensor, "
                             f"got {_describe(order)}")

    @classmethod
    def from_float(cls, tensor: torch.Tensor) -> QuantizedTensor:
        """A 2-D float16 / bfloat16 / float32 CPU tensor as a QuantizedTensor of its own type (its bytes, no copy)."""
        qtype = next((q for q, dtype in FLOAT_TYPES.items() if dtype == tensor.dtype), None)
        if qtype is None or tensor.dim() != 2 or tensor.device.type != "cpu":
            raise ValueError(f"from_float takes a 2-D float16/bfloat16/float32 CPU tensor, got {_describe(tensor)}")
        rows, cols = tensor.shape
        return cls(tensor.contiguous().view(torch.uint8).view(rows, -1), qtype, (rows, cols))

    @property
    def nbytes(self) -> int:
        return self.data.numel()

    def rows(self, start: int, stop: int) -> QuantizedTensor:
        """Rows [start, stop): a view, no copy (a copy of them when the rows are reordered)."""
        if self.row_order is not None:
            return QuantizedTensor(self.data.index_select(0, self.row_order[start:stop]), self.qtype,
                                   (stop - start, self.shape[1]))
        return QuantizedTensor(self.data[start:stop], self.qtype, (stop - start, self.shape[1]))

    def columns(self, start: int, stop: int) -> QuantizedTensor | None:
        """Columns [start, stop) as a compact copy, or None when they do not start and end on block
        boundaries (a block's values share its scales)."""
        block_size, type_size = BLOCK_SIZES[self.qtype]
        if start % block_size or stop % block_size:
            return None
        data = self.data[:, start // block_size * type_size : stop // block_size * type_size].contiguous()
        return QuantizedTensor(data, self.qtype, (self.shape[0], stop - start), self.row_order)

    def dequantize(self, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> torch.Tensor:
        """The float matrix [rows, cols], in `dtype` on `device` (decoded in float32 first, as gguf does)."""
        raw = self.data.numpy() if self.data.device.type == "cpu" else self.data.cpu().numpy()
        decoded = dequantize(np.asarray(raw), self.qtype, self.shape)
        if self.row_order is not None:
            decoded = decoded.index_select(0, self.row_order)
        return decoded.to(device=device, dtype=dtype)


def _is_permutation(order: np.ndarray) -> bool:
    """Whether the ints `order` hold each of 0 .. len(order) - 1 once."""
    if len(order) and (order.min() < 0 or order.max() >= len(order)):
        return False
    return bool((np.bincount(order, minlength=len(order)) == 1).all())


def _describe(value: object) -> str:
    if isinstance(value, torch.Tensor):
        return f"a {value.dim()}-D {str(value.dtype).removeprefix('torch.')} tensor on {value.device}"
    return type(value).__name__

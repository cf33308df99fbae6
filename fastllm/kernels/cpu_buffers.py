"""The memory the CPU kernels write within one model step, shared by the step's layers.

A prefill's activations are a few MB per layer ([tokens, features] float32). Taken fresh for
each layer, glibc maps them anew (a page fault for every 4 KB written) until its adaptive
threshold rises past their size, and from then on carves them from a heap that the mix of sizes
and lifetimes fragments and never gives back. Here, as llama.cpp's graph allocator plans them,
a step's activations live in one buffer of its own mapping, released when the step ends.

Within `with buffers():` (a `StepBuffers`; one model step on this thread), after
`buffers.begin_phase()`:

- `output(rows, cols)`: a kernel's result, taken from the buffer in order. It stays valid until
  the next begin_phase(), which starts the buffer over. The model begins a phase where each half
  of a layer (attention, MLP) begins its kernels, after the norm that reads the half before's
  result (LlamaDecoderLayer.forward), so each half writes where the one before it did.
- `temporary(rows, cols)`: a kernel's own scratch while its `with` lasts (decoded weight panels,
  a gated product), taken above the results and given back at the end.
- `carried(name, rows, cols)`: one buffer per name for the whole step that each use overwrites,
  for a result that its next producer reads in place (the residual stream).

Outside a block all three are fresh tensors; so are results and temporaries before the block's
first phase, and any piece that does not fit the buffer. The buffer is sized once per step, from
the highest use of the largest step before it in proportion to the rows, with room to spare for
a step larger than any before.
"""

from __future__ import annotations

import math
import mmap
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch

__all__ = ["StepBuffers", "carried", "output", "temporary"]

_ALIGN = 16  # floats: each piece starts on a 64-byte boundary
# Below this many bytes a buffer comes from torch's allocator: a mapping of its own pays off for
# prefill-sized buffers, not for a decode batch's few rows.
_MAPPED_BYTES = 1 << 20
# Spare room for a step larger than any before (its kernels' temporaries, such as cpu_quant's
# 4 MB panels, do not grow with the rows): 16 MB of address space, pages only where written.
_SPARE_FLOATS = 4 << 20

_active = threading.local()  # .step: the _Step of the block in progress on this thread, or None


def _step() -> _Step | None:
    return getattr(_active, "step", None)


class StepBuffers:
    """Kernel memory for one model's steps: `with buffers():` around each step, `begin_phase()`
    where each half of a layer begins."""

    def __init__(self) -> None:
        # The highest use of the step with the most rows so far, and those rows: a step sizes its
        # buffer from it in proportion to its own rows (what does not fit then comes fresh).
        self._highest = 0
        self._rows = 0

    @contextmanager
    def __call__(self) -> Iterator[None]:
        """One step on this thread; a nested block joins the outermost one."""
        if _step() is not None:
            yield
            return
        step = _active.step = _Step(self._highest, self._rows)
        try:
            yield
        finally:
            _active.step = None
            if (step.rows, step.highest) > (self._rows, self._highest):
                self._rows, self._highest = step.rows, step.highest

    def begin_phase(self) -> None:
        """Results taken from here on may overwrite those of the previous phase (no-op outside a block)."""
        step = _step()
        if step is not None:
            step.begin_phase()


def _fresh(floats: int) -> torch.Tensor:
    if floats * 4 < _MAPPED_BYTES:
        return torch.empty(floats)
    # An anonymous mapping, unmapped when the last tensor on it goes: it never enters glibc's heap.
    mapping = mmap.mmap(-1, floats * 4, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    return torch.frombuffer(mapping, dtype=torch.float32)


class _Step:
    def __init__(self, learned_highest: int, learned_rows: int) -> None:
        self._learned = (learned_highest, learned_rows)
        self._buffer: torch.Tensor | None = None
        self._in_phase = False
        self._used = 0  # floats taken in this phase, temporaries included
        self.highest = 0  # the most floats in use at once, over the step
        self.rows = 0  # rows of the step's first result
        self.carried: dict[str, torch.Tensor] = {}

    def begin_phase(self) -> None:
        self._used = 0
        self._in_phase = True

    def _capacity(self) -> int:
        highest, rows_then = self._learned
        if rows_then >= self.rows:  # no larger than a step before: in proportion to that one
            return math.ceil(highest * self.rows / rows_then)
        # Larger than any before: room to spare, which costs nothing where it stays untouched.
        return 2 * math.ceil(highest * self.rows / max(rows_then, 1)) + _SPARE_FLOATS

    def take(self, rows: int, cols: int) -> tuple[torch.Tensor, tuple[int, int]]:
        """A [rows, cols] piece at the top of the buffer (or fresh), and the span of the buffer it took."""
        if not self._in_phase:
            return torch.empty(rows, cols), (self._used, self._used)
        if not self.rows:
            self.rows = rows
        size, start = rows * cols, self._used
        self._used += -(-size // _ALIGN) * _ALIGN
        self.highest = max(self.highest, self._used)
        if self._buffer is None:
            # Sized once per step: a larger buffer mid-step would be held together with the
            # smaller one, which the previous phase's results keep alive.
            self._buffer = _fresh(-(-max(self._used, self._capacity()) // _ALIGN) * _ALIGN)
        span = (start, self._used)
        if self._used > self._buffer.numel():
            return torch.empty(rows, cols), span
        return self._buffer[start : start + size].view(rows, cols), span

    def give_back(self, span: tuple[int, int]) -> None:
        """The span a piece took is free again: the top comes down to it if nothing is above."""
        start, end = span
        if self._used == end:
            self._used = start


def output(rows: int, cols: int) -> torch.Tensor:
    """A float32 [rows, cols] tensor for a kernel's result (valid until the next phase begins)."""
    step = _step()
    return torch.empty(rows, cols) if step is None else step.take(rows, cols)[0]


@contextmanager
def temporary(rows: int, cols: int) -> Iterator[torch.Tensor]:
    """A float32 [rows, cols] scratch buffer for a kernel while the `with` lasts."""
    step = _step()
    if step is None:
        yield torch.empty(rows, cols)
        return
    piece, span = step.take(rows, cols)
    try:
        yield piece
    finally:
        step.give_back(span)


def carried(name: str, rows: int, cols: int) -> torch.Tensor:
    """A float32 [rows, cols] tensor that is the step's one `name` buffer inside a block (grown when
    too small): every use overwrites the last one's values. Outside a block, a fresh tensor."""
    step = _step()
    if step is None:
        return torch.empty(rows, cols)
    flat = step.carried.get(name)
    if flat is None or flat.numel() < rows * cols:
        flat = step.carried[name] = _fresh(rows * cols)
    return flat[: rows * cols].view(rows, cols)

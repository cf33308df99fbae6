"""The C heap of a CPU inference process: what glibc keeps mapped, and when it gives memory back.

Both functions act on glibc's malloc (through ctypes) and do nothing with another C library.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
# Allocations up to this size come from the heap (glibc's largest mmap threshold on 64-bit).
_MMAP_THRESHOLD = 32 << 20
# Free memory at the heap's top that glibc keeps instead of returning it.
_TRIM_THRESHOLD = 256 << 20


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    library = ctypes.util.find_library("c")
    libc = ctypes.CDLL(library) if library else None
    return libc if libc is not None and hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


@functools.cache
def keep_step_buffers() -> None:
    """Serve a model step's large buffers (activations, decoded weight panels) from the heap and
    keep that memory between steps, once per process.

    By default glibc maps every allocation above an adaptive threshold afresh and unmaps it when it
    is freed, and returns free memory at the heap's top past twice that threshold: a prefill then
    gets its tens of MB of activations as new pages, zeroed and faulted in, at every layer of every
    step. Fixed thresholds let those buffers be reused; the peak resident memory stays what the
    largest step needs (benchmarks/README.md, "Heap").
    """
    libc = _glibc()
    if libc is not None:
        libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)
        libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)


def return_freed_memory() -> None:
    """Give the heap's free memory back to the system now.

    Loading frees tens of MB it used for a while (weights decoded or un-permuted, the inputs and
    outputs of the matmul timings), which glibc would otherwise keep mapped for the process's life.
    """
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)

"""Launch-time plumbing shared by the kernel launchers: where a kernel may run, and how.

Triton decides at decoration time (when `fastllm.kernels` is imported) whether `@triton.jit`
functions compile for the GPU or run in its CPU interpreter, so `INTERPRETER` is read once, here,
at that same moment. Launchers use it to accept CPU tensors and to choose one small configuration
instead of the GPU's tile sizes.
"""

from __future__ import annotations

import functools
import os
import sys

import torch
import triton

INTERPRETER: bool = os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "yes", "on")

# The interpreter runs on numpy, which has no bfloat16: it would silently compute garbage.
KERNEL_DTYPES = (torch.float16, torch.float32) if INTERPRETER else (torch.float16, torch.bfloat16, torch.float32)

LOG2E = 1.4426950408889634  # kernels take exp as exp2 of a pre-scaled argument
MAX_GRID_YZ = 65535  # CUDA's limit on the second and third grid dimensions

# tl.dot's input_precision of the attention kernels. It governs float32 operands only: fp16 and
# bf16 tiles always take their own tensor-core path. float32 attention is what the correctness
# checks compare with PyTorch's IEEE float32 (greedy tokens against the torch backend, 1e-4 of a
# float64 reference), and TF32 products would miss that by ~3e-4, so float32 is exact on the GPU too.
DOT_PRECISION = "ieee"


def check_launchable(*named: tuple[str, torch.Tensor]) -> None:
    """Raise a ValueError unless every tensor can be handed to a Triton kernel here.

    Tensors must live on a CUDA device, or on the CPU when the interpreter is on; floating
    tensors must have a dtype the kernels compute in (no float64; no bfloat16 in the interpreter).
    """
    for name, t in named:
        if not (t.is_cuda or (INTERPRETER and t.device.type == "cpu")):
            where = "a CUDA device, or on the CPU with TRITON_INTERPRET=1 set before importing fastllm.kernels"
            if INTERPRETER:
                where = "a CUDA device or on the CPU"
            raise ValueError(f"{name} must be on {where}; got device {t.device}")
        if t.is_floating_point() and t.dtype not in KERNEL_DTYPES:
            allowed = ", ".join(str(d).removeprefix("torch.") for d in KERNEL_DTYPES)
            note = " (the Triton interpreter has no bfloat16)" if INTERPRETER and t.dtype == torch.bfloat16 else ""
            raise ValueError(
                f"{name} must have dtype in ({allowed}) for the Triton kernels{note}, "
                f"got {str(t.dtype).removeprefix('torch.')}"
            )


def as_rows(t: torch.Tensor) -> torch.Tensor:
    """View as [rows, last dim] with unit column stride, copying only if the layout demands it."""
    rows = t.reshape(-1, t.shape[-1])
    if rows.stride(-1) != 1:
        rows = rows.contiguous()
    return rows


def next_power_of_2(n: int) -> int:
    return triton.next_power_of_2(max(int(n), 1))


@functools.lru_cache(maxsize=None)
def num_sms(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device; a nominal small count for the interpreter."""
    if device.type != "cuda":
        return 4
    return torch.cuda.get_device_properties(device).multi_processor_count


def compiled_variants() -> dict[str, int]:
    """How many variants of each kernel of fastllm.kernels have been compiled so far, for the
    kernels compiled at least once (the benchmarks use it to show that nothing compiles inside a
    timed run). Empty in the interpreter, which compiles nothing."""
    counts = {}
    for name, module in list(sys.modules.items()):
        if not name.startswith("fastllm.kernels.") or module is None:
            continue
        for attr, value in vars(module).items():
            if not isinstance(value, triton.runtime.JITFunction) or value.fn.__module__ != name:
                continue  # not a kernel, or one imported from another module
            # device_caches: per device, a tuple whose first item is the compiled-kernel cache.
            count = sum(len(cache[0]) for cache in value.device_caches.values())
            if count:
                counts[f"{name.removeprefix('fastllm.kernels.')}.{attr}"] = count
    return counts

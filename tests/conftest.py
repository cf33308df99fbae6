"""Shared test set-up.

Triton picks its interpreter when `@triton.jit` runs, i.e. when `fastllm.kernels` is imported,
so TRITON_INTERPRET must be set before any test module imports it. CI has no GPU: every kernel
runs through the interpreter against its PyTorch twin.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

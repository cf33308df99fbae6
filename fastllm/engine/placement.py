"""Where the model runs: "auto" and names resolved to a torch device, dtype and backend, checked."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from fastllm.model.backend import resolve_backend

if TYPE_CHECKING:
    from fastllm.engine.config import EngineConfig

DTYPES = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
}


def resolve_device(device: str | torch.device) -> torch.device:
    """"auto" -> the current CUDA device when there is one, else the CPU."""
    if device == "auto":
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}") from exc
    if resolved.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} was asked for but CUDA is not available; use device='cpu'")
        if resolved.index is None:
            resolved = torch.device("cuda", torch.cuda.current_device())
        elif resolved.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r} does not exist: {torch.cuda.device_count()} CUDA device(s)")
    return resolved


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """"auto" -> bfloat16 on CUDA (float16 where bf16 is unsupported), float32 on CPU."""
    if dtype == "auto":
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    resolved = DTYPES.get(dtype) if isinstance(dtype, str) else dtype
    if resolved not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"dtype must be 'auto', 'float32', 'bfloat16' or 'float16' (or the torch dtype), got {dtype!r}")
    return resolved


def launched_externally(tensor_parallel_size: int) -> bool:
    """Whether this process is one rank of a torchrun-style launch of `tensor_parallel_size` ranks."""
    return "RANK" in os.environ and os.environ.get("WORLD_SIZE") == str(tensor_parallel_size)


@dataclass(frozen=True)
class Placement:
    """Where and how a rank runs the model (the same device type, dtype and backend on every rank)."""

    device: torch.device
    dtype: torch.dtype
    backend: str
    threads: int

    @classmethod
    def resolve(cls, config: EngineConfig) -> Placement:
        """The config's device, dtype and backend resolved; the CPU ranks this process spawns share
        its cores (one rank, or ranks an external launcher started: all of this process's threads)."""
        device = resolve_device(config.device)
        threads = torch.get_num_threads()
        size = config.tensor_parallel_size
        if device.type == "cpu" and not launched_externally(size):
            threads = max(1, threads // size)
        return cls(device, resolve_dtype(config.dtype, device), resolve_backend(config.backend, device), threads)

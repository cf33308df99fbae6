"""A tensor-parallel group: one process per rank, and the collectives the engine and model use.

Two process groups over the same ranks: the device group, on NCCL for CUDA tensors and gloo for CPU
ones, carries the model's all-reduces and gathers; a gloo group carries each step's inputs from
rank 0 (a small int64 tensor on the CPU, so that ranks on CUDA need no device round trip to learn
what to run). Every collective has the group's timeout: a rank that dies or stops answering makes
the others raise instead of waiting forever.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

from typing import TYPE_CHECKING

import torch
import torch.distributed as dist

if TYPE_CHECKING:
    from fastllm.distributed.sharding import ModelShard

# The header of a broadcast step: its payload's length, or STOP for "leave the worker loop".
STOP = -1


@dataclass
class TensorParallelGroup:
    """This process's rank in a group of `world_size`, over `device_group` and `cpu_group`."""

    rank: int
    world_size: int
    device: torch.device
    device_group: dist.ProcessGroup
    cpu_group: dist.ProcessGroup

    @classmethod
    def initialize(
        cls, rank: int, world_size: int, init_method: str, device: torch.device, timeout_s: float
    ) -> TensorParallelGroup:
        """Join the group (every rank calls this with the same init_method, e.g. tcp://127.0.0.1:port).

        On CUDA, a rank uses the device of its LOCAL_RANK (set by torchrun; else its rank) on this host.
        """
        timeout = datetime.timedelta(seconds=timeout_s)
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            local_rank = int(os.environ.get("LOCAL_RANK", rank))
            device = torch.device("cuda", local_rank % torch.cuda.device_count())
            torch.cuda.set_device(device)
        dist.init_process_group(backend, init_method=init_method, rank=rank, world_size=world_size, timeout=timeout)
        device_group = dist.group.WORLD
        cpu_group = device_group if backend == "gloo" else dist.new_group(backend="gloo", timeout=timeout)
        return cls(rank, world_size, device, device_group, cpu_group)

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum `tensor` over the ranks, in place; returns it."""
        dist.all_reduce(tensor, group=self.device_group)
        return tensor

    def gather_last_dim(self, tensor: torch.Tensor) -> torch.Tensor | None:
        """Every rank's `tensor` (same shape on all) concatenated along the last dimension in rank
        order, on rank 0; None on the others."""
        parts = [torch.empty_like(tensor) for _ in range(self.world_size)] if self.rank == 0 else None
        dist.gather(tensor.contiguous(), parts, dst=0, group=self.device_group)
        return torch.cat(parts, dim=-1) if parts is not None else None

    def broadcast_int(self, value: int | None) -> int:
        """Rank 0's `value` on every rank (the others pass None)."""
        box = torch.tensor([value if self.rank == 0 else 0], dtype=torch.int64)
        dist.broadcast(box, src=0, group=self.cpu_group)
        return int(box.item())

    def barrier(self, timeout_s: float) -> None:
        """Wait for every rank, at most `timeout_s` (then raise, naming the ranks that did not come)."""
        dist.monitored_barrier(group=self.cpu_group, timeout=datetime.timedelta(seconds=timeout_s))

    def min_int(self, value: int) -> int:
        """The smallest of every rank's `value`, on every rank."""
        box = torch.tensor([value], dtype=torch.int64)
        dist.all_reduce(box, op=dist.ReduceOp.MIN, group=self.cpu_group)
        return int(box.item())

    def send_step(self, packed: torch.Tensor | None) -> None:
        """Rank 0: broadcast one packed step (None: tell the workers to stop)."""
        length = self.broadcast_int(STOP if packed is None else packed.numel())
        if length > 0:
            dist.broadcast(packed, src=0, group=self.cpu_group)

    def receive_step(self) -> torch.Tensor | None:
        """Ranks > 0: the next packed step from rank 0, or None when rank 0 says stop."""
        length = self.broadcast_int(None)
        if length == STOP:
            return None
        packed = torch.empty(length, dtype=torch.int64)
        if length > 0:
            dist.broadcast(packed, src=0, group=self.cpu_group)
        return packed

    def destroy(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()


@dataclass(frozen=True)
class TensorParallel:
    """What a model needs to run as one rank: its group, and which part of the model it holds."""

    group: TensorParallelGroup
    shard: ModelShard

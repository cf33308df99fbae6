"""Worker targets for tests/test_distributed.py (spawned processes import them by name)."""

from __future__ import annotations

import os
from collections.abc import Callable

import torch

from fastllm.distributed.group import TensorParallelGroup


def echo_steps(rank: int, report: Callable[[str], None], world_size: int, init_method: str) -> None:
    """Join the group; for each step rank 0 sends, add up its values with every rank's own
    contribution (rank * step length) in an all-reduce; leave when told to stop."""
    report("joining")
    group = TensorParallelGroup.initialize(rank, world_size, init_method, torch.device("cpu"), timeout_s=20)
    while (packed := group.receive_step()) is not None:
        group.all_reduce(torch.tensor([float(packed.sum()) + rank * packed.numel()]))
    group.destroy()


def fail_at_start(rank: int, report: Callable[[str], None], world_size: int, init_method: str) -> None:
    if rank == world_size - 1:
        raise ValueError(f"rank {rank} cannot load its shard")
    report("joining")
    group = TensorParallelGroup.initialize(rank, world_size, init_method, torch.device("cpu"), timeout_s=20)
    group.destroy()


def report_pid(rank: int, report: Callable[[str], None], world_size: int, init_method: str) -> None:
    """echo_steps, after writing this process's pid where the test can find it."""
    with open(os.path.join(os.environ["FASTLLM_TEST_PID_DIR"], f"rank{rank}"), "w") as f:
        f.write(str(os.getpid()))
    echo_steps(rank, report, world_size, init_method)

"""Starting an engine over a tensor-parallel group on one host: rank 0 here, ranks 1..N-1 spawned.

Rank 0 loads its part of the model first (a `tensor_parallel_size` the model cannot split over is
a ValueError before any process starts), then spawns the other ranks; each loads its own part
straight from the file, builds a ModelRunner over its part of the KV cache, and then runs the steps
rank 0 broadcasts until told to stop. Rank 0 alone holds the tokenizer, scheduler and sampler.
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import torch

from fastllm.distributed.group import TensorParallelGroup
from fastllm.distributed.sharding import ModelShard
from fastllm.distributed.workers import WorkerProcesses, free_port
from fastllm.engine.config import EngineConfig
from fastllm.engine.step_inputs import StepInputs

# Seconds a collective may wait for another rank (a step, or start-up's KV cache sizing).
COLLECTIVE_TIMEOUT_S = 120.0
# Seconds a spawned rank may take to start its interpreter, or to load its part of the model.
START_TIMEOUT_S = 120.0
LOAD_TIMEOUT_S = 1800.0


@dataclass(frozen=True)
class Placement:
    """Where and how every rank runs the model (resolved once on rank 0, the same on all)."""

    device: torch.device
    dtype: torch.dtype
    backend: str
    threads: int


def shard_for(rank: int, world_size: int, device: torch.device) -> functools.partial[ModelShard]:
    """The loaders' `shard` argument for this rank (checks the size against the CUDA devices present)."""
    devices = torch.cuda.device_count() if device.type == "cuda" else None
    return functools.partial(ModelShard, rank=rank, world_size=world_size, device_count=devices)


class ParallelRanks:
    """Rank 0's side of the group: the other ranks' processes, and the group to send them steps."""

    def __init__(self, workers: WorkerProcesses, group: TensorParallelGroup) -> None:
        self.workers = workers
        self.group = group
        self._closed = False
        # Stop the ranks when the engine goes away without close() (also at interpreter exit).
        self._finalizer = weakref.finalize(self, _stop, workers, group)

    @classmethod
    def start(cls, config: EngineConfig, placement: Placement) -> ParallelRanks:
        """Spawn ranks 1..N-1 and join the group with them (rank 0 is this process)."""
        size = config.tensor_parallel_size
        init_method = f"tcp://127.0.0.1:{free_port()}"
        workers = WorkerProcesses(size, run_worker, (size, init_method, config, placement))
        try:
            workers.wait_for("joining", START_TIMEOUT_S)
            group = TensorParallelGroup.initialize(0, size, init_method, placement.device, COLLECTIVE_TIMEOUT_S)
        except BaseException:
            workers.stop()
            raise
        return cls(workers, group)

    def wait_loaded(self) -> None:
        self.workers.wait_for("loaded", LOAD_TIMEOUT_S)

    def send_step(self, step: StepInputs) -> None:
        self.group.send_step(step.pack())

    def failure(self, what: str) -> RuntimeError:
        return self.workers.failure(what)

    def close(self) -> None:
        """Tell the ranks to stop, wait for them (then terminate them), leave the group."""
        if self._closed:
            return
        self._closed = True
        try:
            if not self.workers.dead_ranks():
                self.group.send_step(None)
        except RuntimeError:
            pass  # a rank is gone: stopping the processes below is all that is left
        self._finalizer()


def _stop(workers: WorkerProcesses, group: TensorParallelGroup) -> None:
    workers.stop()
    group.destroy()


def run_worker(rank: int, report: Callable[[str], None], world_size: int, init_method: str, config: EngineConfig,
               placement: Placement) -> None:
    """A spawned rank: join the group, load this rank's part, run rank 0's steps until it says stop."""
    from fastllm.engine.llm_engine import build_model_runner, engine_max_model_len
    from fastllm.loader import default_model_path, load_checkpoint
    from fastllm.model import load_model
    from fastllm.model.backend import get_backend
    from fastllm.model.linear import encoded_types

    torch.set_num_threads(placement.threads)
    report("joining")
    group = TensorParallelGroup.initialize(rank, world_size, init_method, placement.device, COLLECTIVE_TIMEOUT_S)
    try:
        backend = get_backend(placement.backend)
        checkpoint = load_checkpoint(
            default_model_path() if config.model is None else config.model, keep_encoded=encoded_types(placement.backend, placement.device, placement.dtype),
            shard=shard_for(rank, world_size, placement.device),
        )
        model = load_model(checkpoint, dtype=placement.dtype, device=group.device, backend=backend, group=group)
        report("loaded")
        runner = build_model_runner(model, config, engine_max_model_len(config, model), sampler=None, group=group)
        with torch.inference_mode():
            while (packed := group.receive_step()) is not None:
                runner.forward(StepInputs.unpack(packed))
    finally:
        group.destroy()

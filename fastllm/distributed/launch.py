"""Starting an engine over a tensor-parallel group: rank 0 is the process that builds the engine.

Two ways to get the other ranks:
- spawned (the default): rank 0 starts ranks 1..N-1 on this host and watches them;
- launched by torchrun (or anything that sets its environment variables: RANK, WORLD_SIZE,
  MASTER_ADDR, MASTER_PORT, LOCAL_RANK) with WORLD_SIZE == tensor_parallel_size, so that ranks can
  span machines: rank 0 runs the engine, every other rank runs `python -m fastllm.distributed.worker`
  with the same model and options.

Rank 0 loads its part of the model before any other rank starts work (a `tensor_parallel_size` the
model cannot split over is a ValueError then); each rank loads its own part straight from the
file, builds a ModelRunner over its part of the KV cache, then runs the steps rank 0 broadcasts
until told to stop. Rank 0 alone holds the tokenizer, scheduler and sampler.
"""

from __future__ import annotations

import functools
import os
import weakref
from collections.abc import Callable

import torch

from fastllm.distributed.group import TensorParallelGroup
from fastllm.distributed.sharding import ModelShard
from fastllm.distributed.workers import WorkerProcesses, free_port
from fastllm.engine.config import EngineConfig
from fastllm.engine.placement import Placement, launched_externally
from fastllm.engine.step_inputs import StepInputs

# Seconds a collective may wait for another rank (a step, or start-up's KV cache sizing).
COLLECTIVE_TIMEOUT_S = 120.0
# Seconds a spawned rank may take to start its interpreter; every rank, to load its part of the model.
START_TIMEOUT_S = 120.0
LOAD_TIMEOUT_S = 1800.0


def shard_for(placement: Placement, rank: int, world_size: int) -> functools.partial[ModelShard]:
    """The loaders' `shard` argument for `rank` (checks the size against the CUDA devices present)."""
    devices = torch.cuda.device_count() if placement.device.type == "cuda" else None
    return functools.partial(ModelShard, rank=rank, world_size=world_size, device_count=devices)


class ParallelRanks:
    """Rank 0's side of the group: the group to send steps on, and the processes it spawned (none
    when an external launcher started the ranks)."""

    def __init__(self, group: TensorParallelGroup, workers: WorkerProcesses | None, threads: int) -> None:
        self.group = group
        self.workers = workers
        self._closed = False
        # Rank 0 shares the host's cores with the ranks it spawned, until they stop.
        self._threads_before = torch.get_num_threads()
        torch.set_num_threads(threads)
        # Stop the ranks when the engine goes away without close() (also at interpreter exit).
        self._finalizer = weakref.finalize(self, _stop, workers, group)

    @classmethod
    def start(cls, config: EngineConfig, placement: Placement) -> ParallelRanks:
        """Join the group with the other ranks: spawn them, or meet the launcher's (see the module)."""
        size = config.tensor_parallel_size
        if launched_externally(size):
            if os.environ["RANK"] != "0":
                raise ValueError(
                    f"this process is rank {os.environ['RANK']} of a {size}-rank launch: the engine runs on rank 0, "
                    "the other ranks run `python -m fastllm.distributed.worker` with the same model and options"
                )
            group = TensorParallelGroup.initialize(0, size, "env://", placement.device, COLLECTIVE_TIMEOUT_S)
            return cls(group, None, placement.threads)
        init_method = f"tcp://127.0.0.1:{free_port()}"
        workers = WorkerProcesses(size, run_worker, (size, init_method, config, placement))
        try:
            workers.wait_for("joining", START_TIMEOUT_S)
            group = TensorParallelGroup.initialize(0, size, init_method, placement.device, COLLECTIVE_TIMEOUT_S)
        except BaseException:
            workers.stop()
            raise
        return cls(group, workers, placement.threads)

    def wait_loaded(self) -> None:
        """Return once every rank has loaded its part of the model."""
        if self.workers is not None:
            self.workers.wait_for("loaded", LOAD_TIMEOUT_S)
        else:
            self.group.barrier(LOAD_TIMEOUT_S)

    def send_step(self, step: StepInputs) -> None:
        self.group.send_step(step.pack())

    def failure(self, what: str) -> RuntimeError:
        """An error saying `what`, with what is known of the ranks that stopped."""
        if self.workers is not None:
            return self.workers.failure(what)
        return RuntimeError(f"{what} (a rank of the launched group stopped answering: see its own output)")

    def close(self) -> None:
        """Tell the ranks to stop, wait for the spawned ones (then terminate them), leave the group."""
        if self._closed:
            return
        self._closed = True
        try:
            if self.workers is None or not self.workers.dead_ranks():
                self.group.send_step(None)
        except RuntimeError:
            pass  # a rank is gone: stopping the processes below is all that is left
        self._finalizer()
        torch.set_num_threads(self._threads_before)


def _stop(workers: WorkerProcesses | None, group: TensorParallelGroup) -> None:
    if workers is not None:
        workers.stop()
    group.destroy()


def serve_rank(rank: int, group: TensorParallelGroup, config: EngineConfig, placement: Placement,
               loaded: Callable[[], None]) -> None:
    """A rank other than 0: load its part, call `loaded()`, run rank 0's steps until it says stop."""
    from fastllm.engine.llm_engine import build_model_runner, engine_max_model_len
    from fastllm.loader import default_model_path, load_checkpoint
    from fastllm.model import load_model
    from fastllm.model.backend import get_backend
    from fastllm.model.linear import encoded_types

    checkpoint = load_checkpoint(
        default_model_path() if config.model is None else config.model,
        keep_encoded=encoded_types(placement.backend, placement.device, placement.dtype),
        shard=shard_for(placement, rank, group.world_size),
    )
    model = load_model(checkpoint, dtype=placement.dtype, device=group.device, backend=get_backend(placement.backend),
                       group=group)
    loaded()
    runner = build_model_runner(model, config, engine_max_model_len(config, model), sampler=None, group=group)
    with torch.inference_mode():
        while (packed := group.receive_step()) is not None:
            runner.forward(StepInputs.unpack(packed))


def run_worker(rank: int, report: Callable[[str], None], world_size: int, init_method: str, config: EngineConfig,
               placement: Placement) -> None:
    """A spawned rank (WorkerProcesses' target): join the group, then `serve_rank`."""
    torch.set_num_threads(placement.threads)
    report("joining")
    group = TensorParallelGroup.initialize(rank, world_size, init_method, placement.device, COLLECTIVE_TIMEOUT_S)
    try:
        serve_rank(rank, group, config, placement, lambda: report("loaded"))
    finally:
        group.destroy()

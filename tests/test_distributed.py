"""Tensor-parallel plumbing on the CPU (gloo): how the model splits over ranks, steps packed for the
other ranks, rank processes started, fed, stopped, and a rank that dies or cannot start named in an
error within seconds, with no process left behind."""

from __future__ import annotations

import os
import random
import signal
import time

import pytest
import torch

from fastllm.distributed.group import TensorParallelGroup
from fastllm.distributed.sharding import check_tensor_parallel_size, head_shard, vocab_slice
from fastllm.distributed.workers import WorkerProcesses, free_port
from fastllm.engine.step_inputs import PrefillChunk, StepInputs
from tests.distributed_testing import echo_steps, fail_at_start, report_pid

WORLD = 3


def random_step(rng: random.Random) -> StepInputs:
    def table() -> list[int]:
        return [rng.randrange(1000) for _ in range(rng.randrange(1, 6))]

    decode = rng.randrange(0, 5)
    chunks = [PrefillChunk([rng.randrange(50_000) for _ in range(rng.randrange(1, 40))], rng.randrange(0, 100),
                           table(), rng.random() < 0.5) for _ in range(rng.randrange(0, 4))]
    return StepInputs([rng.randrange(50_000) for _ in range(decode)], [rng.randrange(4096) for _ in range(decode)],
                      [table() for _ in range(decode)], chunks)


def test_step_inputs_survive_packing():
    rng = random.Random()
    for _ in range(200):
        step = random_step(rng)
        assert StepInputs.unpack(step.pack()) == step
    packed = random_step(rng).pack()
    with pytest.raises(ValueError, match="packed StepInputs has"):
        StepInputs.unpack(torch.cat([packed, torch.zeros(1, dtype=torch.int64)]))


def test_heads_and_vocabulary_split_over_ranks():
    # The default model: 9 query heads over 3 KV heads; 3 ranks get 3 query heads and 1 KV head each.
    shards = [head_shard(9, 3, rank, 3) for rank in range(3)]
    assert [(s.q_heads, s.kv_heads) for s in shards] == [(range(0, 3), range(0, 1)), (range(3, 6), range(1, 2)),
                                                         (range(6, 9), range(2, 3))]
    # More ranks than KV heads: each KV head replicated on the ranks whose query heads read it.
    for rank in range(4):
        shard = head_shard(8, 2, rank, 4)
        assert all(q // 4 in shard.kv_heads for q in shard.q_heads) and len(shard.kv_heads) == 1
    slices = [vocab_slice(49_155, rank, 4) for rank in range(4)]
    assert {padded for _, padded in slices} == {12_289}
    assert [i for part, _ in slices for i in part] == list(range(49_155))


@pytest.mark.parametrize(("size", "error", "message"), [
    (2, ValueError, r"tensor_parallel_size \(2\) must divide the model's query heads \(9\)"),
    (0, ValueError, "must be >= 1"),
    (1.0, TypeError, "must be an int"),
    (9, ValueError, r"tensor_parallel_size \(9\) is larger than the 4 CUDA devices present"),
])
def test_bad_tensor_parallel_sizes(size, error, message):
    with pytest.raises(error, match=message):
        check_tensor_parallel_size(size, 9, 3, device_count=4)
    assert check_tensor_parallel_size(3, 9, 3, device_count=None) == 3
    with pytest.raises(ValueError, match=r"\(2\) must divide the model's KV heads \(3\)"):
        check_tensor_parallel_size(2, 12, 3, device_count=None)


def start_group(target, *extra) -> tuple[WorkerProcesses, TensorParallelGroup]:
    init_method = f"tcp://127.0.0.1:{free_port()}"
    workers = WorkerProcesses(WORLD, target, (WORLD, init_method, *extra))
    try:
        workers.wait_for("joining", timeout_s=60)
        group = TensorParallelGroup.initialize(0, WORLD, init_method, torch.device("cpu"), timeout_s=20)
    except BaseException:
        workers.stop()
        raise
    return workers, group


def test_steps_reach_every_rank_and_the_workers_exit_when_told():
    workers, group = start_group(echo_steps)
    try:
        for length in (5, 1, 300, 0):
            step = torch.randint(0, 1000, (length,))
            group.send_step(step)
            total = group.all_reduce(torch.tensor([float(step.sum())]))
            # Every rank got the same step: its sum three times, plus rank * length from ranks 1 and 2.
            assert total.item() == WORLD * float(step.sum()) + (1 + 2) * length
        group.send_step(None)
        workers.stop(timeout_s=10)
        assert [process.exitcode for process in workers.processes.values()] == [0, 0]
    finally:
        group.destroy()
        workers.stop()


def test_a_killed_rank_is_named_within_seconds_and_no_process_is_left(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTLLM_TEST_PID_DIR", str(tmp_path))
    workers, group = start_group(report_pid)
    try:
        group.send_step(torch.arange(4))
        group.all_reduce(torch.zeros(1))
        os.kill(workers.processes[2].pid, signal.SIGKILL)
        start = time.monotonic()
        with pytest.raises(RuntimeError):
            for _ in range(1000):
                group.send_step(torch.arange(4))
                group.all_reduce(torch.zeros(1))
        assert time.monotonic() - start < 10
        error = workers.failure("tensor-parallel step failed")
        assert "rank 2 exited with code -9, killed by SIGKILL" in str(error)
    finally:
        group.destroy()
        workers.stop()
    pids = [int((tmp_path / f"rank{rank}").read_text()) for rank in (1, 2)]
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_a_rank_that_cannot_start_is_named_with_its_error():
    init_method = f"tcp://127.0.0.1:{free_port()}"
    workers = WorkerProcesses(WORLD, fail_at_start, (WORLD, init_method))
    try:
        with pytest.raises(RuntimeError, match=r"rank 2 failed before 'joining'.*ValueError: rank 2 cannot load its shard"):
            workers.wait_for("joining", timeout_s=60)
    finally:
        workers.stop()
    assert not any(process.is_alive() for process in workers.processes.values())


def test_the_launched_worker_reads_engine_options_and_refuses_to_run_outside_a_launch(monkeypatch):
    from fastllm.distributed import worker

    config = worker.engine_config(["m.gguf", "--tensor-parallel-size", "4", "--max-model-len", "512",
                                   "--enable-prefix-caching", "false", "--dtype", "bfloat16"])
    assert (config.model, config.tensor_parallel_size, config.max_model_len) == ("m.gguf", 4, 512)
    assert config.enable_prefix_caching is False and config.dtype == "bfloat16"
    for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(SystemExit, match="runs under a launcher that sets RANK, WORLD_SIZE"):
        worker.main(["m.gguf", "--tensor-parallel-size", "2"])
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "1")
    with pytest.raises(SystemExit, match="this is rank 0 of 2"):
        worker.main(["m.gguf", "--tensor-parallel-size", "2"])

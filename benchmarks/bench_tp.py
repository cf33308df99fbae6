"""Tensor parallelism: step time and throughput at N ranks, beside what the ranks' communication costs.

    python -m benchmarks.bench_tp [--sizes 1 3] [--threads 2] [--rounds 2] [--out FILE]

The default model (SmolLM2-135M-Instruct: 9 query / 3 KV heads, so N = 1 or 3 here; N = 9 too on
a machine with the cores for it), greedy, ignore_eos, prefix caching off, on whatever device
`LLM()` picks. Per N, the median over the rounds of:

- batch-1 decode step time: a 32-token prompt, 65 new tokens; (end - first token) / 64;
- batch-16 throughput: 16 prompts of 64 random tokens, 32 new tokens each; generated tokens / wall time;
- the communication a decode step needs: 2 all-reduces per layer (after o and down) and one for the
  embedding, of rows x hidden floats each, one gather of the sampled rows' logits on rank 0 and the
  step's broadcast, counted, with the all-reduce's latency at batch-1 size measured on a group of
  N processes of its own (gloo on a CPU, NCCL on CUDA), median of 200.

On a CPU the ranks share the machine's cores (each gets threads / N), so more ranks do not add
compute: N > 1 there measures the cost of the split, not a speed-up.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from benchmarks.bench_cpu import environment

RESULTS = Path(__file__).parent / "results" / "tensor_parallel.json"
LATENCY_REPEATS = 200


def _all_reduce_latency(rank: int, report: Callable[[str], None], world_size: int, init_method: str,
                        device_type: str, floats: int, out: str | None) -> None:
    """Every rank of its own group: time `LATENCY_REPEATS` all-reduces of `floats` float32; rank 0 writes the median."""
    from fastllm.distributed.group import TensorParallelGroup

    report("joining")
    group = TensorParallelGroup.initialize(rank, world_size, init_method, torch.device(device_type), 60.0)
    tensor = torch.ones(floats, device=group.device)
    times = []
    for _ in range(LATENCY_REPEATS + 10):
        if group.device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        group.all_reduce(tensor)
        if group.device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    if out is not None:
        Path(out).write_text(json.dumps(statistics.median(times[10:])))
    group.destroy()


def all_reduce_latency_s(world_size: int, device_type: str, floats: int) -> float:
    """Median seconds of one all-reduce of `floats` float32 over a fresh group of `world_size` processes."""
    import tempfile

    from fastllm.distributed.workers import WorkerProcesses, free_port

    init_method = f"tcp://127.0.0.1:{free_port()}"
    with tempfile.TemporaryDirectory() as folder:
        out = str(Path(folder) / "latency.json")
        workers = WorkerProcesses(world_size, _all_reduce_latency, (world_size, init_method, device_type, floats, None))
        try:
            workers.wait_for("joining", 120)
            _all_reduce_latency(0, lambda stage: None, world_size, init_method, device_type, floats, out)
        finally:
            workers.stop()
        return json.loads(Path(out).read_text())


def _random_prompts(count: int, length: int, seed: int) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(100, 40000, (count, length), generator=generator).tolist()


def measure(size: int, rounds: int) -> dict[str, Any]:
    from fastllm import LLM, SamplingParams

    llm = LLM(tensor_parallel_size=size, enable_prefix_caching=False)
    try:
        model = llm.engine.model
        config = model.config
        one = SamplingParams(temperature=0, max_tokens=65, ignore_eos=True)
        batch = SamplingParams(temperature=0, max_tokens=32, ignore_eos=True)
        llm.generate(_random_prompts(2, 16, 0), SamplingParams(temperature=0, max_tokens=4), use_tqdm=False)
        step_ms, throughput = [], []
        for round_ in range(rounds):
            (out,) = llm.generate(_random_prompts(1, 32, 1 + round_), one, use_tqdm=False)
            step_ms.append((out.metrics.finished_time - out.metrics.first_token_time) / 64 * 1e3)
            start = time.perf_counter()
            llm.generate(_random_prompts(16, 64, 100 + round_), batch, use_tqdm=False)
            throughput.append(16 * 32 / (time.perf_counter() - start))
        hidden, layers = config.hidden_size, config.num_hidden_layers
        return {
            "tensor_parallel_size": size,
            "device": str(model.device),
            "threads_per_rank": torch.get_num_threads(),
            "batch1_step_ms": statistics.median(step_ms),
            "batch16_tok_s": statistics.median(throughput),
            "per_decode_step": {
                "all_reduces": 2 * layers + 1 if size > 1 else 0,
                "all_reduce_bytes_per_row": hidden * 4,
                "logits_gathered_bytes_per_row": (size - 1) * config.vocab_size * 4 if size > 1 else 0,
            },
            "rounds": {"batch1_step_ms": step_ms, "batch16_tok_s": throughput},
        }
    finally:
        llm.close()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 3])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = []
    for size in args.sizes:
        torch.set_num_threads(args.threads)  # LLM(tensor_parallel_size=N) gives this process threads / N
        result = measure(size, args.rounds)
        if size > 1:
            device_type = result["device"].split(":")[0]
            latency = all_reduce_latency_s(size, device_type, result["per_decode_step"]["all_reduce_bytes_per_row"] // 4)
            comm = result["per_decode_step"]
            comm["all_reduce_latency_us"] = latency * 1e6
            comm["all_reduces_ms"] = comm["all_reduces"] * latency * 1e3
        results.append(result)
        line = f"N={size}: batch-1 step {result['batch1_step_ms']:.2f} ms, batch-16 {result['batch16_tok_s']:.1f} tok/s"
        if size > 1:
            comm = result["per_decode_step"]
            line += (f"; {comm['all_reduces']} all-reduces of {comm['all_reduce_bytes_per_row']} B/row per step, "
                     f"{comm['all_reduce_latency_us']:.0f} us each at batch 1 = {comm['all_reduces_ms']:.2f} ms")
        print(line)
    report = {
        "environment": {**environment(args.threads),
                        "cuda_devices": torch.cuda.device_count() if torch.cuda.is_available() else 0},
        "model": "SmolLM2-135M-Instruct Q4_1 (default)",
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"{args.out} written")
    return report


if __name__ == "__main__":
    main()

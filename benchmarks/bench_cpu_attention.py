"""CPU decode attention: the C++ kernel (backend="cpu") beside the PyTorch reference, against the memory floor.

    python -m benchmarks.bench_cpu_attention [--out FILE] [--repeats N]

Decode attention reads every cached key and value of every sequence once per layer: the floor is
those bytes over the CPU's read bandwidth, measured in the same run (a float32 sum over 1 GiB,
torch's threads). Each case holds one KV pool per layer, as the engine does, and a timed repeat
walks all the layers, so the caches come from memory, not from the last-level cache. Each case is
first checked against the float64 reference. Reported per case: milliseconds per layer (median
of the repeats) for the kernel and the reference, their ratio, and floor / kernel time.
Results go to benchmarks/results/cpu-decode-attention.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fastllm.kernels import cpu, reference

RESULTS = Path(__file__).parent / "results" / "cpu-decode-attention.json"


@dataclass(frozen=True)
class Case:
    name: str
    num_q_heads: int
    num_kv_heads: int
    head_dim: int
    lengths: tuple[int, ...]
    layers: int
    block_size: int = 16


CASES = (
    # bench_generate's batch16 halfway through decode: SmolLM2-135M, 16 prompts of 16..256 tokens + 16.
    Case("smollm2-135m batch16", 9, 3, 64, tuple(16 * k + 16 for k in range(1, 17)), layers=30),
    # Llama-3.2-1B attention shape, 32 sequences at 1024 tokens.
    Case("llama-3.2-1b batch32 ctx1024", 32, 8, 64, (1024,) * 32, layers=16),
    # Llama-3.1-8B attention shape, one sequence at 4096 tokens.
    Case("llama-3.1-8b batch1 ctx4096", 32, 8, 128, (4096,), layers=8),
)


def read_bandwidth_gbps(repeats: int = 5) -> float:
    """Best of `repeats` float32 sums over 1 GiB: what a streaming read gets from memory here."""
    data = torch.ones(1 << 28)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        data.sum()
        best = min(best, time.perf_counter() - start)
    return data.numel() * 4 / best / 1e9


def build(case: Case, generator: torch.Generator) -> tuple[torch.Tensor, list[tuple[torch.Tensor, ...]]]:
    """Queries and, per layer, (k_cache, v_cache, cache_seqlens, block_table) with shuffled blocks."""
    blocks_per_seq = [-(-n // case.block_size) for n in case.lengths]
    num_blocks = sum(blocks_per_seq)
    width = max(blocks_per_seq)
    q = torch.randn(len(case.lengths), case.num_q_heads, case.head_dim, generator=generator)
    seqlens = torch.tensor(case.lengths, dtype=torch.int32)
    layers = []
    for _ in range(case.layers):
        order = torch.randperm(num_blocks, generator=generator).to(torch.int32)
        table = torch.zeros(len(case.lengths), width, dtype=torch.int32)
        taken = 0
        for row, count in enumerate(blocks_per_seq):
            table[row, :count] = order[taken : taken + count]
            taken += count
        shape = (num_blocks, case.block_size, case.num_kv_heads, case.head_dim)
        layers.append((torch.randn(shape, generator=generator), torch.randn(shape, generator=generator), seqlens, table))
    return q, layers


def bytes_read(case: Case) -> int:
    """Keys and values of every cached token, plus the queries read and the outputs written."""
    kv = 2 * sum(case.lengths) * case.num_kv_heads * case.head_dim * 4
    return kv + 2 * len(case.lengths) * case.num_q_heads * case.head_dim * 4


def ms_per_layer(op: Any, q: torch.Tensor, layers: list[tuple[torch.Tensor, ...]], repeats: int) -> float:
    def sweep() -> float:
        start = time.perf_counter()
        for layer in layers:
            op(q, *layer)
        return (time.perf_counter() - start) * 1e3 / len(layers)

    sweep()  # warm-up
    return statistics.median(sweep() for _ in range(repeats))


def run_case(case: Case, bandwidth_gbps: float, repeats: int) -> dict[str, Any]:
    q, layers = build(case, torch.Generator().manual_seed(0))
    k_cache, v_cache, seqlens, table = layers[0]
    out = cpu.paged_decode_attention(q, k_cache, v_cache, seqlens, table)
    expected = reference.paged_decode_attention(q.double(), k_cache.double(), v_cache.double(), seqlens, table)
    error = ((out.double() - expected).abs().max() / expected.abs().max()).item()
    kernel_ms = ms_per_layer(cpu.paged_decode_attention, q, layers, repeats)
    reference_ms = ms_per_layer(reference.paged_decode_attention, q, layers, repeats)
    floor_ms = bytes_read(case) / (bandwidth_gbps * 1e9) * 1e3
    return {
        "case": case.name,
        "shape": {
            "num_q_heads": case.num_q_heads, "num_kv_heads": case.num_kv_heads, "head_dim": case.head_dim,
            "block_size": case.block_size, "lengths": list(case.lengths), "layers": case.layers,
        },
        "relative_error_vs_float64": error,
        "bytes_per_layer": bytes_read(case),
        "ms_per_layer": {"cpu_kernel": round(kernel_ms, 4), "reference": round(reference_ms, 4)},
        "speedup_vs_reference": round(reference_ms / kernel_ms, 2),
        "floor_ms_per_layer": round(floor_ms, 4),
        "fraction_of_floor": round(floor_ms / kernel_ms, 3),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"JSON results (default {RESULTS})")
    parser.add_argument("--repeats", type=int, default=7, help="timed sweeps over the layers (default 7)")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")
    bandwidth = read_bandwidth_gbps()
    results = [run_case(case, bandwidth, args.repeats) for case in CASES]
    report = {
        "environment": {
            "date": datetime.date.today().isoformat(),
            "device": f"cpu ({platform.processor() or platform.machine()})",
            "threads": torch.get_num_threads(),
            "dtype": "float32",
            "torch": torch.__version__,
            "read_bandwidth_gbps": round(bandwidth, 1),
        },
        "results": results,
    }
    print(f"decode attention, CPU float32, {torch.get_num_threads()} threads, read bandwidth {bandwidth:.1f} GB/s")
    print(f"{'case':32} {'kernel ms':>10} {'reference ms':>13} {'speedup':>8} {'floor ms':>9} {'of floor':>9}")
    for r in results:
        print(f"{r['case']:32} {r['ms_per_layer']['cpu_kernel']:>10.3f} {r['ms_per_layer']['reference']:>13.3f} "
              f"{r['speedup_vs_reference']:>7.2f}x {r['floor_ms_per_layer']:>9.3f} {r['fraction_of_floor']:>9.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()

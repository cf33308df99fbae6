"""CPU matmuls against GGUF-encoded weights (fastllm.kernels.cpu_quant) beside float32 ones, against the floors.

    python -m benchmarks.bench_cpu_matmul [--isas avx512 avx2] [--large] [--types Q4_1 Q8_0 ...]
        [--rows 1 4 16 512] [--repeats N] [--rotation-mb MB] [--out FILE]

For each projection shape of SmolLM2-135M and Llama-3.2-1B (with --large, Llama-3.1-8B), each
GGUF type and each row count of x: `quantized_matmul` (blocks decoded in registers) and
`dequantized_matmul` (panels decoded for torch's sgemm), on each instruction set asked for; and,
once per shape and row count, F.linear on the decoded float32 matrix (MKL) and oneDNN on it
prepacked (what fastllm.model.linear's DenseLinear runs). Milliseconds per call, the median of
the repeats; each repeat walks copies of the weight worth --rotation-mb (a call per copy), so
the weights come from memory as in a model's forward pass, not from the last-level cache.

The floor of a case is the larger of its weight bytes over the read bandwidth (a float32 sum over
1 GiB, measured in the same run) and its FLOPs over the float32 sgemm rate (torch.mm on 2048^3,
same run); `of_floor` is floor / time. Weights are N(0, 0.02) matrices quantized by
benchmarks.make_gguf (512 distinct rows, repeated to the shape: speed does not depend on values);
each case is first checked against float64. Results go to benchmarks/results/cpu-quantized-matmul.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from benchmarks.bench_cpu_attention import read_bandwidth_gbps
from benchmarks.make_gguf import quantize
from fastllm.kernels import cpu_quant
from fastllm.model.linear import prepack

RESULTS = Path(__file__).parent / "results" / "cpu-quantized-matmul.json"

# (model, projection, out_features N, in_features K)
SHAPES = (
    ("smollm2-135m", "q/k/v", 960, 576),
    ("smollm2-135m", "o", 576, 576),
    ("smollm2-135m", "gate/up", 3072, 576),
    ("smollm2-135m", "down", 576, 1536),
    ("smollm2-135m", "lm_head", 49152, 576),
    ("llama-3.2-1b", "q/k/v", 3072, 2048),
    ("llama-3.2-1b", "o", 2048, 2048),
    ("llama-3.2-1b", "gate/up", 16384, 2048),
    ("llama-3.2-1b", "down", 2048, 8192),
    ("llama-3.2-1b", "lm_head", 128256, 2048),
)
LARGE_SHAPES = (
    ("llama-3.1-8b", "q/k/v", 6144, 4096),
    ("llama-3.1-8b", "o", 4096, 4096),
    ("llama-3.1-8b", "gate/up", 28672, 4096),
    ("llama-3.1-8b", "down", 4096, 14336),
    ("llama-3.1-8b", "lm_head", 128256, 4096),
)
DISTINCT_ROWS = 512
# A measurement stops repeating once it has taken this long (large row counts on large shapes).
BUDGET_S = 1.0


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def sgemm_gflops(repeats: int = 3) -> float:
    """Best of `repeats` float32 2048^3 torch.mm: the CPU's sgemm rate on torch's threads."""
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    torch.mm(a, b)
    best = min(_seconds(lambda: torch.mm(a, b)) for _ in range(repeats))
    return 2 * 2048**3 / best / 1e9


def _seconds(call: Callable[[], object]) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def ms_per_call(call: Callable[[Any], object], operands: Sequence[Any], repeats: int, warm: bool = False) -> float:
    """Median over repeats of one sweep (a call per operand), per call; fewer repeats past BUDGET_S.
    A first sweep warms up, unless the caller has (`warm`)."""
    def sweep() -> float:
        return _seconds(lambda: [call(operand) for operand in operands]) * 1e3 / len(operands)

    times, spent = [], time.perf_counter()
    if not warm:
        sweep()
    while len(times) < repeats and (not times or time.perf_counter() - spent < BUDGET_S):
        times.append(sweep())
    return statistics.median(times)


def encoded_weight(qtype: GGMLQuantizationType, rows: int, cols: int, generator: torch.Generator) -> torch.Tensor:
    """uint8 [rows, row bytes]: DISTINCT_ROWS quantized N(0, 0.02) rows, repeated."""
    source = (torch.randn(min(rows, DISTINCT_ROWS), cols, generator=generator) * 0.02).numpy()
    distinct = torch.from_numpy(np.ascontiguousarray(quantize(source, qtype)))
    return distinct.repeat(math.ceil(rows / distinct.shape[0]), 1)[:rows].contiguous()


def copies(tensor_bytes: int, rows: int, rotation_bytes: int) -> int:
    """How many copies a sweep walks: enough to leave the caches behind where weights dominate
    (few rows), one where compute does."""
    return max(1, math.ceil(rotation_bytes / tensor_bytes)) if rows <= 16 else 1


def relative_error(out: torch.Tensor, x: torch.Tensor, weights: torch.Tensor) -> float:
    """max |out - x @ W^T| / max |x @ W^T| over the first 256 output columns, in float64."""
    expected = x.double() @ weights[:256].double().T
    return ((out[:, :256].double() - expected).abs().max() / expected.abs().max()).item()


def floor_ms(weight_bytes: int, flops: int, bandwidth_gbps: float, gflops: float) -> float:
    return max(weight_bytes / (bandwidth_gbps * 1e9), flops / (gflops * 1e9)) * 1e3


def run_shape(
    shape: tuple[str, str, int, int], types: Sequence[GGMLQuantizationType], rows_list: Sequence[int],
    isas: Sequence[str], args: argparse.Namespace, bandwidth: float, gflops: float,
) -> list[dict[str, Any]]:
    model, projection, out_features, in_features = shape
    generator = torch.Generator().manual_seed(out_features * 7 + in_features)
    rotation = args.rotation_mb << 20
    results = []
    dense = cpu_quant.dequantize_rows(encoded_weight(GGMLQuantizationType.Q8_0, out_features, in_features, generator),
                                      GGMLQuantizationType.Q8_0)
    for rows in rows_list:
        x = torch.randn(rows, in_features, generator=generator)
        flops = 2 * rows * out_features * in_features
        count = copies(dense.numel() * 4, rows, rotation)
        dense_copies = [dense.clone() for _ in range(count)]
        linear_ms = ms_per_call(lambda w: torch.nn.functional.linear(x, w), dense_copies, args.repeats)
        packed_copies = [prepack(w) for w in dense_copies]
        del dense_copies
        # DenseLinear's call on a prepacked weight.
        onednn_ms = ms_per_call(
            lambda w: torch.ops.mkldnn._linear_pointwise(x, w, None, "none", [], ""), packed_copies, args.repeats
        )
        del packed_copies
        dense_floor = floor_ms(dense.numel() * 4, flops, bandwidth, gflops)
        results.append({
            "model": model, "projection": projection, "N": out_features, "K": in_features, "rows": rows,
            "type": "F32 dense", "floor_ms": round(dense_floor, 4),
            "ms": {"F.linear": round(linear_ms, 4), "onednn_prepacked": round(onednn_ms, 4)},
            "of_floor": {"F.linear": round(dense_floor / linear_ms, 3), "onednn_prepacked": round(dense_floor / onednn_ms, 3)},
        })
        print(f"{model:13} {projection:8} {out_features:6}x{in_features:<5} M={rows:<4} F32 dense    "
              f"F.linear {linear_ms:8.3f} ms ({dense_floor / linear_ms:.2f})  oneDNN {onednn_ms:8.3f} ms "
              f"({dense_floor / onednn_ms:.2f})", flush=True)
    for qtype in types:
        if in_features % GGML_QUANT_SIZES[qtype][0]:  # as llama.cpp, which stores such a matrix in another type
            print(f"{model:13} {projection:8} {out_features:6}x{in_features:<5} {qtype.name}: K is not a whole number "
                  f"of blocks, skipped", flush=True)
            continue
        weight = encoded_weight(qtype, out_features, in_features, generator)
        decoded = cpu_quant.dequantize_rows(weight, qtype)
        for rows in rows_list:
            x = torch.randn(rows, in_features, generator=generator)
            weights = [weight] + [weight.clone() for _ in range(copies(weight.numel(), rows, rotation) - 1)]
            floor = floor_ms(weight.numel(), 2 * rows * out_features * in_features, bandwidth, gflops)
            entry = {
                "model": model, "projection": projection, "N": out_features, "K": in_features, "rows": rows,
                "type": qtype.name, "weight_bytes": weight.numel(), "floor_ms": round(floor, 4), "ms": {},
                "of_floor": {}, "relative_error_vs_float64": {},
            }
            for isa in isas:
                with cpu_quant.forced_isa(isa):
                    for name, matmul in (("quantized", cpu_quant.quantized_matmul),
                                         ("dequantized", cpu_quant.dequantized_matmul)):
                        key = f"{name}_{isa}"  # the check's call is the warm-up
                        entry["relative_error_vs_float64"][key] = relative_error(matmul(x, [(weight, qtype)]), x, decoded)
                        ms = ms_per_call(lambda w, m=matmul: m(x, [(w, qtype)]), weights, args.repeats, warm=True)
                        entry["ms"][key] = round(ms, 4)
                        entry["of_floor"][key] = round(floor / ms, 3)
            results.append(entry)
            print(f"{model:13} {projection:8} {out_features:6}x{in_features:<5} M={rows:<4} {qtype.name:5} "
                  f"floor {floor:8.3f} ms  " + "  ".join(f"{k} {v:8.3f} ({entry['of_floor'][k]:.2f})"
                                                      for k, v in entry["ms"].items()), flush=True)
            del weights
    return results


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--isas", nargs="+", default=None, help="instruction sets to force (default: all this CPU runs "
                        "but the generic one)")
    parser.add_argument("--large", action="store_true", help="add Llama-3.1-8B's shapes")
    parser.add_argument("--types", nargs="+", default=[t.name for t in cpu_quant.QUANTIZED_TYPES],
                        help="GGUF types (default: all the kernels take)")
    parser.add_argument("--rows", nargs="+", type=int, default=[1, 4, 16, 512], help="rows of x (default 1 4 16 512)")
    parser.add_argument("--shapes", nargs="+", default=None, help="only these models (e.g. smollm2-135m)")
    parser.add_argument("--repeats", type=int, default=5, help="timed sweeps per case (default 5)")
    parser.add_argument("--rotation-mb", type=int, default=1024, help="weight copies a sweep walks (default 1024 MB)")
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"JSON results (default {RESULTS})")
    args = parser.parse_args(argv)
    isas = args.isas or [isa for isa in cpu_quant.available_isas() if isa != "generic"] or ["generic"]
    for isa in isas:
        if isa not in cpu_quant.available_isas():
            parser.error(f"--isas: this CPU runs {', '.join(cpu_quant.available_isas())}, not {isa}")
    types = []
    for name in args.types:
        try:
            types.append(GGMLQuantizationType[name])
        except KeyError:
            parser.error(f"--types: {name} is not a GGUF type")
        if types[-1] not in cpu_quant.QUANTIZED_TYPES:
            parser.error(f"--types: the kernels do not take {name}")
    if args.repeats < 1 or any(r < 1 for r in args.rows) or args.rotation_mb < 1:
        parser.error("--repeats, --rows and --rotation-mb must be positive")
    shapes = [s for s in SHAPES + (LARGE_SHAPES if args.large else ()) if args.shapes is None or s[0] in args.shapes]
    bandwidth, gflops = read_bandwidth_gbps(), sgemm_gflops()
    print(f"CPU quantized matmul: {cpu_model()}, {torch.get_num_threads()} threads, read bandwidth {bandwidth:.1f} GB/s, "
          f"sgemm {gflops:.0f} GFLOP/s; ms per call (achieved / floor)", flush=True)
    results = []
    for shape in shapes:
        results += run_shape(shape, types, args.rows, isas, args, bandwidth, gflops)
    report = {
        "environment": {
            "date": datetime.date.today().isoformat(),
            "cpu": cpu_model(),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "isas": isas,
            "default_isa": cpu_quant.isa(),
            "read_bandwidth_gbps": round(bandwidth, 1),
            "sgemm_gflops": round(gflops, 1),
            "rotation_mb": args.rotation_mb,
            "repeats": args.repeats,
        },
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()

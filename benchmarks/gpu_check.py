"""`python -m benchmarks.gpu_check --out DIR`: the first run on a borrowed GPU, in one short command.

    PYTHONPATH=. python3 -m benchmarks.gpu_check --out DIR [--budget-s 360] [--parts NAME ...]

Builds nothing and imports neither C++ extension (fastllm._tokenizer, fastllm._cpu_kernels): it
runs from a plain checkout on an image with torch, triton and transformers. The engine imports
fastllm.loader, which needs the `gguf` package: where it is missing, the parts that build an
engine are skipped and say so (benchmarks/README.md, "GPU check", puts its wheel on PYTHONPATH).

Parts, in this order, each written to DIR/<part>.json as soon as it ends (so a run stopped
midway keeps the parts it finished; DIR/environment.json first):

  variants     every attention kernel variant the engine launches against float64 (prefill over
               packed and paged K/V, decode split and unsplit, head dims 64/128/256; bf16, fp16,
               float32), and a decode whose context grows step by step: no kernel may compile
               after its first step
  cuda_graphs  tests/test_cuda_graphs.py under pytest with compiled kernels (its CUDA test
               captures and replays the decode graphs)
  kernels      the ceilings measured now (1 GiB device copy, 8192^3 bf16 matmul), then prefill
               vs SDPA-flash (8k tokens, head dim 128, MHA and GQA 4), paged decode vs
               gather + SDPA (batch 64 x 4k, GQA 8), softmax vs torch.softmax and sampling vs a
               sort-based top-k/top-p (batch 128 x 128k), each checked first, with the targets
  e2e          the 256-request workload at the Llama-3.2-1B shape (bench_e2e, with a deadline):
               fastllm-triton, HF transformers, then fastllm-torch on as many requests as time
               allows; output tok/s and the batch-1 decode step against its bandwidth floor

The budget (default 360 s, for an H100/H200) is shared out: each part gets a slice from when it
starts (variants 20%, cuda_graphs 17%, kernels 13%) plus whatever earlier parts left, and e2e
runs until the end. A part past its slice stops between items and lists what it did not run.

Without a GPU everything runs at tiny sizes in the Triton interpreter (the CI test runs it so):
it shows that the check runs, not how fast anything is. `python -m benchmarks.run --rebuild DIR`
turns the parts into a results file, a summary and the README table.
"""

from __future__ import annotations

# First: without a GPU it turns the Triton interpreter on before anything imports fastllm.kernels.
from benchmarks import bench_kernels  # isort: skip

import argparse  # noqa: E402
import datetime  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402

ON_GPU = bench_kernels.ON_GPU
REPO = Path(__file__).resolve().parents[1]
PARTS = ("variants", "cuda_graphs", "kernels", "e2e")
# The slice of the whole budget each part may take from its start (e2e: until the end).
SHARES = {"variants": 0.20, "cuda_graphs": 0.17, "kernels": 0.13}
END_MARGIN_S = 10.0  # kept back at the end for writing files and the table
DEFAULT_BUDGET_S = 360.0
E2E_SHAPE = "llama-3.2-1b"
TIMED_CASES = (*bench_kernels.HEADLINE_CASES.values(), "prefill_attention_causal_8k_h128_mha")
GRAPH_TEST = "tests/test_cuda_graphs.py"
GRAPH_TEST_CUDA = "test_captured_graphs_replay_the_eager_decode"
# Targets of the issue, checked on the GPU only (CPU timings are meaningless).
KERNEL_TARGETS = {
    "prefill_attention_causal_8k_h128_mha": ("speedup", 1.0, "at least as fast as SDPA-flash"),
    "prefill_attention_causal_8k_h128_gqa4": ("speedup", 1.0, "at least as fast as SDPA-flash"),
    "paged_decode_b64_ctx4k_gqa8": ("fraction_of_copy_bandwidth", 0.80, ">= 80% of the measured copy bandwidth"),
    "softmax": ("fraction_of_copy_bandwidth", 0.85, ">= 85% of the measured copy bandwidth"),
    "sample_top_k_top_p_b128_v128k": ("speedup", 10.0, ">= 10x the sort-based sampler"),
}
NEEDS_GGUF = ("fastllm's engine imports fastllm.loader, which needs the gguf package: put its wheel on PYTHONPATH "
              "(benchmarks/README.md, 'GPU check')")


def _importable(module: str) -> bool:
    """Whether `module` can be found, without importing it (nor, for a submodule, more than its package)."""
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:
        return False


def environment(budget_s: float, seed: int) -> dict[str, Any]:
    """What ran where: device, versions, what the image lacks, the budget and the seed."""
    env: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": bench_kernels._device_name(),
        "timings_meaningful": ON_GPU,
        "versions": bench_kernels.versions(),
        "budget_s": budget_s,
        "seed": seed,
        "modules": {m: _importable(m) for m in ("gguf", "transformers", "fastllm._tokenizer", "fastllm._cpu_kernels")},
    }
    if _importable("transformers"):
        import transformers

        env["versions"]["transformers"] = transformers.__version__
    if ON_GPU:
        props = torch.cuda.get_device_properties(0)
        env["gpu"] = {"name": props.name, "multiprocessors": props.multi_processor_count,
                      "memory_gib": props.total_memory / 2**30, "capability": f"{props.major}.{props.minor}"}
    return env


# -- parts ---------------------------------------------------------------------------------------
# Each takes its deadline (time.perf_counter seconds) and the results so far, and returns its
# part's record: a `status` (passed, failed or skipped) and what it found.


def part_variants(deadline: float, done: dict[str, Any]) -> dict[str, Any]:
    checks = bench_kernels.check_attention_variants(deadline)
    recompiles = bench_kernels.decode_recompiles()
    return {"status": "passed" if checks["passed"] and recompiles["passed"] else "failed",
            "checks": checks, "decode_recompiles": recompiles}


def part_cuda_graphs(deadline: float, done: dict[str, Any]) -> dict[str, Any]:
    """The graph test file in a child pytest (compiled kernels on the GPU: TRITON_INTERPRET=0).
    Without a GPU only its CUDA test is selected, which skips: the plumbing runs, cheaply."""
    if not _importable("gguf"):
        return {"status": "skipped", "reason": NEEDS_GGUF}
    command = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", GRAPH_TEST]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    if ON_GPU:
        env["TRITON_INTERPRET"] = "0"
    else:
        command += ["-k", GRAPH_TEST_CUDA]
    timeout = max(1.0, deadline - time.perf_counter())
    try:
        done_process = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        output = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        return {"status": "failed", "reason": f"pytest ran past the part's {timeout:.0f} s", "output_tail": output[-4000:]}
    output = done_process.stdout + done_process.stderr
    counts = {word: int(n) for n, word in re.findall(r"(\d+) (passed|failed|skipped|errors?)", output)}
    result = {"command": " ".join(command[1:]), "returncode": done_process.returncode, "counts": counts,
              "output_tail": output[-4000:]}
    if done_process.returncode != 0:
        return {"status": "failed", **result}
    if ON_GPU and counts.get("skipped"):
        return {"status": "failed", "reason": "a test was skipped on the GPU (see output_tail)", **result}
    return {"status": "passed", **result}


def _target(meaning: str, value: float | None, met: Callable[[float], bool], **extra: Any) -> dict[str, Any]:
    """A target's record: judged (met True/False) on a GPU only, where timings mean something."""
    return {"target": meaning, "value": value, **extra, "met": met(value) if ON_GPU and value is not None else None}


def _targets(results: list[dict[str, Any]]) -> dict[str, Any]:
    targets = {}
    for r in results:
        if r["kernel"] in KERNEL_TARGETS:
            field, bound, meaning = KERNEL_TARGETS[r["kernel"]]
            targets[r["kernel"]] = _target(meaning, r.get(field), lambda v, b=bound: v >= b, measure=field)
    return targets


def part_kernels(deadline: float, done: dict[str, Any]) -> dict[str, Any]:
    ceilings = bench_kernels.measure_ceilings()
    cases = [case for case in bench_kernels.CASES if case.name in TIMED_CASES]
    results, not_run = [], []
    for case in cases:
        dtype = case.dtypes[0]  # the model's dtype (bf16 on the GPU); the sampler's float32
        if time.perf_counter() > deadline:
            not_run.append(case.name)
            continue
        results.append(bench_kernels.run_case(case, dtype, ceilings))
        print(bench_kernels._format(results[-1]), flush=True)
    passed = all(r["check"]["passed"] for r in results)
    return {"status": "passed" if passed and not not_run else "failed", "ceilings": ceilings, "results": results,
            "not_run": not_run, "targets": _targets(results),
            "timing": "triton.testing.do_bench median (warmup 25 ms, rep 100 ms)" if ON_GPU
            else "one wall-clock run in the Triton interpreter (meaningless)"}


def _e2e_targets(shape: dict[str, Any]) -> dict[str, Any]:
    ratios = shape["output_throughput_ratios"]
    floor = shape["batch1_floor"]

    def ratio(name: str, meaning: str, met: Callable[[float], bool]) -> dict[str, Any]:
        entry = ratios[name]
        return _target(meaning, None if entry is None else entry["ratio"], met,
                       requests=None if entry is None else entry["requests"])

    fraction = floor.get("fraction_of_floor")
    return {
        "triton_vs_hf": ratio("triton_vs_hf", "output tok/s >= 10x HF's", lambda v: v >= 10),
        "triton_vs_torch": ratio("triton_vs_torch", "faster than the torch backend", lambda v: v > 1),
        "batch1_step_over_floor": _target("batch-1 decode step <= 1.5x its bandwidth floor",
                                          None if not fraction else 1 / fraction, lambda v: v <= 1.5),
    }


def part_e2e(deadline: float, done: dict[str, Any]) -> dict[str, Any]:
    if not _importable("gguf"):
        return {"status": "skipped", "reason": NEEDS_GGUF}
    from benchmarks import bench_e2e

    copy_bytes_per_s = None
    if ON_GPU:
        ceilings = done.get("kernels", {}).get("ceilings") or bench_kernels.measure_ceilings()
        copy_bytes_per_s = ceilings["copy_tb_per_s"] * 1e12
    report = bench_e2e.run(copy_bytes_per_s, shapes=[E2E_SHAPE], deadline=deadline)
    shape = report["shapes"][E2E_SHAPE]
    ran = any("skipped" not in r for r in shape["engines"].values())
    return {"status": "passed" if ran else "skipped", "e2e": report, "targets": _e2e_targets(shape)}


PART_FUNCTIONS: dict[str, Callable[[float, dict[str, Any]], dict[str, Any]]] = {
    "variants": part_variants,
    "cuda_graphs": part_cuda_graphs,
    "kernels": part_kernels,
    "e2e": part_e2e,
}


# -- running -------------------------------------------------------------------------------------


def _write(path: Path, record: dict[str, Any]) -> None:
    path.write_text(json.dumps(record, indent=2, default=str) + "\n")


def run_parts(out: Path, parts: list[str], budget_s: float, env: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each part in order under its deadline, its JSON written as soon as it ends; a part that
    raises is recorded as an error and the next one runs."""
    start = time.perf_counter()
    end = start + budget_s - END_MARGIN_S
    done: dict[str, dict[str, Any]] = {}
    for part in PARTS:
        if part not in parts:
            continue
        began = time.perf_counter()
        deadline = min(end, began + SHARES[part] * budget_s) if part in SHARES else end
        print(f"== {part} (until {deadline - start:.0f} s of {budget_s:.0f})", flush=True)
        try:
            record = PART_FUNCTIONS[part](deadline, done)
        except Exception as exc:  # noqa: BLE001 -- recorded: the later parts still run
            traceback.print_exc()
            record = {"status": "error", "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
        record = {"part": part, **record, "seconds": time.perf_counter() - began,
                  "deadline_s": deadline - began, "environment": {k: env[k] for k in ("date", "device", "versions")}}
        _write(out / f"{part}.json", record)
        done[part] = record
        if ON_GPU:
            torch.cuda.empty_cache()
    return done


def _verdict(met: bool | None) -> str:
    return "met" if met else "MISSED" if met is False else "not judged"


def _value(number: float | None) -> str:
    return "—" if number is None else f"{number:.3g}"


def _headline(part: str, record: dict[str, Any]) -> str:
    """One line of the final table for a part's record."""
    if "reason" in record or "error" in record:
        return record.get("reason") or record["error"]
    if part == "variants":
        checks = record["checks"]
        failed = [f"{r['variant']} d{r['head_dim']} {r['dtype']}" for r in checks["results"] if not r["passed"]]
        grown = record["decode_recompiles"]["compiled_after_first_step"]
        return (f"{len(checks['results']) - len(failed)}/{len(checks['results'])} variants within tolerance"
                + (f", FAILED: {', '.join(failed)}" if failed else "")
                + (f", not run: {len(checks['not_run'])}" if checks["not_run"] else "")
                + f"; compiled after the first decode step: {'not measurable here' if grown is None else grown or 'none'}")
    if part == "cuda_graphs":
        return ", ".join(f"{n} {word}" for word, n in record["counts"].items())
    return "; ".join(f"{name} {_value(t['value'])} ({_verdict(t['met'])})" for name, t in record["targets"].items())


def print_table(done: dict[str, dict[str, Any]]) -> None:
    print("\n| part | status | seconds | result |\n| --- | --- | ---: | --- |")
    for part, record in done.items():
        print(f"| {part} | {record['status']} | {record['seconds']:.1f} | {_headline(part, record)} |")
    if not ON_GPU:
        print("No GPU: tiny sizes in the Triton interpreter; no timing here means anything.")


def as_run_report(folder: Path) -> dict[str, Any]:
    """The parts in `folder` as a `benchmarks.run` report (summary and table come from it)."""
    if not (folder / "environment.json").is_file():
        raise ValueError(f"{folder} is not a gpu_check folder: it has no environment.json")
    env = json.loads((folder / "environment.json").read_text())
    parts = {p: json.loads((folder / f"{p}.json").read_text()) for p in PARTS if (folder / f"{p}.json").is_file()}
    report: dict[str, Any] = {k: env[k] for k in ("date", "device", "timings_meaningful", "versions")}
    kernels = parts.get("kernels", {})
    if "results" in kernels:
        report["ceilings"] = kernels["ceilings"]
        report["kernels"] = {"results": kernels["results"], "sweeps": []}
        if "checks" in parts.get("variants", {}):
            report["kernels"]["variants"] = parts["variants"]["checks"]
    if "e2e" in parts.get("e2e", {}):
        report["e2e"] = parts["e2e"]["e2e"]
    report["gpu_check"] = {part: {"status": record["status"], "seconds": record["seconds"]}
                           for part, record in parts.items()}
    return report


def main(argv: list[str] | None = None) -> dict[str, dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for environment.json and one JSON per part")
    parser.add_argument("--budget-s", type=float, default=DEFAULT_BUDGET_S,
                        help=f"seconds the whole check may take (default {DEFAULT_BUDGET_S:.0f})")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS), help="parts to run (default all)")
    args = parser.parse_args(argv)
    if args.budget_s <= END_MARGIN_S:
        parser.error(f"--budget-s must be > {END_MARGIN_S:.0f}, got {args.budget_s}")

    seed = int(time.time())  # fresh inputs each run, recorded so that a failure can be replayed
    torch.manual_seed(seed)
    args.out.mkdir(parents=True, exist_ok=True)
    env = environment(args.budget_s, seed)
    _write(args.out / "environment.json", env)
    print(f"{env['device']}: {'full sizes' if ON_GPU else 'NO GPU, tiny sizes: timings are meaningless'}; "
          f"missing: {', '.join(m for m, found in env['modules'].items() if not found) or 'nothing'}", flush=True)
    done = run_parts(args.out, args.parts, args.budget_s, env)
    print_table(done)
    return done


if __name__ == "__main__":
    results = main()
    sys.exit(0 if all(r["status"] in ("passed", "skipped") for r in results.values()) else 1)

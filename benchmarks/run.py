"""`make bench`: every benchmark suite on whatever device is here; one results file, plots, a table.

    python -m benchmarks.run [--suites kernels e2e tokenizer correctness] [--out-dir DIR] [--readme FILE]
    python -m benchmarks.run --rebuild PATH [--out-dir DIR] [--readme FILE]

Suites (the first three by default):
  kernels      bench_kernels (each Triton kernel checked against float64, timed beside its baseline
               and against the measured copy bandwidth / matmul throughput) and kernel_sweeps
               (speed against size, for the plot)
  e2e          bench_e2e: the 256-request workload on two model shapes, fastllm's two backends
               beside HF transformers, throughput against batch size, batch-1 decode against its floor
  tokenizer    bench_tokenizer: fastllm vs tiktoken vs HF tokenizers, MB/s
  correctness  gpu_correctness (CUDA only, on the default model; only when asked for)
Without a GPU everything runs at tiny sizes (kernels in the Triton interpreter), so that the whole
pipeline is exercised; those timings are labelled meaningless and no hardware floors are reported.

Writes <out-dir>/<date>-<device>.json (with a `summary` keyed prefill_attention,
paged_decode_attention, softmax, sampling and generate: fastllm's figure, the baseline's, their
ratio and the fraction of the hardware floor) again after each suite, so that a run stopped
midway keeps the suites it finished; then <date>-<device>-kernels.png and
<date>-<device>-throughput.png, and rewrites the results table in benchmarks/README.md.
`--rebuild` does the last steps from results already written: a results file of this runner,
or the folder of `python -m benchmarks.gpu_check`. Exits non-zero when a correctness check fails.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path
from typing import Any

# First: without a GPU it turns the Triton interpreter on before anything imports fastllm.kernels.
from benchmarks import bench_kernels  # isort: skip

import torch  # noqa: E402

from benchmarks import bench_e2e, kernel_sweeps, plots  # noqa: E402

HERE = Path(__file__).resolve().parent
SUITES = ("kernels", "e2e", "tokenizer", "correctness")
DEFAULT_SUITES = ("kernels", "e2e", "tokenizer")
TABLE_START = "<!-- benchmarks.run table: start (generated, do not edit) -->"
TABLE_END = "<!-- benchmarks.run table: end -->"
KERNEL_CASES = bench_kernels.HEADLINE_CASES  # summary key -> the bench_kernels case that stands for it
GENERATE_SHAPE = "llama-3.2-1b"
SPEEDUP = "baseline time / fastllm time (> 1: fastllm is faster)"
CPU_NO_FLOOR = "no GPU: tiny shapes on the CPU (kernels in the Triton interpreter) say nothing about hardware limits"


# -- suites ------------------------------------------------------------------------------------


def run_kernels(ceilings: dict[str, Any]) -> dict[str, Any]:
    return {"results": bench_kernels.run_cases(bench_kernels.CASES, ceilings),
            "variants": bench_kernels.check_attention_variants(), "sweeps": kernel_sweeps.run_all()}


def run_tokenizer(megabytes: float, rounds: int) -> dict[str, Any]:
    from benchmarks import bench_tokenizer
    from benchmarks.tokenizer_corpus import build_corpus

    docs = build_corpus(megabytes)
    best = bench_tokenizer.side_by_side(rounds, docs)
    libraries = bench_tokenizer.LIBRARIES
    return {
        "corpus_megabytes": sum(len(d.encode()) for d in docs) / 1e6,
        "documents": len(docs),
        "rounds": rounds,
        "megabytes_per_s": {lib: {mode: best[(lib, mode)] for mode in ("single", "batch")} for lib in libraries},
        "fastllm_single_thread_speedup": {
            lib: best[("fastllm", "single")] / best[(lib, "single")] for lib in libraries if lib != "fastllm"
        },
    }


def run_correctness() -> dict[str, Any]:
    """gpu_correctness, recorded rather than raised: a crash, or what the machine lacks (the C++
    tokenizer, the default model), must not lose the other suites' results."""
    if not bench_kernels.ON_GPU:
        return {"skipped": "no CUDA GPU (on the CPU, tests/test_triton_backend.py holds the interpreted triton "
                           "backend to the torch backend)", "passed": True}
    try:
        from benchmarks import gpu_correctness
        from fastllm import default_model_path

        default_model_path()
    except (ImportError, FileNotFoundError) as exc:  # not a failed check: the machine lacks what it needs
        print(f"GPU correctness checks skipped: {exc}", file=sys.stderr, flush=True)
        return {"skipped": f"{type(exc).__name__}: {exc}", "passed": True}
    try:
        return gpu_correctness.run()
    except Exception as exc:  # noqa: BLE001 -- recorded as a failed check, the report is still written
        print(f"GPU correctness checks FAILED with {exc!r}", file=sys.stderr, flush=True)
        return {"error": f"{type(exc).__name__}: {exc}", "passed": False}


# -- summary -----------------------------------------------------------------------------------


def _missing(reason: str) -> dict[str, Any]:
    return {"fastllm": None, "baseline": None, "ratio": None, "fraction_of_floor": None, "reason": reason}


def _kernel_summary(kernels: dict[str, Any] | None, case_name: str, on_gpu: bool) -> dict[str, Any]:
    if kernels is None:
        return _missing("the kernels suite was not run")
    rows = [r for r in kernels["results"] if r["kernel"] == case_name]
    if not rows:
        return _missing(f"{case_name} was not timed")
    # The model's dtype on the GPU (bf16), the interpreter's only half type on the CPU.
    row = next((r for r in rows if r["dtype"] == "bfloat16"), rows[0])
    compute_bound = "fraction_of_matmul" in row
    entry = {
        "case": case_name,
        "dtype": row["dtype"],
        "unit": "ms",
        "fastllm": row["triton_ms"],
        "baseline": row["baseline_ms"],
        "baseline_name": row["baseline"],
        "ratio": row["speedup"],
        "ratio_meaning": SPEEDUP,
        "floor": "measured bf16 matmul throughput (TFLOP/s)" if compute_bound
        else "measured device-to-device copy bandwidth (least bytes moved)",
        "fraction_of_floor": row["fraction_of_matmul" if compute_bound else "fraction_of_copy_bandwidth"],
    }
    if not on_gpu:
        entry.update(fraction_of_floor=None, reason=CPU_NO_FLOOR)
    return entry


def _generate_summary(e2e: dict[str, Any] | None) -> dict[str, Any]:
    if e2e is None:
        return _missing("the e2e suite was not run")
    name = GENERATE_SHAPE if GENERATE_SHAPE in e2e["shapes"] else next(iter(e2e["shapes"]))
    shape = e2e["shapes"][name]
    engines = shape["engines"]
    engine = next((e for e in ("fastllm-triton", "fastllm-torch") if "workload" in engines[e]), None)
    if engine is None or "workload" not in engines["hf"]:
        return _missing(f"an engine did not run on {name}: " + "; ".join(
            f"{e}: {r['skipped']}" for e, r in engines.items() if "skipped" in r))
    fastllm, baseline = engines[engine]["workload"], engines["hf"]["workload"]
    floor = shape["batch1_floor"]
    entry = {
        "shape": shape["config"]["name"],
        "engine": engine,
        "workload": f"{e2e['workload']['num_requests']} requests, prompt/output lengths "
                    f"{e2e['workload']['min_len']}..{e2e['workload']['max_len']}",
        "unit": "output tokens/s",
        "fastllm": fastllm["output_tokens_per_s"],
        "baseline": baseline["output_tokens_per_s"],
        "baseline_name": f"HF transformers generate, static batches of {e2e['hf_static_batch_size']}",
        "ratio": fastllm["output_tokens_per_s"] / baseline["output_tokens_per_s"],
        "ratio_meaning": "fastllm throughput / baseline throughput (> 1: fastllm is faster)",
        "floor": "batch-1 decode step: (weight bytes + KV bytes per step) / measured copy bandwidth",
        "fraction_of_floor": floor.get("fraction_of_floor"),
    }
    if entry["fraction_of_floor"] is None:
        entry["reason"] = floor.get("skipped", "the triton engine did not run")
    notes = [e2e["note"]] if e2e["scaled_down"] else []
    if "stopped_early" in baseline:
        stop = baseline["stopped_early"]
        notes.append(f"HF stopped at the time budget after {stop['steps']} of {stop['of_steps']} steps "
                     f"(throughput over the tokens made so far)")
    if notes:
        entry["note"] = "; ".join(notes)
    return entry


def summarize(report: dict[str, Any]) -> dict[str, Any]:
    on_gpu = report.get("timings_meaningful", False)
    summary = {key: _kernel_summary(report.get("kernels"), case, on_gpu) for key, case in KERNEL_CASES.items()}
    summary["generate"] = _generate_summary(report.get("e2e"))
    return summary


# -- README table ------------------------------------------------------------------------------


def _number(value: float | None, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}g}"


def markdown_table(report: dict[str, Any], results_file: str) -> str:
    lines = [f"Latest `python -m benchmarks.run`: {report['date'][:10]}, {report['device']} (`{results_file}`)."]
    if not report["timings_meaningful"]:
        lines.append("**No GPU: tiny shapes on the CPU, kernels in the Triton interpreter. These figures only show "
                     "that the pipeline runs; they say nothing about speed.**")
    lines += ["", "| benchmark | fastllm | baseline | ratio | fraction of floor |", "| --- | ---: | --- | ---: | ---: |"]
    for key, entry in report["summary"].items():
        if entry["fastllm"] is None:
            lines.append(f"| {key} | — | — | — | — ({entry['reason']}) |")
            continue
        unit = entry["unit"]
        what = f"{entry['case']}, {entry['dtype']}" if "case" in entry else f"{entry['shape']}, {entry['engine']}"
        floor = _number(entry["fraction_of_floor"], 2)
        lines.append(
            f"| {key} ({what}) | {_number(entry['fastllm'])} {unit} | {_number(entry['baseline'])} {unit} "
            f"({entry['baseline_name']}) | {_number(entry['ratio'])}x | {floor} |"
        )
    lines.append("")
    lines.append("Ratio: for kernels, baseline time / fastllm time; for generate, fastllm throughput / HF throughput. "
                 "Fraction of floor: the hardware floor's time / fastllm's time (1 = at the floor).")
    if "gpu_check" in report:
        lines += ["", "GPU check: " + ", ".join(f"{part} {r['status']}" for part, r in report["gpu_check"].items())
                  + " (`python -m benchmarks.gpu_check`; details in its part files)."]
    e2e = report.get("e2e")
    if e2e is not None:
        lines += ["", f"End to end ({e2e['note']}; {e2e['dtype']}):", "",
                  "| shape | engine | output tok/s | total tok/s | TTFT mean (s) | TPOT mean (ms) | batch-1 step (ms) |",
                  "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
        for shape in e2e["shapes"].values():
            for engine, result in shape["engines"].items():
                lines += _engine_rows(shape["config"]["name"], engine, result, e2e["workload"]["num_requests"])
    return "\n".join(lines)


def _engine_rows(shape: str, engine: str, result: dict[str, Any], num_requests: int) -> list[str]:
    """Table rows of one engine: its full workload, or else the most requests it ran in the time budget."""
    if "skipped" in result:
        return [f"| {shape} | {engine} | skipped: {result['skipped']} | | | | |"]
    runs = dict(result.get("subsets", {}))
    if "workload" in result:
        runs = {str(num_requests): result["workload"]}
    if not runs:
        return [f"| {shape} | {engine} | nothing ran within the time budget | | | | |"]
    count, w = max(runs.items(), key=lambda item: int(item[0]))
    label = engine if int(count) == num_requests else f"{engine} (first {count} requests)"
    if "stopped_early" in w:
        label += " (stopped at the time budget)"
    step = result.get("batch1_decode_step_s")
    return [
        f"| {shape} | {label} | {w['output_tokens_per_s']:.1f} | {w['total_tokens_per_s']:.1f} | "
        f"{w['ttft_s']['mean']:.3f} | {1e3 * w['tpot_s']['mean']:.2f} | {'—' if step is None else f'{1e3 * step:.2f}'} |"
    ]


def update_readme(readme: Path, table: str) -> None:
    """Replace the generated table between the markers (appending a section with them if absent)."""
    text = readme.read_text() if readme.exists() else ""
    block = f"{TABLE_START}\n{table}\n{TABLE_END}"
    if TABLE_START in text and TABLE_END in text:
        head, rest = text.split(TABLE_START, 1)
        text = head + block + rest.split(TABLE_END, 1)[1]
    else:
        text = text.rstrip("\n") + f"\n\n## Latest results\n\n{block}\n"
    readme.write_text(text)


# -- main --------------------------------------------------------------------------------------


def _environment(on_gpu: bool, now: datetime.datetime) -> dict[str, Any]:
    return {
        "date": now.isoformat(timespec="seconds"),
        "device": bench_kernels._device_name(),
        "timings_meaningful": on_gpu,
        "versions": bench_kernels.versions(),
    }


def _stem(report: dict[str, Any]) -> str:
    return f"{report['date'][:10]}-{bench_kernels._slug(report['device'])}"


def write_results(report: dict[str, Any], out_dir: Path) -> Path:
    """The report, its summary brought up to date, as <out-dir>/<date>-<device>.json."""
    report["summary"] = summarize(report)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{_stem(report)}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    return path


def finish(report: dict[str, Any], out_dir: Path, readme: Path) -> None:
    """Plots (of what the report holds), the results file and the README table."""
    on_gpu = report["timings_meaningful"]
    title = f"{report['device']}{'' if on_gpu else ' (no GPU: tiny shapes, meaningless timings)'}"
    out_dir.mkdir(parents=True, exist_ok=True)
    report["plots"] = []
    if report.get("kernels", {}).get("sweeps"):
        path = out_dir / f"{_stem(report)}-kernels.png"
        plots.kernel_sweeps(report["kernels"]["sweeps"], report["ceilings"] if on_gpu else None, title, path)
        report["plots"].append(path.name)
    if "e2e" in report:
        path = out_dir / f"{_stem(report)}-throughput.png"
        plots.throughput_by_batch_size(report["e2e"], title, path)
        report["plots"].append(path.name)
    results_file = write_results(report, out_dir)
    update_readme(readme, markdown_table(report, results_file.name))
    print(f"wrote {results_file} and {', '.join(report['plots']) or 'no plots'}; table in {readme}")


def load_report(path: Path) -> dict[str, Any]:
    """A report to rebuild from: a results file of this runner, or a gpu_check folder (its parts)."""
    if path.is_file():
        return json.loads(path.read_text())
    if not path.is_dir():
        raise ValueError(f"--rebuild takes a results file or a gpu_check folder; {path} is neither")
    from benchmarks import gpu_check

    return gpu_check.as_run_report(path)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--suites", nargs="+", choices=SUITES, default=list(DEFAULT_SUITES),
                        help="suites to run (default: kernels e2e tokenizer)")
    parser.add_argument("--rebuild", type=Path, metavar="PATH",
                        help="run nothing: summary, plots and table from a results file or a gpu_check folder")
    parser.add_argument("--out-dir", type=Path, default=HERE / "results", help="where the JSON and PNGs go")
    parser.add_argument("--readme", type=Path, default=HERE / "README.md", help="README whose results table to rewrite")
    parser.add_argument("--tokenizer-megabytes", type=float, default=4.0, help="tokenizer corpus size (default 4 MB)")
    parser.add_argument("--tokenizer-rounds", type=int, default=5, help="tokenizer timing rounds (default 5)")
    args = parser.parse_args(argv)
    if args.tokenizer_megabytes <= 0 or args.tokenizer_rounds < 1:
        parser.error("--tokenizer-megabytes must be > 0 and --tokenizer-rounds >= 1")
    if args.rebuild is not None:
        try:
            report = load_report(args.rebuild)
        except ValueError as exc:
            parser.error(str(exc))
        finish(report, args.out_dir, args.readme)
        return report

    torch.manual_seed(0)
    on_gpu = bench_kernels.ON_GPU
    report: dict[str, Any] = _environment(on_gpu, datetime.datetime.now(datetime.timezone.utc))
    print(f"{report['device']}: {'full sizes' if on_gpu else 'NO GPU, tiny sizes: timings are meaningless'}", flush=True)
    report["ceilings"] = ceilings = bench_kernels.measure_ceilings()
    suites = {
        "kernels": lambda: run_kernels(ceilings),
        "e2e": lambda: bench_e2e.run(ceilings["copy_tb_per_s"] * 1e12 if on_gpu else None),
        "tokenizer": lambda: run_tokenizer(args.tokenizer_megabytes, args.tokenizer_rounds),
        "correctness": run_correctness,
    }
    for suite in SUITES:  # in this order, whatever the order asked
        if suite in args.suites:
            report[suite] = suites[suite]()
            print(f"{suite} done: {write_results(report, args.out_dir)}", flush=True)
    finish(report, args.out_dir, args.readme)
    return report


def passed(report: dict[str, Any]) -> bool:
    kernels = report.get("kernels", {})
    kernel_checks = all(r["check"]["passed"] for r in kernels.get("results", []))
    return kernel_checks and kernels.get("variants", {"passed": True})["passed"] and report.get(
        "correctness", {"passed": True})["passed"]


if __name__ == "__main__":
    sys.exit(0 if passed(main()) else 1)

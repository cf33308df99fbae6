"""Running requests' decode latency while a long prompt arrives, and `LLM()` start-up time.

Workload: the default model (SmolLM2-135M-Instruct) on the CPU, float32, backend "cpu",
max_num_batched_tokens=512, prefix caching off. Four requests (32 random prompt tokens each,
greedy, ignore_eos) decode; once each has 8 tokens a 3,000-token prompt arrives. Recorded, from
the time each step returns its outputs:

- the running requests' inter-token latency (ITL) while the long prompt is prefilled: the gaps
  between their tokens from the last one before its arrival to the first one at or after its
  first token (median, p90 and max over the four), and how many tokens each got meanwhile;
- the long prompt's time to first token (TTFT), and the running requests' TTFT;
- `LLM()` start-up: wall time of `LLM(device="cpu")` in fresh processes (page cache warm).

The workload runs once to warm up, then three times; each figure's median over the three is
recorded beside every run.

With chunked prefill and decode first, each step holds the four decode tokens and a 508-token
chunk, so the running requests keep producing a token per step; a scheduler that runs prefill
steps first leaves them without a token until the whole prompt is in.

    python -m benchmarks.bench_mixed_steps [--out FILE] [--label NAME] [--code TEXT] [--startup-runs N]

The results file keeps one entry per label (e.g. the code before and after a change).
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).parent / "results" / "mixed_steps.json"
NUM_RUNNING, RUNNING_PROMPT, RUNNING_TOKENS_BEFORE, RUNNING_MAX_TOKENS = 4, 32, 8, 1000
LONG_PROMPT, BUDGET = 3000, 512
RUNS = 3
STARTUP = "import time; t = time.perf_counter(); from fastllm import LLM; LLM(device='cpu'); print(time.perf_counter() - t)"


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def random_prompt(length: int, vocab_size: int, seed: int) -> list[int]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(100, vocab_size, (length,), generator=generator).tolist()


class Timeline:
    """When each request got each token: request key -> step-return times, one per new token."""

    def __init__(self) -> None:
        self.times: dict[Any, list[float]] = {}

    def record(self, key: Any, new_tokens: int, now: float) -> None:
        self.times.setdefault(key, []).extend([now] * new_tokens)


def interference(
    vocab_size: int, add: Callable[[list[int], int], Any], step: Callable[[], list[tuple[Any, int]]]
) -> tuple[dict[str, Any], list[Any]]:
    """The workload, and the keys of its requests (still running: abort them). `add(prompt,
    max_tokens) -> key` queues a greedy request; `step()` runs one engine step and returns
    [(key, new tokens)] for the requests that advanced."""
    timeline = Timeline()
    running = [add(random_prompt(RUNNING_PROMPT, vocab_size, seed=i), RUNNING_MAX_TOKENS) for i in range(NUM_RUNNING)]
    arrival = {key: time.perf_counter() for key in running}
    while min(len(timeline.times.get(key, [])) for key in running) < RUNNING_TOKENS_BEFORE:
        for key, count in step():
            timeline.record(key, count, time.perf_counter())
    long_arrival = time.perf_counter()
    long = add(random_prompt(LONG_PROMPT, vocab_size, seed=99), 8)
    while long not in timeline.times:
        for key, count in step():
            timeline.record(key, count, time.perf_counter())
    long_first = timeline.times[long][0]
    # Until every running request has a token from then on: the gap that spans the prefill.
    while any(timeline.times[key][-1] < long_first for key in running):
        for key, count in step():
            timeline.record(key, count, time.perf_counter())
    gaps, tokens_during = [], []
    for key in running:
        times = timeline.times[key]
        before = [t for t in times if t <= long_arrival]
        during = [t for t in times if long_arrival < t <= long_first]
        after = [t for t in times if t > long_first][:1]
        points = before[-1:] + during + ([] if during and during[-1] == long_first else after)
        gaps += [b - a for a, b in zip(points, points[1:])]
        tokens_during.append(len(during))
    result = {
        "long_prompt_ttft_s": long_first - long_arrival,
        "running_itl_during_prefill_s": {
            "median": statistics.median(gaps), "p90": _percentile(gaps, 0.9), "max": max(gaps),
        },
        "running_tokens_during_prefill": tokens_during,
        "running_ttft_s": [timeline.times[key][0] - arrival[key] for key in running],
    }
    return result, [*running, long]


def run_workload() -> dict[str, Any]:
    from fastllm import LLM, SamplingParams

    llm = LLM(device="cpu", dtype="float32", max_num_batched_tokens=BUDGET, enable_prefix_caching=False)
    engine = llm.engine

    def add(prompt: list[int], max_tokens: int) -> str:
        return engine.add_request(prompt, SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True))

    def step() -> list[tuple[str, int]]:
        return [(out.request_id, len(out.outputs[0].delta_token_ids)) for out in engine.step()]

    def once() -> dict[str, Any]:
        result, request_ids = interference(engine.model_config.vocab_size, add, step)
        for request_id in request_ids:
            engine.abort(request_id)
        return result

    return repeated(once)


def repeated(once: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """`once()` after a warm-up run (first touch of the KV pool, oneDNN's kernels), RUNS times:
    every run, and the median of each figure over them."""
    once()
    runs = [once() for _ in range(RUNS)]
    return {
        "median_of_runs": {
            "long_prompt_ttft_s": statistics.median(r["long_prompt_ttft_s"] for r in runs),
            "running_itl_during_prefill_s": {
                stat: statistics.median(r["running_itl_during_prefill_s"][stat] for r in runs)
                for stat in ("median", "p90", "max")
            },
            "running_ttft_s": statistics.median(statistics.median(r["running_ttft_s"]) for r in runs),
        },
        "runs": runs,
    }


def startup_times(runs: int) -> list[float]:
    return [float(subprocess.run([sys.executable, "-c", STARTUP], check=True, capture_output=True, text=True).stdout)
            for _ in range(runs)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--label", default="current")
    parser.add_argument("--code", default="this checkout", help="which code ran, for the record")
    parser.add_argument("--startup-runs", type=int, default=5)
    args = parser.parse_args()
    starts = startup_times(args.startup_runs)
    entry = {
        "date": datetime.date.today().isoformat(),
        "code": args.code,
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "workload": {
            "running_requests": NUM_RUNNING, "running_prompt_tokens": RUNNING_PROMPT,
            "running_tokens_before_arrival": RUNNING_TOKENS_BEFORE, "long_prompt_tokens": LONG_PROMPT,
            "max_num_batched_tokens": BUDGET, "model": "SmolLM2-135M-Instruct Q4_1, cpu, float32",
        },
        **run_workload(),
        "llm_startup_s": {"runs": starts, "median": statistics.median(starts)},
    }
    results = json.loads(args.out.read_text()) if args.out.is_file() else {}
    results[args.label] = entry
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({args.label: entry}, indent=2))


if __name__ == "__main__":
    main()

"""`fastllm serve` under concurrent streaming clients, beside offline `LLM.generate` on the same requests.

Workload (fixed seed): per concurrency level C, `requests_per_level(C)` requests with prompt
lengths drawn uniformly from [16, 128] tokens (slices of Python's own documentation at distinct
offsets, given as token ids: no shared prefix) and output lengths from [16, 96] tokens, greedy,
ignore_eos, so every request makes exactly its output length. The default model on the CPU
(float32, backend "cpu"), prefix caching off, on both sides.

- Server: one `fastllm serve` subprocess (--max-num-seqs 64); C client tasks (the official
  `openai` client, AsyncOpenAI) take the next request as soon as theirs finishes (a closed
  loop), all streamed. Client-side clocks: time to first token (request sent -> first chunk with text),
  inter-token latency (gaps between a request's chunks: one chunk per engine step that gave it
  text), requests/s and output tokens/s over the level's wall time (usage counts, exact).
- Offline: `LLM.generate(all the level's requests)` in this process with max_num_seqs = C (an
  engine per level over one loaded model), output tokens/s over the call. The two sides take
  turns, level by level, while the other is idle; each runs two requests first to warm up.

Server overhead at a level = 1 - server output tok/s / offline output tok/s.

    python -m benchmarks.bench_serve [--levels 1 4 16 64] [--out FILE] [--plot FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import random
import statistics
import time
from pathlib import Path
from typing import Any

import openai
import torch

from benchmarks import plots
from fastllm import LLM, SamplingParams
from tests.server_testing import ServerProcess

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "serve.json"
PLOT = HERE / "results" / "serve.png"
LEVELS = (1, 4, 16, 64)
PROMPT_LENGTHS = (16, 128)
OUTPUT_LENGTHS = (16, 96)
MAX_NUM_SEQS = 64
MODEL_NAME = "smol"
SEED = 0


def requests_per_level(concurrency: int) -> int:
    """Enough requests that every client runs several: at least 8, at least 2 per client."""
    return max(8, 2 * concurrency)


def workload(llm: LLM, count: int, seed: int) -> list[tuple[list[int], int]]:
    """(prompt token ids, output length) pairs."""
    import pydoc_data.topics

    text = "\n\n".join(body for _, body in sorted(pydoc_data.topics.topics.items()))
    ids = llm.tokenizer.encode(text[:600_000])
    rng = random.Random(seed)
    requests = []
    for index in range(count):
        length = rng.randint(*PROMPT_LENGTHS)
        start = (index * 997) % (len(ids) - length)
        requests.append((ids[start : start + length], rng.randint(*OUTPUT_LENGTHS)))
    return requests


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"p50": float("nan"), "p99": float("nan")}
    ordered = sorted(values)
    return {"p50": statistics.median(ordered), "p99": ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]}


# -- offline -----------------------------------------------------------------------------------


def run_offline(model_llm: LLM, requests: list[tuple[list[int], int]], concurrency: int) -> dict[str, Any]:
    """LLM.generate over all the requests with max_num_seqs = concurrency, on `model_llm`'s weights."""
    llm = LLM.from_model(model_llm.engine.model, model_llm.tokenizer, max_num_seqs=concurrency,
                         enable_prefix_caching=False)
    prompts = [prompt for prompt, _ in requests]
    params = [SamplingParams(temperature=0, max_tokens=n, ignore_eos=True) for _, n in requests]
    start = time.perf_counter()
    outputs = llm.generate(prompts, params, use_tqdm=False)
    elapsed = time.perf_counter() - start
    tokens = sum(len(out.token_ids) for out in outputs)
    return {"seconds": elapsed, "output_tokens": tokens, "output_tokens_per_s": tokens / elapsed,
            "requests_per_s": len(requests) / elapsed}


# -- server ------------------------------------------------------------------------------------


async def _one_request(client: openai.AsyncOpenAI, prompt: list[int], max_tokens: int) -> dict[str, Any]:
    sent = time.perf_counter()
    chunk_times, tokens = [], 0
    stream = await client.completions.create(
        model=MODEL_NAME, prompt=prompt, max_tokens=max_tokens, temperature=0, stream=True,
        stream_options={"include_usage": True}, extra_body={"ignore_eos": True},
    )
    async for chunk in stream:
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
        if any(choice.text for choice in chunk.choices):
            chunk_times.append(time.perf_counter())
    return {"ttft": chunk_times[0] - sent, "gaps": [b - a for a, b in zip(chunk_times, chunk_times[1:])],
            "output_tokens": tokens}


async def _run_level(url: str, requests: list[tuple[list[int], int]], concurrency: int) -> dict[str, Any]:
    pending = list(reversed(requests))
    results: list[dict[str, Any]] = []
    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=600)

    async def worker() -> None:
        while pending:
            prompt, max_tokens = pending.pop()
            results.append(await _one_request(client, prompt, max_tokens))

    try:
        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    finally:
        await client.close()
    tokens = sum(r["output_tokens"] for r in results)
    return {
        "seconds": elapsed, "output_tokens": tokens, "output_tokens_per_s": tokens / elapsed,
        "requests_per_s": len(results) / elapsed,
        "ttft_s": percentiles([r["ttft"] for r in results]),
        "itl_s": percentiles([gap for r in results for gap in r["gaps"]]),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", type=int, nargs="+", default=list(LEVELS))
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--plot", type=Path, default=PLOT)
    args = parser.parse_args(argv)

    server = ServerProcess("--max-num-seqs", str(MAX_NUM_SEQS), "--no-prefix-caching", "--device", "cpu",
                           "--served-model-name", MODEL_NAME)
    levels = []
    try:
        model_llm = LLM(device="cpu")
        workloads = {c: workload(model_llm, requests_per_level(c), SEED + c) for c in args.levels}
        warm_up = workloads[args.levels[0]][:2]
        run_offline(model_llm, warm_up, 1)
        asyncio.run(_run_level(server.url, warm_up, 1))
        # The sides alternate level by level (the idle server costs nothing meanwhile), so load
        # drifts on a shared machine hit both; the load average is recorded beside each level.
        for c in args.levels:
            load_before = os.getloadavg()[0]
            offline = run_offline(model_llm, workloads[c], c)
            served = asyncio.run(_run_level(server.url, workloads[c], c))
            levels.append({
                "concurrency": c, "requests": len(workloads[c]), "server": served, "offline": offline,
                "server_overhead": 1 - served["output_tokens_per_s"] / offline["output_tokens_per_s"],
                "load_average_1min": [load_before, os.getloadavg()[0]],
            })
    finally:
        server.stop()
    report = {
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "workload": {"prompt_tokens": PROMPT_LENGTHS, "output_tokens": OUTPUT_LENGTHS, "seed": SEED,
                     "model": "SmolLM2-135M-Instruct Q4_1, cpu, float32", "server_max_num_seqs": MAX_NUM_SEQS,
                     "prefix_caching": False, "greedy": True, "ignore_eos": True},
        "levels": levels,
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    plots.serve_by_concurrency(report, "fastllm serve vs offline LLM.generate (CPU)", args.plot)
    for level in levels:
        s, o = level["server"], level["offline"]
        print(f"C={level['concurrency']:>3}: server {s['output_tokens_per_s']:7.1f} tok/s "
              f"{s['requests_per_s']:5.2f} req/s, TTFT p50 {s['ttft_s']['p50']:.3f} s p99 {s['ttft_s']['p99']:.3f} s, "
              f"ITL p50 {s['itl_s']['p50'] * 1e3:.0f} ms p99 {s['itl_s']['p99'] * 1e3:.0f} ms | offline "
              f"{o['output_tokens_per_s']:7.1f} tok/s | overhead {level['server_overhead']:+.1%}")
    return report


if __name__ == "__main__":
    main()

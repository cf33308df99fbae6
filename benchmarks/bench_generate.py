"""End-to-end generation throughput: fastllm vs HF transformers `generate`, same model, same prompts.

Both run the default model (SmolLM2-135M-Instruct GGUF, dequantized) in the same process, on the
same prompt token ids, greedy, ignoring EOS so every request makes exactly its token count:

    batch1:  one prompt, 64 new tokens
    batch16: 16 prompts of 16 different lengths (16..256 tokens), 32 new tokens each;
             HF batches them with left padding, fastllm packs them (continuous batching).

Throughput = generated tokens / wall time of the whole call (prefill included). fastllm runs
its default CPU backend ("cpu": the PyTorch ops, decode attention, RMSNorm and rotary in C++)
with prefix caching off, so repeated rounds do not get cache hits; the prompts share no prefix.
The two libraries alternate round by round so that load drifts on a shared machine hit both.

    python -m benchmarks.bench_generate            # side-by-side table + benchmarks/results/generate.json
    python -m pytest benchmarks/bench_generate.py  # pytest-benchmark suite
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest
import torch

from fastllm import LLM, SamplingParams, default_model_path

RESULTS = Path(__file__).parent / "results" / "generate.json"
LIBRARIES = ("fastllm", "hf")


@dataclass(frozen=True)
class Scenario:
    name: str
    prompt_lengths: tuple[int, ...]
    new_tokens: int


SCENARIOS = {
    "batch1": Scenario("batch1", (48,), 64),
    "batch16": Scenario("batch16", tuple(16 * k for k in range(1, 17)), 32),
}


@cache
def fastllm_llm() -> LLM:
    # Pinned: by default fastllm takes a GPU where there is one (in bf16), while HF here stays on the CPU.
    return LLM(device="cpu", dtype="float32", enable_prefix_caching=False)


@cache
def hf_model() -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    path = Path(default_model_path())
    return AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()


@cache
def prompts(scenario: str) -> list[list[int]]:
    """Prompt token ids: slices of Python's own documentation at distinct offsets (no shared prefix)."""
    import pydoc_data.topics

    text = "\n\n".join(text for _, text in sorted(pydoc_data.topics.topics.items()))
    ids = fastllm_llm().tokenizer.encode(text[:400_000])
    lengths = SCENARIOS[scenario].prompt_lengths
    return [ids[1000 * i : 1000 * i + n] for i, n in enumerate(lengths)]


def run_fastllm(scenario: str) -> list[list[int]]:
    params = SamplingParams(temperature=0, max_tokens=SCENARIOS[scenario].new_tokens, ignore_eos=True)
    return [o.token_ids for o in fastllm_llm().generate(prompts(scenario), params, use_tqdm=False)]


@torch.inference_mode()
def run_hf(scenario: str) -> list[list[int]]:
    from transformers import GenerationConfig

    batch = prompts(scenario)
    width = max(len(p) for p in batch)
    pad = fastllm_llm().tokenizer.eos_id
    input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in batch])  # left padding
    attention_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch])
    config = GenerationConfig(
        do_sample=False, max_new_tokens=SCENARIOS[scenario].new_tokens, eos_token_id=None, pad_token_id=pad
    )
    out = hf_model().generate(input_ids, attention_mask=attention_mask, generation_config=config)
    return out[:, width:].tolist()


RUNNERS: dict[str, Callable[[str], list[list[int]]]] = {"fastllm": run_fastllm, "hf": run_hf}


@pytest.mark.parametrize("scenario", list(SCENARIOS))
@pytest.mark.parametrize("library", LIBRARIES)
def test_generate_throughput(benchmark, library: str, scenario: str) -> None:
    tokens = len(SCENARIOS[scenario].prompt_lengths) * SCENARIOS[scenario].new_tokens
    benchmark.group = f"generate {scenario}"
    benchmark.pedantic(RUNNERS[library], args=(scenario,), rounds=3, warmup_rounds=1)
    benchmark.extra_info["tokens_per_second"] = round(tokens / benchmark.stats.stats.median, 1)


def side_by_side(rounds: int, scenarios: list[str]) -> dict:
    """Median tokens/s per (scenario, library) over `rounds` alternating rounds, and greedy agreement."""
    results: dict = {}
    for name in scenarios:
        scenario = SCENARIOS[name]
        tokens = len(scenario.prompt_lengths) * scenario.new_tokens
        outputs = {library: RUNNERS[library](name) for library in LIBRARIES}  # warm-up, kept for agreement
        times: dict[str, list[float]] = {library: [] for library in LIBRARIES}
        for _ in range(rounds):
            for library in LIBRARIES:
                start = time.perf_counter()
                RUNNERS[library](name)
                times[library].append(time.perf_counter() - start)
        same = sum(a == b for a, b in zip(outputs["fastllm"], outputs["hf"]))
        rates = {library: tokens / statistics.median(times[library]) for library in LIBRARIES}
        results[name] = {
            "prompts": len(scenario.prompt_lengths),
            "prompt_tokens": sum(scenario.prompt_lengths),
            "new_tokens_per_prompt": scenario.new_tokens,
            "tokens_per_second": {library: round(rate, 1) for library, rate in rates.items()},
            "speedup_vs_hf": round(rates["fastllm"] / rates["hf"], 2),
            "identical_greedy_outputs": f"{same}/{len(scenario.prompt_lengths)}",
            "rounds": rounds,
        }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per library and scenario (default 3)")
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"JSON results file (default {RESULTS})")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--scenarios", nargs="+", choices=list(SCENARIOS), default=list(SCENARIOS))
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    fastllm_llm(), hf_model()  # load both before timing anything
    results = side_by_side(args.rounds, args.scenarios)
    import transformers

    environment = {
        "date": datetime.date.today().isoformat(),
        "device": f"cpu ({platform.processor() or platform.machine()})",
        "threads": torch.get_num_threads(),
        "dtype": "float32",
        "fastllm_backend": fastllm_llm().engine.model.backend.name,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
    print(f"generate, CPU float32, {torch.get_num_threads()} threads, median of {args.rounds} rounds")
    print(f"{'scenario':10s} {'fastllm tok/s':>14s} {'HF tok/s':>10s} {'speedup':>8s} {'same greedy':>12s}")
    for name, r in results.items():
        rates = r["tokens_per_second"]
        print(
            f"{name:10s} {rates['fastllm']:14.1f} {rates['hf']:10.1f} {r['speedup_vs_hf']:7.2f}x "
            f"{r['identical_greedy_outputs']:>12s}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"environment": environment, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()

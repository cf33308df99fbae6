"""Where a CPU decode step's time goes: the decoder stack, the lm_head, and everything else.

    python -m benchmarks.profile_cpu_step [--batch 1 16] [--steps 128] [--threads 2]

Greedy decode on the default model (backend "cpu", prefix caching off) of `batch` random-token
prompts of 16, 32, ... tokens. Wall-clock timers wrap `LLMEngine.step`, the fused decoder stack (all layers of a pure-decode step in one C++ call) and `compute_logits`
(the lm_head); a prefill-only run of the same prompts is subtracted, so the figures are per
decode step. Prints one line per batch size and run.
"""

from __future__ import annotations

import argparse
import functools
import time
from collections.abc import Callable
from typing import Any

import torch

import fastllm
from fastllm import LLM, SamplingParams
from fastllm.engine.llm_engine import LLMEngine
from fastllm.model.cpu_decode import FusedDecode
from fastllm.model.llama import LlamaForCausalLM

PARTS = ("step", "stack", "lm_head")


def _timed(owner: type, name: str, part: str, totals: dict[str, float]) -> Callable[[], None]:
    """Wrap owner.name so its wall time adds up in totals[part]; returns the undo."""
    original = getattr(owner, name)

    @functools.wraps(original)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            totals[part] += time.perf_counter() - start

    setattr(owner, name, wrapper)
    return lambda: setattr(owner, name, original)


def _run(llm: LLM, prompts: list[list[int]], new_tokens: int, totals: dict[str, float]) -> dict[str, float]:
    for part in PARTS:
        totals[part] = 0.0
    llm.generate(prompts, SamplingParams(temperature=0, max_tokens=new_tokens, ignore_eos=True), use_tqdm=False)
    return dict(totals)


def profile(batch: int, steps: int, rounds: int) -> list[dict[str, float]]:
    """Per-decode-step milliseconds of each part, one dict per round."""
    totals = dict.fromkeys(PARTS, 0.0)
    undo = [
        _timed(LLMEngine, "step", "step", totals),
        _timed(FusedDecode, "__call__", "stack", totals),
        _timed(LlamaForCausalLM, "compute_logits", "lm_head", totals),
    ]
    try:
        llm = LLM(fastllm.default_model_path(), device="cpu", enable_prefix_caching=False)
        generator = torch.Generator().manual_seed(0)
        prompts = [torch.randint(100, 40000, (16 * (k + 1),), generator=generator).tolist() for k in range(batch)]
        _run(llm, prompts, 4, totals)  # warm-up
        results = []
        for _ in range(rounds):
            prefill = _run(llm, prompts, 1, totals)
            full = _run(llm, prompts, steps + 1, totals)
            per_step = {part: (full[part] - prefill[part]) / steps * 1e3 for part in PARTS}
            per_step["other"] = per_step["step"] - per_step["stack"] - per_step["lm_head"]
            results.append(per_step)
        return results
    finally:
        for restore in undo:
            restore()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--steps", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    for batch in args.batch:
        for row in profile(batch, args.steps, args.rounds):
            print(f"batch {batch}: step {row['step']:.2f} ms = decoder stack {row['stack']:.2f} + lm_head "
                  f"{row['lm_head']:.2f} + everything else {row['other']:.2f}")


if __name__ == "__main__":
    main()

"""One engine in its own process, for benchmarks.bench_cpu: load a GGUF file, run the workloads, report JSON.

    python -m benchmarks.cpu_engines SPEC.json RESULT.json

SPEC holds the engine ("fastllm", "fastllm-torch", "hf", "llama.cpp" or "baseline"), the model
file, the thread count and the workloads (see bench_cpu.workloads). A fresh process per engine
keeps one engine's memory and thread pools out of another's numbers, and lets the parent read a
clean peak RSS. Nothing heavy is imported at module level: the llama.cpp process never loads
torch, and the baseline process loads only `import torch, fastllm`.

Every engine runs greedy, ignoring EOS, on the same prompt token ids (llama.cpp tokenizes text
prompts itself, from the same file, and reports its own count):
    decode:  batch 1; decode rate = (new tokens - 1) / (time from the first token to the last)
    prefill: time to the first token of a long prompt; rate = prompt tokens / that time
    batch16: 16 prompts at once; rate = generated tokens / wall time of the call
"""

from __future__ import annotations

import importlib.metadata
import json
import sys
import time
from pathlib import Path
from typing import Any

ENGINES = ("fastllm", "fastllm-torch", "hf", "llama.cpp")


def memory_mb() -> dict[str, float]:
    """This process's resident memory now (VmRSS; of it, RssFile: mapped file pages such as an
    mmapped model) and at its peak so far (VmHWM), in MB."""
    kilobytes = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssFile"):
            kilobytes[key] = int(rest.split()[0])
    megabytes = {key: round(value * 1024 / 1e6, 1) for key, value in kilobytes.items()}
    return {"rss_mb": megabytes["VmRSS"], "rss_file_mb": megabytes["RssFile"], "peak_rss_mb": megabytes["VmHWM"]}


class FastllmEngine:
    """fastllm's LLM on the file, CPU, float32; backend "auto" (the default) or "torch"."""

    def __init__(self, path: str, threads: int, backend: str) -> None:
        import torch

        from fastllm import LLM

        torch.set_num_threads(threads)
        self.llm = LLM(model=path, device="cpu", backend=backend)

    def generate(self, prompts: list[list[int]], new_tokens: int) -> tuple[list[list[int]], float, float, float]:
        """Token ids per prompt, and the (start, first token, end) times of the call (perf_counter)."""
        from fastllm import SamplingParams

        params = SamplingParams(temperature=0, max_tokens=new_tokens, ignore_eos=True)
        start = time.perf_counter()
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        end = time.perf_counter()
        first = min(o.metrics.first_token_time for o in outputs)
        return [o.token_ids for o in outputs], start, first, end

    def versions(self) -> dict[str, Any]:
        import fastllm

        backend = self.llm.engine.model.backend.name
        return {"torch": _version("torch"), "fastllm_package": fastllm.__file__, "fastllm_backend": backend}


class HFEngine:
    """transformers' AutoModelForCausalLM from the GGUF file (dequantized), float32."""

    def __init__(self, path: str, threads: int) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        torch.set_num_threads(threads)
        location = Path(path)
        self.model = AutoModelForCausalLM.from_pretrained(
            location.parent, gguf_file=location.name, dtype=torch.float32
        ).eval()
        # Generation must run past EOS like the other engines: a GenerationConfig's eos_token_id=None
        # alone is filled in from the model's own generation config.
        self.model.generation_config.eos_token_id = None
        self.rope_freqs_applied = self._apply_rope_freqs(path)

    def _apply_rope_freqs(self, path: str) -> bool:
        """transformers ignores a GGUF file's rope_freqs tensor (how llama.cpp stores llama3 rope
        scaling); divide its frequencies by them as llama.cpp and fastllm do, so all run one model."""
        import numpy as np
        import torch

        from fastllm.loader.gguf_file import GGUFFile

        gguf = GGUFFile(path)
        if "rope_freqs.weight" not in gguf.tensors:
            return False
        factors = torch.from_numpy(gguf.raw("rope_freqs.weight").view(np.float32).copy())
        rotary = self.model.model.rotary_emb
        rotary.inv_freq = rotary.inv_freq / factors
        rotary.original_inv_freq = rotary.inv_freq.clone()
        return True

    def generate(self, prompts: list[list[int]], new_tokens: int) -> tuple[list[list[int]], float, float, float]:
        import torch
        from transformers import GenerationConfig, LogitsProcessorList

        if len({len(p) for p in prompts}) != 1:
            raise ValueError("HFEngine batches prompts of one length only (no padding)")
        clock = _FirstLogitsClock()
        config = GenerationConfig(do_sample=False, max_new_tokens=new_tokens, eos_token_id=None, pad_token_id=0)
        input_ids = torch.tensor(prompts)
        with torch.inference_mode():
            start = time.perf_counter()
            out = self.model.generate(input_ids, attention_mask=torch.ones_like(input_ids), generation_config=config,
                                      logits_processor=LogitsProcessorList([clock]))
            end = time.perf_counter()
        return out[:, input_ids.shape[1]:].tolist(), start, clock.time, end

    def versions(self) -> dict[str, Any]:
        return {"torch": _version("torch"), "transformers": _version("transformers"),
                "rope_freqs_applied": self.rope_freqs_applied}


class _FirstLogitsClock:
    """A logits processor that notes when the first logits (the end of the prefill) are ready."""

    def __init__(self) -> None:
        self.time: float | None = None

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        if self.time is None:
            self.time = time.perf_counter()
        return scores


class LlamaCppEngine:
    """llama.cpp through llama-cpp-python: n_threads for decode and batches, n_batch 512, greedy."""

    def __init__(self, path: str, threads: int, context: int) -> None:
        from llama_cpp import Llama

        self.llm = Llama(model_path=path, n_threads=threads, n_threads_batch=threads, n_batch=512, n_ctx=context,
                         verbose=False)

    def tokenize(self, text: str) -> list[int]:
        # The prompt text already holds the chat template's special tokens (and BOS if the model wants it).
        return self.llm.tokenize(text.encode(), add_bos=False, special=True)

    def generate(self, prompts: list[list[int]], new_tokens: int) -> tuple[list[list[int]], float, float, float]:
        if len(prompts) != 1:
            raise ValueError("LlamaCppEngine runs batch 1 only")
        self.llm.reset()  # no prefix reuse from the previous call
        tokens: list[int] = []
        start = time.perf_counter()
        first = start
        generator = self.llm.generate(prompts[0], top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0)
        for token in generator:  # llama-cpp-python's generate never stops at EOS on its own
            tokens.append(int(token))
            if len(tokens) == 1:
                first = time.perf_counter()
            if len(tokens) == new_tokens:
                break
        generator.close()
        return [tokens], start, first, time.perf_counter()

    def versions(self) -> dict[str, Any]:
        return {"llama_cpp_python": _version("llama_cpp_python")}


Engine = FastllmEngine | HFEngine | LlamaCppEngine


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def load_engine(spec: dict[str, Any]) -> Engine:
    name, path, threads = spec["engine"], spec["model"], spec["threads"]
    if name == "fastllm":
        return FastllmEngine(path, threads, "auto")
    if name == "fastllm-torch":
        return FastllmEngine(path, threads, "torch")
    if name == "hf":
        return HFEngine(path, threads)
    if name == "llama.cpp":
        return LlamaCppEngine(path, threads, spec["context"])
    raise ValueError(f"engine must be one of {ENGINES}, got {name!r}")


def _prompt_ids(engine: Engine, prompt: dict[str, Any]) -> list[int]:
    """A prompt's token ids for this engine: llama.cpp tokenizes the text itself when there is one."""
    if isinstance(engine, LlamaCppEngine) and prompt.get("text") is not None:
        return engine.tokenize(prompt["text"])
    return list(prompt["ids"])


def run_decode(engine: Engine, workload: dict[str, Any]) -> dict[str, Any]:
    prompt = _prompt_ids(engine, workload["prompt"])
    n = workload["new_tokens"]
    (tokens,), start, first, end = engine.generate([prompt], n)
    if len(tokens) != n:
        raise RuntimeError(f"{type(engine).__name__} made {len(tokens)} tokens, asked {n}")
    return {"prompt_tokens": len(prompt), "new_tokens": n, "ttft_s": first - start,
            "decode_tok_s": (n - 1) / (end - first), "prompt_ids": prompt, "token_ids": tokens}


def run_prefill(engine: Engine, workload: dict[str, Any]) -> dict[str, Any]:
    prompt = _prompt_ids(engine, workload["prompt"])
    _, start, first, _ = engine.generate([prompt], 1)
    return {"prompt_tokens": len(prompt), "ttft_s": first - start, "prefill_tok_s": len(prompt) / (first - start)}


def run_batch(engine: Engine, workload: dict[str, Any]) -> dict[str, Any]:
    prompts = [list(p) for p in workload["prompts"]]
    n = workload["new_tokens"]
    outputs, start, _, end = engine.generate(prompts, n)
    if any(len(tokens) != n for tokens in outputs):
        raise RuntimeError(f"{type(engine).__name__} made {[len(t) for t in outputs]} tokens, asked {n} each")
    return {"prompts": len(prompts), "prompt_tokens": sum(map(len, prompts)), "new_tokens_per_prompt": n,
            "wall_s": end - start, "throughput_tok_s": len(prompts) * n / (end - start)}


def run(spec: dict[str, Any]) -> dict[str, Any]:
    """Load the engine, warm it up, run the workloads in `spec`; memory after each phase."""
    if spec["engine"] == "baseline":  # what importing the libraries costs before any model
        import torch  # noqa: F401

        import fastllm  # noqa: F401

        return {"after_import": memory_mb()}
    start = time.perf_counter()
    engine = load_engine(spec)
    result: dict[str, Any] = {"load_s": time.perf_counter() - start, "after_load": memory_mb()}
    warmup = spec["workloads"]["warmup"]
    engine.generate([warmup["prompt"]["ids"]], warmup["new_tokens"])  # allocations, JIT, first-touch pages
    for name, runner in (("decode", run_decode), ("prefill", run_prefill)):
        if name in spec["workloads"]:
            result[name] = runner(engine, spec["workloads"][name])
    result["after_batch1"] = memory_mb()
    if "batch16" in spec["workloads"] and not isinstance(engine, LlamaCppEngine):
        result["batch16"] = run_batch(engine, spec["workloads"]["batch16"])
    result["at_end"] = memory_mb()
    result["versions"] = engine.versions()
    return result


def main(argv: list[str]) -> None:
    if len(argv) != 2:
        raise SystemExit("usage: python -m benchmarks.cpu_engines SPEC.json RESULT.json")
    spec = json.loads(Path(argv[0]).read_text())
    Path(argv[1]).write_text(json.dumps(run(spec)))


if __name__ == "__main__":
    main(sys.argv[1:])

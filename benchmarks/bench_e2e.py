"""End-to-end generation: fastllm (triton and torch backends) against HF transformers, random weights.

The workload is the shape of nano-vllm's and vLLM's offline throughput benchmarks: 256 requests
whose prompt and output lengths are drawn uniformly from [100, 1024], random token ids,
`ignore_eos` (every request makes exactly its output length), greedy decoding. Weights are
random (HF's initialization: N(0, 0.02) matrices, unit norms, so activations stay in range);
speed does not depend on their values and nothing is downloaded. Two shapes: SmolLM2-135M and
a Llama-3.2-1B-like shape. Side by side in one process, one engine alive at a time:

    fastllm-triton  LLM(backend="triton"): Triton kernels, CUDA-graph decode (CUDA only)
    hf              transformers' LlamaForCausalLM.generate over static batches (left padded;
                    a batch runs until its longest request is done), on the same weights
    fastllm-torch   LLM(backend="torch"): the plain PyTorch reference ops, eager

Per engine: output and total (prompt + output) tokens/s over the run's wall time, time to first
token and time per output token (mean, median, p99 over requests); output tokens/s against the
batch size (B requests of fixed lengths); batch-1 decode step time, set against its floor:
(weight bytes + KV bytes read per step) / the measured copy bandwidth.

With a time budget (`--budget-s`, or `run(deadline=...)` as the GPU check does) the engines run
in the order above, each only with ENGINE_MIN_S left, and each part stops when time is up: HF's
generate stops at the deadline (its tokens so far are counted, and the run is marked
`stopped_early`), and fastllm-torch runs on the first 16, then 64, then all requests while the
time left allows, compared with fastllm-triton on the same requests.

On a CPU everything is scaled down (tiny shapes, a few short requests) and labelled so, the
triton backend is skipped (the Triton interpreter is far too slow), and floors are not reported.

    python -m benchmarks.bench_e2e [--out FILE] [--shapes NAME ...] [--engines NAME ...] [--hf-batch-size N]
                                   [--budget-s SECONDS]
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from fastllm import LLM, SamplingParams
from fastllm.engine.model_runner import kv_cache_bytes_per_block
from fastllm.model import LlamaForCausalLM, ModelConfig, get_backend
from fastllm.model.weights import LM_HEAD, llama_weight_shapes

ON_GPU = torch.cuda.is_available()
DEVICE = torch.device("cuda" if ON_GPU else "cpu")
ENGINES = ("fastllm-triton", "hf", "fastllm-torch")  # with a time budget, the most wanted first
# With a time budget: fastllm-torch runs on the first 16, 64, ... requests while time allows, and
# fastllm-triton on the same ones to compare with (the full workload is the last rung).
REQUEST_LADDER = (16, 64)
# With a time budget, an engine starts (and fastllm-torch takes its first rung) only with this many
# seconds left: a build, a warm-up and ~1000 decode steps of the longest request take that long.
ENGINE_MIN_S = 30.0
INIT_STD = 0.02  # HF's initializer_range

SHAPES = {
    "smollm2-135m": ModelConfig(
        vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
        num_key_value_heads=3, head_dim=64, max_position_embeddings=8192, rope_theta=100000.0,
        tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, name="smollm2-135m",
    ),
    "llama-3.2-1b": ModelConfig(
        vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
        num_key_value_heads=8, head_dim=64, max_position_embeddings=131072, rope_theta=500000.0,
        rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 8192},
        tie_word_embeddings=True, bos_token_id=128000, eos_token_id=128001, name="llama-3.2-1b",
    ),
}
# The same families shrunk for the CPU: GQA ratios and tied embeddings kept, sizes cut down.
TINY_SHAPES = {
    "smollm2-135m": replace(SHAPES["smollm2-135m"], vocab_size=512, hidden_size=48, intermediate_size=128,
                            num_hidden_layers=2, num_attention_heads=6, num_key_value_heads=2, head_dim=8,
                            max_position_embeddings=256, name="smollm2-135m (tiny)"),
    "llama-3.2-1b": replace(SHAPES["llama-3.2-1b"], vocab_size=1024, hidden_size=64, intermediate_size=256,
                            num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=2, head_dim=8,
                            max_position_embeddings=256, bos_token_id=1, eos_token_id=2, name="llama-3.2-1b (tiny)",
                            rope_scaling={**SHAPES["llama-3.2-1b"].rope_scaling, "original_max_position_embeddings": 64}),
}


@dataclass(frozen=True)
class Workload:
    """`num_requests` requests whose prompt and output lengths are uniform in [min_len, max_len]."""

    num_requests: int
    min_len: int
    max_len: int

    def requests(self, vocab_size: int, seed: int) -> list[tuple[list[int], int]]:
        """(prompt token ids, output length) per request."""
        generator = torch.Generator().manual_seed(seed)
        lengths = torch.randint(self.min_len, self.max_len + 1, (self.num_requests, 2), generator=generator).tolist()
        return [(_random_ids(vocab_size, p, generator), n) for p, n in lengths]


@dataclass(frozen=True)
class Settings:
    scaled_down: bool
    dtype: torch.dtype
    workload: Workload
    sweep_batch_sizes: tuple[int, ...]
    sweep_lengths: tuple[int, int]  # (prompt, output) of every request in a batch-size sweep point
    batch1_lengths: tuple[int, int]  # (prompt, output) of the batch-1 decode latency run
    hf_batch_size: int

    @property
    def max_model_len(self) -> int:
        return max(2 * self.workload.max_len, sum(self.sweep_lengths), sum(self.batch1_lengths))

    @property
    def max_num_seqs(self) -> int:
        return max(self.workload.num_requests, *self.sweep_batch_sizes)


GPU_SETTINGS = Settings(
    scaled_down=False, dtype=torch.bfloat16, workload=Workload(256, 100, 1024),
    sweep_batch_sizes=(1, 4, 16, 64, 256), sweep_lengths=(128, 128), batch1_lengths=(512, 128), hf_batch_size=256,
)
CPU_SETTINGS = Settings(
    scaled_down=True, dtype=torch.float32, workload=Workload(6, 4, 20),
    sweep_batch_sizes=(1, 2, 4), sweep_lengths=(8, 6), batch1_lengths=(12, 6), hf_batch_size=6,
)


def _random_ids(vocab_size: int, length: int, generator: torch.Generator) -> list[int]:
    return torch.randint(0, vocab_size, (length,), generator=generator).tolist()


# -- models ------------------------------------------------------------------------------------


def random_weights(config: ModelConfig, *, seed: int, dtype: torch.dtype, device: torch.device) -> dict[str, torch.Tensor]:
    """HF-named random weights for `config`: N(0, 0.02) matrices, unit norms (HF's initialization)."""
    generator = torch.Generator(device).manual_seed(seed)
    weights = {}
    for name, shape in llama_weight_shapes(config).items():
        if name.endswith("norm.weight"):
            weights[name] = torch.ones(shape, dtype=dtype, device=device)
        else:
            weights[name] = (torch.randn(shape, generator=generator, device=device) * INIT_STD).to(dtype)
    return weights


def fastllm_llm(config: ModelConfig, weights: dict[str, torch.Tensor], backend: str, settings: Settings) -> LLM:
    model = LlamaForCausalLM(config, get_backend(backend), dtype=settings.dtype, device=DEVICE)
    model.load_weights(weights)
    return LLM.from_model(model, max_num_seqs=settings.max_num_seqs, max_model_len=settings.max_model_len)


def hf_model(config: ModelConfig, weights: dict[str, torch.Tensor], dtype: torch.dtype) -> torch.nn.Module:
    """transformers' LlamaForCausalLM of the same shape, holding the same weights."""
    from transformers import LlamaConfig, LlamaForCausalLM as HFLlama

    hf_config = LlamaConfig(
        vocab_size=config.vocab_size, hidden_size=config.hidden_size, intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_hidden_layers, num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_key_value_heads, head_dim=config.head_dim,
        max_position_embeddings=config.max_position_embeddings, rms_norm_eps=config.rms_norm_eps,
        rope_theta=config.rope_theta, rope_scaling=config.rope_scaling, tie_word_embeddings=config.tie_word_embeddings,
        bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id,
    )
    with torch.device(DEVICE):
        model = HFLlama(hf_config).to(dtype)
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if unexpected or set(missing) - ({LM_HEAD} if config.tie_word_embeddings else set()):
        raise RuntimeError(f"HF model does not take the weights: missing {missing}, unexpected {unexpected}")
    return model.eval()


def weight_bytes_per_step(config: ModelConfig, dtype: torch.dtype) -> int:
    """Weight bytes one decode step reads: every matrix once (the embedding lookup reads one row,
    except that with tied embeddings the table is read whole as the LM head)."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    shapes = llama_weight_shapes(config)
    if not config.tie_word_embeddings:
        shapes.pop("model.embed_tokens.weight")
    return sum(torch.Size(shape).numel() for shape in shapes.values()) * itemsize


# -- runs --------------------------------------------------------------------------------------


def _distribution(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    ordered = sorted(values)
    return {
        "mean": statistics.fmean(ordered),
        "median": statistics.median(ordered),
        "p99": ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))],
    }


def _report(requests: list[tuple[list[int], int]], wall: float, ttft: list[float], tpot: list[float]) -> dict[str, Any]:
    prompt_tokens = sum(len(p) for p, _ in requests)
    output_tokens = sum(n for _, n in requests)
    return {
        "requests": len(requests),
        "prompt_tokens": prompt_tokens,
        "output_tokens": output_tokens,
        "wall_s": wall,
        "output_tokens_per_s": output_tokens / wall,
        "total_tokens_per_s": (prompt_tokens + output_tokens) / wall,
        "ttft_s": _distribution(ttft),
        "tpot_s": _distribution(tpot),
    }


def _synchronize() -> None:
    if ON_GPU:
        torch.cuda.synchronize()


class FastllmRunner:
    def __init__(self, llm: LLM) -> None:
        self.llm = llm

    def run(self, requests: list[tuple[list[int], int]]) -> dict[str, Any]:
        """The report also names the kernel variants Triton compiled during the run (none, when warm)."""
        from fastllm.kernels._runtime import compiled_variants

        params = [SamplingParams(temperature=0, max_tokens=n, ignore_eos=True) for _, n in requests]
        compiled_before = compiled_variants()
        _synchronize()
        start = time.perf_counter()
        outputs = self.llm.generate([p for p, _ in requests], params, use_tqdm=False)
        wall = time.perf_counter() - start
        compiled = {k: n - compiled_before.get(k, 0) for k, n in compiled_variants().items()
                    if n != compiled_before.get(k, 0)}
        for output, (_, n) in zip(outputs, requests):
            if len(output.token_ids) != n:
                raise RuntimeError(f"fastllm made {len(output.token_ids)} tokens for a request of {n}")
        metrics = [o.metrics for o in outputs]
        ttft = [m.first_token_time - m.arrival_time for m in metrics]
        tpot = [
            (m.finished_time - m.first_token_time) / (len(o.token_ids) - 1)
            for m, o in zip(metrics, outputs) if len(o.token_ids) > 1
        ]
        return {**_report(requests, wall, ttft, tpot), "kernels_compiled_during_run": compiled}


class HFRunner:
    """transformers generate over static batches of `batch_size` requests, in request order.

    With a `deadline` (time.perf_counter seconds) generation stops when it passes: the report then
    counts the tokens made so far (at most each request's length) and says where it stopped.
    """

    def __init__(self, model: torch.nn.Module, batch_size: int, deadline: float | None = None) -> None:
        self.model = model
        self.batch_size = batch_size
        self.deadline = deadline

    @torch.inference_mode()
    def run(self, requests: list[tuple[list[int], int]]) -> dict[str, Any]:
        from transformers import GenerationConfig, LogitsProcessorList

        size = self.batch_size
        done: list[tuple[list[int], int]] = []  # (prompt, tokens made) of the requests run
        ttft: list[float] = []
        tpot: list[float] = []
        stopped_early = None
        _synchronize()
        start = time.perf_counter()
        for first in range(0, len(requests), size):
            batch = requests[first : first + size]
            width = max(len(p) for p, _ in batch)
            steps = max(n for _, n in batch)
            input_ids = torch.tensor([[0] * (width - len(p)) + p for p, _ in batch], device=DEVICE)  # left padding
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p, _ in batch], device=DEVICE)
            first_token = _FirstTokenClock()
            time_left = None if self.deadline is None else max(0.0, self.deadline - time.perf_counter())
            config = GenerationConfig(do_sample=False, max_new_tokens=steps, eos_token_id=None, pad_token_id=0,
                                      max_time=time_left)
            out = self.model.generate(
                input_ids, attention_mask=mask, generation_config=config,
                logits_processor=LogitsProcessorList([first_token]),
            )
            _synchronize()
            end = time.perf_counter()
            made = out.shape[1] - width
            if made != steps and time_left is None:
                raise RuntimeError(f"HF made {made} tokens for a batch asking {steps}")
            done += [(p, min(n, made)) for p, n in batch]
            ttft += [first_token.time - start] * len(batch)
            # Every step of the batch makes one token per request: the step time is each one's TPOT.
            tpot += [(end - first_token.time) / (made - 1)] * len(batch) if made > 1 else []
            if made != steps:
                stopped_early = {"reason": "time budget", "batch": first // size, "steps": made, "of_steps": steps}
                break
        report = _report(done, time.perf_counter() - start, ttft, tpot)
        if stopped_early is not None:
            report["stopped_early"] = stopped_early
        return report


class _FirstTokenClock:
    """A logits processor that notes when the first logits (end of the prefill) are ready."""

    def __init__(self) -> None:
        self.time: float | None = None

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.time is None:
            _synchronize()
            self.time = time.perf_counter()
        return scores


def _free_memory() -> None:
    gc.collect()
    if ON_GPU:
        torch.cuda.empty_cache()


Runner = FastllmRunner | HFRunner


def engine_runner(
    engine: str, config: ModelConfig, weights: dict[str, torch.Tensor], settings: Settings, deadline: float | None = None
) -> Runner:
    if engine == "hf":
        return HFRunner(hf_model(config, weights, settings.dtype), settings.hf_batch_size, deadline)
    return FastllmRunner(fastllm_llm(config, weights, engine.removeprefix("fastllm-"), settings))


def skip_reason(engine: str) -> str | None:
    if engine == "fastllm-triton" and not ON_GPU:
        return "no CUDA GPU: the Triton interpreter is far too slow for an end-to-end run"
    return None


def _fixed_requests(count: int, lengths: tuple[int, int], vocab_size: int, seed: int) -> list[tuple[list[int], int]]:
    generator = torch.Generator().manual_seed(seed)
    return [(_random_ids(vocab_size, lengths[0], generator), lengths[1]) for _ in range(count)]


def _at_batch_size(runner: Runner, size: int) -> Runner:
    """HF batches statically: a sweep point of B requests is one batch of B. fastllm batches all
    the requests it is given continuously (max_num_seqs covers the largest point)."""
    return HFRunner(runner.model, size, runner.deadline) if isinstance(runner, HFRunner) else runner


def warm_up_requests(budget: int, max_running: int, max_len: int, vocab_size: int) -> list[tuple[list[int], int]]:
    """Warm-up requests one of whose prefills the scheduler must chunk: prompts of a length that
    does not divide the step's token budget, one more than a step holds (when that many may run
    at once; else two, which chunk nothing)."""
    length = max_len if budget % max_len else max_len - 1
    count = budget // length + 1
    return _fixed_requests(count if count <= max_running else 2, (length, 4), vocab_size, seed=99)


def warm_up(runner: Runner, settings: Settings, vocab_size: int) -> None:
    """Compile and allocate before timing.

    fastllm takes every path of the workload here: contiguous prefills, a prefill chunked by the
    step's token budget and a prefill from a prefix-cache hit (a warm-up prompt again), whose keys
    are read through the block table (the paged variant of the prefill kernel), and decode
    steps. The prefix hit alone reaches the paged variant whatever the budget.
    """
    if isinstance(runner, HFRunner):
        runner.run(_fixed_requests(2, (settings.workload.max_len, 4), vocab_size, seed=99))
        return
    scheduler = runner.llm.engine.scheduler
    requests = warm_up_requests(scheduler.max_num_batched_tokens, scheduler.max_running, settings.workload.max_len,
                                vocab_size)
    runner.run(requests)
    runner.run(requests[:1])


def _time_left(deadline: float | None) -> float:
    return float("inf") if deadline is None else deadline - time.perf_counter()


def _workloads(engine: str, runner: Runner, requests: list[tuple[list[int], int]],
               deadline: float | None) -> dict[str, Any]:
    """The workload's runs: all requests, and with a deadline its first-n rungs (fastllm only).

    fastllm-torch climbs the ladder while the time left holds the next rung at the last rung's
    rate of requests per second (continuous batching makes larger rungs cheaper per request, so
    this errs on the safe side; the first rung needs ENGINE_MIN_S); fastllm-triton runs every
    rung, to be compared with.
    """
    result: dict[str, Any] = {}
    if deadline is None or engine == "hf":
        result["workload"] = runner.run(requests)
        return result
    subsets: dict[str, Any] = {}
    seconds_per_request = 0.0
    for count in (*REQUEST_LADDER, len(requests)):
        count = min(count, len(requests))
        predicted = count * seconds_per_request if seconds_per_request else ENGINE_MIN_S
        if engine == "fastllm-torch" and predicted > _time_left(deadline):
            result["stopped_early"] = {"reason": "time budget", "ran_requests": max(map(int, subsets), default=0),
                                       "of_requests": len(requests)}
            break
        report = runner.run(requests[:count])
        seconds_per_request = report["wall_s"] / count
        if count == len(requests):
            result["workload"] = report
            break
        subsets[str(count)] = report
    result["subsets"] = subsets
    return result


def run_engine(
    engine: str, config: ModelConfig, weights: dict[str, torch.Tensor], settings: Settings,
    deadline: float | None = None,
) -> dict[str, Any]:
    """The workload, the batch-1 run and the batch-size sweep on one engine (built, run, freed).

    With a deadline, the batch-1 run and each sweep point run only while time is left.
    """
    runner = None
    try:
        runner = engine_runner(engine, config, weights, settings, deadline)
        warm_up(runner, settings, config.vocab_size)
        result = _workloads(engine, runner, settings.workload.requests(config.vocab_size, seed=0), deadline)
        if _time_left(deadline) > 0:
            batch1 = runner.run(_fixed_requests(1, settings.batch1_lengths, config.vocab_size, seed=1000))
            if batch1["tpot_s"] is not None:  # None: HF stopped at the deadline after one token
                result["batch1_decode_step_s"] = batch1["tpot_s"]["median"]
        sweep = {}
        for size in settings.sweep_batch_sizes:
            if _time_left(deadline) <= 0:
                break
            requests = _fixed_requests(size, settings.sweep_lengths, config.vocab_size, seed=size)
            sweep[str(size)] = _at_batch_size(runner, size).run(requests)["output_tokens_per_s"]
        result["output_tokens_per_s_by_batch_size"] = sweep
        return result
    except torch.cuda.OutOfMemoryError as exc:  # a baseline that cannot hold the workload is a result, not a crash
        return {"skipped": f"out of GPU memory: {exc}".splitlines()[0]}
    finally:
        del runner
        _free_memory()


def batch1_floor(config: ModelConfig, settings: Settings, copy_bytes_per_s: float) -> dict[str, Any]:
    """Least time of a batch-1 decode step: weight plus KV bytes (at the run's mean context) over copy bandwidth."""
    prompt, output = settings.batch1_lengths
    context = prompt + (output - 1) / 2
    weight = weight_bytes_per_step(config, settings.dtype)
    kv = kv_cache_bytes_per_block(config, 1, settings.dtype) * context
    return {"weight_bytes": weight, "kv_bytes": kv, "mean_context": context, "floor_s": (weight + kv) / copy_bytes_per_s}


def _ratio(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any] | None:
    """a's output throughput over b's, on the full workload if both ran it, else on the most
    requests both ran (the first n of the workload)."""
    def runs(result: dict[str, Any]) -> dict[int, dict[str, Any]]:
        found = {int(n): r for n, r in result.get("subsets", {}).items()}
        if "workload" in result:
            found[result["workload"]["requests"]] = result["workload"]
        return found

    common = runs(a).keys() & runs(b).keys()
    if not common:
        return None
    count = max(common)
    return {"ratio": runs(a)[count]["output_tokens_per_s"] / runs(b)[count]["output_tokens_per_s"], "requests": count}


def run_shape(
    name: str, config: ModelConfig, settings: Settings, copy_bytes_per_s: float | None, engine_names: list[str],
    deadline: float | None = None,
) -> dict[str, Any]:
    weights = random_weights(config, seed=0, dtype=settings.dtype, device=DEVICE)
    engines: dict[str, Any] = {}
    for engine in ENGINES:
        reason = skip_reason(engine) or (None if engine in engine_names else "not selected (--engines)")
        if reason is None and _time_left(deadline) < ENGINE_MIN_S:
            reason = f"time budget: less than {ENGINE_MIN_S:.0f} s left when it could start"
        engines[engine] = {"skipped": reason} if reason else run_engine(engine, config, weights, settings, deadline)
        print(f"  {name} {engine}: {_one_line(engines[engine])}", flush=True)
    del weights
    _free_memory()
    result: dict[str, Any] = {
        "config": {k: v for k, v in asdict(config).items() if k != "extra"},
        "engines": engines,
        "output_throughput_ratios": {
            "triton_vs_hf": _ratio(engines["fastllm-triton"], engines["hf"]),
            "triton_vs_torch": _ratio(engines["fastllm-triton"], engines["fastllm-torch"]),
            "torch_vs_hf": _ratio(engines["fastllm-torch"], engines["hf"]),
        },
    }
    if copy_bytes_per_s is None:
        result["batch1_floor"] = {"skipped": "CPU run: tiny shapes, no meaningful bandwidth floor"}
    else:
        floor = batch1_floor(config, settings, copy_bytes_per_s)
        step = engines["fastllm-triton"].get("batch1_decode_step_s")
        floor["fastllm_triton_step_s"] = step
        floor["fraction_of_floor"] = floor["floor_s"] / step if step else None
        result["batch1_floor"] = floor
    return result


def _one_line(result: dict[str, Any]) -> str:
    if "skipped" in result:
        return f"skipped ({result['skipped']})"
    parts = []
    if "workload" in result:
        w = result["workload"]
        parts.append(f"{w['output_tokens_per_s']:.1f} output tok/s, {w['total_tokens_per_s']:.1f} total tok/s, "
                     f"TTFT {w['ttft_s']['mean']:.3f} s, TPOT {1e3 * w['tpot_s']['mean']:.2f} ms"
                     + (" (stopped early: time budget)" if "stopped_early" in w else ""))
    for count, subset in result.get("subsets", {}).items():
        parts.append(f"first {count} requests {subset['output_tokens_per_s']:.1f} output tok/s")
    if "batch1_decode_step_s" in result:
        parts.append(f"batch-1 step {1e3 * result['batch1_decode_step_s']:.2f} ms")
    return ", ".join(parts) or "nothing ran within the time budget"


def run(
    copy_bytes_per_s: float | None,
    *,
    shapes: list[str] | None = None,
    engines: list[str] | None = None,
    settings: Settings | None = None,
    deadline: float | None = None,
) -> dict[str, Any]:
    """The end-to-end suite: full sizes on CUDA, scaled down on a CPU (copy_bytes_per_s None: no floors).

    deadline: time.perf_counter() seconds by which to stop (module docstring); None runs everything.
    """
    settings = settings or (GPU_SETTINGS if ON_GPU else CPU_SETTINGS)
    table = TINY_SHAPES if settings.scaled_down else SHAPES
    names = shapes or list(table)
    engines = engines or list(ENGINES)
    for kind, chosen, known in (("shapes", names, list(table)), ("engines", engines, list(ENGINES))):
        unknown = [n for n in chosen if n not in known]
        if unknown:
            raise ValueError(f"unknown {kind} {unknown}; choose from {known}")
    workload = settings.workload
    return {
        "scaled_down": settings.scaled_down,
        "note": ("SCALED DOWN for a CPU: tiny shapes and a few short requests; timings show the code runs, "
                 "not how fast it is") if settings.scaled_down else "full-size workload",
        "device": str(DEVICE),
        "dtype": str(settings.dtype).removeprefix("torch."),
        "workload": {**asdict(workload), "ignore_eos": True, "greedy": True, "random_token_ids": True},
        "sweep": {"batch_sizes": list(settings.sweep_batch_sizes), "prompt_len": settings.sweep_lengths[0],
                  "output_len": settings.sweep_lengths[1]},
        "batch1": {"prompt_len": settings.batch1_lengths[0], "output_len": settings.batch1_lengths[1]},
        "hf_static_batch_size": settings.hf_batch_size,
        "time_budget": deadline is not None,
        "shapes": {name: run_shape(name, table[name], settings, copy_bytes_per_s, engines, deadline) for name in names},
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="JSON file to write")
    parser.add_argument("--shapes", nargs="+", choices=list(SHAPES), help="model shapes to run (default all)")
    parser.add_argument("--engines", nargs="+", choices=ENGINES, help="engines to run (default all)")
    parser.add_argument("--hf-batch-size", type=int, help="HF static batch size (default: all requests in one batch)")
    parser.add_argument("--budget-s", type=float, help="stop each part when this many seconds have passed (default: none)")
    args = parser.parse_args(argv)
    if args.budget_s is not None and args.budget_s <= 0:
        parser.error(f"--budget-s must be > 0, got {args.budget_s}")
    deadline = None if args.budget_s is None else time.perf_counter() + args.budget_s
    settings = GPU_SETTINGS if ON_GPU else CPU_SETTINGS
    if args.hf_batch_size is not None:
        if args.hf_batch_size < 1:
            parser.error(f"--hf-batch-size must be >= 1, got {args.hf_batch_size}")
        settings = replace(settings, hf_batch_size=args.hf_batch_size)
    copy_bytes_per_s = measure_copy_bytes_per_s() if ON_GPU else None
    report = run(copy_bytes_per_s, shapes=args.shapes, engines=args.engines, settings=settings, deadline=deadline)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return report


def measure_copy_bytes_per_s() -> float:
    """Device-to-device copy bandwidth (read + write bytes per second), as the kernel suite measures it."""
    from benchmarks.bench_kernels import measure_ceilings

    return measure_ceilings()["copy_tb_per_s"] * 1e12


if __name__ == "__main__":
    main()

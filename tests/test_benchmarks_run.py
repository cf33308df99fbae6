"""`python -m benchmarks.run` end to end on the CPU (tiny shapes): the JSON with its summary, the
plots and the README table; and the end-to-end suite's floor arithmetic."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from benchmarks import bench_e2e, bench_kernels, run

SUMMARY_KEYS = {"prefill_attention", "paged_decode_attention", "softmax", "sampling", "generate"}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> tuple[dict, Path, Path]:
    out_dir = tmp_path_factory.mktemp("results")
    readme = out_dir / "README.md"
    readme.write_text(f"# Benchmarks\n\nintro\n\n{run.TABLE_START}\nold table\n{run.TABLE_END}\n\n## After\n\nkept\n")
    report = run.main(["--out-dir", str(out_dir), "--readme", str(readme),
                       "--tokenizer-megabytes", "0.05", "--tokenizer-rounds", "1"])
    return report, out_dir, readme


def test_runner_writes_the_results_file_with_its_summary(results) -> None:
    report, out_dir, _ = results
    [results_file] = out_dir.glob("*-cpu-*.json")
    assert json.loads(results_file.read_text()) == json.loads(json.dumps(report))
    assert report["timings_meaningful"] is False and run.passed(report)
    summary = report["summary"]
    assert summary.keys() == SUMMARY_KEYS
    for key, entry in summary.items():
        assert entry["fastllm"] > 0 and entry["baseline"] > 0, key
        assert entry["ratio"] == pytest.approx(
            entry["fastllm"] / entry["baseline"] if key == "generate" else entry["baseline"] / entry["fastllm"]
        )
        assert entry["fraction_of_floor"] is None and entry["reason"], key  # no floor on a CPU
    assert summary["generate"]["engine"] == "fastllm-torch"  # the triton engine is skipped on a CPU


def test_runner_covers_every_suite(results) -> None:
    report, _, _ = results
    assert all(r["check"]["passed"] for r in report["kernels"]["results"])
    assert {s["name"] for s in report["kernels"]["sweeps"]} == SUMMARY_KEYS - {"generate"}
    e2e = report["e2e"]
    assert e2e["scaled_down"] and "SCALED DOWN" in e2e["note"]
    for shape in e2e["shapes"].values():
        engines = shape["engines"]
        assert "Triton interpreter" in engines["fastllm-triton"]["skipped"]
        for name in ("fastllm-torch", "hf"):
            workload = engines[name]["workload"]
            assert workload["output_tokens"] == sum(n for _, n in bench_e2e.CPU_SETTINGS.workload.requests(
                shape["config"]["vocab_size"], seed=0))
            assert workload["output_tokens_per_s"] > 0 and workload["ttft_s"]["mean"] > 0
            assert workload["tpot_s"]["median"] > 0 and engines[name]["batch1_decode_step_s"] > 0
            assert list(engines[name]["output_tokens_per_s_by_batch_size"]) == ["1", "2", "4"]
        assert "skipped" in shape["batch1_floor"]
    assert report["tokenizer"]["megabytes_per_s"]["fastllm"]["single"] > 0
    variants = report["kernels"]["variants"]
    assert variants["passed"] and not variants["not_run"]
    assert {(r["variant"], r["head_dim"]) for r in variants["results"]} == {
        (name, d) for name in bench_kernels.VARIANTS for d in (64, 128, 256)}
    assert "correctness" not in report  # only when asked for


def test_runner_draws_the_plots(results) -> None:
    report, out_dir, _ = results
    assert len(report["plots"]) == 2
    for name in report["plots"]:
        assert (out_dir / name).read_bytes().startswith(PNG_MAGIC)


def test_runner_replaces_only_its_readme_table(results) -> None:
    report, _, readme = results
    text = readme.read_text()
    assert "old table" not in text and "intro" in text and "## After\n\nkept" in text
    assert text.count(run.TABLE_START) == 1 and "| generate (" in text and "No GPU" in text
    run.update_readme(readme, "new table")
    assert readme.read_text().count(run.TABLE_START) == 1 and "new table" in readme.read_text()


def test_readme_without_markers_gets_a_results_section(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("# Benchmarks\n")
    run.update_readme(readme, "table")
    assert readme.read_text() == f"# Benchmarks\n\n## Latest results\n\n{run.TABLE_START}\ntable\n{run.TABLE_END}\n"


def test_summary_says_why_a_suite_is_missing() -> None:
    summary = run.summarize({})
    assert summary.keys() == SUMMARY_KEYS
    assert all(entry["fastllm"] is None and "not run" in entry["reason"] for entry in summary.values())


# -- floors --------------------------------------------------------------------------------------


def test_gpu_correctness_problems_are_recorded_not_raised(monkeypatch) -> None:
    """A missing C++ tokenizer or default model, or a crash, must not lose the other suites' results."""
    import sys

    import fastllm
    from benchmarks import gpu_correctness

    monkeypatch.setattr(run.bench_kernels, "ON_GPU", True)
    monkeypatch.setattr(gpu_correctness, "run", lambda: {"passed": True, "ran": True})
    assert run.run_correctness() == {"passed": True, "ran": True}

    def crash() -> dict:
        raise RuntimeError("triton exploded")

    monkeypatch.setattr(gpu_correctness, "run", crash)
    assert run.run_correctness() == {"error": "RuntimeError: triton exploded", "passed": False}

    def missing() -> str:
        raise FileNotFoundError("the default model is not installed")

    monkeypatch.setattr(fastllm, "default_model_path", missing)
    result = run.run_correctness()
    assert result["passed"] and "not installed" in result["skipped"]

    import benchmarks

    monkeypatch.delattr(benchmarks, "gpu_correctness")
    monkeypatch.setitem(sys.modules, "benchmarks.gpu_correctness", None)  # its import fails (no C++ tokenizer)
    result = run.run_correctness()
    assert result["passed"] and "gpu_correctness" in result["skipped"]


def test_each_suite_is_written_as_it_ends(tmp_path: Path, monkeypatch) -> None:
    """A run that dies in a later suite keeps the results file of the suites before it."""
    monkeypatch.setattr(run, "run_kernels", lambda ceilings: {"results": [], "sweeps": []})

    def crash(*args, **kwargs) -> dict:
        raise RuntimeError("killed midway")

    monkeypatch.setattr(run.bench_e2e, "run", crash)
    with pytest.raises(RuntimeError, match="killed midway"):
        run.main(["--suites", "e2e", "kernels", "--out-dir", str(tmp_path), "--readme", str(tmp_path / "R.md")])
    [results_file] = tmp_path.glob("*.json")
    written = json.loads(results_file.read_text())
    assert written["kernels"] == {"results": [], "sweeps": []} and "e2e" not in written
    assert written["summary"]["generate"]["reason"] == "the e2e suite was not run"


def test_correctness_runs_only_when_asked(tmp_path: Path) -> None:
    report = run.main(["--suites", "correctness", "--out-dir", str(tmp_path), "--readme", str(tmp_path / "R.md")])
    assert report["correctness"]["passed"] and "no CUDA GPU" in report["correctness"]["skipped"]
    assert report.keys().isdisjoint({"kernels", "e2e", "tokenizer"})


def test_rebuild_remakes_the_table_from_a_results_file(results, tmp_path: Path) -> None:
    report, out_dir, _ = results
    [results_file] = out_dir.glob("*-cpu-*.json")
    again = tmp_path / "README.md"
    run.main(["--rebuild", str(results_file), "--out-dir", str(tmp_path), "--readme", str(again)])
    assert run.markdown_table(report, results_file.name) in again.read_text()
    for not_results in (tmp_path / "missing.json", tmp_path):  # neither a file nor a gpu_check folder
        with pytest.raises(SystemExit):
            run.main(["--rebuild", str(not_results)])


# -- bench_e2e: warm-up, time budget ---------------------------------------------------------------


def test_warm_up_chunks_a_prefill_when_the_budget_allows() -> None:
    requests = bench_e2e.warm_up_requests(budget=4096, max_running=256, max_len=1024, vocab_size=100)
    length = len(requests[0][0])
    assert length == 1023 and (len(requests) - 1) * length < 4096 < len(requests) * length  # the last one is cut
    assert len(bench_e2e.warm_up_requests(budget=4096, max_running=3, max_len=20, vocab_size=100)) == 2


def test_warm_up_reaches_the_paged_prefill() -> None:
    """Before timing, fastllm must run every prefill variant: a chunked prefill and a prefix-cache
    hit both attend through the block table (the paged kernel variant)."""
    config = bench_e2e.TINY_SHAPES["smollm2-135m"]
    settings = dataclasses.replace(bench_e2e.CPU_SETTINGS, workload=bench_e2e.Workload(4, 12, 20))
    weights = bench_e2e.random_weights(config, seed=0, dtype=torch.float32, device=torch.device("cpu"))
    backend = bench_e2e.get_backend("torch")
    paged: list[bool] = []

    def spy(*args, **kwargs):
        paged.append(kwargs.get("block_table") is not None)
        return backend.varlen_attention(*args, **kwargs)

    model = bench_e2e.LlamaForCausalLM(config, dataclasses.replace(backend, varlen_attention=spy))
    model.load_weights(weights)
    llm = bench_e2e.LLM.from_model(model, max_num_seqs=8, max_model_len=64, max_num_batched_tokens=50)
    runner = bench_e2e.FastllmRunner(llm)
    bench_e2e.warm_up(runner, settings, config.vocab_size)
    assert False in paged and True in paged


class _FakeRunner:
    """Runs nothing: each run 'takes' `seconds_per_request` per request."""

    def __init__(self, seconds_per_request: float) -> None:
        self.seconds_per_request = seconds_per_request
        self.counts: list[int] = []

    def run(self, requests: list) -> dict:
        self.counts.append(len(requests))
        return {"requests": len(requests), "wall_s": self.seconds_per_request * len(requests),
                "output_tokens_per_s": 100.0 / self.seconds_per_request}


def test_torch_engine_climbs_the_request_ladder_while_time_allows() -> None:
    import time

    requests = [([1], 1)] * 256
    seconds = bench_e2e.ENGINE_MIN_S + 10
    slow = _FakeRunner(1.0)  # 16 requests 'take' 16 s: 64 would take 64 s, more than is left
    result = bench_e2e._workloads("fastllm-torch", slow, requests, time.perf_counter() + seconds)
    assert slow.counts == [16] and "workload" not in result and list(result["subsets"]) == ["16"]
    assert result["stopped_early"]["ran_requests"] == 16
    fast = _FakeRunner(0.001)
    result = bench_e2e._workloads("fastllm-torch", fast, requests, time.perf_counter() + seconds)
    assert fast.counts == [16, 64, 256] and result["workload"]["requests"] == 256
    late = _FakeRunner(0.001)  # too little time left for even the first rung
    result = bench_e2e._workloads("fastllm-torch", late, requests, time.perf_counter() + bench_e2e.ENGINE_MIN_S / 2)
    assert late.counts == [] and result["stopped_early"]["ran_requests"] == 0
    triton = _FakeRunner(1.0)  # every rung, to be compared with: it is the engine measured first
    assert bench_e2e._workloads("fastllm-triton", triton, requests, time.perf_counter() + 5) and triton.counts == [
        16, 64, 256]
    assert bench_e2e._workloads("hf", _FakeRunner(1.0), requests, None)["workload"]["requests"] == 256


def test_throughput_ratios_compare_the_same_requests() -> None:
    def runs(full: float | None, **subsets: float) -> dict:
        result = {"subsets": {n.removeprefix("n"): {"output_tokens_per_s": v} for n, v in subsets.items()}}
        if full is not None:
            result["workload"] = {"requests": 256, "output_tokens_per_s": full}
        return result

    assert bench_e2e._ratio(runs(1000.0, n16=200.0), runs(100.0)) == {"ratio": 10.0, "requests": 256}
    assert bench_e2e._ratio(runs(1000.0, n16=200.0, n64=600.0), runs(None, n16=20.0, n64=30.0)) == {
        "ratio": 20.0, "requests": 64}
    assert bench_e2e._ratio(runs(1000.0), {"skipped": "no"}) is None


def test_hf_stops_at_the_deadline_and_counts_what_it_made() -> None:
    import time

    config = bench_e2e.TINY_SHAPES["llama-3.2-1b"]
    weights = bench_e2e.random_weights(config, seed=0, dtype=torch.float32, device=torch.device("cpu"))
    model = bench_e2e.hf_model(config, weights, torch.float32)
    requests = [([5, 6, 7], 30), ([8, 9], 40)]
    report = bench_e2e.HFRunner(model, 1, deadline=time.perf_counter()).run(requests)
    assert report["stopped_early"]["batch"] == 0 and report["requests"] == 1  # the second batch never started
    assert report["output_tokens"] == report["stopped_early"]["steps"] < 30
    assert "stopped_early" not in bench_e2e.HFRunner(model, 2).run(requests)


def test_weight_bytes_per_step_count_each_matrix_once() -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = bench_e2e.SHAPES["smollm2-135m"]
    with torch.device("meta"):
        hf = LlamaForCausalLM(LlamaConfig(
            vocab_size=config.vocab_size, hidden_size=config.hidden_size, intermediate_size=config.intermediate_size,
            num_hidden_layers=config.num_hidden_layers, num_attention_heads=config.num_attention_heads,
            num_key_value_heads=config.num_key_value_heads, tie_word_embeddings=True,
        ))
    assert bench_e2e.weight_bytes_per_step(config, torch.bfloat16) == 2 * sum(p.numel() for p in hf.parameters())
    # Untied, the LM head is a table of its own and the embedding lookup reads one row: the same bytes.
    tied = bench_e2e.TINY_SHAPES["smollm2-135m"]
    untied = dataclasses.replace(tied, tie_word_embeddings=False)
    assert bench_e2e.weight_bytes_per_step(untied, torch.float32) == bench_e2e.weight_bytes_per_step(tied, torch.float32)


def test_batch1_floor_is_bytes_over_bandwidth() -> None:
    config = bench_e2e.SHAPES["llama-3.2-1b"]
    settings = bench_e2e.GPU_SETTINGS
    floor = bench_e2e.batch1_floor(config, settings, copy_bytes_per_s=2e12)
    prompt, output = settings.batch1_lengths
    kv_per_token = config.num_hidden_layers * 2 * config.num_key_value_heads * config.head_dim * 2  # bf16
    assert floor["kv_bytes"] == pytest.approx(kv_per_token * (prompt + (output - 1) / 2))
    assert floor["floor_s"] == pytest.approx((floor["weight_bytes"] + floor["kv_bytes"]) / 2e12)
    assert 2.4e9 < floor["weight_bytes"] < 2.5e9  # ~1.24B parameters in bf16


# -- bench_generate --------------------------------------------------------------------------------


def test_generate_benchmark_runs_fastllm_where_it_says(monkeypatch) -> None:
    """Its results are labelled CPU float32 beside HF on the CPU: fastllm must not move to a GPU."""
    from benchmarks import bench_generate

    options: dict = {}
    monkeypatch.setattr(bench_generate, "LLM", lambda **kwargs: options.update(kwargs))
    bench_generate.fastllm_llm.__wrapped__()
    assert (options["device"], options["dtype"]) == ("cpu", "float32")


def test_mixed_steps_workload_measures_the_running_requests_through_the_prefill(monkeypatch) -> None:
    """bench_mixed_steps on a tiny model: the running requests get a token in every step of the
    long prompt's prefill (decode first), and the gaps are measured across it."""
    from benchmarks import bench_mixed_steps as bench
    from fastllm import SamplingParams
    from tests.engine_testing import tiny_engine, tiny_model

    monkeypatch.setattr(bench, "RUNNING_PROMPT", 5)
    monkeypatch.setattr(bench, "RUNNING_TOKENS_BEFORE", 2)
    monkeypatch.setattr(bench, "LONG_PROMPT", 60)
    monkeypatch.setattr(bench, "RUNNING_MAX_TOKENS", 40)
    engine = tiny_engine(tiny_model(), max_num_batched_tokens=16)

    def add(prompt, max_tokens):
        return engine.add_request(prompt, SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True))

    def step():
        return [(out.request_id, len(out.outputs[0].delta_token_ids)) for out in engine.step()]

    result, request_ids = bench.interference(engine.model_config.vocab_size, add, step)
    assert result["running_tokens_during_prefill"] == [5] * 4  # 60 tokens in chunks of 12
    assert 0 < result["running_itl_during_prefill_s"]["median"] <= result["running_itl_during_prefill_s"]["max"]
    assert len(request_ids) == 5

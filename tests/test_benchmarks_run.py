"""`python -m benchmarks.run` end to end on the CPU (tiny shapes): the JSON with its summary, the
plots and the README table; and the end-to-end suite's floor arithmetic."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from benchmarks import bench_e2e, run

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
    assert "skipped" in report["correctness"]


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
    """On a GPU the checks run last: a missing default model or a crash must not lose the report."""
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

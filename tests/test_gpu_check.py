"""`python -m benchmarks.gpu_check` on the CPU (tiny sizes, the Triton interpreter), as a borrowed
GPU machine runs it: from the checkout, without the C++ extensions; its parts, their time budget,
and `benchmarks.run --rebuild` over what it wrote."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import gpu_check, run

REPO = Path(__file__).resolve().parents[1]
# Runs the check in a fresh interpreter where the named modules cannot be imported.
WITHOUT = """
import importlib.abc, runpy, sys
blocked = set(sys.argv[1].split(","))

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name in blocked:
            raise ImportError(f"{name} is not installed here")

sys.meta_path.insert(0, Block())
sys.argv = ["gpu_check", *sys.argv[2:]]
runpy.run_module("benchmarks.gpu_check", run_name="__main__")
"""
EXTENSIONS = "fastllm._tokenizer,fastllm._cpu_kernels"


def check_without(blocked: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", WITHOUT, blocked, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=600)


@pytest.fixture(scope="module")
def check_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("gpu_check")
    done = check_without(EXTENSIONS, "--out", str(out))
    # It ran to its end (the table comes last); each test below judges one part (a part that
    # failed makes the exit status 1).
    assert "| part | status |" in done.stdout, done.stdout[-3000:] + done.stderr[-3000:]
    (out / "exit_status").write_text(str(done.returncode))
    return out


def part(out: Path, name: str) -> dict:
    return json.loads((out / f"{name}.json").read_text())


def test_every_part_runs_without_the_cpp_extensions(check_dir: Path) -> None:
    env = json.loads((check_dir / "environment.json").read_text())
    assert all(env["modules"][m] is False for m in EXTENSIONS.split(","))
    assert env["timings_meaningful"] is False and isinstance(env["seed"], int)
    for name in gpu_check.PARTS:
        record = part(check_dir, name)
        assert record["status"] == "passed", record.get("traceback", record)
        assert record["seconds"] > 0 and record["environment"]["device"] == env["device"]
    assert (check_dir / "exit_status").read_text() == "0"


def test_variants_cover_what_the_engine_launches(check_dir: Path) -> None:
    checks = part(check_dir, "variants")["checks"]
    ran = {(r["variant"], r["head_dim"], r["dtype"]) for r in checks["results"]}
    assert ran == {(v, d, t) for v in ("prefill_contiguous", "prefill_paged", "decode_split", "decode_unsplit")
                   for d in (64, 128, 256) for t in ("float16", "float32")}
    splits = {r["variant"]: r["num_splits"] for r in checks["results"] if "num_splits" in r}
    assert splits["decode_split"] > 1 and splits["decode_unsplit"] == 1
    assert part(check_dir, "variants")["decode_recompiles"]["num_splits"][0] == 1


def test_graph_test_and_timed_kernels_ran(check_dir: Path) -> None:
    graphs = part(check_dir, "cuda_graphs")
    assert graphs["returncode"] == 0 and graphs["counts"] == {"skipped": 1}  # no CUDA here: its one test skips
    kernels = part(check_dir, "kernels")
    assert {r["kernel"] for r in kernels["results"]} == set(gpu_check.TIMED_CASES) and not kernels["not_run"]
    assert all(t["met"] is None for t in kernels["targets"].values())  # no targets judged off the GPU


def test_e2e_runs_the_engines_the_cpu_can(check_dir: Path) -> None:
    e2e = part(check_dir, "e2e")
    engines = e2e["e2e"]["shapes"][gpu_check.E2E_SHAPE]["engines"]
    assert "skipped" in engines["fastllm-triton"]
    assert engines["hf"]["workload"]["output_tokens_per_s"] > 0
    assert engines["fastllm-torch"]["workload"]["kernels_compiled_during_run"] == {}
    assert e2e["e2e"]["time_budget"] is True


def test_run_rebuilds_the_summary_and_table_from_the_parts(check_dir: Path, tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    report = run.main(["--rebuild", str(check_dir), "--out-dir", str(tmp_path), "--readme", str(readme)])
    assert report["summary"].keys() == set(run.KERNEL_CASES) | {"generate"}
    assert all(entry["fastllm"] is not None for entry in report["summary"].values())
    assert report["gpu_check"]["variants"]["status"] == "passed" and report["kernels"]["variants"]["passed"]
    text = readme.read_text()
    assert "| generate (" in text and "GPU check: variants passed, cuda_graphs passed" in text
    assert report["plots"] == [f"{report['date'][:10]}-cpu-x86-64-throughput.png"]  # no sweeps: no kernel plot


def test_parts_that_build_an_engine_skip_without_gguf(tmp_path: Path) -> None:
    done = check_without(f"{EXTENSIONS},gguf", "--out", str(tmp_path), "--parts", "cuda_graphs", "e2e")
    assert done.returncode == 0, done.stderr[-3000:]
    for name in ("cuda_graphs", "e2e"):
        record = part(tmp_path, name)
        assert record["status"] == "skipped" and "gguf" in record["reason"]
    assert not (tmp_path / "variants.json").exists()


def test_each_part_is_written_when_it_ends_and_errors_do_not_stop_the_rest(tmp_path: Path, monkeypatch) -> None:
    deadlines = {}

    def part_fn(name: str, outcome: str):
        def fn(deadline: float, done: dict) -> dict:
            deadlines[name] = deadline
            if outcome == "raise":
                raise RuntimeError(f"{name} broke")
            if outcome == "interrupt":
                assert (tmp_path / "variants.json").exists()  # written before the next part starts
                raise KeyboardInterrupt
            return {"status": "passed", "targets": {}}
        return fn

    outcomes = {"variants": "pass", "cuda_graphs": "raise", "kernels": "pass", "e2e": "interrupt"}
    monkeypatch.setattr(gpu_check, "PART_FUNCTIONS", {name: part_fn(name, o) for name, o in outcomes.items()})
    env = {"date": "d", "device": "cpu", "versions": {}}
    with pytest.raises(KeyboardInterrupt):  # a run killed in its last part keeps the parts before it
        gpu_check.run_parts(tmp_path, list(gpu_check.PARTS), 100.0, env)
    assert part(tmp_path, "cuda_graphs")["status"] == "error" and "broke" in part(tmp_path, "cuda_graphs")["error"]
    assert part(tmp_path, "kernels")["status"] == "passed" and not (tmp_path / "e2e.json").exists()
    # Each part's slice of the budget from its own start (the parts here take no time); the last
    # runs to the end, less a margin.
    start = deadlines["variants"] - gpu_check.SHARES["variants"] * 100
    for name, share in gpu_check.SHARES.items():
        assert deadlines[name] == pytest.approx(start + share * 100, abs=0.5)
    assert deadlines["e2e"] == pytest.approx(start + 100 - gpu_check.END_MARGIN_S, abs=0.5)


def test_budget_must_leave_room() -> None:
    with pytest.raises(SystemExit):
        gpu_check.main(["--out", "/nonexistent", "--budget-s", "5"])

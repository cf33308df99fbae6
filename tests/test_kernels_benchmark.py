"""benchmarks/bench_kernels.py runs end to end on the CPU (interpreter, tiny shapes) and writes its JSON."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_kernels.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_kernels", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def test_benchmark_checks_times_and_reports(bench, tmp_path: Path) -> None:
    out = tmp_path / "kernels.json"
    bench.main(["--out", str(out), "--only", "softmax", "paged_decode_b64", "sample_top_k"])
    report = json.loads(out.read_text())
    assert report["interpreter"] is True and report["timings_meaningful"] is False
    assert {"copy_tb_per_s", "matmul_tflop_per_s"} <= report["ceilings"].keys()
    assert [r["kernel"] for r in report["results"]] == ["softmax", "paged_decode_b64_ctx4k_gqa8", "sample_top_k_top_p_b128_v128k"]
    for result in report["results"]:
        assert result["check"]["passed"], result
        assert result["triton_ms"] > 0 and result["baseline_ms"] > 0
        assert "fraction_of_copy_bandwidth" in result


def test_unknown_case_is_refused(bench) -> None:
    with pytest.raises(SystemExit):
        bench.main(["--only", "no-such-kernel"])

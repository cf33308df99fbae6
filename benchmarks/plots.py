"""The runner's PNG plots: kernel speed against size, and end-to-end throughput against batch size."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display needed

import matplotlib.pyplot as plt  # noqa: E402


def _grid(count: int) -> tuple[plt.Figure, list[plt.Axes]]:
    columns = min(2, count)
    rows = math.ceil(count / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(6 * columns, 4.2 * rows), squeeze=False)
    flat = list(axes.flat)
    for unused in flat[count:]:
        unused.set_visible(False)
    return figure, flat[:count]


def _finish_panel(ax: plt.Axes, title: str, xlabel: str, ylabel: str) -> None:
    ax.set_xscale("log", base=2)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)


def _save(figure: plt.Figure, title: str, path: Path) -> None:
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def kernel_sweeps(sweeps: list[dict[str, Any]], ceilings: dict[str, Any] | None, title: str, path: Path) -> None:
    """One panel per sweep: achieved rate of fastllm's kernel and of its baseline against size.

    With `ceilings` (a GPU run), memory-bound panels draw the measured copy bandwidth and the
    attention panel the measured matmul throughput.
    """
    figure, axes = _grid(len(sweeps))
    for ax, sweep in zip(axes, sweeps):
        sizes = [p["size"] for p in sweep["points"]]
        ax.plot(sizes, [p["fastllm_rate"] for p in sweep["points"]], "o-", label="fastllm (Triton)")
        ax.plot(sizes, [p["baseline_rate"] for p in sweep["points"]], "s--", label=sweep["baseline"])
        if ceilings is not None:
            ceiling = ceilings["matmul_tflop_per_s"] if sweep["unit"] == "TFLOP/s" else ceilings["copy_tb_per_s"] * 1e3
            ax.axhline(ceiling, color="gray", linestyle=":", label="measured ceiling")
        _finish_panel(ax, f"{sweep['name']} ({sweep['dtype']})", sweep["size_label"], sweep["unit"])
    _save(figure, title, path)


def throughput_by_batch_size(e2e: dict[str, Any], title: str, path: Path) -> None:
    """One panel per model shape: output tokens/s of each engine against the batch size."""
    shapes = e2e["shapes"]
    figure, axes = _grid(len(shapes))
    for ax, shape in zip(axes, shapes.values()):
        for engine, result in shape["engines"].items():
            points = result.get("output_tokens_per_s_by_batch_size")
            if points:
                ax.plot([int(b) for b in points], list(points.values()), "o-", label=engine)
        ax.set_yscale("log")
        sizes = f"batch size (prompt {e2e['sweep']['prompt_len']}, output {e2e['sweep']['output_len']} tokens)"
        _finish_panel(ax, shape["config"]["name"], sizes, "output tokens/s")
    _save(figure, title, path)


def serve_by_concurrency(report: dict[str, Any], title: str, path: Path) -> None:
    """bench_serve: output tokens/s of the server and of offline generate, and the server's
    TTFT and inter-token latency percentiles, against the number of concurrent clients."""
    levels = report["levels"]
    clients = [level["concurrency"] for level in levels]
    figure, (throughput, latency) = _grid(2)
    throughput.plot(clients, [lv["server"]["output_tokens_per_s"] for lv in levels], "o-", label="fastllm serve")
    throughput.plot(clients, [lv["offline"]["output_tokens_per_s"] for lv in levels], "s--", label="offline LLM.generate")
    _finish_panel(throughput, "throughput", "concurrent clients", "output tokens/s")
    for key, name, style in (("ttft_s", "TTFT", "o"), ("itl_s", "inter-token", "s")):
        for quantile, line in (("p50", "-"), ("p99", ":")):
            values = [lv["server"][key][quantile] for lv in levels]
            latency.plot(clients, values, style + line, label=f"{name} {quantile}")
    latency.set_yscale("log")
    _finish_panel(latency, "server latency (client side)", "concurrent clients", "seconds")
    _save(figure, title, path)

"""Which matmul implementation a weight uses: timed on this machine when the weight is loaded.

Which one is fastest depends on the CPU (AVX-512 or AVX2, cache sizes, memory bandwidth), the
thread count and the shape, so nothing here is a constant: each choice is a short timing of the
candidates on the weight itself (its first `PROBE_ROWS` output rows: every candidate's cost grows
with the output rows alike), remembered per shape, dtype mix and thread count for the rest of the
process. Timings are the best of a few runs after a warm-up, which keeps a busy moment on a
shared machine from deciding.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import torch

PROBE_ROWS = 1024  # output rows of the weight slice that is timed
_REPEATS = 3
# Row counts at which packed and plain dense matmuls are compared: decode batches and a prefill.
_DENSE_PROBES = (1, 16, 256)
# Row counts at which the register-decoding kernel is raced against panels + sgemm, in order.
_ENCODED_PROBES = (1, 2, 4, 8, 16, 32, 64, 128, 256)

_choices: dict[tuple, object] = {}


def _seconds(fn: Callable[[], object]) -> float:
    fn()
    best = float("inf")
    for _ in range(_REPEATS):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def prepacking_is_faster(weight: torch.Tensor) -> bool:
    """Whether oneDNN on the prepacked weight beats `F.linear` on the plain one (float32 CPU weight
    [out, in]), over decode- and prefill-sized row counts, each weighed by the faster one's time."""
    from fastllm.model.linear import prepack

    probe = weight[:PROBE_ROWS]
    key = ("prepack", tuple(probe.shape), torch.get_num_threads())
    if key not in _choices:
        packed = prepack(probe)
        plain_score = packed_score = 0.0
        for rows in _DENSE_PROBES:
            x = torch.randn(rows, weight.shape[1])
            plain = _seconds(lambda: torch.nn.functional.linear(x, probe))
            onednn = _seconds(lambda: torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], ""))
            fastest = min(plain, onednn)
            plain_score += plain / fastest
            packed_score += onednn / fastest
        _choices[key] = packed_score < plain_score
    return bool(_choices[key])


def direct_kernel_max_rows(operands: Sequence[tuple[torch.Tensor, object]], cols: int) -> int:
    """The most rows of x for which decoding blocks in registers beats decoding panels for sgemm.

    operands: (uint8 block data [rows, bytes], ggml type) per stacked part. Probes row counts in
    increasing order and stops once panels have won twice in a row; 0 if panels win from one row.
    """
    from fastllm.kernels import cpu_quant
    from fastllm.kernels.cpu_buffers import StepBuffers

    probe, left = [], PROBE_ROWS
    for data, qtype in operands:
        if left > 0:
            probe.append((data[:left], qtype))
            left -= min(left, data.shape[0])
    key = ("direct", tuple(sorted({int(q) for _, q in operands})), cols, torch.get_num_threads())
    if key not in _choices:
        # The calls run as a model step's layers do: each in a phase of one step, its output and
        # panel in the step's buffer (which also keeps the probes' temporaries out of glibc's heap).
        buffers = StepBuffers()

        def in_phase(kernel: Callable[..., torch.Tensor], x: torch.Tensor) -> Callable[[], None]:
            def run() -> None:
                buffers.begin_phase()
                kernel(x, probe)
            return run

        best, panel_wins = 0, 0
        for rows in _ENCODED_PROBES:
            x = torch.randn(rows, cols)
            with buffers():
                direct = _seconds(in_phase(cpu_quant.quantized_matmul, x))
                panels = _seconds(in_phase(cpu_quant.dequantized_matmul, x))
            if direct <= panels:
                best, panel_wins = rows, 0
            else:
                panel_wins += 1
                if panel_wins == 2:
                    break
        _choices[key] = best
    return int(_choices[key])

"""The CPU kernels' step buffers (fastllm.kernels.cpu_buffers): where results and temporaries go,
how long they stay valid, and that nothing outlives or leaks out of its block."""

from __future__ import annotations

import threading

import torch

from fastllm.kernels import cpu_buffers
from fastllm.kernels.cpu_buffers import StepBuffers

ROWS = 300  # 300 x 1000 floats: above the size from which the buffer is a mapping of its own


def _storage(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr()


def _overlap(a: torch.Tensor, b: torch.Tensor) -> bool:
    start_a, start_b = a.data_ptr(), b.data_ptr()
    return start_a < start_b + b.numel() * 4 and start_b < start_a + a.numel() * 4


def test_outside_a_block_or_a_phase_everything_is_fresh():
    pieces = [cpu_buffers.output(ROWS, 100), cpu_buffers.carried("x", ROWS, 100)]
    with cpu_buffers.temporary(ROWS, 100) as scratch:
        pieces.append(scratch)
    with StepBuffers()():  # no phase begun yet
        pieces += [cpu_buffers.output(ROWS, 100), cpu_buffers.output(ROWS, 100)]
    assert len({_storage(p) for p in pieces}) == len(pieces)
    assert all(p.shape == (ROWS, 100) and p.dtype == torch.float32 for p in pieces)


def test_each_phase_starts_the_buffer_over():
    buffers = StepBuffers()
    with buffers():
        buffers.begin_phase()
        first, second = cpu_buffers.output(ROWS, 1000), cpu_buffers.output(ROWS, 500)
        assert _storage(first) == _storage(second) and not _overlap(first, second)
        second.fill_(2)
        buffers.begin_phase()
        again = cpu_buffers.output(ROWS, 1000)
        assert again.data_ptr() == first.data_ptr()
        assert (second == 2).all()  # past the new phase's piece: untouched
    assert (again.fill_(3) == 3).all()  # results outlive the block: their memory stays theirs


def test_a_temporary_is_given_back_to_the_next_piece():
    buffers = StepBuffers()
    for _ in range(2):
        with buffers():
            buffers.begin_phase()
            result = cpu_buffers.output(ROWS, 100)
            with cpu_buffers.temporary(ROWS, 400) as scratch:
                with cpu_buffers.temporary(ROWS, 300) as inner:
                    assert not _overlap(scratch, inner) and not _overlap(result, scratch)
            after = cpu_buffers.output(ROWS, 200)
    assert _storage(after) == _storage(scratch)
    assert after.data_ptr() == scratch.data_ptr()  # the top came back down to where the temporaries began
    assert not _overlap(result, after)


def test_a_piece_past_the_buffer_is_fresh_and_the_next_step_fits():
    buffers = StepBuffers()

    def step(rows: int, widths: tuple[int, ...]) -> list[torch.Tensor]:
        with buffers():
            buffers.begin_phase()
            return [cpu_buffers.output(rows, width) for width in widths]

    step(ROWS, (1000,))  # the largest step so far: the next one of its rows is sized in proportion
    small, big = step(ROWS, (1000, 3000))
    assert _storage(big) != _storage(small)  # past the end: fresh
    assert len({_storage(p) for p in step(ROWS, (1000, 3000))}) == 1
    assert len({_storage(p) for p in step(ROWS // 3, (1000, 3000))}) == 1  # fewer rows: in proportion
    # More rows than any step before: room to spare beyond the proportion.
    assert len({_storage(p) for p in step(2 * ROWS, (1000, 3000, 2000))}) == 1


def test_carried_is_one_buffer_per_name_for_the_step():
    with StepBuffers()():
        residual = cpu_buffers.carried("residual", ROWS, 50)
        normed = cpu_buffers.carried("normed", ROWS, 50)
        assert cpu_buffers.carried("residual", ROWS, 50).data_ptr() == residual.data_ptr()
        assert not _overlap(residual, normed)
        grown = cpu_buffers.carried("residual", 2 * ROWS, 50)
        assert grown.shape == (2 * ROWS, 50) and _storage(grown) != _storage(residual)


def test_blocks_are_per_thread_and_nested_blocks_join():
    buffers = StepBuffers()
    seen = []
    with buffers():
        with buffers():
            buffers.begin_phase()
            inner = cpu_buffers.output(ROWS, 100)
        buffers.begin_phase()  # still the outer block's step
        assert cpu_buffers.output(ROWS, 100).data_ptr() == inner.data_ptr()
        thread = threading.Thread(target=lambda: seen.append(cpu_buffers.output(ROWS, 100)))
        thread.start()
        thread.join()
        assert _storage(seen[0]) != _storage(inner)  # another thread is outside the block
    assert _storage(cpu_buffers.output(ROWS, 100)) != _storage(inner)

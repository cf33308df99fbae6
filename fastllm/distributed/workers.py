"""Rank processes of a tensor-parallel group on one host: started, watched and stopped by rank 0.

Rank 0 is the process that built the engine; ranks 1..N-1 are spawned processes (a fresh
interpreter each: `spawn`, never `fork`, which would copy rank 0's threads and device state).
Each worker reports its start-up stages over a pipe (about to join the group, model loaded, ...),
or the error that stopped it, so rank 0 fails fast on a worker that cannot start instead of
waiting for the group's timeout; a worker dies with rank 0 (Linux: PR_SET_PDEATHSIG; elsewhere it
notices its collectives failing).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import multiprocessing
import multiprocessing.connection
import signal
import socket
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _signal_name(exit_code: int | None) -> str:
    if exit_code is None or exit_code >= 0:
        return ""
    try:
        return f", killed by {signal.Signals(-exit_code).name}"
    except ValueError:
        return ""


def _die_with_parent() -> None:
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, signal.SIGKILL)


def _worker_entry(rank: int, status: multiprocessing.connection.Connection, target: Callable[..., None],
                  args: tuple[Any, ...]) -> None:
    _die_with_parent()
    try:
        target(rank, lambda stage: status.send((stage, None)), *args)
    except BaseException:  # noqa: BLE001 - whatever stopped the worker goes to rank 0, then the exit code says so
        try:
            status.send(("error", traceback.format_exc()))
        finally:
            sys.exit(1)


class WorkerProcesses:
    """Ranks 1..world_size-1, each running `target(rank, report, *args)`: `report(stage)` tells rank
    0 that the worker reached `stage` (e.g. "joining", right before the collective that joins the
    group), which `wait_for(stage)` waits for."""

    def __init__(self, world_size: int, target: Callable[..., None], args: tuple[Any, ...]) -> None:
        context = multiprocessing.get_context("spawn")
        self.processes: dict[int, multiprocessing.process.BaseProcess] = {}
        self._status: dict[int, multiprocessing.connection.Connection] = {}
        self._errors: dict[int, str] = {}  # rank -> the traceback it reported
        for rank in range(1, world_size):
            receiver, sender = context.Pipe(duplex=False)
            process = context.Process(target=_worker_entry, args=(rank, sender, target, args),
                                      name=f"fastllm-tp-rank{rank}", daemon=True)
            process.start()
            sender.close()
            self.processes[rank] = process
            self._status[rank] = receiver

    def wait_for(self, stage: str, timeout_s: float) -> None:
        """Return once every worker has reported `stage`; raise RuntimeError naming the rank for a
        worker that failed or exited first, or for those still short of it after `timeout_s`."""
        waiting = set(self.processes)
        deadline = time.monotonic() + timeout_s
        while waiting:
            for rank in sorted(waiting):
                message = self._message(rank)
                if message is not None and message[0] == stage:
                    waiting.discard(rank)
                elif (message is not None and message[0] == "error") or not self.processes[rank].is_alive():
                    raise self.failure(f"tensor-parallel rank {rank} failed before {stage!r}")
            if waiting and time.monotonic() > deadline:
                raise RuntimeError(f"tensor-parallel ranks {sorted(waiting)} did not reach {stage!r} within {timeout_s:g} s")
            time.sleep(0.01)

    def _message(self, rank: int) -> tuple[str, str | None] | None:
        """The worker's next status message, if one has come; errors are also kept for `failure`."""
        status = self._status[rank]
        try:
            message = status.recv() if status.poll() else None
        except (EOFError, OSError):
            return None
        if message is not None and message[0] == "error":
            self._errors[rank] = message[1]
        return message

    def failure(self, what: str) -> RuntimeError:
        """A RuntimeError saying `what`, then the workers that exited (with their exit codes), then
        the last line of each error a worker reported (those that only saw a peer go down too)."""
        time.sleep(0.1)  # a worker that just died or failed is exiting: let its exit code land
        exited = [f"rank {rank} exited with code {process.exitcode}{_signal_name(process.exitcode)}"
                  for rank, process in self.processes.items() if process.exitcode is not None]
        for rank in self.processes:
            self._message(rank)
        reported = [f"rank {rank}: {error.strip().splitlines()[-1]}" for rank, error in sorted(self._errors.items())]
        details = "; ".join(exited + reported)
        return RuntimeError(what + (f" ({details})" if details else ""))

    def dead_ranks(self) -> list[int]:
        return [rank for rank, process in self.processes.items() if process.exitcode is not None]

    def stop(self, timeout_s: float = 5.0) -> None:
        """Wait up to `timeout_s` for the workers to exit, then terminate, then kill what is left."""
        deadline = time.monotonic() + timeout_s
        for process in self.processes.values():
            process.join(max(0.0, deadline - time.monotonic()))
        for process in self.processes.values():
            if process.is_alive():
                process.terminate()
                process.join(1.0)
            if process.is_alive():
                process.kill()
                process.join(1.0)
        for status in self._status.values():
            status.close()

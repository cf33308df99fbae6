"""Helpers for the server tests: `fastllm serve` in a subprocess on 127.0.0.1 (a free port the
server picks itself), raw HTTP requests (http.client, so a test controls when a connection
closes), and the server's Prometheus metrics."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from typing import Any

START_TIMEOUT_S = 180  # model load on a busy 2-core machine
READY = re.compile(r"ready on (http://127\.0\.0\.1:(\d+))")


class ServerProcess:
    """`fastllm serve --port 0 ARGS` until stop(); its stderr is kept in `log`."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        command = [sys.executable, "-m", "fastllm.entrypoints.cli", "serve", "--port", "0", "--log-level", "warning",
                   *args]
        self.process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            env={**os.environ, **(env or {})},
        )
        self.log: list[str] = []
        self._ready = threading.Event()
        self.url = ""
        self.port = 0
        threading.Thread(target=self._read_stderr, daemon=True).start()
        if not self._ready.wait(START_TIMEOUT_S) or not self.port:
            self.process.kill()
            raise RuntimeError("fastllm serve did not start:\n" + "".join(self.log))

    def _read_stderr(self) -> None:
        for line in self.process.stderr:
            self.log.append(line)
            match = READY.search(line)
            if match:
                self.url, self.port = match.group(1), int(match.group(2))
                self._ready.set()
        self._ready.set()  # exited

    def stop(self, sig: int = signal.SIGINT, timeout: float = 30) -> tuple[int, float]:
        """Send `sig`; returns (exit status, seconds until it exited). Kills it after `timeout`."""
        start = time.monotonic()
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"the server did not exit within {timeout} s of {signal.Signals(sig).name}") from None
        return code, time.monotonic() - start

    # -- HTTP -------------------------------------------------------------------------------

    def connect(self, timeout: float = 120) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def request(
        self, method: str, path: str, body: Any = None, *, headers: dict[str, str] | None = None, raw: bytes | None = None,
    ) -> tuple[int, Any]:
        """(status, parsed JSON body, or the text if it is not JSON)."""
        connection = self.connect()
        try:
            data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
            connection.request(method, path, body=data, headers={"Content-Type": "application/json", **(headers or {})})
            response = connection.getresponse()
            text = response.read().decode()
        finally:
            connection.close()
        try:
            return response.status, json.loads(text)
        except json.JSONDecodeError:
            return response.status, text

    def open_stream(self, path: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> SSEStream:
        connection = self.connect()
        connection.request("POST", path, body=json.dumps(body).encode(),
                           headers={"Content-Type": "application/json", **(headers or {})})
        return SSEStream(connection)

    def send_only(self, path: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> http.client.HTTPConnection:
        """Send a request and return its connection unread (close it to disconnect)."""
        connection = self.connect()
        connection.request("POST", path, body=json.dumps(body).encode(),
                           headers={"Content-Type": "application/json", **(headers or {})})
        return connection

    def metrics(self) -> dict[str, float]:
        """Every sample of /metrics: 'name{labels}' -> value."""
        status, text = self.request("GET", "/metrics")
        assert status == 200
        samples = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                samples[name] = float(value)
        return samples

    def wait_for_metrics(self, condition: Any, timeout: float = 20) -> dict[str, float]:
        """Poll /metrics until condition(samples) holds; fails with the last samples after `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            samples = self.metrics()
            if condition(samples):
                return samples
            if time.monotonic() > deadline:
                engine = {k: v for k, v in samples.items() if "requests_" in k or "kv_blocks" in k}
                raise AssertionError(f"metrics never met the condition: {engine}")
            time.sleep(0.05)


def idle(samples: dict[str, float]) -> bool:
    """No request running or waiting, and no KV block in use."""
    return (samples["fastllm_num_requests_running"] == 0 and samples["fastllm_num_requests_waiting"] == 0
            and samples["fastllm_kv_blocks_used"] == 0)


class SSEStream:
    """A streaming response read event by event; close() drops the connection (a disconnect)."""

    def __init__(self, connection: http.client.HTTPConnection) -> None:
        self.connection = connection
        self.response = connection.getresponse()
        self.status = self.response.status

    def events(self):  # noqa: ANN201 - a generator of parsed events ("[DONE]" as a str)
        for line in self.response:
            line = line.decode().strip()
            if line.startswith("data: "):
                data = line[len("data: "):]
                yield data if data == "[DONE]" else json.loads(data)

    def close(self) -> None:
        self.connection.sock.close() if self.connection.sock else None
        self.connection.close()

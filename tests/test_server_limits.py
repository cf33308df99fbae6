"""`fastllm serve` at its limits: one running request (--max-num-seqs 1), two waiting at most
(--max-waiting-requests 2), the API key from FASTLLM_API_KEY. A client that disconnects while
its request is still queued (streaming or not) has it aborted; a full queue answers 503; SIGINT
with a request in flight exits cleanly within seconds."""

from __future__ import annotations

import contextlib
import http.client
import signal
import time

import pytest

from tests.server_testing import ServerProcess, idle

API_KEY = "env-key"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
LONG = {"prompt": "Count to a thousand:", "max_tokens": 400, "ignore_eos": True}


def start_server() -> ServerProcess:
    return ServerProcess("--max-model-len", "512", "--max-num-seqs", "1", "--max-waiting-requests", "2",
                         "--shutdown-timeout", "1", env={"FASTLLM_API_KEY": API_KEY})


@pytest.fixture(scope="module")
def server():
    process = start_server()
    yield process
    process.stop(signal.SIGTERM)


def running_and_waiting(running, waiting):
    return lambda s: (s["fastllm_num_requests_running"], s["fastllm_num_requests_waiting"]) == (running, waiting)


def test_the_key_comes_from_the_environment(server):
    assert server.request("GET", "/v1/models")[0] == 401
    assert server.request("GET", "/v1/models", headers=AUTH)[0] == 200


def test_disconnect_while_queued_aborts_the_request(server):
    aborted = server.metrics().get('fastllm_requests_total{finish_reason="abort"}', 0)
    running = server.open_stream("/v1/completions", {**LONG, "stream": True}, headers=AUTH)
    next(running.events())  # it is running
    queued_stream = server.open_stream("/v1/completions", {**LONG, "stream": True}, headers=AUTH)
    server.wait_for_metrics(running_and_waiting(1, 1))
    queued_stream.close()
    server.wait_for_metrics(running_and_waiting(1, 0))
    queued_whole = server.send_only("/v1/chat/completions",
                                    {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 400}, headers=AUTH)
    server.wait_for_metrics(running_and_waiting(1, 1))
    queued_whole.close()
    server.wait_for_metrics(running_and_waiting(1, 0))
    running.close()
    samples = server.wait_for_metrics(idle)
    assert samples['fastllm_requests_total{finish_reason="abort"}'] == aborted + 3


def test_a_full_queue_answers_503_and_the_server_recovers(server):
    running = server.open_stream("/v1/completions", {**LONG, "stream": True}, headers=AUTH)
    next(running.events())
    waiting = [server.send_only("/v1/completions", LONG, headers=AUTH) for _ in range(2)]
    server.wait_for_metrics(running_and_waiting(1, 2))
    status, reply = server.request("POST", "/v1/completions", LONG, headers=AUTH)
    assert status == 503 and reply["error"]["code"] == "queue_full"
    for connection in [running, *waiting]:
        connection.close()
    server.wait_for_metrics(idle)
    status, reply = server.request("POST", "/v1/completions", {"prompt": "Hi", "max_tokens": 2}, headers=AUTH)
    assert status == 200 and reply["usage"]["completion_tokens"] == 2


def test_sigint_with_a_request_in_flight_exits_cleanly():
    process = start_server()
    stream = process.open_stream("/v1/completions", {**LONG, "stream": True}, headers=AUTH)
    events = stream.events()
    next(events)
    code, seconds = process.stop(signal.SIGINT)
    assert code == 0 and seconds < 10, "".join(process.log)
    assert "fastllm serve: stopped" in "".join(process.log)
    start = time.monotonic()
    with contextlib.suppress(http.client.HTTPException, OSError):  # cut short: it ends, it does not hang
        list(events)
    assert time.monotonic() - start < 5

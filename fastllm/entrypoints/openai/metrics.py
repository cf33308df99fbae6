"""The server's Prometheus metrics (GET /metrics), in a registry of its own.

Engine gauges (running and waiting requests, KV blocks used and free, prefix-cache hit rate and
counts) are read from `AsyncLLM.stats()` at each scrape; token counters and the latency
histograms are fed by the requests as their outputs arrive, with the engine's own timestamps
(`RequestOutput.metrics`), so a slow consumer does not skew them.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from fastllm.engine.async_llm import AsyncLLM
from fastllm.engine.outputs import RequestOutput

PREFIX = "fastllm_"
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0)
ITL_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.5, 5.0)


class _EngineCollector:
    """Gauges and cumulative counts of the engine, read at scrape time."""

    def __init__(self, llm: AsyncLLM) -> None:
        self.llm = llm

    def collect(self) -> Iterator[Metric]:
        stats = self.llm.stats()
        gauges = {
            "num_requests_running": ("Requests with KV blocks (prefilling or decoding).", stats.num_running_requests),
            "num_requests_waiting": ("Requests queued (or preempted), not running.", stats.num_waiting_requests),
            "kv_blocks_used": ("KV cache blocks held by running requests.", stats.num_used_kv_blocks),
            "kv_blocks_free": ("KV cache blocks free (possibly holding a cached prefix).", stats.num_free_kv_blocks),
            "prefix_cache_hit_rate": ("Prompt tokens found in the prefix cache / tokens looked up.",
                                      stats.prefix_cache_hit_rate),
        }
        for name, (doc, value) in gauges.items():
            yield GaugeMetricFamily(PREFIX + name, doc, value=value)
        yield CounterMetricFamily(PREFIX + "prefix_cache_queries", "Prompt tokens looked up in the prefix cache.",
                                  value=stats.prefix_cache_queries)
        yield CounterMetricFamily(PREFIX + "prefix_cache_hits", "Prompt tokens found in the prefix cache.",
                                  value=stats.prefix_cache_hits)
        yield CounterMetricFamily(PREFIX + "num_preemptions", "Sequences preempted (their KV blocks freed).",
                                  value=stats.num_preemptions)


class ServerMetrics:
    def __init__(self, llm: AsyncLLM) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_EngineCollector(llm))
        self.prompt_tokens = Counter(
            PREFIX + "prompt_tokens", "Prompt tokens of the requests that started generating.", registry=self.registry
        )
        self.generation_tokens = Counter(PREFIX + "generation_tokens", "Generated tokens.", registry=self.registry)
        self.requests = Counter(
            PREFIX + "requests", "Requests that ended, by finish reason (abort: the client left or the server stopped).",
            ["finish_reason"], registry=self.registry,
        )
        self.time_to_first_token = Histogram(
            PREFIX + "time_to_first_token_seconds", "From arrival to the first generated token.",
            buckets=TTFT_BUCKETS, registry=self.registry,
        )
        self.inter_token_latency = Histogram(
            PREFIX + "inter_token_latency_seconds", "Between a request's consecutive engine steps that gave it tokens.",
            buckets=ITL_BUCKETS, registry=self.registry,
        )

    def track(self) -> RequestTracker:
        """A tracker for one engine request's outputs."""
        return RequestTracker(self)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class RequestTracker:
    """Feeds one request's outputs into the metrics, once each."""

    def __init__(self, metrics: ServerMetrics) -> None:
        self.metrics = metrics
        self.last_token_time: float | None = None
        self.ended = False

    def observe(self, output: RequestOutput) -> None:
        new_tokens = sum(len(sample.delta_token_ids) for sample in output.outputs)
        if new_tokens:
            now = output.metrics.last_token_time
            if self.last_token_time is None:
                self.metrics.prompt_tokens.inc(len(output.prompt_token_ids))
                if output.metrics.time_to_first_token is not None:
                    self.metrics.time_to_first_token.observe(output.metrics.time_to_first_token)
            elif now is not None:
                self.metrics.inter_token_latency.observe(now - self.last_token_time)
            self.last_token_time = now
            self.metrics.generation_tokens.inc(new_tokens)
        if output.finished:
            self.end(output.finish_reason or "stop")

    def end(self, finish_reason: str) -> None:
        if not self.ended:
            self.ended = True
            self.metrics.requests.labels(finish_reason=finish_reason).inc()

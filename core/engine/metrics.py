"""Prometheus metrics of the core, with the meanings autoscalers and inference gateways read.

Owns: the core's metric registry and its HTTP endpoint (`--metrics-port`). Queue, cache and
compilation numbers are read from the engine when scraped (nothing to keep in sync); latency
histograms are observed by the engine thread as tokens are emitted. Names follow vLLM's with
the `tandem:` prefix (`tandem:num_requests_waiting` ↔ `vllm:num_requests_waiting`, …), so a
KEDA trigger or the Gateway API Inference Extension can point at them by name.

The engine imports this module, never the other way round: what the collector reads is the
`WatchedEngine` protocol below.
"""

from __future__ import annotations

from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector


class WatchedEngine(Protocol):
    """What the collector reads off an engine at scrape time."""

    scheduler: Any  # waiting, running, kv_cache_usage, allocator, prefix_cache, num_preemptions
    compilations_after_warmup: int
    num_prompt_tokens: int
    num_generated_tokens: int

PREFIX = "tandem:"
LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3,
                     0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)


class _EngineCollector(Collector):
    """Reads gauges and counters off the engine at scrape time."""

    def __init__(self, engine: WatchedEngine):
        self._engine = engine

    def collect(self):
        engine, scheduler = self._engine, self._engine.scheduler
        stats = scheduler.prefix_cache.stats
        gauges = (
            ("num_requests_waiting", "Requests queued, not yet running (incl. preempted).",
             len(scheduler.waiting)),
            ("num_requests_running", "Requests with KV pages, prefilling or decoding.",
             len(scheduler.running)),
            ("kv_cache_usage_perc", "Fraction of KV pages held by requests (0-1); idle "
             "prefix-cache pages count as free.", scheduler.kv_cache_usage),
            ("kv_cache_pages", "Pages in the KV pool.", scheduler.allocator.num_pages),
            ("compilations_after_warmup", "Step compilations since warm-up ended (stays 0).",
             engine.compilations_after_warmup),
        )
        for name, documentation, value in gauges:
            yield GaugeMetricFamily(PREFIX + name, documentation, value=value)
        counters = (
            ("prefix_cache_queries", "Prompt tokens looked up in the prefix cache.",
             stats.queried_tokens),
            ("prefix_cache_hits", "Prompt tokens served from the prefix cache.",
             stats.hit_tokens),
            ("num_preemptions", "Requests preempted (pages taken back, recomputed later).",
             scheduler.num_preemptions),
            ("prompt_tokens", "Prompt tokens of requests the engine took in.",
             engine.num_prompt_tokens),
            ("generation_tokens", "Tokens generated.", engine.num_generated_tokens),
        )
        for name, documentation, value in counters:
            yield CounterMetricFamily(PREFIX + name, documentation, value=value)


class EngineMetrics:
    """The registry of one engine; histograms are observed on its thread."""

    def __init__(self):
        self.registry = CollectorRegistry()
        self.time_to_first_token_s = Histogram(
            PREFIX + "time_to_first_token_seconds", "From arrival at the engine to the first "
            "token.", buckets=LATENCY_BUCKETS_S, registry=self.registry)
        self.inter_token_latency_s = Histogram(
            PREFIX + "inter_token_latency_seconds", "Between successive tokens of a request.",
            buckets=LATENCY_BUCKETS_S, registry=self.registry)
        self.e2e_request_latency_s = Histogram(
            PREFIX + "e2e_request_latency_seconds", "From arrival to the last token.",
            buckets=LATENCY_BUCKETS_S, registry=self.registry)

    def watch(self, engine: WatchedEngine) -> None:
        self.registry.register(_EngineCollector(engine))

    def serve(self, port: int, host: str = "0.0.0.0") -> int:
        """Start the /metrics HTTP endpoint on a background thread; returns the bound port."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        return server.server_port

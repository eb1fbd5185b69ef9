"""Prometheus metrics of the core, with the meanings autoscalers and inference gateways read.

Owns: the core's metric registry and its HTTP endpoint (`--metrics-port`). Queue, cache and
compilation numbers are read from the engine when scraped (nothing to keep in sync); latency
histograms are observed by the engine thread as tokens are emitted. Names follow vLLM's with
the `tandem:` prefix (`tandem:num_requests_waiting` ↔ `vllm:num_requests_waiting`, …), so a
KEDA trigger can point at them by name.

The endpoint also exports, under vLLM's own names and labels, the series that inference gateways
read by default (the Gateway API Inference Extension's model-server protocol, as its endpoint
picker, llm-d and KServe scrape them): `vllm:num_requests_waiting`, `vllm:num_requests_running`,
`vllm:kv_cache_usage_perc` (a 0-1 fraction), `vllm:cache_config_info` (labels `block_size`:
tokens per KV page, `num_gpu_blocks`: pages in the pool) and `vllm:lora_requests_info` (no
adapters: empty label values, `max_lora` 0), each with the `model_name` label vLLM gives them.

The engines import this module, never the other way round: what the collector reads is an
`EngineStats` snapshot, taken by a function the engine hands over (`EngineThread.stats`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector


@dataclass(frozen=True)
class EngineStats:
    """An engine's load and counters at one moment (what gauges and counters report)."""

    num_waiting: int  # requests queued, not yet running (incl. preempted); inputs, for Embed
    num_running: int  # requests with KV pages, prefilling or decoding
    kv_cache_usage: float  # fraction of KV pages held by requests (0-1)
    num_kv_pages: int  # pages in the KV pool
    compilations_after_warmup: int  # traces since warm-up ended (stays 0)
    page_size_tokens: int = 0  # tokens per KV page (0: no KV cache)
    prefix_cache_queried_tokens: int = 0  # prompt tokens looked up in the prefix cache
    prefix_cache_hit_tokens: int = 0  # ... of which served from it
    num_preemptions: int = 0  # requests whose pages were taken back (recomputed later)
    num_prompt_tokens: int = 0  # prompt tokens of requests taken in
    num_generation_tokens: int = 0  # tokens generated
    num_draft_tokens: int = 0  # n-gram speculation: draft tokens proposed
    num_accepted_draft_tokens: int = 0  # ... of which accepted

PREFIX = "tandem:"
GATEWAY_PREFIX = "vllm:"  # the names gateways read by default (see the module docstring)
LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3,
                     0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)


class _EngineCollector(Collector):
    """Reads gauges and counters off the engine at scrape time."""

    def __init__(self, stats: Callable[[], EngineStats]):
        self._stats = stats

    def collect(self):
        stats = self._stats()
        gauges = (
            ("num_requests_waiting", "Requests queued, not yet running (incl. preempted).",
             stats.num_waiting),
            ("num_requests_running", "Requests with KV pages, prefilling or decoding.",
             stats.num_running),
            ("kv_cache_usage_perc", "Fraction of KV pages held by requests (0-1); idle "
             "prefix-cache pages count as free.", stats.kv_cache_usage),
            ("kv_cache_pages", "Pages in the KV pool.", stats.num_kv_pages),
            ("compilations_after_warmup", "Step compilations since warm-up ended (stays 0).",
             stats.compilations_after_warmup),
        )
        for name, documentation, value in gauges:
            yield GaugeMetricFamily(PREFIX + name, documentation, value=value)
        counters = (
            ("prefix_cache_queries", "Prompt tokens looked up in the prefix cache.",
             stats.prefix_cache_queried_tokens),
            ("prefix_cache_hits", "Prompt tokens served from the prefix cache.",
             stats.prefix_cache_hit_tokens),
            ("num_preemptions", "Requests preempted (pages taken back, recomputed later).",
             stats.num_preemptions),
            ("prompt_tokens", "Prompt tokens of requests the engine took in.",
             stats.num_prompt_tokens),
            ("generation_tokens", "Tokens generated.", stats.num_generation_tokens),
            ("spec_decode_num_draft_tokens", "N-gram speculation: draft tokens proposed.",
             stats.num_draft_tokens),
            ("spec_decode_num_accepted_tokens", "N-gram speculation: draft tokens accepted.",
             stats.num_accepted_draft_tokens),
        )
        for name, documentation, value in counters:
            yield CounterMetricFamily(PREFIX + name, documentation, value=value)


class _GatewayCollector(Collector):
    """The series inference gateways read by default, under vLLM's names and labels."""

    def __init__(self, stats: Callable[[], EngineStats], model_name: str):
        self._stats = stats
        self._model_name = model_name

    def collect(self):
        stats, labels, model = self._stats(), ["model_name"], [self._model_name]
        for name, documentation, value in (
                ("num_requests_waiting", "Requests waiting to be processed.", stats.num_waiting),
                ("num_requests_running", "Requests running (prefilling or decoding).",
                 stats.num_running),
                ("kv_cache_usage_perc", "KV-cache usage: 1 means 100 percent usage.",
                 stats.kv_cache_usage)):
            family = GaugeMetricFamily(GATEWAY_PREFIX + name, documentation, labels=labels)
            family.add_metric(model, value)
            yield family
        cache = GaugeMetricFamily(
            GATEWAY_PREFIX + "cache_config_info", "Information of the KV cache: block_size "
            "tokens per block (page), num_gpu_blocks blocks in the pool.",
            labels=[*labels, "block_size", "num_gpu_blocks"])
        cache.add_metric([*model, str(stats.page_size_tokens), str(stats.num_kv_pages)], 1.0)
        yield cache
        lora = GaugeMetricFamily(
            GATEWAY_PREFIX + "lora_requests_info", "Running and waiting LoRA adapters (none: "
            "this core serves no adapters); the value is the time of the reading.",
            labels=[*labels, "max_lora", "running_lora_adapters", "waiting_lora_adapters"])
        lora.add_metric([*model, "0", "", ""], time.time())
        yield lora


class EngineMetrics:
    """The registry of one engine; histograms are observed on its thread, the rest is read off
    `stats()` when scraped."""

    def __init__(self, stats: Callable[[], EngineStats]):
        self.registry = CollectorRegistry()
        self._stats = stats
        self.registry.register(_EngineCollector(stats))
        self.time_to_first_token_s = Histogram(
            PREFIX + "time_to_first_token_seconds", "From arrival at the engine to the first "
            "token.", buckets=LATENCY_BUCKETS_S, registry=self.registry)
        self.inter_token_latency_s = Histogram(
            PREFIX + "inter_token_latency_seconds", "Between successive tokens of a request.",
            buckets=LATENCY_BUCKETS_S, registry=self.registry)
        self.e2e_request_latency_s = Histogram(
            PREFIX + "e2e_request_latency_seconds", "From arrival to the last token.",
            buckets=LATENCY_BUCKETS_S, registry=self.registry)

    def serve(self, port: int, host: str = "0.0.0.0", model_name: str = "") -> int:
        """Start the /metrics HTTP endpoint on a background thread, with the gateway series
        for `model_name` (the served id); returns the bound port."""
        self.registry.register(_GatewayCollector(self._stats, model_name))
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        return server.server_port

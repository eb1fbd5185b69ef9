"""GetLoad and the load snapshot of Generate's chunks: the engines' load as the contract says it.

Owns: turning an engine's `EngineStats` (and, for a generation engine, the prompt tokens its
waiting requests still have to compute) into `tandem.v1.EngineLoad` / `LoadSnapshot`. Every
reading is taken without stopping the engine: a router polls it while the core works.
"""

from __future__ import annotations

from core.engine.base import EngineThread
from core.engine.loop import LlmEngine
from tandem.v1 import inference_pb2 as pb


def engine_load(model_name: str, engine: EngineThread) -> pb.EngineLoad:
    """The full reading of one engine (data-parallel rank 0: a core runs one per model)."""
    stats = engine.stats()
    queried = stats.prefix_cache_queried_tokens
    uncached = engine.waiting_uncached_tokens() if isinstance(engine, LlmEngine) else 0
    return pb.EngineLoad(
        model=model_name, dp_rank=0, num_requests_running=stats.num_running,
        num_requests_waiting=stats.num_waiting, num_waiting_uncached_tokens=uncached,
        kv_cache_usage=stats.kv_cache_usage,
        prefix_cache_hit_rate=stats.prefix_cache_hit_tokens / queried if queried else 0.0,
        num_kv_pages=stats.num_kv_pages)


def load_snapshot(engine: EngineThread) -> pb.LoadSnapshot:
    """The small reading a Generate call's first and last chunks carry."""
    stats = engine.stats()
    return pb.LoadSnapshot(num_requests_running=stats.num_running,
                           num_requests_waiting=stats.num_waiting,
                           kv_cache_usage=stats.kv_cache_usage)

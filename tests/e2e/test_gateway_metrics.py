"""The series inference gateways read, from the real core of `tandem serve` (conftest's
session `server`), parsed with prometheus-client's own exposition parser: the Gateway API
Inference Extension's endpoint picker (and llm-d, KServe) read vLLM's names by default, so the
core exports those beside its `tandem:*` series, with vLLM's labels, and they move under load."""

from __future__ import annotations

import threading

import httpx
import openai
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import MODEL
from tests.waiting import wait_until

# What the endpoint picker reads with no flags set (its defaults are vLLM's series).
GATEWAY_GAUGES = ("vllm:num_requests_waiting", "vllm:num_requests_running",
                  "vllm:kv_cache_usage_perc")
PAGE_SIZE_TOKENS = 16  # the server's --page-size (the default)


def scrape(url: str) -> dict[str, list]:
    """{family name: its samples} of one scrape."""
    text = httpx.get(url, timeout=5).text
    return {family.name: family.samples for family in text_string_to_metric_families(text)}


def value(families: dict[str, list], name: str) -> float:
    (sample,) = families[name]
    return sample.value


def test_the_gateway_series_have_vllm_names_labels_and_meanings(server):
    families = scrape(server.metrics_url)
    for name in GATEWAY_GAUGES:
        (sample,) = families[name]
        assert sample.labels == {"model_name": MODEL}, name
    (cache,) = families["vllm:cache_config_info"]
    assert cache.value == 1.0
    assert cache.labels == {"model_name": MODEL, "block_size": str(PAGE_SIZE_TOKENS),
                            "num_gpu_blocks": str(int(value(families, "tandem:kv_cache_pages")))}
    (lora,) = families["vllm:lora_requests_info"]
    assert lora.labels == {"model_name": MODEL, "max_lora": "0", "running_lora_adapters": "",
                           "waiting_lora_adapters": ""}
    assert lora.value > 0  # the time of the reading, as vLLM sets it
    usage = value(families, "vllm:kv_cache_usage_perc")
    assert 0.0 <= usage <= 1.0


def test_the_gateway_series_move_under_load(server):
    """More streams than the engine runs at once (its --max-num-seqs is 4): while they run, the
    running and waiting gauges and the KV usage rise (as the `tandem:*` ones do); once every
    stream is done, running and waiting are back to 0 under both names."""
    client = openai.OpenAI(base_url=f"{server.base}/v1", api_key="unused", max_retries=0)
    seen: list[dict[str, float]] = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            families = scrape(server.metrics_url)
            seen.append({name: value(families, name) for name in (
                *GATEWAY_GAUGES, "tandem:num_requests_running", "tandem:num_requests_waiting")})

    def stream(index: int) -> None:
        for _ in client.completions.create(model=MODEL, prompt=f"load {index}", max_tokens=400,
                                           stream=True, extra_body={"ignore_eos": True}):
            pass

    watcher = threading.Thread(target=watch)
    watcher.start()
    streams = [threading.Thread(target=stream, args=(index,)) for index in range(8)]
    try:
        for thread in streams:
            thread.start()
        for thread in streams:
            thread.join(timeout=300)
    finally:
        done.set()
        watcher.join(timeout=30)
    assert max(sample["vllm:num_requests_running"] for sample in seen) >= 1
    assert max(sample["vllm:num_requests_waiting"] for sample in seen) >= 1
    assert max(sample["vllm:kv_cache_usage_perc"] for sample in seen) > 0
    assert max(sample["tandem:num_requests_waiting"] for sample in seen) >= 1  # the same count

    def idle() -> bool:
        families = scrape(server.metrics_url)
        return all(value(families, name) == 0 for name in (
            "vllm:num_requests_running", "vllm:num_requests_waiting",
            "tandem:num_requests_running", "tandem:num_requests_waiting"))

    wait_until(idle, "running and waiting back to 0 after the load")

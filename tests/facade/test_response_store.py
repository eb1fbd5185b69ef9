"""The in-memory response store (facade/responses/store.py): LRU by entries and by bytes, a TTL
per entry, the per-entry cap; and the store a URL selects."""

from __future__ import annotations

import asyncio

import pytest

from facade.responses.store import (
    EntryTooLarge,
    MemoryResponseStore,
    RedisResponseStore,
    StoredResponse,
    make_store,
)


def entry(response_id: str, text: str = "hi") -> StoredResponse:
    return StoredResponse(
        response={"id": response_id, "object": "response", "output": []},
        messages=[{"role": "user", "content": text}],
    )


def store(**bounds) -> MemoryResponseStore:
    settings = {"max_entries": 100, "max_bytes": 1 << 20, "max_entry_bytes": 1 << 20,
                "ttl_s": 3600.0, **bounds}  # fmt: skip
    return MemoryResponseStore(**settings)


def run(coroutine):
    return asyncio.run(coroutine)


def test_round_trip_and_delete():
    memory = store()
    run(memory.put(entry("resp_a", "hello")))
    found = run(memory.get("resp_a"))
    assert found == entry("resp_a", "hello")
    assert run(memory.delete("resp_a")) is True
    assert run(memory.get("resp_a")) is None
    assert run(memory.delete("resp_a")) is False
    assert len(memory) == 0 and memory.num_bytes == 0


def test_least_recently_used_goes_first_when_entries_run_out():
    memory = store(max_entries=2)
    run(memory.put(entry("resp_a")))
    run(memory.put(entry("resp_b")))
    assert run(memory.get("resp_a")) is not None  # a is now the most recently used
    run(memory.put(entry("resp_c")))
    assert run(memory.get("resp_b")) is None
    assert run(memory.get("resp_a")) is not None and run(memory.get("resp_c")) is not None


def test_bytes_bound_evicts_and_oversized_entries_are_refused():
    one_size = len(entry("resp_0", "x" * 100).to_json())
    memory = store(max_bytes=3 * one_size, max_entry_bytes=2 * one_size)
    for index in range(5):
        run(memory.put(entry(f"resp_{index}", "x" * 100)))
    assert len(memory) == 3 and memory.num_bytes <= 3 * one_size
    assert run(memory.get("resp_0")) is None and run(memory.get("resp_4")) is not None
    with pytest.raises(EntryTooLarge):
        run(memory.put(entry("resp_big", "x" * (3 * one_size))))
    assert run(memory.get("resp_big")) is None


def test_entries_expire_after_the_ttl(monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr("facade.responses.store.time.monotonic", lambda: clock[0])
    memory = store(ttl_s=10.0)
    run(memory.put(entry("resp_a")))
    clock[0] += 9.9
    assert run(memory.get("resp_a")) is not None
    clock[0] += 0.2
    assert run(memory.get("resp_a")) is None
    assert memory.num_bytes == 0


def test_the_url_picks_the_backend():
    bounds = {"max_entries": 10, "max_bytes": 1 << 20, "max_entry_bytes": 1 << 16,
              "ttl_s": 60.0, "timeout_s": 1.0}  # fmt: skip
    assert isinstance(make_store(None, **bounds), MemoryResponseStore)
    assert isinstance(make_store("redis://127.0.0.1:1/0", **bounds), RedisResponseStore)
    with pytest.raises(ValueError, match="redis://"):
        make_store("http://example.invalid", **bounds)

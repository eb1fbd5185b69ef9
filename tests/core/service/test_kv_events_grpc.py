"""SubscribeKvEvents and ResetPrefixCache against the real core, and the event hub's resume and
drop-and-resync rules (pure Python)."""

from __future__ import annotations

import asyncio
import hashlib
import struct

import grpc
import pytest

from core.cache.events import KvEvent, KvEventHub, KvEventKind, block_hash, root_hash
from core.cache.pages import PageAllocator
from core.cache.radix import RadixCache
from tandem.v1 import inference_pb2 as pb
from tandem.v1 import inference_pb2_grpc as pb_grpc

PAGE_SIZE = 16  # the grpc_core's (EngineConfig's default)
READ_DEADLINE_S = 120.0  # a bound on waiting for an event, never a speed check


@pytest.fixture(scope="module")
async def core(grpc_core):
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{grpc_core.port}")
    yield grpc_core.server, pb_grpc.InferenceStub(channel)
    await channel.close()


def router_hash(parent: bytes, token_ids) -> bytes:
    """The hash as docs/routing.md tells a router to compute it (not the core's function)."""
    return hashlib.sha256(parent + b"".join(struct.pack("<i", t) for t in token_ids)).digest()


async def read_until(call, done) -> list[pb.SubscribeKvEventsResponse]:
    messages = []
    while not done(messages):
        messages.append(await asyncio.wait_for(call.read(), READ_DEADLINE_S))
    return messages


def events_of(messages):
    return [event for message in messages for event in message.events]


async def test_generate_stores_blocks_that_chain_to_the_prompt_and_reset_clears(core):
    server, stub = core
    engine = server.servicer.engine
    prompt = list(range(50, 90))  # 40 tokens: two whole blocks cached once computed
    start_seq = engine.kv_events.last_seq + 1
    call = stub.SubscribeKvEvents(pb.SubscribeKvEventsRequest(start_seq=start_seq))
    request = pb.GenerateRequest(
        tokens=pb.TokenIds(ids=prompt), cache_salt="kv-events-test",
        sampling=pb.SamplingParams(temperature=0.0),
        stopping=pb.StoppingCriteria(max_tokens=2, ignore_eos=True))
    [response async for response in stub.Generate(request)]

    root = hashlib.sha256(b"kv-events-test").digest()  # the salt's root
    first = router_hash(root, prompt[:16])
    second = router_hash(first, prompt[16:32])
    wanted = {first, second}

    def stored_both(messages):
        return wanted <= {e.block_hash for e in events_of(messages)
                          if e.type == pb.KV_EVENT_TYPE_BLOCK_STORED}

    messages = await read_until(call, stored_both)
    assert not any(message.resync for message in messages)
    stored = {e.block_hash: e for e in events_of(messages)}
    assert list(stored[first].token_ids) == prompt[:16] and stored[first].parent_hash == root
    assert list(stored[second].token_ids) == prompt[16:32]
    assert stored[second].parent_hash == first and stored[second].block_size == PAGE_SIZE
    seqs = [e.seq for e in events_of(messages)]
    assert seqs == list(range(start_seq, start_seq + len(seqs)))  # numbered without gaps

    reset = await stub.ResetPrefixCache(pb.ResetPrefixCacheRequest())
    assert reset.num_pages_freed >= 2  # the engine is idle: nothing holds its pages
    messages = await read_until(call, lambda m: any(
        e.type == pb.KV_EVENT_TYPE_ALL_CLEARED for e in events_of(m)))
    call.cancel()

    # resuming from a number still buffered replays the same events
    resumed = stub.SubscribeKvEvents(pb.SubscribeKvEventsRequest(start_seq=start_seq))
    replay = await read_until(resumed, stored_both)
    assert not replay[0].resync and replay[0].events[0].seq == start_seq
    resumed.cancel()


def test_eviction_records_removed_events_with_the_stored_hashes():
    allocator = PageAllocator(4)
    cache = RadixCache(allocator, page_size=2)
    pages = allocator.allocate(2)
    cache.insert([1, 2, 3, 4], pages)
    allocator.release(pages)  # only the cache holds them now
    stored = cache.take_events()
    assert [e.kind for e in stored] == [KvEventKind.STORED] * 2
    assert stored[0].block_hash == block_hash(root_hash(""), (1, 2))
    assert stored[1].parent_hash == stored[0].block_hash
    assert cache.evict(1) == 1
    removed = cache.take_events()
    assert [(e.kind, e.block_hash) for e in removed] == [(KvEventKind.REMOVED,
                                                          stored[1].block_hash)]
    assert cache.clear() == 1
    assert [e.kind for e in cache.take_events()] == [KvEventKind.ALL_CLEARED]


async def test_a_lagging_or_late_subscriber_is_told_to_resync():
    loop = asyncio.get_running_loop()
    hub = KvEventHub(replay_events=3, queue_events=2)
    event = KvEvent(KvEventKind.STORED, b"h", b"p", (1,), 1)
    hub.publish([event] * 5)  # seqs 1..5; the buffer keeps 3..5
    late = hub.subscribe(loop, start_seq=1)
    batch = await late.next_batch()
    assert batch.resync and [e.seq for e in batch.events] == [3, 4, 5]
    on_time = hub.subscribe(loop, start_seq=4)
    batch = await on_time.next_batch()
    assert not batch.resync and [e.seq for e in batch.events] == [4, 5]
    hub.publish([event] * 3)  # more than on_time's queue holds: dropped, not waited on
    batch = await on_time.next_batch()
    assert batch.resync and batch.events == []
    hub.publish([event])
    batch = await on_time.next_batch()
    assert not batch.resync and [e.seq for e in batch.events] == [9]
    late.close()
    on_time.close()

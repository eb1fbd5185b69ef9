"""Radix-cache events for cache-aware routers: what was stored, removed or cleared (pure Python).

Owns: `KvEvent` (one event), `block_hash` (the hash a router recomputes), and `KvEventHub`, the
engine's publisher: a bounded replay buffer of the latest events and bounded per-subscriber
queues. The engine thread publishes once per step and never blocks: a subscriber whose queue is
full loses its pending events and is told to resync (its next batch has `resync` set).

Hash: the root of a `cache_salt` namespace is `sha256(utf8(cache_salt))` (for no salt,
`sha256(b"")`); a block's hash is `sha256(parent_hash + token_ids as little-endian int32)`, its
parent being the previous block of the same prefix (or the root). Blocks are `page_size` tokens.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import itertools
import struct
import threading
from collections import deque
from dataclasses import dataclass

DEFAULT_REPLAY_EVENTS = 16384  # events kept for subscribers resuming from a sequence number
DEFAULT_QUEUE_EVENTS = 16384  # events a subscriber may fall behind before it must resync


class KvEventKind(enum.Enum):
    STORED = "stored"  # a block's KV is now cached
    REMOVED = "removed"  # a cached block was evicted
    ALL_CLEARED = "all_cleared"  # the cache holds nothing now


@dataclass(frozen=True)
class KvEvent:
    """One radix-cache event (seq 0 until the hub numbers it)."""

    kind: KvEventKind
    block_hash: bytes = b""  # sha256 of the block (empty for ALL_CLEARED)
    parent_hash: bytes = b""  # the previous block's hash, or the salt root's
    token_ids: tuple[int, ...] = ()  # the block's tokens
    block_size: int = 0  # tokens per block (the page size)
    seq: int = 0  # 1, 2, ... in publishing order, per engine


def root_hash(cache_salt: str) -> bytes:
    return hashlib.sha256(cache_salt.encode()).digest()


def block_hash(parent_hash: bytes, token_ids: tuple[int, ...]) -> bytes:
    return hashlib.sha256(parent_hash + struct.pack(f"<{len(token_ids)}i", *token_ids)).digest()


@dataclass
class KvEventBatch:
    """What one read of a subscription returns."""

    events: list[KvEvent]
    resync: bool  # events before these were lost to this subscriber: rebuild its view


class Subscription:
    """One subscriber's bounded queue (filled on the engine thread, read on its event loop)."""

    def __init__(self, hub: KvEventHub, loop: asyncio.AbstractEventLoop, capacity: int):
        self._hub, self._loop, self._capacity = hub, loop, capacity
        self._pending: deque[KvEvent] = deque()
        self._resync = False
        self._ready = asyncio.Event()

    def _offer(self, events: list[KvEvent]) -> None:  # under the hub's lock
        if len(self._pending) + len(events) > self._capacity:
            self._pending.clear()  # drop and resync: never block the engine
            self._resync = True
        else:
            self._pending.extend(events)
        try:
            self._loop.call_soon_threadsafe(self._ready.set)
        except RuntimeError:  # its event loop is closed: the subscriber is gone
            pass

    async def next_batch(self) -> KvEventBatch:
        while True:
            await self._ready.wait()
            with self._hub._lock:
                self._ready.clear()
                events, resync = list(self._pending), self._resync
                self._pending.clear()
                self._resync = False
            if events or resync:
                return KvEventBatch(events, resync)

    def close(self) -> None:
        self._hub._unsubscribe(self)


class KvEventHub:
    def __init__(self, replay_events: int = DEFAULT_REPLAY_EVENTS,
                 queue_events: int = DEFAULT_QUEUE_EVENTS):
        self._lock = threading.Lock()
        self._replay: deque[KvEvent] = deque(maxlen=replay_events)
        self._seq = itertools.count(1)
        self._last_seq = 0
        self._queue_events = queue_events
        self._subscriptions: list[Subscription] = []

    @property
    def last_seq(self) -> int:
        return self._last_seq

    def publish(self, events: list[KvEvent]) -> None:
        """Number and hand out one step's events (engine thread; never blocks on a reader)."""
        if not events:
            return
        with self._lock:
            numbered = [KvEvent(e.kind, e.block_hash, e.parent_hash, e.token_ids, e.block_size,
                                next(self._seq)) for e in events]
            self._last_seq = numbered[-1].seq
            self._replay.extend(numbered)
            for subscription in self._subscriptions:
                subscription._offer(numbered)

    def subscribe(self, loop: asyncio.AbstractEventLoop,
                  start_seq: int | None = None) -> Subscription:
        """A subscription from `start_seq` on (None: from the next event). The buffered events
        from `start_seq` come first; when `start_seq` is older than the buffer (or newer than
        the last event: another run of the core), the first batch says `resync` and holds every
        buffered event."""
        subscription = Subscription(self, loop, self._queue_events)
        with self._lock:
            if start_seq is not None:
                oldest = self._replay[0].seq if self._replay else self._last_seq + 1
                if start_seq < oldest or start_seq > self._last_seq + 1:
                    subscription._resync = True
                    replay = list(self._replay)
                else:
                    replay = [e for e in self._replay if e.seq >= start_seq]
                subscription._pending.extend(replay)
                if replay or subscription._resync:
                    subscription._ready.set()
            self._subscriptions.append(subscription)
        return subscription

    def _unsubscribe(self, subscription: Subscription) -> None:
        with self._lock:
            if subscription in self._subscriptions:
                self._subscriptions.remove(subscription)

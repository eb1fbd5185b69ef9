"""The response store of the Responses API: what `store: true` keeps and `previous_response_id`,
GET and DELETE /v1/responses/{id} read back.

`ResponseStore` is the interface; two backends implement it:

- `MemoryResponseStore` (the default): one process's LRU, bounded by entry count and by bytes,
  every entry expiring after a TTL. Replicas do not share it.
- `RedisResponseStore` (`TANDEM_RESPONSES_STORE_URL=redis://…`): redis-py's asyncio client, one
  key per response with a TTL, so every facade replica sees every response. Socket timeouts and
  an overall deadline per operation bound every call: a Redis that is down or restarting is a
  `StoreUnavailable` (the routes answer 503), never a hang.

An entry (`StoredResponse`) is JSON: the response object as the client got it, plus the chat
messages of the whole conversation up to and including that response's output (instructions
excluded: OpenAI does not carry them over), so that a continuation needs one read. Entries
larger than `max_entry_bytes` are not stored (logged); a later `previous_response_id` naming
them is a 404 like any unknown id.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from abc import ABC, abstractmethod
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)

# Prefix of the Redis keys (several deployments may share one Redis with different prefixes).
REDIS_KEY_PREFIX = "tandem:response:"


class StoreUnavailable(Exception):
    """The store could not be reached in time (Redis down, restarting, or too slow)."""


class EntryTooLarge(Exception):
    """One entry is larger than the store's per-entry cap."""


@dataclass(frozen=True)
class StoredResponse:
    """One stored response and the conversation that led to it."""

    response: dict[str, Any]  # the response object (JSON), as GET /v1/responses/{id} returns it
    messages: list[dict[str, Any]]  # chat messages: earlier turns, this input, this output
    # this request's input as items with ids (GET /v1/responses/{id}/input_items)
    input_items: list[dict[str, Any]] = field(default_factory=list)

    @property
    def response_id(self) -> str:
        return str(self.response["id"])

    def to_json(self) -> bytes:
        return json.dumps(
            {"response": self.response, "messages": self.messages,
             "input_items": self.input_items}, separators=(",", ":")
        ).encode()

    @classmethod
    def from_json(cls, raw: bytes | str) -> StoredResponse:
        data = json.loads(raw)
        return cls(response=data["response"], messages=data["messages"],
                   input_items=data.get("input_items", []))


class ResponseStore(ABC):
    """Where responses live between requests; every method may raise StoreUnavailable."""

    @abstractmethod
    async def get(self, response_id: str) -> StoredResponse | None:
        """The entry, or None when it is unknown or expired."""

    @abstractmethod
    async def put(self, entry: StoredResponse) -> None:
        """Keep `entry` for the TTL; EntryTooLarge if it passes the per-entry cap."""

    @abstractmethod
    async def delete(self, response_id: str) -> bool:
        """Remove the entry; whether there was one."""

    async def check(self) -> None:  # noqa: B027 (optional: an in-memory store is always up)
        """Raise StoreUnavailable unless a put would reach the store now."""

    async def close(self) -> None:  # noqa: B027 (optional: nothing to release by default)
        """Release connections (the app's shutdown)."""


class MemoryResponseStore(ResponseStore):
    """An in-process LRU bounded by entries and bytes, with a TTL per entry."""

    def __init__(
        self, *, max_entries: int, max_bytes: int, max_entry_bytes: int, ttl_s: float
    ) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.max_entry_bytes = min(max_entry_bytes, max_bytes)
        self.ttl_s = ttl_s
        # response id → (expiry on the monotonic clock, the entry as JSON), oldest use first
        self._entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._num_bytes = 0

    @property
    def num_bytes(self) -> int:
        return self._num_bytes

    def __len__(self) -> int:
        return len(self._entries)

    def _drop(self, response_id: str) -> bool:
        found = self._entries.pop(response_id, None)
        if found is not None:
            self._num_bytes -= len(found[1])
        return found is not None

    async def get(self, response_id: str) -> StoredResponse | None:
        found = self._entries.get(response_id)
        if found is None:
            return None
        expires_at, raw = found
        if time.monotonic() >= expires_at:
            self._drop(response_id)
            return None
        self._entries.move_to_end(response_id)
        return StoredResponse.from_json(raw)

    async def put(self, entry: StoredResponse) -> None:
        raw = entry.to_json()
        if len(raw) > self.max_entry_bytes:
            raise EntryTooLarge(f"{len(raw)} bytes > {self.max_entry_bytes}")
        self._drop(entry.response_id)
        self._entries[entry.response_id] = (time.monotonic() + self.ttl_s, raw)
        self._num_bytes += len(raw)
        self._evict()

    def _evict(self) -> None:
        """Expired entries first, then least recently used ones until both bounds hold."""
        now = time.monotonic()
        for response_id in [key for key, (expiry, _) in self._entries.items() if expiry <= now]:
            self._drop(response_id)
        while len(self._entries) > self.max_entries or self._num_bytes > self.max_bytes:
            oldest = next(iter(self._entries))
            self._drop(oldest)

    async def delete(self, response_id: str) -> bool:
        return self._drop(response_id)


class RedisResponseStore(ResponseStore):
    """Responses in Redis (shared by every facade replica), one key per response with a TTL."""

    def __init__(
        self, url: str, *, max_entry_bytes: int, ttl_s: float, timeout_s: float
    ) -> None:
        from redis.asyncio import Redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        self.max_entry_bytes = max_entry_bytes
        self.ttl_ms = max(1, int(ttl_s * 1000))
        self.timeout_s = timeout_s
        self._redis = Redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), retries=1),  # one reconnect, e.g. after a Redis restart
            health_check_interval=30,
        )

    async def _call(self, operation: str, *args: Any, **kwargs: Any) -> Any:
        """One Redis command, bounded in time; any failure is StoreUnavailable."""
        from redis.exceptions import RedisError

        command = getattr(self._redis, operation)
        try:
            # the socket timeouts bound each attempt; this bounds connect + retry together
            return await asyncio.wait_for(command(*args, **kwargs), timeout=3 * self.timeout_s)
        except (RedisError, OSError, TimeoutError) as error:
            logger.warning("response store (redis) %s failed: %r", operation, error)
            raise StoreUnavailable(
                f"The response store is unavailable ({type(error).__name__}).") from error

    async def get(self, response_id: str) -> StoredResponse | None:
        raw = await self._call("get", REDIS_KEY_PREFIX + response_id)
        return None if raw is None else StoredResponse.from_json(raw)

    async def put(self, entry: StoredResponse) -> None:
        raw = entry.to_json()
        if len(raw) > self.max_entry_bytes:
            raise EntryTooLarge(f"{len(raw)} bytes > {self.max_entry_bytes}")
        await self._call("set", REDIS_KEY_PREFIX + entry.response_id, raw, px=self.ttl_ms)

    async def delete(self, response_id: str) -> bool:
        return bool(await self._call("delete", REDIS_KEY_PREFIX + response_id))

    async def check(self) -> None:
        await self._call("ping")

    async def close(self) -> None:
        await self._redis.aclose()


def make_store(
    url: str | None,
    *,
    max_entries: int,
    max_bytes: int,
    max_entry_bytes: int,
    ttl_s: float,
    timeout_s: float,
) -> ResponseStore:
    """The store a facade uses: Redis when `url` is a redis:// (rediss://, unix://) URL, else
    memory."""
    if not url:
        return MemoryResponseStore(
            max_entries=max_entries, max_bytes=max_bytes, max_entry_bytes=max_entry_bytes,
            ttl_s=ttl_s,
        )  # fmt: skip
    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError(f"TANDEM_RESPONSES_STORE_URL must be a redis:// URL, got {url!r}")
    return RedisResponseStore(
        url, max_entry_bytes=max_entry_bytes, ttl_s=ttl_s, timeout_s=timeout_s
    )

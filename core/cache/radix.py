"""Radix prefix cache over page-aligned token blocks (pure Python, no JAX).

Owns: which full KV pages hold which token prefixes. Each tree node is one block of
`page_size` token ids and the page holding their keys and values; a path from a root spells a
prefix. One root per `cache_salt`, so salted requests share pages only with the same salt.
Requests `match` a prompt (the pages they may reuse), `insert` blocks as soon as their KV is
computed, and the engine `evict`s least-recently-used leaves that no request holds when the
page pool runs dry. Hold counts live in the `PageAllocator`; the cache only flags its pages.
Each block stored or evicted (and a `clear` that empties the cache) is recorded as a `KvEvent`
(`core/cache/events.py`, which defines the block hash); the engine takes them once per step.
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass, field

from core.cache.events import KvEvent, KvEventKind, block_hash, root_hash
from core.cache.pages import PageAllocator


@dataclass(eq=False)
class _Node:
    block: tuple[int, ...]  # the block's token ids (empty for a root)
    page_id: int  # the page with their KV (-1 for a root)
    parent: _Node | None
    children: dict[tuple[int, ...], _Node] = field(default_factory=dict)
    last_used: int = 0  # a logical clock value; larger = more recent
    block_hash: bytes = b""  # sha256 chained from the salt's root (events.block_hash)


@dataclass
class PrefixCacheStats:
    """Counters since start-up (Prometheus counters read them)."""

    queried_tokens: int = 0  # prompt tokens looked up
    hit_tokens: int = 0  # of those, served from cached pages
    evicted_pages: int = 0


class RadixCache:
    def __init__(self, allocator: PageAllocator, page_size: int, enabled: bool = True):
        self.allocator = allocator
        self.page_size = page_size
        self.enabled = enabled
        self.stats = PrefixCacheStats()
        self._roots: dict[str, _Node] = {}
        self._clock = itertools.count(1)
        self.num_pages = 0  # pages the cache holds
        self._events: list[KvEvent] = []  # since the last take_events()

    def take_events(self) -> list[KvEvent]:
        """The events recorded since the last call (unnumbered; the engine publishes them)."""
        events, self._events = self._events, []
        return events

    def _event(self, kind: KvEventKind, node: _Node) -> None:
        self._events.append(KvEvent(kind, node.block_hash, node.parent.block_hash,
                                    node.block, self.page_size))

    def _root(self, salt: str) -> _Node:
        root = self._roots.get(salt)
        if root is None:
            root = self._roots[salt] = _Node(block=(), page_id=-1, parent=None,
                                             block_hash=root_hash(salt))
        return root

    def _blocks(self, token_ids: list[int], num_blocks: int):
        size = self.page_size
        for index in range(num_blocks):
            yield tuple(token_ids[index * size:(index + 1) * size])

    def match(self, token_ids: list[int], salt: str = "",
              max_tokens: int | None = None) -> list[int]:
        """Page ids of the longest cached prefix of whole blocks, at most `max_tokens` long.

        The caller must `allocator.acquire` the pages before anything can evict them."""
        limit = len(token_ids) if max_tokens is None else min(max_tokens, len(token_ids))
        page_ids: list[int] = []
        if self.enabled:
            node, now = self._roots.get(salt), next(self._clock)
            for block in self._blocks(token_ids, limit // self.page_size):
                node = node.children.get(block) if node is not None else None
                if node is None:
                    break
                node.last_used = now
                page_ids.append(node.page_id)
        return page_ids

    def cached_prefix_tokens(self, token_ids: list[int], salt: str = "",
                             max_tokens: int | None = None) -> int:
        """How many leading tokens `match` would find now, without touching the LRU order or
        holding anything (a load estimate: the pages may be evicted before they are used)."""
        limit = len(token_ids) if max_tokens is None else min(max_tokens, len(token_ids))
        node, num_blocks = (self._roots.get(salt) if self.enabled else None), 0
        for block in self._blocks(token_ids, limit // self.page_size):
            node = node.children.get(block) if node is not None else None
            if node is None:
                break
            num_blocks += 1
        return num_blocks * self.page_size

    def record_lookup(self, num_queried_tokens: int, num_hit_tokens: int) -> None:
        """Count one admitted request's lookup (retries and recomputes are not counted)."""
        self.stats.queried_tokens += num_queried_tokens
        self.stats.hit_tokens += num_hit_tokens

    def insert(self, token_ids: list[int], page_ids: list[int], salt: str = "") -> None:
        """Record that page_ids[i] holds block i of token_ids (whole blocks only).

        Blocks already cached keep their page; the caller's duplicate stays the caller's."""
        if not self.enabled:
            return
        node, now = self._root(salt), next(self._clock)
        num_blocks = min(len(token_ids) // self.page_size, len(page_ids))
        for block, page_id in zip(self._blocks(token_ids, num_blocks), page_ids, strict=False):
            child = node.children.get(block)
            if child is None:
                child = node.children[block] = _Node(
                    block=block, page_id=page_id, parent=node,
                    block_hash=block_hash(node.block_hash, block))
                self.allocator.set_cached(page_id, True)
                self.num_pages += 1
                self._event(KvEventKind.STORED, child)
            child.last_used = now
            node = child

    def clear(self) -> int:
        """Evict every block no request holds; returns how many. When the cache is empty
        afterwards, one ALL_CLEARED event stands for their REMOVED events."""
        num_events = len(self._events)
        evicted = self.evict(self.num_pages)
        if self.num_pages == 0:
            del self._events[num_events:]
            self._events.append(KvEvent(KvEventKind.ALL_CLEARED, block_size=self.page_size))
        return evicted

    def evict(self, num_pages: int) -> int:
        """Free up to `num_pages` pages from least-recently-used unheld leaves; returns how many."""
        leaves = [(node.last_used, id(node), node) for node in self._walk()
                  if not node.children and self.allocator.is_evictable(node.page_id)]
        heapq.heapify(leaves)
        evicted = 0
        while leaves and evicted < num_pages:
            _, _, node = heapq.heappop(leaves)
            parent = node.parent
            del parent.children[node.block]
            self._event(KvEventKind.REMOVED, node)
            self.allocator.set_cached(node.page_id, False)
            self.num_pages -= 1
            evicted += 1
            if (parent.parent is not None and not parent.children
                    and self.allocator.is_evictable(parent.page_id)):
                heapq.heappush(leaves, (parent.last_used, id(parent), parent))
        for salt in [salt for salt, root in self._roots.items() if not root.children]:
            del self._roots[salt]  # per-user salts must not pile up empty roots
        self.stats.evicted_pages += evicted
        return evicted

    def num_evictable(self) -> int:
        """Cached pages no request holds: what `evict` can free (a walk of the tree)."""
        return sum(self.allocator.is_evictable(node.page_id) for node in self._walk())

    def _walk(self):
        stack = [child for root in self._roots.values() for child in root.children.values()]
        while stack:
            node = stack.pop()
            yield node
            stack.extend(node.children.values())

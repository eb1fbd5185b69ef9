"""The paged KV cache: device arrays of fixed-size pages and the pure-Python page allocator.

Owns: `KVPages`, the pytree of per-layer key/value pools (page-major, see `KVPages`)
that the jitted step takes, updates in place and returns (it is donated), and `PageAllocator`,
which hands out page ids and counts who holds each page. A page is held by requests (a count:
several requests share prefix pages) and optionally by the prefix cache (a flag). It returns to
the free list when neither holds it; a page only the prefix cache holds is evictable.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp

from core.config import ModelConfig


@jax.tree_util.register_dataclass
@dataclass
class KVPages:
    """Per-layer pools: keys [num_pages, k, h, page_size], values [num_pages, k, page_size, h]
    (the layouts attention reads without transposing; see core/models/llama.py)."""

    keys: list[jax.Array]
    values: list[jax.Array]

    @classmethod
    def create(cls, config: ModelConfig, num_pages: int, page_size: int, dtype) -> KVPages:
        k, h = config.num_kv_heads, config.head_dim
        return cls(keys=[jnp.zeros((num_pages, k, h, page_size), dtype)
                         for _ in range(config.num_layers)],
                   values=[jnp.zeros((num_pages, k, page_size, h), dtype)
                           for _ in range(config.num_layers)])


def kv_bytes_per_token(config: ModelConfig, dtype_bytes: int) -> int:
    """Bytes of keys and values one token occupies across all layers."""
    return 2 * config.num_layers * config.num_kv_heads * config.head_dim * dtype_bytes


class PageAllocator:
    """Free list plus per-page holders. No JAX: the scheduler and prefix cache use it."""

    def __init__(self, num_pages: int):
        self.num_pages = num_pages
        self._request_refs = [0] * num_pages  # requests whose page table holds the page
        self._cached = [False] * num_pages  # the prefix cache holds the page
        self._free = list(range(num_pages - 1, -1, -1))  # a stack: low ids first
        self.num_in_use = 0  # pages some request holds

    @property
    def num_free(self) -> int:
        return len(self._free)

    def allocate(self, count: int) -> list[int] | None:
        """`count` fresh pages held once by the caller, or None when too few are free."""
        if count > len(self._free):
            return None
        page_ids = [self._free.pop() for _ in range(count)]
        for page_id in page_ids:
            self._request_refs[page_id] = 1
        self.num_in_use += count
        return page_ids

    def acquire(self, page_ids: list[int]) -> None:
        """Another request holds these (already allocated) pages."""
        for page_id in page_ids:
            if self._request_refs[page_id] == 0:
                if not self._cached[page_id]:
                    raise ValueError(f"page {page_id} is free")
                self.num_in_use += 1
            self._request_refs[page_id] += 1

    def release(self, page_ids: list[int]) -> None:
        """A request lets go of its pages; unheld, uncached pages become free."""
        for page_id in page_ids:
            refs = self._request_refs[page_id] - 1
            if refs < 0:
                raise ValueError(f"page {page_id} released more often than held")
            self._request_refs[page_id] = refs
            if refs == 0:
                self.num_in_use -= 1
                if not self._cached[page_id]:
                    self._free.append(page_id)

    def set_cached(self, page_id: int, cached: bool) -> None:
        """The prefix cache takes (True) or drops (False) its hold on a page."""
        self._cached[page_id] = cached
        if not cached and self._request_refs[page_id] == 0:
            self._free.append(page_id)

    def is_evictable(self, page_id: int) -> bool:
        """Only the prefix cache holds it."""
        return self._cached[page_id] and self._request_refs[page_id] == 0

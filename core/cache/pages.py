"""The page allocator of the paged KV cache (pure Python: the scheduler imports it, not JAX).

Owns: `PageAllocator`, which hands out page ids of the KV pool (`core.cache.kv_pool`) and counts
who holds each page. A page is held by requests (a count: several requests share prefix pages)
and optionally by the prefix cache (a flag). It returns to the free list when neither holds it;
a page only the prefix cache holds is evictable.
"""

from __future__ import annotations


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

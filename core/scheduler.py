"""Which sequences run in the next engine step (pure Python, no JAX).

Owns: the waiting queue, the running set and the KV cache slots. Policy: while a slot is free and
a request waits, prefill it (one prompt per step); otherwise decode every running sequence in one
batch. Admission beyond `max_waiting` queued requests is refused by the engine (OVERLOADED).
The batching engine replaces this with token budgets, chunked prefill and paged KV.
"""

from __future__ import annotations

from collections import deque

from core.request import BatchRow, Request, ScheduledBatch


class Scheduler:
    def __init__(self, num_slots: int):
        self.waiting: deque[Request] = deque()
        self.running: dict[int, Request] = {}  # slot id → request
        self._free_slots = list(range(num_slots - 1, -1, -1))

    @property
    def num_unfinished(self) -> int:
        return len(self.waiting) + len(self.running)

    def add(self, request: Request) -> None:
        self.waiting.append(request)

    def schedule(self) -> ScheduledBatch | None:
        if self.waiting and self._free_slots:
            request = self.waiting.popleft()
            request.slot_id = self._free_slots.pop()
            self.running[request.slot_id] = request
            row = BatchRow(request.slot_id, tuple(request.prompt_token_ids), 0, request.sampling)
            return ScheduledBatch(rows=(row,), is_prefill=True)
        if self.running:
            rows = tuple(BatchRow(slot, (request.output_token_ids[-1],), request.num_tokens - 1,
                                  request.sampling)
                         for slot, request in sorted(self.running.items()))
            return ScheduledBatch(rows=rows, is_prefill=False)
        return None

    def request_in_slot(self, slot_id: int) -> Request:
        return self.running[slot_id]

    def finish(self, request: Request) -> None:
        """Remove a finished or aborted request and free its slot."""
        if request.slot_id is not None and self.running.get(request.slot_id) is request:
            del self.running[request.slot_id]
            self._free_slots.append(request.slot_id)
            request.slot_id = None
        elif request in self.waiting:
            self.waiting.remove(request)

"""SubscribeKvEvents' messages: the radix cache's `KvEvent`s as the contract says them.

Owns: turning `core.cache.events.KvEvent` into `tandem.v1.KvEvent` (the subscription itself is
the engine's `KvEventHub`; the RPC is in `server.py`).
"""

from __future__ import annotations

from core.cache.events import KvEvent, KvEventKind
from tandem.v1 import inference_pb2 as pb

EVENT_TYPES = {KvEventKind.STORED: pb.KV_EVENT_TYPE_BLOCK_STORED,
               KvEventKind.REMOVED: pb.KV_EVENT_TYPE_BLOCK_REMOVED,
               KvEventKind.ALL_CLEARED: pb.KV_EVENT_TYPE_ALL_CLEARED}


def kv_event_messages(events: list[KvEvent]) -> list[pb.KvEvent]:
    return [pb.KvEvent(seq=event.seq, type=EVENT_TYPES[event.kind], block_hash=event.block_hash,
                       parent_hash=event.parent_hash, token_ids=event.token_ids,
                       block_size=event.block_size) for event in events]

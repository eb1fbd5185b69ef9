"""The multi-host flags and step channel without JAX: bad flags are refused naming the flag, and
the leader's messages reach a follower whole and in order, then EOF once the leader closes."""

from __future__ import annotations

import socket
import threading

import numpy as np
import pytest

from core.distributed.group import DistributedConfig, Group


@pytest.mark.parametrize(("address", "processes", "process_id", "flag"), [
    ("leader", 2, 0, "--distributed"), ("leader:http", 2, 0, "--distributed"),
    ("leader:8476", 0, 0, "--num-processes"), ("leader:8476", 2, 2, "--process-id"),
    ("leader:8476", 2, -1, "--process-id")])
def test_bad_flags_are_refused(address, processes, process_id, flag):
    with pytest.raises(ValueError, match=flag):
        DistributedConfig(address, processes, process_id)


def test_channel_carries_messages_in_order_then_eof():
    config = DistributedConfig("[::1]:8476", 2, 0)
    assert config.channel_address == ("::1", 8477) and config.is_leader
    leader_end, follower_end = socket.socketpair()
    leader = Group(config, [leader_end])
    follower = Group(DistributedConfig("[::1]:8476", 2, 1), [follower_end])
    bitmask = np.arange(3 * 5, dtype=np.int32).reshape(3, 5)
    big = bytes(range(256)) * 8192  # 2 MiB: more than one recv

    def lead():  # a thread: a 2 MiB frame outgrows the socket buffer until the follower reads
        leader.send(("sample", bitmask, frozenset({1})))
        leader.send(("dispatch", big))
        leader.close()

    sender = threading.Thread(target=lead, daemon=True)
    sender.start()
    kind, received, constrained = follower.receive()
    assert kind == "sample" and constrained == {1}
    np.testing.assert_array_equal(received, bitmask)
    assert follower.receive() == ("dispatch", big)
    sender.join(timeout=30)
    with pytest.raises(EOFError):
        follower.receive()
    follower.close()

"""The process group of a multi-host core: `jax.distributed` joined, and the step channel.

Owns: `DistributedConfig` (the three flags), `join()` — CPU collectives over gloo, then
`jax.distributed.initialize` (before anything touches a device, so that `jax.devices()` lists
every process's devices and the mesh spans them), then the step channel — and `current()`, the
joined group (None in a single-process core).

The step channel is a TCP connection from each follower to process 0 on the coordinator's port
+ 1: process 0 sends every follower the same length-prefixed pickled messages in order
(`Group.send`), a follower reads them (`Group.receive`). Pickles are only ever read by
followers, from the leader they dialled: the port belongs inside the group's private network
(one LeaderWorkerSet group), like the coordinator's own.
"""

from __future__ import annotations

import logging
import pickle
import socket
import struct
import time
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)
_HEADER = struct.Struct("!Q")  # message length in bytes
_group: Group | None = None


@dataclass(frozen=True)
class DistributedConfig:
    coordinator_address: str  # HOST:PORT of process 0's coordinator (the channel: PORT + 1)
    num_processes: int
    process_id: int
    join_timeout_s: float = 300.0  # how long joining may wait for the other processes

    def __post_init__(self):
        host, _, port = self.coordinator_address.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65535:
            raise ValueError(f"--distributed {self.coordinator_address!r}: expected HOST:PORT")
        if self.num_processes < 1:
            raise ValueError(f"--num-processes {self.num_processes}: at least 1")
        if not 0 <= self.process_id < self.num_processes:
            raise ValueError(f"--process-id {self.process_id}: expected 0 to "
                             f"{self.num_processes - 1}")

    @property
    def is_leader(self) -> bool:
        return self.process_id == 0

    @property
    def channel_address(self) -> tuple[str, int]:
        host, _, port = self.coordinator_address.rpartition(":")
        return host.strip("[]"), int(port) + 1


class Group:
    """This process's place in the group and its end of the step channel."""

    def __init__(self, config: DistributedConfig, peers: list[socket.socket]):
        self.config = config
        self._peers = peers  # the leader: one socket per follower; a follower: the leader's

    def send(self, message: Any) -> None:
        """Leader: the same message to every follower, in order."""
        payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        frame = _HEADER.pack(len(payload)) + payload
        for peer in self._peers:
            peer.sendall(frame)

    def receive(self) -> Any:
        """Follower: the leader's next message (EOFError once the leader is gone)."""
        (length,) = _HEADER.unpack(_read(self._peers[0], _HEADER.size))
        return pickle.loads(_read(self._peers[0], length))

    def close(self) -> None:
        for peer in self._peers:
            peer.close()
        self._peers = []


def current() -> Group | None:
    """The joined group, or None in a single-process core."""
    return _group


def join(config: DistributedConfig) -> Group:
    """Start JAX's multi-host runtime and connect the step channel (blocks until every process
    has joined, at most `config.join_timeout_s`)."""
    global _group
    import jax

    # cross-process collectives of the CPU backend (the tests' 2 processes); accelerators
    # bring their own
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(config.coordinator_address, config.num_processes,
                               config.process_id,
                               initialization_timeout=int(config.join_timeout_s),
                               shutdown_timeout_seconds=30)
    log.info("process %d of %d joined %s: %d devices, %d here", config.process_id,
             config.num_processes, config.coordinator_address, jax.device_count(),
             jax.local_device_count())
    deadline = time.monotonic() + config.join_timeout_s
    peers = _accept(config, deadline) if config.is_leader else [_dial(config, deadline)]
    _group = Group(config, peers)
    return _group


def _accept(config: DistributedConfig, deadline: float) -> list[socket.socket]:
    """Leader: a connection from every follower, in process order."""
    by_process: dict[int, socket.socket] = {}
    with socket.create_server(("", config.channel_address[1])) as server:
        while len(by_process) < config.num_processes - 1:
            server.settimeout(max(0.1, deadline - time.monotonic()))
            try:
                peer, _ = server.accept()
            except TimeoutError:
                raise TimeoutError(f"{len(by_process)} of {config.num_processes - 1} followers "
                                   "connected to the step channel in time") from None
            peer.settimeout(None)
            peer.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            (process_id,) = _HEADER.unpack(_read(peer, _HEADER.size))
            by_process[process_id] = peer
    return [by_process[index] for index in sorted(by_process)]


def _dial(config: DistributedConfig, deadline: float) -> socket.socket:
    """Follower: connect to the leader's step channel (it opens it once all have joined)."""
    while True:
        try:
            peer = socket.create_connection(config.channel_address, timeout=5)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    peer.settimeout(None)
    peer.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    peer.sendall(_HEADER.pack(config.process_id))
    return peer


def _read(peer: socket.socket, size: int) -> bytes:
    chunks, left = [], size
    while left:
        chunk = peer.recv(min(left, 1 << 20))
        if not chunk:
            raise EOFError("the step channel closed")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)

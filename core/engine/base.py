"""What every engine of the core shares: one worker thread fed by a thread-safe inbox, admission
that can be closed, shutdown, the compilation count, and the load numbers it reports.

Owns: `EngineThread`, the base of the generation engine (`core/engine/loop.py`) and of the
embedding engine (`core/engine/embedding.py`). Callers hand work in with `_post(item)` from any
thread; the engine's thread takes everything that arrived since its last turn and passes it to
`_turn(items)`, which applies it and does one step of work. The thread blocks on the inbox only
while the engine says it has nothing to do (`_is_idle`). Each engine describes its load as an
`EngineStats` snapshot, which its Prometheus registry (`core/engine/metrics.py`) reads, and
says how long it has held unfinished work without finishing a step (`stalled_for_s`): what
the service's stall detector turns into readiness.
"""

from __future__ import annotations

import abc
import queue
import threading
import time

from core.engine.metrics import EngineMetrics, EngineStats
from core.errors import Unavailable

IDLE_WAIT_S = 0.5  # how long an idle engine blocks on its inbox before re-checking for stop
_WAKE = object()  # posted by stop() so an idle thread notices at once


class EngineThread(abc.ABC):
    """One engine: a daemon thread running `_turn` until `stop()`."""

    def __init__(self, thread_name: str):
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._accepting = True  # False once draining or stopped: new work is refused
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=thread_name, daemon=True)
        self.metrics = EngineMetrics(self.stats)
        # time.monotonic() of the end of the last step, or of work arriving at an idle engine
        self._last_progress_s = time.monotonic()

    # -- lifecycle (any thread) ------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Refuse new work, end the thread (its current turn finishes), release resources."""
        self._accepting = False
        self._stopped.set()
        self._inbox.put(_WAKE)
        self._thread.join(timeout=timeout_s)
        self._on_stopped()

    def stop_admitting(self) -> None:
        """Drain: refuse new work with UNAVAILABLE, keep serving what was admitted."""
        self._accepting = False

    def _check_admitting(self) -> None:
        if not self._accepting:
            raise Unavailable("the core is shutting down")

    def _post(self, item) -> None:
        self._inbox.put(item)

    def stalled_for_s(self) -> float:
        """Seconds the engine has held unfinished work without finishing a step (0: none)."""
        if not self.num_unfinished:
            return 0.0
        return max(0.0, time.monotonic() - self._last_progress_s)

    def _note_progress(self) -> None:
        """A step ended, or work arrived while there was none (any thread)."""
        self._last_progress_s = time.monotonic()

    # -- what each engine supplies ---------------------------------------------------------

    @property
    @abc.abstractmethod
    def compilations_after_warmup(self) -> int:
        """Traces of its jitted functions since warm-up ended (stays 0)."""

    @property
    @abc.abstractmethod
    def num_unfinished(self) -> int:
        """Work admitted and not finished yet: requests, or inputs for the embedding engine."""

    @abc.abstractmethod
    def stats(self) -> EngineStats:
        """Its load and counters now (called from the metrics thread: reads only)."""

    @abc.abstractmethod
    def _is_idle(self) -> bool:
        """Nothing to do without new work (engine thread): the next turn may block."""

    @abc.abstractmethod
    def _turn(self, items: list) -> None:
        """Apply the posted items (possibly none), then do one step of work (engine thread)."""

    def _on_stopped(self) -> None:  # noqa: B027 (a hook: most engines hold nothing more)
        """Release what the engine holds besides its thread (after the thread ended)."""

    # -- the thread ------------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stopped.is_set():
            self._turn(self._receive(block=self._is_idle()))

    def _receive(self, block: bool) -> list:
        """Everything posted since the last turn, in order (waits up to IDLE_WAIT_S if `block`
        and nothing is there)."""
        items = []
        try:
            item = self._inbox.get(timeout=IDLE_WAIT_S) if block else self._inbox.get_nowait()
            while True:
                if item is not _WAKE:
                    items.append(item)
                item = self._inbox.get_nowait()
        except queue.Empty:
            return items

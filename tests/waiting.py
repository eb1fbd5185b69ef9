"""Waiting on conditions with deadlines: how every test that depends on *when* something happens
(a log line, a metric, a freed page, a refused connection) waits, instead of sleeping a fixed
time or asserting a duration. Deadlines are generous — a loaded 2-core machine is slow, and a
deadline only bounds how long a broken build takes to fail, it is never what a test asserts."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

# Default deadline of a wait: minutes would only delay a genuine failure, seconds flake.
DEFAULT_TIMEOUT_S = 60.0
POLL_INTERVAL_S = 0.02


def wait_until(condition: Callable[[], T], what: str, timeout_s: float = DEFAULT_TIMEOUT_S,
               interval_s: float = POLL_INTERVAL_S) -> T:
    """Call `condition` until it returns a truthy value (returned); fail naming `what` after
    `timeout_s`. The last value is part of the failure message."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s} s: {what} (last: {value!r})")
        time.sleep(interval_s)


async def async_wait_until(condition: Callable[[], T | Awaitable[T]], what: str,
                           timeout_s: float = DEFAULT_TIMEOUT_S,
                           interval_s: float = POLL_INTERVAL_S) -> T:
    """`wait_until` for a running event loop; `condition` may be a coroutine function."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if asyncio.iscoroutine(value) or isinstance(value, Awaitable):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s} s: {what} (last: {value!r})")
        await asyncio.sleep(interval_s)


class StepsHeldUntilAbort:
    """Holds a real engine's step loop after its first `free_steps` steps until something calls
    `engine.abort`, so that a cancel test can prove the cancel *stopped* work: without the
    abort the request would run to its end (the hold lasts at most `hold_s`), with it the work
    done stays far below what was asked whatever the machine's speed."""

    def __init__(self, engine, monkeypatch, free_steps: int = 1, hold_s: float = 120.0) -> None:
        import threading

        self.aborted = threading.Event()
        self.num_steps = 0
        dispatch, abort = engine.runner.dispatch, engine.abort

        def held_dispatch(batch):
            self.num_steps += 1
            if self.num_steps > free_steps:
                self.aborted.wait(timeout=hold_s)
            return dispatch(batch)

        def recorded_abort(request_id: str) -> None:
            abort(request_id)
            self.aborted.set()

        monkeypatch.setattr(engine.runner, "dispatch", held_dispatch)
        monkeypatch.setattr(engine, "abort", recorded_abort)

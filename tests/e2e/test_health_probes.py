"""The facade's probes against the session's real in-process core (conftest `grpc_core`):
`/ready` follows the core's stall detector (red while the engine's step is held with work
waiting, green once it moves), `/health` (liveness) stays green throughout, and
`/health/generate` gets one token through the core, or a 503 when the core cannot give it."""

from __future__ import annotations

import asyncio
import threading

import httpx
import pytest

from facade.app import create_app
from facade.settings import FacadeSettings
from tests.waiting import async_wait_until

STALL_TIMEOUT_S = 1.0  # the core's --stall-timeout-s in this module


@pytest.fixture(scope="module")
async def facade(grpc_core):
    """An in-process facade (its lifespan opens the channel) over the session's core."""
    app = create_app(FacadeSettings(core_address=f"127.0.0.1:{grpc_core.port}",
                                    health_generate_timeout_s=2.0))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://facade") as client:
            yield client


async def _status(client: httpx.AsyncClient, path: str) -> int:
    return (await client.get(path)).status_code


async def test_ready_turns_red_while_the_engine_is_held_and_green_once_it_moves(
        grpc_core, facade, monkeypatch):
    """A request waits on a held engine step: within the stall bound (plus the detector's poll)
    `/ready` is a 503 naming NOT_SERVING while `/health` stays 200; `/health/generate` cannot
    get its token in time (503). Once the step goes on, the request finishes, `/ready` is 200
    again and `/health/generate` answers 200 with its token."""
    engine = grpc_core.server.servicer.engine
    monkeypatch.setattr(grpc_core.server, "stall_timeout_s", STALL_TIMEOUT_S)
    release, dispatch = threading.Event(), engine.runner.dispatch

    def held_dispatch(batch):
        release.wait(timeout=120)
        return dispatch(batch)

    assert await _status(facade, "/ready") == 200
    assert await _status(facade, "/health/generate") == 200
    monkeypatch.setattr(engine.runner, "dispatch", held_dispatch)
    waiting = asyncio.ensure_future(facade.get("/health/generate"))
    try:
        await async_wait_until(
            lambda: _is_503(facade, "/ready"), "/ready 503 while the step is held",
            timeout_s=30)
        body = (await facade.get("/ready")).json()
        assert "NOT_SERVING" in body["error"]["message"]
        assert await _status(facade, "/health") == 200  # liveness is not readiness
        assert engine.stalled_for_s() > STALL_TIMEOUT_S
        held = await waiting  # its 2 s deadline passed with the engine held
        assert held.status_code == 503
        assert "DEADLINE_EXCEEDED" in held.json()["error"]["message"]
    finally:
        release.set()
    await async_wait_until(lambda: _is_200(facade, "/ready"), "/ready 200 once the engine moves",
                           timeout_s=30)
    assert (await facade.get("/health/generate")).json() == {"status": "ok"}
    await async_wait_until(lambda: engine.num_unfinished == 0, "the engine idle")


async def _is_503(client: httpx.AsyncClient, path: str) -> bool:
    return await _status(client, path) == 503


async def _is_200(client: httpx.AsyncClient, path: str) -> bool:
    return await _status(client, path) == 200

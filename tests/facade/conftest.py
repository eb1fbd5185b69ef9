"""Fixtures: the fake core and real uvicorn facades, all on one background event loop.

The servers live on their own thread's loop so that both the sync and the async OpenAI clients
(running in the test thread / pytest-asyncio's loop) can talk to them without deadlocks.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import uvicorn
from fastapi import FastAPI

from facade.app import create_app
from facade.settings import FacadeSettings
from tests.facade.fake_core import FakeCore, FakeHealth, start_fake_core

STARTUP_TIMEOUT_S = 10.0


class BackgroundLoop:
    """An asyncio loop on a daemon thread; `run()` executes a coroutine there and waits."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coroutine, timeout_s: float = STARTUP_TIMEOUT_S):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout_s)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)


@dataclass
class FacadeServer:
    server: uvicorn.Server
    task: asyncio.Task
    base_url: str  # "http://127.0.0.1:<port>"


async def start_facade(settings: FacadeSettings, app: FastAPI | None = None) -> FacadeServer:
    """Serve `app` (default: `create_app(settings)`) with uvicorn on a free loopback port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    app = app if app is not None else create_app(settings)
    config = uvicorn.Config(app, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    return FacadeServer(server, task, f"http://127.0.0.1:{sock.getsockname()[1]}")


async def stop_facade(facade: FacadeServer) -> None:
    facade.server.should_exit = True
    await facade.task


def closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def background() -> Iterator[BackgroundLoop]:
    loop = BackgroundLoop()
    yield loop
    loop.close()


@pytest.fixture(scope="session")
def core_double(background: BackgroundLoop) -> Iterator[tuple[FakeCore, FakeHealth, int]]:
    core, health = FakeCore(), FakeHealth()
    server, port = background.run(start_fake_core(core, health))
    yield core, health, port
    background.run(server.stop(grace=None))


@pytest.fixture(scope="session")
def fake_core(core_double) -> FakeCore:
    return core_double[0]


@pytest.fixture(scope="session")
def fake_health(core_double) -> FakeHealth:
    return core_double[1]


@pytest.fixture(scope="session")
def facade_url(background: BackgroundLoop, core_double) -> Iterator[str]:
    settings = FacadeSettings(core_address=f"127.0.0.1:{core_double[2]}", request_timeout_s=30)
    facade = background.run(start_facade(settings))
    yield facade.base_url
    background.run(stop_facade(facade))


@pytest.fixture(scope="session")
def dead_facade_url(background: BackgroundLoop) -> Iterator[str]:
    """A facade whose core address has nothing listening."""
    settings = FacadeSettings(core_address=f"127.0.0.1:{closed_port()}", request_timeout_s=5)
    facade = background.run(start_facade(settings))
    yield facade.base_url
    background.run(stop_facade(facade))

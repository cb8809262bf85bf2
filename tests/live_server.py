"""A real server in the test's own event loop: uvicorn on a free port, for websocket and HTTP tests.

    async with live_server(settings) as server:
        async with websockets.connect(server.ws_url + "/v1/realtime") as ws: ...
        await server.http.get("/v1/me", headers=...)

Uvicorn runs with the websocket options ``concierge serve`` uses (frame limit, no compression,
pings), so limits are tested as deployed. ``server.runtime`` is the app's runtime (same database
as the test's ``settings``). The ``live`` fixture gives one per test over the ``settings`` fixture
(parametrised sqlite/postgres); ``live_world`` builds the seeded world through its HTTP API.
For separate processes (two servers, one Redis) use tests/processes.py ``ServerProcess``.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest
import uvicorn

from backend.app import create_app
from backend.cli import uvicorn_options
from backend.runtime import Runtime
from backend.settings import Settings
from tests.world import World, build_world


@dataclass
class LiveServer:
    url: str
    ws_url: str
    settings: Settings
    runtime: Runtime
    http: httpx.AsyncClient


@contextlib.asynccontextmanager
async def live_server(settings: Settings) -> AsyncIterator[LiveServer]:
    runtime = Runtime.create(settings)
    app = create_app(settings, runtime)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        lifespan="on",
        log_level="warning",
        timeout_graceful_shutdown=5,
        **uvicorn_options(settings),
    )
    server = uvicorn.Server(config)
    server.capture_signals = contextlib.nullcontext  # type: ignore[assignment,method-assign]
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                task.result()
                raise RuntimeError("uvicorn stopped before it started")
            await asyncio.sleep(0.01)
        url = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            yield LiveServer(url, f"ws://127.0.0.1:{port}", settings, runtime, http)
    finally:
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 15)
        sock.close()


@pytest.fixture
async def live(settings: Settings) -> AsyncIterator[LiveServer]:
    async with live_server(settings) as server:
        yield server


@pytest.fixture
async def live_world(live: LiveServer) -> World:
    return await build_world(live.http, live.settings)  # type: ignore[arg-type]

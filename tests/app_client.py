"""The in-process HTTP client the tests drive the app with.

Why not Litestar's ``AsyncTestClient``: it runs the app on a portal thread and blocks the
caller's event loop for the whole of each request, so ``asyncio.gather`` over its requests runs
them one after the other, and a test of concurrent deliveries or duplicate scans never races
anything. ``AppClient`` is an ``httpx.AsyncClient`` over ``httpx.ASGITransport``: the app runs
on the test's own event loop (its lifespan entered with the client), and requests gathered
together interleave at every ``await`` inside the app, as they do on a server.
"""

from __future__ import annotations

import asyncio
from types import TracebackType

import httpx
from litestar import Litestar


class AppClient(httpx.AsyncClient):
    def __init__(self, app: Litestar, base_url: str = "http://testserver.local") -> None:
        # (httpx types the ASGI callable more loosely than Litestar does: the same protocol)
        transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
        super().__init__(transport=transport, base_url=base_url)
        self.app = app
        self._started = asyncio.Event()
        self._stop = asyncio.Event()
        self._lifespan: asyncio.Task[None] | None = None

    async def _run_lifespan(self) -> None:
        # The lifespan holds task groups (cancel scopes), which must be left by the task that
        # entered them; pytest-asyncio tears a fixture down in another task, hence a task here.
        async with self.app.lifespan():
            self._started.set()
            await self._stop.wait()

    async def __aenter__(self) -> AppClient:
        self._lifespan = asyncio.create_task(self._run_lifespan())
        started = asyncio.create_task(self._started.wait())
        await asyncio.wait({self._lifespan, started}, return_when=asyncio.FIRST_COMPLETED)
        if not self._started.is_set():  # start-up failed: its exception is raised here
            started.cancel()
            await self._lifespan
            raise RuntimeError("the app's lifespan ended during start-up")
        await super().__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> None:
        try:
            await super().__aexit__(exc_type, exc, traceback)
        finally:
            self._stop.set()
            if self._lifespan is not None:
                await self._lifespan

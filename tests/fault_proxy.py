"""A small TCP fault proxy for outage tests: put it between the app and PostgreSQL or Redis.

The shared database servers are never stopped; the proxy simulates their outage instead:

- ``cut()``: close every open connection (both directions), as a server restart does;
- ``refuse()``: from now on, accept and immediately close new connections (server down);
- ``resume()``: forward again (server back).

It runs its own event loop in a daemon thread so synchronous tests and subprocesses can use
it; ``port`` is what the app connects to (``postgresql+asyncpg://...@127.0.0.1:<port>/db``).

    with FaultProxy("127.0.0.1", 5432) as proxy:
        url = f"postgresql+asyncpg://postgres@127.0.0.1:{proxy.port}/{name}"
        ...
        proxy.outage()    # cut + refuse
        proxy.resume()
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Any


class FaultProxy:
    def __init__(self, target_host: str, target_port: int, listen_host: str = "127.0.0.1") -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.listen_host = listen_host
        self.port = 0
        self.refusing = False
        self.accepted = 0
        self.refused = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> FaultProxy:
        self._thread.start()
        self._call(self._start())
        return self

    def close(self) -> None:
        if not self._thread.is_alive():
            return
        with contextlib.suppress(Exception):
            self._call(self._close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        if not self._loop.is_running():
            self._loop.close()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- faults ----------------------------------------------------------------------------
    def cut(self) -> int:
        """Close every open connection; returns how many were cut. New ones still forward."""
        return int(self._call(self._cut()))

    def refuse(self) -> None:
        """New connections are closed at once (like a server that is down)."""
        self.refusing = True

    def outage(self) -> int:
        """``refuse()`` then ``cut()``: the server is gone until ``resume()``."""
        self.refuse()
        return self.cut()

    def resume(self) -> None:
        self.refusing = False

    @property
    def open_connections(self) -> int:
        return len(self._writers) // 2

    # -- internals -------------------------------------------------------------------------
    def _call(self, coro: Any, timeout: float = 10.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self.listen_host, 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        await self._cut()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    async def _cut(self) -> int:
        writers = list(self._writers)
        for writer in writers:
            with contextlib.suppress(Exception):
                writer.transport.abort()
        self._writers.clear()
        return len(writers) // 2

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refusing:
            self.refused += 1
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(self.target_host, self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self.accepted += 1
        self._writers.update((writer, up_writer))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError, asyncio.CancelledError):
                pass
            finally:
                with contextlib.suppress(Exception):
                    dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._writers.discard(writer)
        self._writers.discard(up_writer)

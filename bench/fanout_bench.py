"""Realtime fan-out: N clients on one property, one event published, time until all received it.

Two servers run side by side, each in its own process, served by uvicorn as ``concierge serve``
configures it (frame limit, no compression):
- **concierge**: the real app; the event is committed by ``record_event`` inside the server
  (``POST /bench/publish``, a bench-only route), then relayed to ``WS /v1/realtime`` sockets;
- **bare**: a ``websockets`` server that broadcasts a 200-byte message to every client
  (``websockets.broadcast``): the ceiling of the library on this machine.

Both stamp ``time.monotonic_ns()`` in the server just before publishing (CLOCK_MONOTONIC is
system-wide on Linux, so the bench process can subtract it). For each event, the time until the
*last* client received it is one sample; the report gives p50/p99 of those over the events, the
per-client latencies, memory per connection (server RSS growth / N), and the median of the
per-round ratios concierge/bare (rounds alternate one event on each server).

    python -m bench.fanout_bench                    # 1000 and 5000 clients, 20 events each
    python -m bench.fanout_bench --clients 200 --events 5
    BENCH_QUICK=1 python -m bench.fanout_bench      # 200 clients, 5 events

Not a test: figures depend on the machine; nothing asserts on them.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import msgspec
import websockets
from litestar import post
from litestar.params import FromQuery

from backend.dependencies import SessionDep
from backend.services.events import record_event
from bench.common import QUICK, emit, percentile

ROOT = Path(__file__).resolve().parent.parent
PAD = "x" * 120  # with the envelope, about 200 bytes on the wire


# -- servers (run as subprocesses of the bench) ----------------------------------------------


@post("/bench/publish", include_in_schema=False, status_code=200)
async def publish(session: SessionDep, property_id: FromQuery[str]) -> dict[str, int]:
    """Bench-only: commit one event from inside the server, stamped just before."""
    stamp = time.monotonic_ns()
    event = await record_event(
        session,
        property_id=property_id,
        type="bench.published",
        actor="system",
        payload={"t": stamp, "pad": PAD},
        notify=False,
    )
    await session.commit()  # here rather than after the handler: its duration is reported
    committed = _COMMITTED.pop(event.id or 0, time.monotonic_ns())
    return {"id": event.id or 0, "commit_ns": committed - stamp}


# When each bench event's COMMIT returned (noted by a commit listener, before the relay runs).
_COMMITTED: dict[int, int] = {}


def _note_commit(_engine: Any, _prev_id: int, events: list[dict[str, Any]]) -> None:
    now = time.monotonic_ns()
    for event in events:
        _COMMITTED[event["id"]] = now


def _concierge_app() -> Any:
    from backend.asgi import app_from_env
    from backend.services.events import COMMIT_LISTENERS

    COMMIT_LISTENERS.insert(0, _note_commit)
    app = app_from_env()
    app.register(publish)
    return app


def serve_concierge(port: int) -> None:
    import uvicorn

    from backend.cli import uvicorn_options
    from backend.settings import Settings

    settings = Settings.from_env()
    uvicorn.run(
        "bench.fanout_bench:_concierge_app",
        factory=True,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        backlog=8192,
        **uvicorn_options(settings),
    )


def serve_bare(port: int) -> None:
    async def main() -> None:
        clients: set[Any] = set()

        async def handler(ws: Any) -> None:
            if ws.request.path == "/control":
                async for _ in ws:
                    stamp = time.monotonic_ns()
                    message = json.dumps({"id": "1", "type": "bench", "t": stamp, "pad": PAD})
                    websockets.broadcast(clients, message)
                    await ws.send("ok")
                return
            clients.add(ws)
            try:
                await ws.wait_closed()
            finally:
                clients.discard(ws)

        async with websockets.serve(
            handler,
            "127.0.0.1",
            port,
            compression=None,
            max_size=65536,
            backlog=8192,
            ping_interval=None,
        ):
            await asyncio.Future()

    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    asyncio.run(main())


# -- the bench -------------------------------------------------------------------------------


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Round:
    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.stamp: int | None = None
        self.receipts: list[int] = []
        self.done = asyncio.Event()

    def receive(self, message: str | bytes) -> None:
        now = time.monotonic_ns()
        if self.stamp is None:
            body = msgspec.json.decode(message)
            self.stamp = int(body["data"]["t"] if "data" in body else body["t"])
        self.receipts.append(now)
        if len(self.receipts) >= self.expected:
            self.done.set()


class RawClient(asyncio.Protocol):
    """A minimal websocket client: handshake, one masked text frame out, frames counted in.

    The websockets library spends tens of microseconds per received message in Python; with
    thousands of clients in one process that, not the server, would be measured. This client
    only splits frames (servers send unmasked, unfragmented frames here).
    """

    def __init__(self, fleet: Fleet, upgraded: asyncio.Future[None]) -> None:
        self.fleet = fleet
        self.upgraded = upgraded
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.ready: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not an asyncio.Transport

    def send_text(self, text: str) -> None:
        payload = text.encode()
        mask = os.urandom(4)
        length = len(payload)
        header = (
            bytes([0x81, 0x80 | length])
            if length < 126
            else bytes([0x81, 0xFE]) + length.to_bytes(2, "big")
        )
        masked = bytes(byte ^ mask[i % 4] for i, byte in enumerate(payload))
        assert self.transport is not None
        self.transport.write(header + mask + masked)

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        if not self.upgraded.done():
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            status = bytes(buffer[: buffer.find(b"\r\n")])
            del buffer[: end + 4]
            if b" 101 " not in status:
                self.upgraded.set_exception(RuntimeError(status.decode(errors="replace")))
                return
            self.upgraded.set_result(None)
        position = 0
        size = len(buffer)
        while size - position >= 2:
            length = buffer[position + 1] & 0x7F
            header = 2
            if length == 126:
                if size - position < 4:
                    break
                length = int.from_bytes(buffer[position + 2 : position + 4], "big")
                header = 4
            elif length == 127:
                if size - position < 10:
                    break
                length = int.from_bytes(buffer[position + 2 : position + 10], "big")
                header = 10
            if size - position < header + length:
                break
            opcode = buffer[position] & 0x0F
            if opcode == 1:
                payload = bytes(buffer[position + header : position + header + length])
                self.fleet.on_text(self, payload)
            position += header + length
        del buffer[:position]


class Fleet:
    """N connected clients of one server; every message is attributed to the current round."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.clients: list[RawClient] = []
        self.round: Round | None = None
        self.stray = 0

    def on_text(self, client: RawClient, payload: bytes) -> None:
        if client.ready is not None and not client.ready.done():
            client.ready.set_result(None)  # the "ready" frame
        elif self.round is not None and b'"t":' in payload:
            self.round.receive(payload)
        else:
            self.stray += 1

    async def connect(self, host: str, port: int, path: str, count: int, auth: str | None) -> None:
        loop = asyncio.get_running_loop()
        semaphore = asyncio.Semaphore(200)
        request = (
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )

        async def one() -> None:
            async with semaphore:
                upgraded: asyncio.Future[None] = loop.create_future()
                transport, client = await loop.create_connection(
                    lambda: RawClient(self, upgraded), host, port
                )
                key = base64.b64encode(os.urandom(16)).decode()
                transport.write(request.replace("{key}", key).encode())
                await asyncio.wait_for(upgraded, 60)
                if auth is not None:
                    client.ready = loop.create_future()
                    client.send_text(auth)
                    await asyncio.wait_for(client.ready, 60)
                self.clients.append(client)

        await asyncio.gather(*(one() for _ in range(count)))

    async def measure(self, publish: Any) -> Round:
        self.round = Round(len(self.clients))
        await publish()
        await asyncio.wait_for(self.round.done.wait(), 60)
        finished, self.round = self.round, None
        return finished

    async def close(self) -> None:
        for client in self.clients:
            if client.transport is not None:
                client.transport.close()


def _summary(rounds: list[Round]) -> dict[str, Any]:
    all_received = [(max(r.receipts) - (r.stamp or 0)) / 1e6 for r in rounds]
    per_client = [(t - (r.stamp or 0)) / 1e6 for r in rounds for t in r.receipts]
    return {
        "events": len(rounds),
        "all_received_ms": {
            "p50": round(percentile(all_received, 0.5), 2),
            "p99": round(percentile(all_received, 0.99), 2),
        },
        "per_client_ms": {
            "p50": round(percentile(per_client, 0.5), 2),
            "p99": round(percentile(per_client, 0.99), 2),
        },
    }


async def _wait_http(url: str) -> None:
    async with httpx.AsyncClient() as http:
        for _ in range(300):
            with contextlib.suppress(httpx.HTTPError):
                if (await http.get(url)).status_code < 500:
                    return
            await asyncio.sleep(0.1)
    raise RuntimeError(f"{url} never answered")


async def run(clients: int, events: int, workdir: Path) -> dict[str, Any]:
    from backend.demo import seed_demo
    from backend.migrate import upgrade
    from backend.runtime import Runtime
    from backend.settings import Settings

    database = workdir / f"fanout-{clients}.db"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONCIERGE_")}
    env.update(
        CONCIERGE_DATABASE_URL=f"sqlite+aiosqlite:///{database}",
        CONCIERGE_VAR_DIR=str(workdir / "var"),
        CONCIERGE_BACKGROUND_JOBS="false",
        CONCIERGE_WS_PING_INTERVAL_SECONDS="3600",
        CONCIERGE_WS_IDLE_TIMEOUT_SECONDS="7200",
        CONCIERGE_WS_RECHECK_SECONDS="3600",
        CONCIERGE_ACCESS_TOKEN_TTL_SECONDS="7200",
        CONCIERGE_WS_SEND_QUEUE=str(max(256, events * 2)),
        CONCIERGE_LOG_LEVEL="WARNING",
        PYTHONPATH=str(ROOT),
    )
    settings = Settings.from_env({k: v for k, v in env.items() if k.startswith("CONCIERGE_")})
    await asyncio.to_thread(upgrade, settings.database_url)
    runtime = Runtime.create(settings)
    try:
        seed = await seed_demo(runtime)
    finally:
        await runtime.db.dispose()
    staff_email, staff_password = seed.accounts["staff"]

    ours_port, bare_port = _free_port(), _free_port()
    me = [sys.executable, "-m", "bench.fanout_bench"]
    ours = subprocess.Popen([*me, "--serve-concierge", str(ours_port)], env=env, cwd=ROOT)
    bare = subprocess.Popen([*me, "--serve-bare", str(bare_port)], env=env, cwd=ROOT)
    fleets = [Fleet("concierge"), Fleet("bare")]
    try:
        base = f"http://127.0.0.1:{ours_port}"
        await _wait_http(base + "/health/live")
        async with httpx.AsyncClient(base_url=base, timeout=60) as http:
            token = (
                await http.post(
                    "/v1/auth/token", json={"email": staff_email, "password": staff_password}
                )
            ).json()["access_token"]
            await asyncio.sleep(0.5)
            rss_before = {"concierge": _rss_kib(ours.pid), "bare": _rss_kib(bare.pid)}
            auth = json.dumps({"type": "auth", "token": token})
            await fleets[0].connect("127.0.0.1", ours_port, "/v1/realtime", clients, auth)
            for _ in range(300):
                with contextlib.suppress(OSError):
                    control = await websockets.connect(f"ws://127.0.0.1:{bare_port}/control")
                    break
                await asyncio.sleep(0.1)
            await fleets[1].connect("127.0.0.1", bare_port, "/", clients, None)
            await asyncio.sleep(1.0)
            rss_after = {"concierge": _rss_kib(ours.pid), "bare": _rss_kib(bare.pid)}

            commits: list[float] = []

            async def publish_ours() -> None:
                response = await http.post(
                    "/bench/publish", params={"property_id": seed.property_id}
                )
                response.raise_for_status()
                commits.append(response.json()["commit_ns"] / 1e6)

            async def publish_bare() -> None:
                await control.send("go")
                await control.recv()

            # Warm-up, then alternate one event on each server per round.
            await fleets[0].measure(publish_ours)
            await fleets[1].measure(publish_bare)
            rounds: dict[str, list[Round]] = {"concierge": [], "bare": []}
            ratios: list[float] = []
            after_commit: list[float] = []
            after_commit_ratios: list[float] = []
            for index in range(events):
                ours_round = await fleets[0].measure(publish_ours)
                bare_round = await fleets[1].measure(publish_bare)
                rounds["concierge"].append(ours_round)
                rounds["bare"].append(bare_round)
                bare_all = max(bare_round.receipts) - (bare_round.stamp or 0)
                ours_all = max(ours_round.receipts) - (ours_round.stamp or 0)
                fanout = ours_all - commits[index + 1] * 1e6  # commits[0]: the warm-up
                after_commit.append(fanout / 1e6)
                if bare_all > 0:
                    ratios.append(ours_all / bare_all)
                    after_commit_ratios.append(fanout / bare_all)
            await control.close()
    finally:
        for fleet in fleets:
            await fleet.close()
        for proc in (ours, bare):
            proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
            if proc.poll() is None:
                proc.kill()
    result: dict[str, Any] = {"clients": clients}
    for name in ("concierge", "bare"):
        grown = max(0, rss_after[name] - rss_before[name])
        result[name] = {
            **_summary(rounds[name]),
            "memory_per_connection_kib": round(grown / clients, 1),
        }
    result["concierge"]["append_and_commit_ms"] = {
        "p50": round(percentile(commits[1:], 0.5), 2),
        "p99": round(percentile(commits[1:], 0.99), 2),
        "note": "record_event + COMMIT inside the server, included in all_received_ms",
    }
    result["concierge"]["all_received_after_commit_ms"] = {
        "p50": round(percentile(after_commit, 0.5), 2),
        "p99": round(percentile(after_commit, 0.99), 2),
        "note": "the fan-out alone: from COMMIT to the last client",
    }
    result["ratio_all_received_concierge_to_bare"] = {
        "median": round(statistics.median(ratios), 2) if ratios else None,
        "median_after_commit": (
            round(statistics.median(after_commit_ratios), 2) if after_commit_ratios else None
        ),
        "rounds": len(ratios),
    }
    return result


async def main_async(client_counts: list[int], events: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="fanout-bench-") as tmp:
        runs = [await run(count, events, Path(tmp)) for count in client_counts]
    return {
        "benchmark": "fanout",
        "what": "one event to N websocket clients of one property: time until all received it",
        "event_bytes": "about 200",
        "runs": runs,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fanout_bench", description=__doc__)
    parser.add_argument("--clients", default=None, help="comma-separated client counts")
    parser.add_argument("--events", type=int, default=None, help="events per client count")
    parser.add_argument("--serve-concierge", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--serve-bare", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_concierge:
        serve_concierge(args.serve_concierge)
        return 0
    if args.serve_bare:
        serve_bare(args.serve_bare)
        return 0
    counts = [int(c) for c in (args.clients or ("200" if QUICK else "1000,5000")).split(",")]
    events = args.events or (5 if QUICK else 20)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 4 * max(counts) + 1024)), hard))
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    emit(asyncio.run(main_async(counts, events)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``concierge demo --story``: the whole journey, played against a real server, step by step.

Self-contained: it creates a fresh database under ``./var/demo/``, seeds the demo property,
starts ``concierge serve`` on a free port, and then acts as the real clients would, over HTTP
and websockets only: the lobby kiosk (its own key, its own offline state directory), a
courier, the resident's phone (device key, websocket, QR code) and a vendor's phone. Each
step prints what happened and how long it took; the server is stopped at the end.

The client-side helpers (``Api``, ``Phone``, ``Realtime``, ``ServerUnderTest``) are reused by
the multi-process tests and the journey benchmark.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO, TypeVar

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from backend.settings import Settings

T = TypeVar("T")
DEMO_DIR = Path("var") / "demo"


# --------------------------------------------------------------------------------------------
# The server under test: `concierge serve` as a child process
# --------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def settings_environment(settings: Settings, **overrides: Any) -> dict[str, str]:
    """The ``CONCIERGE_*`` environment that reproduces ``settings`` (plus overrides)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONCIERGE_")}
    values = {name: getattr(settings, name) for name in settings.__struct_fields__}
    values.update(overrides)
    for name, value in values.items():
        if value is None:
            continue
        if isinstance(value, bool):
            value = "true" if value else "false"
        env["CONCIERGE_" + name.upper()] = str(value)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


@dataclass
class ServerUnderTest:
    """``concierge serve`` in a child process (own process group) logging to a file."""

    env: dict[str, str]
    log_path: Path
    port: int = field(default_factory=free_port)
    workers: int = 1
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(  # noqa: S603 - our own CLI, fixed argv
                [
                    sys.executable,
                    "-m",
                    "backend",
                    "serve",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--workers",
                    str(self.workers),
                    "--no-migrate",
                ],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    async def wait_ready(self, within: float = 60.0) -> None:
        deadline = time.monotonic() + within
        async with httpx.AsyncClient(timeout=2.0) as client:
            while time.monotonic() < deadline:
                if self.proc is not None and self.proc.poll() is not None:
                    raise RuntimeError("the server exited:\n" + self.log_tail())
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(self.url + "/health/ready")).status_code == 200:
                        return
                await asyncio.sleep(0.1)
        raise TimeoutError("the server did not become ready:\n" + self.log_tail())

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return ""

    def stop(self) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)


# --------------------------------------------------------------------------------------------
# Clients: HTTP, websocket, a phone
# --------------------------------------------------------------------------------------------


class ApiError(Exception):
    def __init__(self, method: str, path: str, status: int, body: str) -> None:
        super().__init__(f"{method} {path} -> {status}: {body[:300]}")
        self.status = status
        try:
            self.code = json.loads(body).get("code")
        except (ValueError, AttributeError):
            self.code = None


class Api:
    """A JSON client for one server; ``call`` raises ``ApiError`` on an unexpected status."""

    def __init__(self, base_url: str, client: httpx.AsyncClient | None = None) -> None:
        self.base_url = base_url
        self.client = client or httpx.AsyncClient(base_url=base_url, timeout=30.0)

    async def call(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        headers: Mapping[str, str] | None = None,
        expect: tuple[int, ...] = (200, 201, 204),
    ) -> Any:
        response = await self.client.request(method, path, json=json, headers=dict(headers or {}))
        if response.status_code not in expect:
            raise ApiError(method, path, response.status_code, response.text)
        return response.json() if response.content else None

    async def close(self) -> None:
        await self.client.aclose()


class Realtime:
    """A ``WS /v1/realtime`` client that keeps every event it receives (with arrival time)."""

    def __init__(self, ws_url: str, token: str) -> None:
        self.ws_url = ws_url
        self.token = token
        self.events: list[dict[str, Any]] = []
        self.arrived: dict[int, float] = {}
        self.ready: dict[str, Any] = {}
        self._new = asyncio.Condition()
        self._socket: Any = None
        self._reader: asyncio.Task[None] | None = None
        self.closed: tuple[int | None, str] | None = None

    async def connect(self, after: int | None = None) -> dict[str, Any]:
        import websockets

        self._socket = await websockets.connect(
            self.ws_url + "/v1/realtime", max_size=2**20, open_timeout=10
        )
        frame: dict[str, Any] = {"type": "auth", "token": self.token}
        if after is not None:
            frame["after"] = after
        await self._socket.send(json.dumps(frame))
        while True:
            message = json.loads(await asyncio.wait_for(self._socket.recv(), 10))
            if message.get("type") == "ready":
                self.ready = message
                break
            await self._keep(message)
        self._reader = asyncio.create_task(self._read())
        return self.ready

    async def _keep(self, message: dict[str, Any]) -> None:
        if "id" not in message:
            if message.get("type") == "ping" and self._socket is not None:
                with contextlib.suppress(Exception):
                    await self._socket.send(json.dumps({"type": "pong"}))
            return
        async with self._new:
            self.arrived[int(message["id"])] = time.perf_counter()
            self.events.append(message)
            self._new.notify_all()

    async def _read(self) -> None:
        import websockets

        assert self._socket is not None
        try:
            async for raw in self._socket:
                with contextlib.suppress(ValueError, TypeError):
                    await self._keep(json.loads(raw))
        except websockets.ConnectionClosed:
            pass
        finally:
            close = getattr(self._socket, "close_code", None)
            self.closed = (close, str(getattr(self._socket, "close_reason", "") or ""))
            async with self._new:
                self._new.notify_all()

    async def wait_for(
        self,
        event_type: str,
        predicate: Callable[[dict[str, Any]], bool] = lambda _: True,
        within: float = 15.0,
    ) -> dict[str, Any]:
        """The first event of that type matching ``predicate`` (already received or coming)."""

        def find() -> dict[str, Any] | None:
            for event in self.events:
                if event.get("type") == event_type and predicate(event):
                    return event
            return None

        async def wait() -> dict[str, Any]:
            async with self._new:
                while (found := find()) is None:
                    if self.closed is not None:
                        raise ConnectionError(f"websocket closed: {self.closed}")
                    await self._new.wait()
                return found

        return await asyncio.wait_for(wait(), within)

    async def close(self) -> None:
        if self._socket is not None:
            with contextlib.suppress(Exception):
                await self._socket.close()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader


@dataclass
class Phone:
    """A phone app user: signs in, registers its Ed25519 key, asks for credentials."""

    api: Api
    email: str
    password: str
    key: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)
    access_token: str = ""
    user_id: str = ""
    device_id: str = ""

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.access_token}"}

    async def sign_in(self) -> None:
        tokens = await self.api.call(
            "POST", "/v1/auth/token", json={"email": self.email, "password": self.password}
        )
        self.access_token = tokens["access_token"]
        self.user_id = (await self.api.call("GET", "/v1/me", headers=self.headers))["id"]

    async def register_device(self, platform: str = "android") -> str:
        """Register this phone's key and a push token (the log sender shows its fingerprint)."""
        from kiosk.assertion import public_key_b64

        body = {
            "platform": platform,
            "public_key": public_key_b64(self.key),
            "push_token": f"demo-{platform}-" + secrets.token_urlsafe(24),
        }
        self.device_id = (
            await self.api.call("POST", "/v1/devices", json=body, headers=self.headers)
        )["id"]
        return self.device_id

    async def credentials(self, **grant: Any) -> list[dict[str, Any]]:
        body = {"device_id": self.device_id, **grant}
        answer = await self.api.call("POST", "/v1/credentials", json=body, headers=self.headers)
        result: list[dict[str, Any]] = answer["credentials"]
        return result

    def present(self, credential: dict[str, Any]) -> str:
        """``<credential>~<kb-jwt>`` with a fresh random nonce, as the QR screen shows it."""
        from kiosk.credential import make_presentation

        return make_presentation(
            credential["token"],
            self.key,
            aud=credential["kiosk_id"],
            nonce=secrets.token_urlsafe(16),
        )


# --------------------------------------------------------------------------------------------
# The story
# --------------------------------------------------------------------------------------------


class Narrator:
    """Prints numbered steps with their latency (and detail lines under them)."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.count = 0
        self.failures = 0

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def detail(self, text: str) -> None:
        print(f"        {text}", file=self.out, flush=True)

    async def step(self, title: str, action: Awaitable[T]) -> T:
        self.count += 1
        started = time.perf_counter()
        result = await action
        elapsed = (time.perf_counter() - started) * 1000
        print(f"  {self.count:>2}. {title:<66} {elapsed:>8.1f} ms", file=self.out, flush=True)
        return result


def _read_lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []


async def _wait_push(path: Path, needle: str, within: float = 15.0) -> dict[str, Any]:
    """The first push the log sender recorded whose JSON mentions ``needle``."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        for line in await asyncio.to_thread(_read_lines, path):
            if needle in line:
                record: dict[str, Any] = json.loads(line)
                return record
        await asyncio.sleep(0.1)
    raise TimeoutError(f"no push mentioning {needle} in {path}")


def _push_text(record: dict[str, Any]) -> str:
    message = record.get("message", record)
    notification = message.get("notification") or {}
    title = notification.get("title") or ""
    body = notification.get("body") or ""
    return f'"{title}" / "{body}"' if title or body else json.dumps(message)[:160]


async def _seed(settings: Settings) -> Any:
    from backend.demo import seed_demo
    from backend.migrate import upgrade
    from backend.runtime import Runtime

    await asyncio.to_thread(upgrade, settings.database_url)
    runtime = Runtime.create(settings)
    try:
        return await seed_demo(runtime)
    finally:
        await runtime.db.dispose()


async def _play(settings: Settings, demo_dir: Path, out: TextIO) -> int:
    from kiosk import agent, qr
    from kiosk.client import Offline, ServerClient

    n = Narrator(out)
    n.say("Concierge story: the journey of a parcel and a vendor visit, played by real clients")
    n.say(f"(fresh database and state under {demo_dir}/; latencies measured on this machine)")
    seed = await n.step("database migrated, demo property seeded", _seed(settings))
    server = ServerUnderTest(
        settings_environment(settings, background_jobs=True), demo_dir / "server.log"
    )
    server.start()
    api = Api(server.url)
    realtime: list[Realtime] = []
    try:
        await n.step(f"server ready at {server.url}", server.wait_ready())
        kiosk_dir = demo_dir / "kiosk"
        kiosk = await n.step(
            "lobby kiosk enrolled with its one-time code (its own Ed25519 key)",
            agent.enroll(server.url, seed.enrollment_code, kiosk_dir),
        )
        online = ServerClient(kiosk)
        doc = await n.step(
            "kiosk synced (signing keys, revocations, compartments)", agent.sync(kiosk, online)
        )
        compartments = {c["label"]: c for c in doc.get("compartments", [])}
        n.detail(f"{len(doc['jwks']['keys'])} signing key(s), {len(compartments)} compartments")

        resident = Phone(api, *seed.accounts["resident"])
        await n.step("resident signs in on the phone app", resident.sign_in())
        await n.step("resident's phone registers its device key", resident.register_device())
        resident_ws = Realtime(server.ws_url, resident.access_token)
        realtime.append(resident_ws)
        await n.step("resident's websocket connected (WS /v1/realtime)", resident_ws.connect())

        tracking = "1Z" + secrets.token_hex(6).upper()
        intake = await n.step(
            "courier scans a parcel for 4B at the kiosk: compartment assigned",
            online.arequest(
                "POST",
                "/v1/kiosk/deliveries",
                json={"carrier": "UPS", "tracking": tracking, "unit": "4B", "size": "S"},
            ),
        )
        parcel_id = intake["parcel_id"]
        n.detail(f"parcel {parcel_id} -> compartment {intake['compartment']['label']}")
        deposited_at = time.perf_counter()
        await n.step(
            "courier closes the door: parcel deposited",
            online.arequest("POST", f"/v1/kiosk/deliveries/{parcel_id}/deposited", json={}),
        )
        event = await n.step(
            "resident's websocket receives parcel.deposited",
            resident_ws.wait_for(
                "parcel.deposited", lambda e: e["data"].get("parcel_id") == parcel_id
            ),
        )
        n.detail(
            f"event {event['id']} arrived {(resident_ws.arrived[int(event['id'])] - deposited_at) * 1000:.1f} ms after the deposit call"
        )
        push_log = Path(settings.push_log_path or Path(settings.var_dir) / "push.log")
        record = await n.step(
            "push notification handed to the log sender", _wait_push(push_log, parcel_id)
        )
        n.detail(f"push: {_push_text(record)}  ({push_log})")

        credential = (
            await n.step(
                "resident's phone gets a one-time pickup credential",
                resident.credentials(parcel_id=parcel_id),
            )
        )[0]
        presentation = resident.present(credential)
        qr_path = demo_dir / "pickup-qr.png"
        await n.step(
            "phone renders the presentation as a QR code (PNG)",
            asyncio.to_thread(qr.save, presentation, qr_path),
        )
        n.detail(
            f"{qr_path}: QR version {qr.version_of(presentation)}, {len(presentation)} characters"
        )

        # The kiosk loses its network: everything below happens on the kiosk alone.
        offline = ServerClient(kiosk)
        kiosk.config = type(kiosk.config)(
            server_url=f"http://127.0.0.1:{free_port()}",
            kiosk_id=kiosk.config.kiosk_id,
            property_id=kiosk.config.property_id,
        )
        try:
            await offline.arequest("GET", "/v1/kiosk/sync")
            n.detail("unexpected: the kiosk still reached a server")
        except Offline:
            n.detail("kiosk network cut: the server is unreachable from the kiosk")
        scanned = await n.step(
            "kiosk camera decodes the QR code", asyncio.to_thread(qr.decode, qr_path)
        )
        decision = await n.step(
            "kiosk verifies offline (signatures, audience, expiry, holder key)",
            asyncio.to_thread(kiosk.present, scanned or ""),
        )
        n.detail(
            f"decision: granted={decision.granted} reason={decision.reason} target={decision.target}"
        )
        if not decision.granted:
            raise RuntimeError(f"the kiosk refused the credential: {decision.reason}")
        again = kiosk.verifier.check(scanned or "")
        n.detail(f"same QR scanned again: granted={again.granted} reason={again.reason}")

        kiosk.config = type(kiosk.config)(
            server_url=server.url,
            kiosk_id=kiosk.config.kiosk_id,
            property_id=kiosk.config.property_id,
        )
        acked = await n.step("kiosk back online: journal uploaded", agent.upload(kiosk, online))
        n.detail(f"server acknowledged journal through seq {acked}")
        await n.step(
            "resident's websocket receives parcel.picked_up",
            resident_ws.wait_for(
                "parcel.picked_up", lambda e: e["data"].get("parcel_id") == parcel_id
            ),
        )

        await _vendor_visit(n, api, server, seed, kiosk, online, compartments, resident_ws)
        n.say(f"story complete: {n.count} steps. Server log: {server.log_path}")
        return 0
    finally:
        for client in realtime:
            await client.close()
        await api.close()
        server.stop()


async def _vendor_visit(
    n: Narrator,
    api: Api,
    server: ServerUnderTest,
    seed: Any,
    kiosk: Any,
    online: Any,
    compartments: dict[str, dict[str, Any]],
    resident_ws: Realtime | None = None,
) -> None:
    from kiosk import agent

    staff = Phone(api, *seed.accounts["staff"])
    vendor = Phone(api, *seed.accounts["vendor"])
    await n.step("staff and vendor sign in", asyncio.gather(staff.sign_in(), vendor.sign_in()))
    pid = seed.property_id
    units = await api.call(
        "GET", f"/v1/staff/properties/{pid}/units?limit=100", headers=staff.headers
    )
    unit_id = next(u["id"] for u in units["items"] if u["label"] == "4B")
    doors = await api.call("GET", f"/v1/staff/properties/{pid}/doors", headers=staff.headers)
    door_id = doors["items"][0]["id"]
    key = await n.step(
        "staff registers the 4B unit key",
        api.call(
            "POST",
            f"/v1/staff/properties/{pid}/keys",
            json={"label": "4B unit key", "kind": "unit", "unit_id": unit_id},
            headers=staff.headers,
        ),
    )
    now = datetime.now(UTC)
    work_order = await n.step(
        "staff schedules a plumber visit to 4B (window open now, 2 h)",
        api.call(
            "POST",
            f"/v1/staff/properties/{pid}/work-orders",
            json={
                "vendor_user_id": vendor.user_id,
                "unit_id": unit_id,
                "description": "Kitchen sink leak",
                "starts_at": (now - timedelta(minutes=1)).isoformat(),
                "ends_at": (now + timedelta(hours=2)).isoformat(),
                "door_ids": [door_id],
                "key_ids": [key["id"]],
            },
            headers=staff.headers,
        ),
    )
    key_compartment = compartments["K1"]["id"]
    await n.step(
        "staff places the key in key compartment K1 for the visit",
        api.call(
            "POST",
            f"/v1/staff/keys/{key['id']}/place",
            json={"compartment_id": key_compartment, "work_order_id": work_order["id"]},
            headers=staff.headers,
        ),
    )
    await n.step("kiosk syncs", agent.sync(kiosk, online))
    await n.step("vendor's phone registers its device key", vendor.register_device("ios"))
    credential = (
        await n.step(
            "vendor gets a credential for the key compartment",
            vendor.credentials(
                work_order_id=work_order["id"], target=f"compartment:{key_compartment}"
            ),
        )
    )[0]
    decision = await n.step(
        "kiosk verifies the vendor's QR offline and opens K1",
        asyncio.to_thread(kiosk.present, vendor.present(credential)),
    )
    n.detail(
        f"decision: granted={decision.granted} reason={decision.reason} target={decision.target}"
    )
    await n.step("kiosk uploads its journal", agent.upload(kiosk, online))
    held = await n.step(
        "staff asks: who holds the 4B key?",
        api.call("GET", f"/v1/staff/keys/{key['id']}", headers=staff.headers),
    )
    holder = (held.get("holder") or {}).get("user_id")
    n.detail(
        f"key state {held['state']}, holder {'the vendor' if holder == vendor.user_id else holder}"
    )
    await n.step(
        "vendor returns the key into K1 (kiosk journals key.returned)",
        asyncio.to_thread(
            kiosk.journal_append,
            "key.returned",
            {"key_id": key["id"], "compartment_id": key_compartment, "sub": vendor.user_id},
        ),
    )
    await n.step("kiosk uploads its journal", agent.upload(kiosk, online))
    back = await api.call("GET", f"/v1/staff/keys/{key['id']}", headers=staff.headers)
    n.detail(f"key state {back['state']}, holder {back.get('holder')}")
    custody = await n.step(
        "staff reads the key's chain of custody",
        api.call("GET", f"/v1/staff/keys/{key['id']}/custody", headers=staff.headers),
    )
    items = custody.get("items", custody) if isinstance(custody, dict) else custody
    n.detail(" -> ".join(str(m.get("action") or m.get("state") or m.get("type")) for m in items))
    if resident_ws is not None:
        seen = [
            e["type"]
            for e in resident_ws.events
            if e["type"].split(".")[0] in ("work_order", "key")
        ]
        n.detail("the resident's websocket saw: " + (", ".join(seen) or "nothing about the visit"))


def play_story(settings: Settings, out: TextIO | None = None, demo_dir: Path | None = None) -> int:
    """Run the story against a throwaway server; 0 when every step worked."""
    stream = out or sys.stdout
    directory = (demo_dir or DEMO_DIR).resolve()
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    story_settings = Settings(
        **{
            **{name: getattr(settings, name) for name in settings.__struct_fields__},
            "database_url": f"sqlite+aiosqlite:///{directory / 'concierge.db'}",
            "var_dir": str(directory),
            "push_log_path": str(directory / "push.log"),
            "redis_url": None,
        }
    )
    # The story prints its own lines; request logs of the HTTP client would drown them.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        return asyncio.run(_play(story_settings, directory, stream))
    except Exception as exc:  # the story is a demo: say what broke, plainly, and fail
        print(f"story stopped: {type(exc).__name__}: {exc}", file=stream, flush=True)
        print(f"the server's log is in {directory / 'server.log'}", file=stream, flush=True)
        return 1

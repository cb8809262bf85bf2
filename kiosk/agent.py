"""The kiosk agent: enrollment, sync, journal upload and the server's command channel.

The agent is what keeps a kiosk's offline decisions honest over time: it pulls keys,
revocations, compartments, doors and policy (``GET /v1/kiosk/sync``), sets the kiosk's clock
from the authenticated ``server_time``, pushes the journal until acknowledged
(``POST /v1/kiosk/journal``), and executes ``open``/``sync`` commands from
``WS /v1/kiosk/channel``. When the server is unreachable it backs off (exponential, jittered)
and keeps logging how old its revocation list is; verification carries on offline regardless.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import httpx

from kiosk.assertion import sign_assertion
from kiosk.client import Backoff, Offline, ServerClient, ServerError
from kiosk.credential import public_key_b64url
from kiosk.state import KioskConfig, KioskState, NotEnrolled, load_or_create_key
from kiosk.store import UPLOAD_BATCH

log = logging.getLogger("kiosk.agent")

_SYNC_KEYS = ("kiosk_id", "property_id", "issuer", "jwks", "revocations", "server_time")


class EnrollmentFailed(Exception):
    pass


async def enroll(
    server_url: str,
    code: str,
    state_dir: str | Path,
    *,
    http: httpx.AsyncClient | None = None,
) -> KioskState:
    """Enroll with a one-time code; the key is generated here and never leaves ``state_dir``."""
    directory = Path(state_dir)
    key = load_or_create_key(directory)
    body = {"enrollment_code": code, "public_key": public_key_b64url(key)}
    try:
        if http is not None:
            response = await http.post("/v1/kiosk/enroll", json=body)
        else:
            async with httpx.AsyncClient(timeout=10.0) as client:
                response = await client.post(server_url.rstrip("/") + "/v1/kiosk/enroll", json=body)
    except httpx.TransportError as exc:
        raise Offline(type(exc).__name__) from None
    if response.status_code != 200:
        try:
            code_name = response.json().get("code")
        except ValueError:
            code_name = None
        raise EnrollmentFailed(code_name or f"status {response.status_code}")
    answer = response.json()
    config = KioskConfig(
        server_url=server_url, kiosk_id=answer["kiosk_id"], property_id=answer["property_id"]
    )
    return KioskState.create(directory, config, key)


def _check_sync_document(state: KioskState, doc: Any) -> dict[str, Any]:
    if not isinstance(doc, dict) or any(name not in doc for name in _SYNC_KEYS):
        raise ServerError(200, "bad_sync_document", "sync document incomplete")
    if doc["kiosk_id"] != state.config.kiosk_id:
        raise ServerError(200, "bad_sync_document", "sync document for another kiosk")
    return doc


def _after_sync(state: KioskState, doc: dict[str, Any]) -> None:
    skew = float((doc.get("policy") or {}).get("clock_skew_seconds", 30))
    state.store.prune_spent(state.now(), skew)
    # The server may already hold entries we still keep (an upload whose answer was lost).
    through = doc.get("journal_accepted_through")
    if isinstance(through, int) and through > state.store.acked_through():
        state.store.acknowledge(through)


async def sync(state: KioskState, client: ServerClient) -> dict[str, Any]:
    """Pull the sync document, store it, set the clock from the server's time."""
    started = time.monotonic()
    doc = _check_sync_document(state, await client.arequest("GET", "/v1/kiosk/sync"))
    half_rtt = (time.monotonic() - started) / 2
    state.store.save_sync(doc, float(doc["server_time"]) + half_rtt)
    _after_sync(state, doc)
    return doc


def sync_blocking(state: KioskState, client: ServerClient) -> dict[str, Any]:
    started = time.monotonic()
    doc = _check_sync_document(state, client.request("GET", "/v1/kiosk/sync"))
    half_rtt = (time.monotonic() - started) / 2
    state.store.save_sync(doc, float(doc["server_time"]) + half_rtt)
    _after_sync(state, doc)
    return doc


async def upload(state: KioskState, client: ServerClient) -> int:
    """Upload pending journal entries in batches; returns the acknowledged seq."""
    while True:
        entries = state.store.pending_entries(limit=UPLOAD_BATCH)
        if not entries:
            return state.store.acked_through()
        answer = await client.arequest("POST", "/v1/kiosk/journal", json={"entries": entries})
        before = state.store.acked_through()
        state.store.acknowledge(int(answer.get("accepted_through", 0)))
        if state.store.acked_through() == before:
            return before


def channel_url(server_url: str) -> str:
    base = server_url.rstrip("/")
    if base.startswith("https://"):
        base = "wss://" + base[len("https://") :]
    elif base.startswith("http://"):
        base = "ws://" + base[len("http://") :]
    return base + "/v1/kiosk/channel"


class Agent:
    """``run()``: sync, upload, hold the command channel; back off while offline."""

    def __init__(
        self,
        state: KioskState,
        client: ServerClient | None = None,
        *,
        sync_interval: float = 60.0,
        upload_interval: float = 5.0,
    ) -> None:
        self.state = state
        self.client = client or ServerClient(state)
        self.sync_interval = sync_interval
        self.upload_interval = upload_interval
        self.backoff = Backoff()
        self.last_sync_ok: float | None = None

    # -- one round ----------------------------------------------------------------------

    async def sync_and_upload(self) -> None:
        await sync(self.state, self.client)
        self.last_sync_ok = time.monotonic()
        await upload(self.state, self.client)

    def report_staleness(self) -> float | None:
        age = self.state.verifier.revocation_age()
        log.info(
            "kiosk.revocation_list_age seconds=%s pending_journal=%d",
            "never" if age is None else f"{age:.0f}",
            len(self.state.store.pending_entries(limit=10_000)),
        )
        return age

    # -- commands -------------------------------------------------------------------------

    async def handle_command(self, frame: dict[str, Any]) -> dict[str, Any]:
        """Execute one command frame; the answer is the ack frame to send."""
        command_id = str(frame.get("id", ""))
        action = frame.get("action")
        ok, detail = False, "unknown_action"
        if action == "open":
            target = None
            if isinstance(frame.get("door_id"), str):
                target = f"door:{frame['door_id']}"
            elif isinstance(frame.get("compartment_id"), str):
                target = f"compartment:{frame['compartment_id']}"
            trust = self.state.verifier.trust()
            if target is None or trust is None or target not in trust.targets:
                ok, detail = False, "unknown_target"
            else:
                ok = self.state.doors.open(target, reason=f"command:{frame.get('reason', '')}")
                detail = "opened" if ok else "driver_refused"
            self.state.journal_append(
                "command.executed",
                {
                    "command_id": command_id,
                    "action": "open",
                    "target": target,
                    "reason": str(frame.get("reason", ""))[:200],
                    "ok": ok,
                },
            )
        elif action == "sync":
            try:
                await self.sync_and_upload()
                ok, detail = True, "synced"
            except (Offline, ServerError) as exc:
                ok, detail = False, f"sync_failed: {type(exc).__name__}"
        return {"type": "ack", "id": command_id, "ok": ok, "detail": detail}

    async def _channel(self, stop: asyncio.Event) -> None:
        """Hold the command channel until it drops or ``stop`` is set."""
        from websockets.asyncio.client import connect

        async with connect(channel_url(self.state.config.server_url), open_timeout=10) as ws:
            assertion = sign_assertion(
                self.state.key, self.state.config.kiosk_id, now=self.state.now()
            )
            await ws.send(json.dumps({"type": "auth", "assertion": assertion}))
            ready = json.loads(await asyncio.wait_for(ws.recv(), timeout=10))
            if ready.get("type") != "ready":
                raise Offline(f"channel refused: {ready.get('type')}")
            log.info("kiosk.channel_ready kiosk_id=%s", self.state.config.kiosk_id)
            self.backoff.reset()
            # Commands are answered at once; syncs and uploads run beside them, so a slow
            # server call never delays an acknowledgement.
            periodic = asyncio.ensure_future(self._poll(stop))
            receiver = asyncio.ensure_future(self._receive(ws))
            try:
                done, _ = await asyncio.wait(
                    {periodic, receiver}, return_when=asyncio.FIRST_COMPLETED
                )
                for task in done:
                    task.result()  # re-raise Offline / connection errors for the backoff
                if receiver in done:
                    raise Offline("command channel closed")
            finally:
                for task in (periodic, receiver):
                    task.cancel()
                    with contextlib.suppress(BaseException):
                        await task

    async def _receive(self, ws: Any) -> None:
        async for raw in ws:
            frame = json.loads(raw)
            if isinstance(frame, dict) and frame.get("type") == "command":
                await ws.send(json.dumps(await self.handle_command(frame)))

    async def _periodic(self) -> None:
        due = self.last_sync_ok is None or (
            time.monotonic() - self.last_sync_ok >= self.sync_interval
        )
        if due:
            await self.sync_and_upload()
            self.report_staleness()
        elif self.state.store.pending_entries(limit=1):
            await upload(self.state, self.client)
        self.state.store.touch_floor()

    async def _poll(self, stop: asyncio.Event) -> None:
        """Without a command channel: sync and upload on a timer."""
        while not stop.is_set():
            await self._periodic()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.upload_interval)

    async def run(self, stop: asyncio.Event | None = None) -> None:
        stop = stop or asyncio.Event()
        from websockets.exceptions import InvalidStatus, WebSocketException

        use_channel = True
        while not stop.is_set():
            try:
                await self.sync_and_upload()
                self.report_staleness()
                self.backoff.reset()
                if use_channel:
                    try:
                        await self._channel(stop)
                    except InvalidStatus as exc:
                        # The server has no command channel (or refused this kiosk): poll.
                        log.warning("kiosk.channel_unavailable status=%s", exc.response.status_code)
                        use_channel = False
                else:
                    await self._poll(stop)
            except (Offline, OSError, TimeoutError, WebSocketException, ServerError) as exc:
                delay = self.backoff.next_delay()
                log.warning("kiosk.offline error=%s retry_in=%.1fs", type(exc).__name__, delay)
                self.report_staleness()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=delay)


def open_state(state_dir: str | Path) -> KioskState:
    """``KioskState.open`` with the not-enrolled case re-raised for the CLI."""
    try:
        return KioskState.open(state_dir)
    except (FileNotFoundError, KeyError, ValueError) as exc:
        raise NotEnrolled(str(exc)) from None

"""``WS /v1/kiosk/channel``: commands to kiosks in realtime, acknowledged, and kiosk presence.

Protocol (contracts.md):
- kiosk -> server first frame ``{"type": "auth", "assertion": "<kiosk assertion JWT>"}`` (the same
  short-lived, single-use assertion as the kiosk HTTP API); server -> ``{"type": "ready", "kiosk_id"}``.
  A refused assertion closes with 4013; no auth frame in ``ws_auth_timeout_seconds``: 4008.
- server -> kiosk ``{"type": "command", "id", "action": "open", "door_id" | "compartment_id", "reason"}``
  or ``{"type": "command", "id", "action": "sync"}``; kiosk -> server ``{"type": "ack", "id", "ok", "detail"}``.
- pings both ways (``{"type": "ping"}`` -> ``{"type": "pong"}``; answering is optional for kiosks:
  no idle close, dead kiosks are detected by protocol-level pings); frame limits as for apps. A
  second connection of the same kiosk replaces the first (closed with 4012).

Presence: when a kiosk connects, the hub claims the kiosk's lease in the database (which process
holds its channel, until when; realtime/presence.py), then records ``kiosk.online`` unless that
is already its last presence event. When it disconnects, the lease is expired and, unless it is
connected again anywhere within ``kiosk_offline_grace_seconds`` (this process, Redis's owner key,
or an unexpired lease of another process), ``kiosk.offline`` is recorded. If the holding process
dies instead, its leases stop being renewed and the presence sweeper of any other server process
(or ``concierge worker``) records the ``kiosk.offline`` once the lease lapsed longer than the
grace. Both are property events without unit or user, so staff see them; every check-then-record
runs under the event append lock, so two processes never record the same transition twice.

``send_command(runtime, kiosk_id, command, timeout)`` returns the kiosk's ack. A kiosk connected to
another process is reached through Redis when it is configured, else through the database: the
command is addressed to the holder of the kiosk's presence lease, which polls for it and writes
the ack back (realtime/commands.py). It raises ``KioskOffline`` (409 ``kiosk_offline``) when no
channel is connected anywhere or no ack arrives in time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from datetime import timedelta
from typing import Any

from litestar import WebSocket, websocket
from litestar.exceptions import WebSocketDisconnect

from backend import errors
from backend.models.base import utcnow
from backend.runtime import Runtime
from backend.services.kiosks import authenticate_kiosk
from realtime import commands, presence, protocol
from realtime.presence import record_presence, settle_offline
from realtime.protocol import Ack, Close, KioskAuth, Ping, Pong, encode, parse_client_frame
from realtime.relay import Hub, current_hub, get_hub
from realtime.websocket import CLOSE_DRAIN_SECONDS, close_socket, receive_text, text_event

log = logging.getLogger("concierge.realtime.kiosk")


class KioskConnection:
    def __init__(
        self,
        socket: WebSocket[Any, Any, Any],
        runtime: Runtime,
        hub: Hub,
        kiosk_id: str,
        property_id: str,
    ) -> None:
        self.socket = socket
        self.runtime = runtime
        self.settings = runtime.settings
        self.hub = hub
        self.kiosk_id = kiosk_id
        self.property_id = property_id
        now = time.monotonic()
        self.last_received = now
        self.last_ping = now
        self.pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self.send_lock = asyncio.Lock()
        self.closing: Close | None = None
        self.handler_task = asyncio.current_task()

    async def _send(self, frame: dict[str, Any]) -> None:
        async with self.send_lock:
            await self.socket.send(text_event(encode(frame)))

    async def command(self, command: dict[str, Any], wait_seconds: float) -> dict[str, Any]:
        """Send one command and wait for its ack; TimeoutError when none arrives."""
        if self.closing is not None:
            raise errors.KioskOffline("The kiosk is disconnecting")
        given = command.get("id")
        command_id = secrets.token_urlsafe(12)
        if isinstance(given, str) and 0 < len(given) <= 64 and given not in self.pending:
            command_id = given  # the caller's id (e.g. the audited override id)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.pending[command_id] = future
        try:
            frame = {**command, "type": "command", "id": command_id}
            await asyncio.wait_for(self._send(frame), wait_seconds)
            return await asyncio.wait_for(future, wait_seconds)
        finally:
            self.pending.pop(command_id, None)

    def sweep(self, now: float) -> None:
        if self.closing is not None:
            return
        # No idle close here: kiosk agents need not answer application pings; a dead kiosk is
        # found by the server's protocol-level keepalive (uvicorn ws_ping_interval/timeout).
        if now - self.last_ping >= self.settings.ws_ping_interval_seconds:
            self.last_ping = now
            asyncio.get_running_loop().create_task(self._ping())

    async def _ping(self) -> None:
        with contextlib.suppress(Exception):
            await self._send({"type": "ping"})

    def shutdown(self) -> None:
        self.close(Close.of(protocol.GOING_AWAY))

    def _fail_pending(self) -> None:
        for future in self.pending.values():
            if not future.done():
                future.set_exception(errors.KioskOffline("The kiosk disconnected"))

    def disconnected(self) -> None:
        """The socket is gone (client closed, or our close completed)."""
        if self.closing is None:
            self.closing = Close.of(protocol.GOING_AWAY)
        self._fail_pending()

    def close(self, close: Close) -> None:
        if self.closing is not None:
            return
        self.closing = close
        self._fail_pending()
        asyncio.get_running_loop().create_task(self._close())

    async def _close(self) -> None:
        assert self.closing is not None
        try:
            await asyncio.wait_for(
                self.socket.close(self.closing.code, self.closing.reason), CLOSE_DRAIN_SECONDS
            )
        except Exception:
            if self.handler_task is not None:
                self.handler_task.cancel()

    async def read(self) -> None:
        max_bytes = self.settings.ws_max_message_bytes
        while self.closing is None:
            raw = await receive_text(self.socket)
            self.last_received = time.monotonic()
            frame = parse_client_frame(raw, max_bytes, channel="kiosk")
            if isinstance(frame, Close):
                self.close(frame)
            elif isinstance(frame, Ack):
                future = self.pending.get(frame.id)
                if future is not None and not future.done():
                    future.set_result({"id": frame.id, "ok": frame.ok, "detail": frame.detail})
            elif isinstance(frame, Ping):
                await self._send({"type": "pong"})
            elif isinstance(frame, Pong):
                pass
            else:
                self.close(Close.of(protocol.BAD_FRAME, "unexpected frame"))


async def _report_offline_later(
    runtime: Runtime, hub: Hub, kiosk_id: str, property_id: str
) -> None:
    """The holder's own, timely ``kiosk.offline``; the presence sweeper of any process records it
    instead if this process dies before (the lease was expired on disconnect)."""
    await asyncio.sleep(runtime.settings.kiosk_offline_grace_seconds)
    try:
        if await hub.kiosk_online_anywhere(kiosk_id):
            return
        # Re-checked under the append lock, by the sweeper's rule (a lease that lapsed less
        # than the grace ago still counts: the kiosk came back and left again meanwhile).
        grace = timedelta(seconds=runtime.settings.kiosk_offline_grace_seconds)
        await settle_offline(runtime, kiosk_id, property_id, expired_before=utcnow() - grace)
    except Exception:
        log.exception("could not record kiosk.offline for %s", kiosk_id)


def _track(runtime: Runtime, coroutine: Any) -> None:
    task = asyncio.get_running_loop().create_task(coroutine)
    runtime.background.append(task)
    task.add_done_callback(
        lambda done: runtime.background.remove(done) if done in runtime.background else None
    )


@websocket("/v1/kiosk/channel", name="kiosk_channel")
async def kiosk_channel(socket: WebSocket[Any, Any, Any]) -> None:
    """Commands for this kiosk (remote open, sync now) and its presence; assertion in the first frame."""
    runtime: Runtime = socket.app.state.runtime
    settings = runtime.settings
    await socket.accept()
    try:
        hub = await get_hub(runtime)
        try:
            raw = await asyncio.wait_for(receive_text(socket), settings.ws_auth_timeout_seconds)
        except TimeoutError:
            await close_socket(socket, Close.of(protocol.AUTH_TIMEOUT))
            return
        frame = parse_client_frame(raw, settings.ws_max_message_bytes, channel="kiosk")
        if isinstance(frame, Close):
            await close_socket(socket, frame)
            return
        if not isinstance(frame, KioskAuth):
            await close_socket(socket, Close.of(protocol.BAD_FRAME, "the first frame must be auth"))
            return
        try:
            async with runtime.db.session() as session:
                kiosk = await authenticate_kiosk(session, runtime, frame.assertion, utcnow())
                kiosk_id, property_id = kiosk.id, kiosk.property_id
        except errors.ConciergeError:
            await close_socket(socket, Close.of(protocol.INVALID_ASSERTION))
            return
        connection = KioskConnection(socket, runtime, hub, kiosk_id, property_id)
        replaced = await hub.kiosk_connected(connection)  # claims the lease first
        if isinstance(replaced, KioskConnection):
            replaced.close(Close.of(protocol.REPLACED))
        # Only now: "ready" promises that a command sent from any process reaches this socket.
        await connection._send({"type": "ready", "kiosk_id": kiosk_id})
        _track(runtime, record_presence(runtime, kiosk_id, property_id, online=True))
        try:
            await connection.read()
        except (WebSocketDisconnect, asyncio.CancelledError):
            pass
        finally:
            connection.disconnected()
            await hub.kiosk_disconnected(connection)
            if hub.kiosks.get(kiosk_id) is None:
                _track(runtime, _report_offline_later(runtime, hub, kiosk_id, property_id))
    except WebSocketDisconnect:
        return
    except Exception:
        log.exception("kiosk channel failed")
        await close_socket(socket, Close.of(protocol.INTERNAL))


async def send_command(
    runtime: Runtime,
    kiosk_id: str,
    command: dict[str, Any],
    timeout: float,  # noqa: ASYNC109 (the contract names it)
) -> dict[str, Any]:
    """Deliver ``command`` to the kiosk's channel and return its ack ``{id, ok, detail}``.

    The kiosk may be connected to this process, or to another: then the command travels over
    Redis when it is configured, else through the database to the holder of the kiosk's
    presence lease (realtime/commands.py; call this outside any open transaction). Raises
    ``errors.KioskOffline`` when no channel of that kiosk is connected anywhere or when it does
    not acknowledge within ``timeout`` seconds.
    """
    hub = current_hub(runtime)
    if hub.started or hub.redis is not None:
        await hub.start()
        link = hub.kiosks.get(kiosk_id)
        if link is not None:
            try:
                return await link.command(command, timeout)
            except TimeoutError:
                raise errors.KioskOffline("The kiosk did not acknowledge in time") from None
        if hub.redis is not None:
            return await _through_redis(hub, kiosk_id, command, timeout)
    # No socket of this kiosk here (a hub that never started has none) and no Redis.
    holder = await presence.holder(runtime, kiosk_id, utcnow())
    if holder is None or holder == hub.process_id:
        raise errors.KioskOffline("The kiosk is not connected")
    result = await commands.route(runtime, hub.reads, holder, kiosk_id, command, timeout)
    return _remote_ack(result)


async def _through_redis(
    hub: Hub, kiosk_id: str, command: dict[str, Any], wait_seconds: float
) -> dict[str, Any]:
    assert hub.redis is not None
    owner = await hub.redis.kiosk_owner(kiosk_id)
    if owner is None or owner == hub.process_id:
        raise errors.KioskOffline("The kiosk is not connected")
    return _remote_ack(await hub.redis.command_remote(owner, kiosk_id, command, wait_seconds))


def _remote_ack(result: dict[str, Any] | None) -> dict[str, Any]:
    """The ack another process relayed; ``KioskOffline`` for no answer, or a kiosk not there."""
    if result is None:
        raise errors.KioskOffline("The kiosk is not connected")
    if result.get("_offline"):
        if result.get("detail") == "timeout":
            raise errors.KioskOffline("The kiosk did not acknowledge in time")
        raise errors.KioskOffline("The kiosk is not connected")
    return result


handlers = [kiosk_channel]

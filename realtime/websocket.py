"""``WS /v1/realtime``: live events for phone apps and staff consoles.

The protocol (frames, close codes, resume) is in realtime/protocol.py and the README
("Realtime protocol"). How one connection works:

- The access token arrives in the first frame (never in the URL), within ``ws_auth_timeout_seconds``.
  The token is checked and the user's roles are loaded in a short database session; no session stays
  open while the socket lives. Roles are re-loaded every ``ws_recheck_seconds`` and at once when a
  ``member.*`` event concerns the user; a user who lost all access is closed with 4003. When the
  token expires the socket closes with 4002 unless the client sent a fresh ``auth`` frame before.
- The connection registers with the hub *before* it replays, and its writer sends the replay before
  any queued live event, skipping live events whose id it already sent: no gap (anything committed
  after the replay query is dispatched live) and no duplicate (ids increase) at the seam.
- Fan-out without a task per subscriber: the hub hands each socket the already-encoded frame and
  the socket writes it at once (the ASGI send completes without suspending while the transport
  accepts data). Only when a send suspends (the client is not reading) does a writer task take
  over, finishing that send and draining a bounded queue (``ws_send_queue``) that fills behind it;
  the hub never waits for a socket. Overflow closes the socket with 4009 (slow consumer) once the
  frames already written have drained (or drops it when it never drains); the client reconnects
  and resumes. A replay also runs in a writer task, so live events queue behind it.
- Limits: frame size (uvicorn ``ws_max_size`` closes with 1009 before reading the payload; frames
  are checked here too), server pings every ``ws_ping_interval_seconds`` (answer ``pong``), idle
  timeout (4010) counted on client frames, maximum lifetime (4011).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from datetime import UTC, datetime
from typing import Any

from litestar import WebSocket, websocket
from litestar.exceptions import WebSocketDisconnect
from litestar.types import WebSocketSendEvent
from sqlalchemy import func
from sqlmodel import col, select

from backend import errors
from backend.auth import decode_access_token, load_actor
from backend.models import Event
from backend.runtime import Runtime
from realtime import protocol
from realtime.frames import DirectWriter, OutgoingFrame
from realtime.protocol import Auth, Close, Ping, Pong, Resume, encode, envelope, parse_client_frame
from realtime.relay import Hub, get_hub
from realtime.visibility import Audience, may_see, visible_clause

log = logging.getLogger("concierge.realtime")

CLOSE_DRAIN_SECONDS = 10.0


async def receive_text(socket: WebSocket[Any, Any, Any]) -> str | bytes | None:
    """The next client frame; raises WebSocketDisconnect when the client went away."""
    message = await socket.receive()
    if message["type"] == "websocket.disconnect":
        raise WebSocketDisconnect(detail="disconnected")
    text = message.get("text")
    if isinstance(text, str):
        return text
    data = message.get("bytes")
    return data if isinstance(data, bytes) else None


def text_event(text: str) -> WebSocketSendEvent:
    return {"type": "websocket.send", "text": text, "bytes": None}


async def close_socket(socket: WebSocket[Any, Any, Any], close: Close) -> None:
    with contextlib.suppress(Exception):
        await asyncio.wait_for(socket.close(close.code, close.reason), CLOSE_DRAIN_SECONDS)


async def _finish(coroutine: Any, awaiting: Any) -> None:
    """Drive a coroutine that was started by hand (``coroutine.send(None)``) to completion."""
    try:
        while True:
            try:
                if awaiting is None:
                    await asyncio.sleep(0)
                else:
                    # What a Task does with a future its coroutine yielded: clear the flag
                    # (it is set by the yield; awaiting it again requires it unset).
                    awaiting._asyncio_future_blocking = False
                    await awaiting
            except BaseException as exc:
                awaiting = coroutine.throw(exc)
            else:
                awaiting = coroutine.send(None)
    except StopIteration:
        return


class AppConnection:
    """One authenticated app socket: bounded queue, one writer, checks run by the hub's sweeper."""

    def __init__(
        self,
        socket: WebSocket[Any, Any, Any],
        runtime: Runtime,
        hub: Hub,
        audience: Audience,
        token_exp: int,
    ) -> None:
        self.socket = socket
        self.runtime = runtime
        self.settings = runtime.settings
        self.hub = hub
        self.audience = audience
        self.user_id = audience.user_id
        self.token_exp = token_exp
        now = time.monotonic()
        self.connected_at = now
        self.last_received = now
        self.last_ping = now
        self.next_recheck = now + self.settings.ws_recheck_seconds
        self.queue: deque[tuple[int, OutgoingFrame]] = deque()
        self.direct = DirectWriter.for_scope(socket.scope)
        self.last_sent = 0
        self.resume_after: int | None = None
        self.closing: Close | None = None
        self.handler_task = asyncio.current_task()
        self.writer: asyncio.Task[None] | None = None
        self._recheck: asyncio.Task[None] | None = None
        self._closer: asyncio.Task[None] | None = None

    # -- called by the hub (never awaits) ---------------------------------------------------

    def deliver(self, event_id: int, frame: OutgoingFrame) -> None:
        """Send now when nothing is pending (no task, no await); else queue for the writer."""
        if self.closing is not None:
            return
        if self.writer is None:
            if event_id:
                if event_id <= self.last_sent:
                    return  # already sent by a replay: no duplicate at the seam
                self.last_sent = event_id
            self._send_now(frame)
            return
        if len(self.queue) >= self.settings.ws_send_queue:
            self.hub.stats["slow_consumers"] += 1
            self.close(Close.of(protocol.SLOW_CONSUMER))
            return
        self.queue.append((event_id, frame))

    def control(self, frame: dict[str, Any]) -> None:
        self.deliver(0, OutgoingFrame(encode(frame)))

    def _send_now(self, frame: OutgoingFrame) -> None:
        """Write the shared frame bytes to the transport (realtime/frames.py) or else run the
        ASGI send synchronously; it completes without suspending unless the transport is paused
        (the client is not reading), in which case a writer task finishes it and drains whatever
        queues up behind it."""
        if self.direct is not None and self.direct.write(frame):
            self.hub.stats["direct_writes"] += 1
            return
        coroutine: Any = self.socket.send(text_event(frame.text))
        try:
            awaiting = coroutine.send(None)
        except StopIteration:
            return
        except Exception:  # the client went away: the reader sees the disconnect
            return
        self.writer = asyncio.get_running_loop().create_task(self.write(coroutine, awaiting))

    def start_writer(self) -> None:
        """Run a replay (or drain the queue) in a writer task; live events queue meanwhile."""
        if self.writer is None and self.closing is None:
            self.writer = asyncio.get_running_loop().create_task(self.write())

    def request_recheck(self) -> None:
        self.next_recheck = 0.0
        self._start_recheck()

    def sweep(self, now: float) -> None:
        if self.closing is not None:
            return
        settings = self.settings
        if now - self.connected_at > settings.ws_max_lifetime_seconds:
            self.close(Close.of(protocol.MAX_LIFETIME))
        elif now - self.last_received > settings.ws_idle_timeout_seconds:
            self.close(Close.of(protocol.IDLE_TIMEOUT))
        elif time.time() >= self.token_exp:
            self.close(Close.of(protocol.TOKEN_EXPIRED))
        else:
            if now - self.last_ping >= settings.ws_ping_interval_seconds:
                self.last_ping = now
                self.control({"type": "ping"})
            if now >= self.next_recheck:
                self._start_recheck()

    def shutdown(self) -> None:
        self.close(Close.of(protocol.GOING_AWAY))

    # -- closing ---------------------------------------------------------------------------

    def close(self, close: Close) -> None:
        if self.closing is not None:
            return
        self.closing = close
        self.hub.remove(self)
        self._closer = asyncio.get_running_loop().create_task(self._close())

    async def _close(self) -> None:
        assert self.closing is not None
        if self.writer is not None and self.writer is not asyncio.current_task():
            self.writer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.writer
        try:
            # Frames already handed to the transport go first; a client that never reads again
            # is dropped when this times out.
            await asyncio.wait_for(
                self.socket.close(self.closing.code, self.closing.reason), CLOSE_DRAIN_SECONDS
            )
        except Exception:
            if self.handler_task is not None:
                self.handler_task.cancel()

    # -- writer ----------------------------------------------------------------------------

    async def write(self, pending: Any = None, awaiting: Any = None) -> None:
        """Finish a suspended send, then replay and drain the queue; exits when it is empty."""
        send = self.socket.send
        try:
            if pending is not None:
                await _finish(pending, awaiting)
            while self.closing is None:
                if self.resume_after is not None:
                    after, self.resume_after = self.resume_after, None
                    await self._replay(after)
                    continue
                if not self.queue:
                    break
                event_id, frame = self.queue.popleft()
                if event_id:
                    if event_id <= self.last_sent:
                        continue  # already sent by a replay: no duplicate at the seam
                    self.last_sent = event_id
                await send(text_event(frame.text))
        except (WebSocketDisconnect, OSError):
            return
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("realtime writer failed")
            self.close(Close.of(protocol.INTERNAL))
        finally:
            # Nothing awaits between the empty-queue check and here: deliver() sees the writer
            # gone only when nothing is left to send.
            if self.writer is asyncio.current_task():
                self.writer = None

    async def _replay(self, after: int) -> None:
        limit = self.settings.ws_resume_max_events
        async with self.hub.reads() as session:
            rows = (
                await session.exec(
                    select(Event)
                    .where(col(Event.id) > after, visible_clause(self.audience))
                    .order_by(col(Event.id))
                    .limit(limit + 1)
                )
            ).all()
            head = None
            if len(rows) > limit:
                head = (await session.exec(select(func.max(Event.id)))).one()  # type: ignore[arg-type]
        send = self.socket.send
        if head is not None:
            self.last_sent = int(head)
            frame = {
                "type": "gap",
                "after": str(after),
                "last_event_id": str(head),
                "detail": (
                    f"more than {limit} events were missed: fetch GET /v1/events?after={after} "
                    f"until last_event_id; live events after it follow"
                ),
            }
            await send(text_event(encode(frame)))
            return
        through = after
        count = 0
        for row in rows:
            if not may_see(self.audience, row):
                continue
            assert row.id is not None
            await send(text_event(encode(envelope(row))))
            through = row.id
            count += 1
        self.last_sent = through
        done = {"type": "replayed", "after": str(after), "through": str(through), "count": count}
        await send(text_event(encode(done)))

    # -- access re-checks ------------------------------------------------------------------

    def _start_recheck(self) -> None:
        if self.closing is None and (self._recheck is None or self._recheck.done()):
            self.next_recheck = time.monotonic() + self.settings.ws_recheck_seconds
            self._recheck = asyncio.get_running_loop().create_task(self.recheck())

    async def recheck(self) -> None:
        try:
            async with self.hub.reads() as session:
                actor = await load_actor(session, self.user_id)
        except errors.InvalidToken:
            self.close(Close.of(protocol.ACCESS_REVOKED))
            return
        except Exception:
            log.warning("access re-check failed; retrying later", exc_info=True)
            return
        audience = Audience.of(actor)
        if not audience.sees_anything:
            self.close(Close.of(protocol.ACCESS_REVOKED))
        elif audience != self.audience and self.closing is None:
            old, self.audience = self.audience, audience
            self.hub.reindex(self, old)

    # -- reader ----------------------------------------------------------------------------

    async def read(self) -> None:
        max_bytes = self.settings.ws_max_message_bytes
        while self.closing is None:
            raw = await receive_text(self.socket)
            self.last_received = time.monotonic()
            frame = parse_client_frame(raw, max_bytes)
            if isinstance(frame, Close):
                self.close(frame)
            elif isinstance(frame, Resume):
                self.resume_after = frame.after
                self.start_writer()
            elif isinstance(frame, Ping):
                self.control({"type": "pong"})
            elif isinstance(frame, Pong):
                pass
            elif isinstance(frame, Auth):
                await self._reauth(frame.token)
            else:
                self.close(Close.of(protocol.BAD_FRAME, "unexpected frame"))

    async def _reauth(self, token: str) -> None:
        try:
            claims = decode_access_token(self.runtime, token)
        except errors.TokenExpired:
            self.close(Close.of(protocol.TOKEN_EXPIRED))
            return
        except errors.InvalidToken:
            self.close(Close.of(protocol.INVALID_TOKEN))
            return
        if claims["sub"] != self.user_id:
            self.close(Close.of(protocol.INVALID_TOKEN, "token of another user"))
            return
        self.token_exp = max(self.token_exp, int(claims["exp"]))
        self.control({"type": "token_accepted", "expires_at": _iso_epoch(self.token_exp)})
        self._start_recheck()


def _iso_epoch(epoch: int) -> str:
    return protocol.iso(datetime.fromtimestamp(epoch, UTC))


async def _authenticate(
    socket: WebSocket[Any, Any, Any], runtime: Runtime, hub: Hub
) -> tuple[Audience, int, int | None] | Close:
    settings = runtime.settings
    try:
        raw = await asyncio.wait_for(receive_text(socket), settings.ws_auth_timeout_seconds)
    except TimeoutError:
        return Close.of(protocol.AUTH_TIMEOUT)
    frame = parse_client_frame(raw, settings.ws_max_message_bytes)
    if isinstance(frame, Close):
        return frame
    if not isinstance(frame, Auth):
        return Close.of(protocol.BAD_FRAME, "the first frame must be auth")
    try:
        claims = decode_access_token(runtime, frame.token)
        async with hub.reads() as session:
            actor = await load_actor(session, claims["sub"])
    except errors.TokenExpired:
        return Close.of(protocol.TOKEN_EXPIRED)
    except errors.InvalidToken:
        return Close.of(protocol.INVALID_TOKEN)
    audience = Audience.of(actor)
    if not audience.sees_anything:
        return Close.of(protocol.ACCESS_REVOKED, "no membership")
    return audience, int(claims["exp"]), frame.after


@websocket("/v1/realtime", name="realtime")
async def realtime_socket(socket: WebSocket[Any, Any, Any]) -> None:
    """Live events the caller may see; the access token comes in the first frame."""
    runtime: Runtime = socket.app.state.runtime
    await socket.accept()
    try:
        hub = await get_hub(runtime)
        outcome = await _authenticate(socket, runtime, hub)
        if isinstance(outcome, Close):
            await close_socket(socket, outcome)
            return
        audience, token_exp, after = outcome
        connection = AppConnection(socket, runtime, hub, audience, token_exp)
        settings = runtime.settings
        ready = {
            "type": "ready",
            "user_id": audience.user_id,
            "last_event_id": str(hub.last_id),
            "expires_at": _iso_epoch(token_exp),
            "limits": {
                "max_message_bytes": settings.ws_max_message_bytes,
                "idle_timeout_seconds": settings.ws_idle_timeout_seconds,
                "ping_interval_seconds": settings.ws_ping_interval_seconds,
                "max_lifetime_seconds": settings.ws_max_lifetime_seconds,
                "send_queue": settings.ws_send_queue,
                "resume_max_events": settings.ws_resume_max_events,
            },
        }
        # Register and send "ready" with no await in between: every event after
        # ``last_event_id`` then reaches this socket live (or through the replay).
        hub.add(connection)
        ready["last_event_id"] = str(hub.last_id)
        connection.control(ready)
        if after is not None:
            connection.resume_after = after
            connection.start_writer()
        try:
            await connection.read()
            if connection._closer is not None:
                await connection._closer
        except (WebSocketDisconnect, asyncio.CancelledError):
            pass
        finally:
            if connection.closing is None:
                connection.closing = Close.of(protocol.GOING_AWAY)
                hub.remove(connection)
            writer = connection.writer
            if writer is not None and writer is not asyncio.current_task():
                writer.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await writer
    except WebSocketDisconnect:
        return
    except Exception:
        log.exception("realtime socket failed")
        await close_socket(socket, Close.of(protocol.INTERNAL))


handlers = [realtime_socket]

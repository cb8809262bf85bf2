"""Helpers for realtime tests: a websocket client speaking the protocol, and event producers."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import websockets
from websockets.asyncio.client import ClientConnection

from backend.runtime import Runtime
from backend.services.events import record_event

TIMEOUT = 10.0


async def produce(
    runtime: Runtime,
    property_id: str,
    type: str = "test.happened",
    *,
    unit_id: str | None = None,
    user_id: str | None = None,
    payload: dict[str, Any] | None = None,
) -> int:
    """Commit one event the way domain services do (``record_event``, then commit)."""
    async with runtime.db.session() as session:
        event = await record_event(
            session,
            property_id=property_id,
            type=type,
            actor="system",
            unit_id=unit_id,
            user_id=user_id,
            payload=payload or {},
            notify=False,
        )
    assert event.id is not None
    return event.id


async def recv(ws: ClientConnection, timeout: float = TIMEOUT) -> dict[str, Any]:
    raw = await asyncio.wait_for(ws.recv(), timeout)
    frame = json.loads(raw)
    assert isinstance(frame, dict)
    return frame


async def recv_event(ws: ClientConnection, timeout: float = TIMEOUT) -> dict[str, Any]:
    """The next event frame (frames with an id), skipping pings and other control frames."""
    while True:
        frame = await recv(ws, timeout)
        if "id" in frame:
            return frame


async def connect(
    ws_url: str, token: str, *, after: int | str | None = None, **options: Any
) -> tuple[ClientConnection, dict[str, Any]]:
    """Open ``/v1/realtime``, send the auth frame and return the socket and the ready frame."""
    ws = await websockets.connect(ws_url + "/v1/realtime", open_timeout=TIMEOUT, **options)
    auth: dict[str, Any] = {"type": "auth", "token": token}
    if after is not None:
        auth["after"] = str(after)
    await ws.send(json.dumps(auth))
    ready = await recv(ws)
    assert ready["type"] == "ready", ready
    return ws, ready


async def close_code(ws: ClientConnection, timeout: float = TIMEOUT) -> int | None:
    """Read until the server closes; the close code it sent."""
    try:
        async with asyncio.timeout(timeout):
            while True:
                await ws.recv()
    except websockets.ConnectionClosed as closed:
        return closed.rcvd.code if closed.rcvd else None
    return None


async def events_until(
    ws: ClientConnection, sentinel_id: int, timeout: float = TIMEOUT
) -> list[dict[str, Any]]:
    """Every event frame up to and including ``sentinel_id`` (ids arrive in order)."""
    seen: list[dict[str, Any]] = []
    while True:
        frame = await recv_event(ws, timeout)
        seen.append(frame)
        if int(frame["id"]) >= sentinel_id:
            return seen

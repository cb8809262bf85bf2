"""Outgoing frames, encoded once per event, and the fan-out fast path to uvicorn's transport.

Why: with thousands of sockets on one property, the cost of one event is the per-socket cost
times N. Through ASGI each socket's send is a coroutine passing two Litestar wrappers and
uvicorn's send, which frames the same text again for every socket. A server-to-client frame
is never masked, so its bytes are identical for every socket: ``OutgoingFrame`` builds them once,
and ``DirectWriter`` hands them to the socket's transport, which is what the ``websockets``
library's own ``broadcast`` does.

The fast path is taken only when it is safe, and otherwise the frame goes through ASGI as usual:
- the server is uvicorn's ``websockets-sansio`` protocol (what ``concierge serve`` runs), with
  no extension negotiated (``concierge serve`` turns per-message deflate off);
- the websocket is open, no close was sent, and the transport is not paused (a paused transport
  means the client is not reading: the ASGI path then waits, in the connection's writer task);
- nothing is queued before it (``AppConnection`` only calls it when no writer task is running).

``tests/test_realtime_fast_path.py`` checks that ``concierge serve`` takes it, so a uvicorn
upgrade that moves these attributes fails a test instead of silently losing the speed.
"""

from __future__ import annotations

from typing import Any

from websockets.frames import Frame, Opcode
from websockets.protocol import State

RAW_SEND_KEY = "concierge.raw_send"


class OutgoingFrame:
    """One text message, with its websocket frame bytes built on first use and then shared."""

    __slots__ = ("_wire", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self._wire: bytes | None = None

    def wire(self) -> bytes:
        if self._wire is None:
            frame = Frame(Opcode.TEXT, self.text.encode())
            self._wire = frame.serialize(mask=False, extensions=[])
        return self._wire


def remember_raw_send(scope: Any, send: Any) -> None:
    """Keep the server's own ASGI ``send`` of a websocket scope (called before any wrapping)."""
    if scope.get("type") == "websocket":
        scope[RAW_SEND_KEY] = send


class DirectWriter:
    """Writes shared frame bytes to one uvicorn websocket connection's transport."""

    __slots__ = ("protocol",)

    def __init__(self, protocol: Any) -> None:
        self.protocol = protocol

    @classmethod
    def for_scope(cls, scope: Any) -> DirectWriter | None:
        """A writer when the connection is served by uvicorn's sans-I/O protocol, else None."""
        send = scope.get(RAW_SEND_KEY)
        protocol = getattr(send, "__self__", None)
        if protocol is None or type(protocol).__name__ != "WebSocketsSansIOProtocol":
            return None
        connection = getattr(protocol, "conn", None)
        if connection is None or getattr(connection, "extensions", None):
            return None
        needed = ("transport", "writable", "close_sent", "disconnected")
        if not all(hasattr(protocol, name) for name in needed):
            return None
        return cls(protocol)

    def write(self, frame: OutgoingFrame) -> bool:
        """Write now and return True, or return False when the ASGI path must be used."""
        protocol = self.protocol
        if (
            protocol.close_sent
            or protocol.disconnected
            or not protocol.writable.is_set()
            or protocol.conn.state is not State.OPEN
        ):
            return False
        transport = protocol.transport
        if transport.is_closing():
            return False
        transport.write(frame.wire())
        return True

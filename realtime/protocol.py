"""Frames and close codes of ``WS /v1/realtime`` (documented in the README, "Realtime protocol").

Client -> server (JSON text frames):
- ``{"type": "auth", "token": "<access token>", "after": "<last event id>"?}``: must be the first
  frame; sent again later with a fresh token, it extends the connection past the old token's expiry.
- ``{"type": "resume", "after": "<id>"}``: replay everything visible after that id, then live.
- ``{"type": "ping"}`` -> ``{"type": "pong"}``; ``{"type": "pong"}`` answers the server's pings.

Server -> client:
- ``{"type": "ready", "user_id", "last_event_id", "expires_at", "limits": {...}}``
- events, as the bare envelope ``{"id", "type", "occurred_at", "property_id", "data"}``: a frame
  with an ``id`` is an event (its ``type`` is dotted, control frame types never are).
- ``{"type": "replayed", "after", "through", "count"}`` after a replay: live events follow.
- ``{"type": "gap", "after", "last_event_id", "detail"}``: too much was missed; refetch with
  ``GET /v1/events?after=<after>`` and continue (live events after ``last_event_id`` follow).
- ``{"type": "ping"}`` (answer ``pong``), ``{"type": "pong"}``, ``{"type": "token_accepted", "expires_at"}``.

``parse_client_frame`` is total: any input yields a frame or a ``Close`` (tests/test_realtime_frames.py
runs it under hypothesis).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import msgspec

# Close codes (RFC 6455 private range 4000-4999 plus the standard ones we use).
BAD_FRAME = 4000  # unparseable, unknown type, or a frame before auth: fix the client
INVALID_TOKEN = 4001  # stop: sign in again
TOKEN_EXPIRED = 4002  # refresh the access token and reconnect (with "after")
ACCESS_REVOKED = 4003  # the user lost access (removed, deactivated): stop
AUTH_TIMEOUT = 4008  # no auth frame in time: reconnect
SLOW_CONSUMER = 4009  # the send queue overflowed: reconnect and resume
IDLE_TIMEOUT = 4010  # no client frame for the idle timeout (answer pings): reconnect
MAX_LIFETIME = 4011  # connection lived its maximum: reconnect and resume
REPLACED = 4012  # kiosk channel only: a newer connection of the same kiosk took over
INVALID_ASSERTION = 4013  # kiosk channel only: the kiosk assertion was refused
GOING_AWAY = 1001  # server shutting down: reconnect and resume
TOO_BIG = 1009  # frame larger than the limit
INTERNAL = 1011

CLOSE_REASONS = {
    BAD_FRAME: "bad frame",
    INVALID_TOKEN: "invalid token",
    TOKEN_EXPIRED: "token expired",
    ACCESS_REVOKED: "access revoked",
    AUTH_TIMEOUT: "auth timeout",
    SLOW_CONSUMER: "slow consumer",
    IDLE_TIMEOUT: "idle timeout",
    MAX_LIFETIME: "max lifetime",
    REPLACED: "replaced by a newer connection",
    INVALID_ASSERTION: "invalid kiosk assertion",
    GOING_AWAY: "going away",
    TOO_BIG: "message too big",
    INTERNAL: "internal error",
}

MAX_EVENT_ID = 2**63 - 1
_DIGITS = frozenset("0123456789")


@dataclass(frozen=True, slots=True)
class Close:
    code: int
    reason: str = ""

    @classmethod
    def of(cls, code: int, reason: str | None = None) -> Close:
        return cls(code, reason or CLOSE_REASONS.get(code, ""))


@dataclass(frozen=True, slots=True)
class Auth:
    token: str
    after: int | None = None


@dataclass(frozen=True, slots=True)
class KioskAuth:
    assertion: str


@dataclass(frozen=True, slots=True)
class Resume:
    after: int


@dataclass(frozen=True, slots=True)
class Ping:
    pass


@dataclass(frozen=True, slots=True)
class Pong:
    pass


@dataclass(frozen=True, slots=True)
class Ack:
    id: str
    ok: bool
    detail: str = ""


Frame = Auth | KioskAuth | Resume | Ping | Pong | Ack


def parse_event_id(value: Any) -> int | None:
    """An event id as the client sends it: a decimal string (ids are strings) or an integer."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if 0 <= value <= MAX_EVENT_ID else None
    if isinstance(value, str) and 0 < len(value) <= 19 and set(value) <= _DIGITS:
        number = int(value)
        return number if number <= MAX_EVENT_ID else None
    return None


_decoder = msgspec.json.Decoder()


def parse_client_frame(
    raw: str | bytes | None,
    max_bytes: int,
    *,
    channel: Literal["app", "kiosk"] = "app",
) -> Frame | Close:
    """One client frame, or the close it deserves. Never raises."""
    if raw is None:
        return Close.of(BAD_FRAME, "empty frame")
    size = len(raw.encode("utf-8", "surrogatepass")) if isinstance(raw, str) else len(raw)
    if size > max_bytes:
        return Close.of(TOO_BIG)
    try:
        body = _decoder.decode(raw)
    except (msgspec.DecodeError, UnicodeError, ValueError):
        return Close.of(BAD_FRAME, "not JSON")
    if not isinstance(body, dict):
        return Close.of(BAD_FRAME, "not a JSON object")
    kind = body.get("type")
    if kind == "ping":
        return Ping()
    if kind == "pong":
        return Pong()
    if channel == "kiosk":
        return _parse_kiosk(kind, body)
    if kind == "auth":
        token = body.get("token")
        if not isinstance(token, str) or not token or len(token) > 4096:
            return Close.of(INVALID_TOKEN, "token missing or malformed")
        after = body.get("after")
        if after is None:
            return Auth(token)
        after_id = parse_event_id(after)
        if after_id is None:
            return Close.of(BAD_FRAME, "after must be an event id")
        return Auth(token, after_id)
    if kind == "resume":
        after_id = parse_event_id(body.get("after"))
        if after_id is None:
            return Close.of(BAD_FRAME, "after must be an event id")
        return Resume(after_id)
    return Close.of(BAD_FRAME, "unknown frame type")


def _parse_kiosk(kind: Any, body: dict[str, Any]) -> Frame | Close:
    if kind == "auth":
        assertion = body.get("assertion")
        if not isinstance(assertion, str) or not assertion or len(assertion) > 4096:
            return Close.of(INVALID_ASSERTION, "assertion missing or malformed")
        return KioskAuth(assertion)
    if kind == "ack":
        command_id, ok, detail = body.get("id"), body.get("ok"), body.get("detail", "")
        if not isinstance(command_id, str) or not 0 < len(command_id) <= 64:
            return Close.of(BAD_FRAME, "ack id missing")
        if not isinstance(ok, bool) or not isinstance(detail, str):
            return Close.of(BAD_FRAME, "ack needs ok (bool) and detail (string)")
        return Ack(command_id, ok, detail[:500])
    return Close.of(BAD_FRAME, "unknown frame type")


def iso(moment: datetime) -> str:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


_encoder = msgspec.json.Encoder()


def envelope(event: Any) -> dict[str, Any]:
    """The public envelope of an Event row (or a relay snapshot): ids are strings."""
    get = event.get if isinstance(event, dict) else lambda name: getattr(event, name)
    data = dict(get("payload") or {})
    unit_id = get("unit_id")
    if unit_id is not None and "unit_id" not in data:
        data["unit_id"] = unit_id
    occurred_at = get("occurred_at")
    return {
        "id": str(get("id")),
        "type": get("type"),
        "occurred_at": iso(occurred_at) if isinstance(occurred_at, datetime) else occurred_at,
        "property_id": get("property_id"),
        "data": data,
    }


def encode(frame: dict[str, Any]) -> str:
    return _encoder.encode(frame).decode()

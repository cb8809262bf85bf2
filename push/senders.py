"""Senders: FCM through the real firebase-admin SDK, or the embedded log sender.

``FcmSender`` uses firebase-admin (pinned 7.7.0) with the service-account JSON of
``CONCIERGE_FIREBASE_CREDENTIALS`` (its ``project_id`` names the FCM project and its
``token_uri`` is where the OAuth exchange goes) and ``CONCIERGE_FCM_ENDPOINT``. The SDK has no
option for its FCM URL: it is the private class constant ``_MessagingService.FCM_URL``, read
once when an app's messaging service is built. ``bind_fcm_endpoint`` is the one place that
overrides it (and checks that the SDK still has it, so an upgrade that moves it fails loudly;
tests/test_push_fcm.py holds that line).

The SDK's async API (``send_each_async``) runs on a private event loop in one thread owned by
the sender: its OAuth token refresh is synchronous and would otherwise block the server's loop.
Batches are bounded (``MAX_BATCH``) since the SDK sends all messages of a call at once.

Without credentials, ``LogSender`` appends what would be sent (the FCM v1 request body) to a
JSON-lines file. Push tokens are never logged anywhere: only ``fingerprint(token)``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import firebase_admin
from firebase_admin import _messaging_encoder, credentials, exceptions, messaging

from backend.crypto import fingerprint
from backend.settings import Settings

log = logging.getLogger("concierge.push")
T = TypeVar("T")

MAX_BATCH = 100
SDK_FCM_URL = "https://fcm.googleapis.com/v1/projects/{0}/messages:send"
FCM_SEND_PATH = "/v1/projects/{0}/messages:send"

PERMANENT = {"UNREGISTERED", "INVALID_ARGUMENT", "SENDER_ID_MISMATCH", "NOT_FOUND"}
_ERROR_NAMES: dict[type[BaseException], str] = {
    messaging.UnregisteredError: "UNREGISTERED",
    messaging.SenderIdMismatchError: "SENDER_ID_MISMATCH",
    messaging.QuotaExceededError: "QUOTA_EXCEEDED",
    messaging.ThirdPartyAuthError: "THIRD_PARTY_AUTH_ERROR",
}


@dataclass(frozen=True)
class Outgoing:
    delivery_id: int
    token: str
    message: messaging.Message


@dataclass(frozen=True)
class Outcome:
    ok: bool
    message_id: str | None = None
    # FCM error name (UNREGISTERED, UNAVAILABLE, ...), never exception text
    error: str | None = None
    permanent: bool = False
    retry_after: float | None = None
    give_up: bool = False  # our message is invalid: retrying cannot help, the token is fine


INVALID_MESSAGE = Outcome(False, error="INVALID_MESSAGE", give_up=True)


def encodable(message: messaging.Message) -> bool:
    """The SDK validates a message only while encoding it; one bad message must not sink a batch."""
    try:
        encode(message)
    except (ValueError, TypeError):
        return False
    return True


class Sender(Protocol):
    async def send(self, batch: list[Outgoing]) -> list[Outcome]: ...

    async def close(self) -> None: ...


def encode(message: messaging.Message) -> dict[str, Any]:
    """The FCM v1 JSON of a message, as the SDK puts it on the wire."""
    encoded: dict[str, Any] = _messaging_encoder.MessageEncoder().default(message)
    return encoded


def _retry_after(error: exceptions.FirebaseError) -> float | None:
    response = error.http_response
    if response is None:
        return None
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # HTTP-date form: fall back to our own backoff


def classify(error: BaseException) -> Outcome:
    """Permanent errors disable the device's token; everything else is retried."""
    name = next((n for cls, n in _ERROR_NAMES.items() if isinstance(error, cls)), None)
    if name is None:
        name = error.code if isinstance(error, exceptions.FirebaseError) else "TRANSPORT_ERROR"
        if name == "RESOURCE_EXHAUSTED":
            name = "QUOTA_EXCEEDED"
    retry_after = _retry_after(error) if isinstance(error, exceptions.FirebaseError) else None
    return Outcome(False, error=str(name), permanent=name in PERMANENT, retry_after=retry_after)


_endpoint_lock = threading.Lock()


def bind_fcm_endpoint(app: firebase_admin.App, endpoint: str) -> None:
    """Build ``app``'s messaging service so that it posts to ``endpoint`` (the one override)."""
    service_class = messaging._MessagingService
    with _endpoint_lock:
        original = getattr(service_class, "FCM_URL", None)
        if original != SDK_FCM_URL:
            raise RuntimeError(
                "firebase-admin no longer has _MessagingService.FCM_URL as pinned (7.7.0); "
                "CONCIERGE_FCM_ENDPOINT cannot be applied: re-check push/senders.py"
            )
        service_class.FCM_URL = endpoint.rstrip("/") + FCM_SEND_PATH
        try:
            service = messaging._get_messaging_service(app)
        finally:
            service_class.FCM_URL = original
    expected = endpoint.rstrip("/") + FCM_SEND_PATH.format(app.project_id)
    if getattr(service, "_fcm_url", None) != expected:
        raise RuntimeError("firebase-admin did not take the FCM endpoint; re-check push/senders.py")


class FcmSender:
    """Firebase Cloud Messaging through firebase-admin's async API on a private loop."""

    def __init__(self, settings: Settings) -> None:
        if not settings.firebase_credentials:
            raise ValueError("FcmSender needs CONCIERGE_FIREBASE_CREDENTIALS")
        certificate = credentials.Certificate(settings.firebase_credentials)
        self._app = firebase_admin.initialize_app(
            certificate,
            options={"httpTimeout": settings.fcm_timeout_seconds},
            name=f"concierge-push-{uuid.uuid4().hex}",
        )
        self.project_id = self._app.project_id
        bind_fcm_endpoint(self._app, settings.fcm_endpoint)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="fcm-sender", daemon=True
        )
        self._thread.start()
        self._closed = False

    async def _on_loop(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coroutine, self._loop))

    async def _send_chunk(self, messages: list[messaging.Message]) -> messaging.BatchResponse:
        return await messaging.send_each_async(messages, dry_run=False, app=self._app)

    async def send(self, batch: list[Outgoing]) -> list[Outcome]:
        results: dict[int, Outcome] = {}
        valid = []
        for item in batch:
            if encodable(item.message):
                valid.append(item)
            else:
                results[item.delivery_id] = INVALID_MESSAGE
        for item, outcome in zip(valid, await self._send_valid(valid), strict=True):
            results[item.delivery_id] = outcome
        return [results[item.delivery_id] for item in batch]

    async def _send_valid(self, batch: list[Outgoing]) -> list[Outcome]:
        outcomes: list[Outcome] = []
        for start in range(0, len(batch), MAX_BATCH):
            chunk = batch[start : start + MAX_BATCH]
            try:
                response = await self._on_loop(self._send_chunk([o.message for o in chunk]))
            except Exception as exc:  # the whole call failed (not one message): retry all
                outcome = classify(exc)
                log.warning(
                    "push.batch_failed",
                    extra={"error": outcome.error, "exception": type(exc).__name__},
                )
                outcomes.extend(outcome for _ in chunk)
                continue
            for item, result in zip(chunk, response.responses, strict=True):
                if result.success:
                    outcomes.append(Outcome(True, message_id=result.message_id))
                else:
                    outcomes.append(classify(result.exception))
                self._log(item, outcomes[-1])
        return outcomes

    @staticmethod
    def _log(item: Outgoing, outcome: Outcome) -> None:
        log.info(
            "push.sent" if outcome.ok else "push.failed",
            extra={
                "delivery_id": item.delivery_id,
                "token_fingerprint": fingerprint(item.token),
                "error": outcome.error,
            },
        )

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        service = messaging._get_messaging_service(self._app)
        try:
            await self._on_loop(service._async_client.aclose())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            await asyncio.to_thread(self._thread.join, 5)
            # delete_app closes the (already closed) client with asyncio.run: not on our loop.
            await asyncio.to_thread(firebase_admin.delete_app, self._app)
            self._loop.close()


class LogSender:
    """The embedded default: append each message that would be sent, as one JSON line."""

    def __init__(self, settings: Settings) -> None:
        self.path = Path(settings.push_log_path or Path(settings.var_dir) / "push.log")
        self.path.parent.mkdir(parents=True, exist_ok=True)

    async def send(self, batch: list[Outgoing]) -> list[Outcome]:
        lines = []
        outcomes = []
        for item in batch:
            if not encodable(item.message):
                outcomes.append(INVALID_MESSAGE)
                continue
            body = encode(item.message)
            body.pop("token", None)
            body["token_fingerprint"] = fingerprint(item.token)
            lines.append(
                json.dumps(
                    {"delivery_id": item.delivery_id, "message": body},
                    sort_keys=True,
                    separators=(",", ":"),
                )
            )
            outcomes.append(Outcome(True, message_id=f"log/{uuid.uuid4().hex}"))
        await asyncio.to_thread(self._append, lines)
        return outcomes

    def _append(self, lines: list[str]) -> None:
        with self.path.open("a", encoding="utf-8") as handle:
            for line in lines:
                handle.write(line + "\n")

    async def close(self) -> None:
        return None


def make_sender(settings: Settings) -> Sender:
    if settings.firebase_credentials:
        return FcmSender(settings)
    return LogSender(settings)

"""The kiosk's HTTP client: every call signs a fresh assertion with the kiosk's own key."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx

from kiosk.assertion import sign_assertion

if TYPE_CHECKING:
    from kiosk.state import KioskState

#: HTTP statuses that mean "the server is not really there right now".
_UNAVAILABLE = {502, 503, 504}


class Offline(Exception):
    """The server could not be reached (network down, timeout, gateway error)."""


class ServerError(Exception):
    """The server answered with an error (problem+json ``code`` when it sent one)."""

    def __init__(self, status: int, code: str | None, detail: str) -> None:
        super().__init__(f"{status} {code or ''} {detail}".strip())
        self.status = status
        self.code = code
        self.detail = detail


def _result(response: httpx.Response) -> Any:
    if response.status_code in _UNAVAILABLE:
        raise Offline(f"server answered {response.status_code}")
    if response.status_code >= 400:
        code = detail = None
        try:
            body = response.json()
            code, detail = body.get("code"), body.get("detail") or body.get("title")
        except (ValueError, AttributeError):
            pass
        raise ServerError(response.status_code, code, str(detail or response.reason_phrase))
    if not response.content:
        return {}
    return response.json()


class ServerClient:
    """``request(method, path, json=None) -> dict`` against the kiosk's server.

    ``http``/``async_http`` inject clients (tests pass the in-process app's client); by default
    a client is made per call against ``state.config.server_url``.
    """

    def __init__(
        self,
        state: KioskState,
        *,
        http: httpx.Client | None = None,
        async_http: httpx.AsyncClient | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.state = state
        self.http = http
        self.async_http = async_http
        self.timeout = timeout

    def _headers(self) -> dict[str, str]:
        assertion = sign_assertion(self.state.key, self.state.config.kiosk_id, now=self.state.now())
        return {"Authorization": f"Bearer {assertion}"}

    def _url(self, path: str) -> str:
        return self.state.config.server_url.rstrip("/") + path

    def request(self, method: str, path: str, json: Any = None) -> Any:
        try:
            if self.http is not None:
                response = self.http.request(method, path, json=json, headers=self._headers())
            else:
                with httpx.Client(timeout=self.timeout) as client:
                    response = client.request(
                        method, self._url(path), json=json, headers=self._headers()
                    )
        except httpx.TransportError as exc:
            raise Offline(type(exc).__name__) from None
        return _result(response)

    async def arequest(self, method: str, path: str, json: Any = None) -> Any:
        try:
            if self.async_http is not None:
                response = await self.async_http.request(
                    method, path, json=json, headers=self._headers()
                )
            else:
                async with httpx.AsyncClient(timeout=self.timeout) as client:
                    response = await client.request(
                        method, self._url(path), json=json, headers=self._headers()
                    )
        except httpx.TransportError as exc:
            raise Offline(type(exc).__name__) from None
        return _result(response)


@dataclass
class Backoff:
    """Exponential backoff with full jitter, reset on success."""

    initial: float = 1.0
    maximum: float = 300.0
    attempt: int = 0

    def next_delay(self) -> float:
        ceiling = min(self.maximum, self.initial * (2**self.attempt))
        self.attempt += 1
        return random.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        self.attempt = 0

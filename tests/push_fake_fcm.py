"""A local HTTP server that speaks what firebase-admin needs: the OAuth token exchange and FCM v1.

``FakeFcm.start(directory)`` writes a service-account JSON (fresh RSA key, ``token_uri``
pointing here) and serves, in a thread (the SDK's token refresh is synchronous):
- ``POST /token``: checks the signed JWT assertion against the service account's public key,
  answers an access token;
- ``POST /v1/projects/{project}/messages:send``: checks the bearer token, records the request,
  answers per the script (``fail_next``), per token (``unregistered``), or 200 with a name.
``hold()`` makes FCM requests wait (recorded on arrival) until ``release()``.
"""

from __future__ import annotations

import json
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

PROJECT = "concierge-test"
SEND_PATH = re.compile(r"^/v1/projects/([^/]+)/messages:send$")

ERROR_STATUS = {
    "UNREGISTERED": (404, "NOT_FOUND"),
    "INVALID_ARGUMENT": (400, "INVALID_ARGUMENT"),
    "SENDER_ID_MISMATCH": (403, "PERMISSION_DENIED"),
    "UNAVAILABLE": (503, "UNAVAILABLE"),
    "INTERNAL": (500, "INTERNAL"),
    "QUOTA_EXCEEDED": (429, "RESOURCE_EXHAUSTED"),
}


@dataclass
class Received:
    at: float
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    status: int = 0

    @property
    def message(self) -> dict[str, Any]:
        message: dict[str, Any] = self.body["message"]
        return message

    @property
    def token(self) -> str:
        return str(self.message["token"])


@dataclass
class FakeFcm:
    url: str = ""
    credentials_path: str = ""
    access_token: str = field(default_factory=lambda: secrets.token_urlsafe(16))
    requests: list[Received] = field(default_factory=list)
    token_exchanges: int = 0
    unregistered: set[str] = field(default_factory=set)
    # Each entry answers one FCM request, in order: (error name, extra headers).
    script: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    delay_seconds: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _gate: threading.Event = field(default_factory=threading.Event)
    _server: ThreadingHTTPServer | None = None
    _public_key: Any = None

    @classmethod
    def start(cls, directory: Path) -> FakeFcm:
        fake = cls()
        fake._gate.set()
        server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(fake))
        server.daemon_threads = True
        fake._server = server
        fake.url = f"http://127.0.0.1:{server.server_address[1]}"
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        fake._public_key = key.public_key()
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        account = {
            "type": "service_account",
            "project_id": PROJECT,
            "private_key_id": secrets.token_hex(20),
            "private_key": pem,
            "client_email": f"push@{PROJECT}.iam.gserviceaccount.com",
            "client_id": "1234567890",
            "auth_uri": f"{fake.url}/auth",
            "token_uri": f"{fake.url}/token",
        }
        path = directory / "service-account.json"
        path.write_text(json.dumps(account))
        fake.credentials_path = str(path)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return fake

    def stop(self) -> None:
        self._gate.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def fail_next(self, error: str, count: int = 1, headers: dict[str, str] | None = None) -> None:
        with self._lock:
            self.script.extend([(error, headers or {})] * count)

    def hold(self) -> None:
        self._gate.clear()

    def release(self) -> None:
        self._gate.set()

    def sends(self) -> list[Received]:
        with self._lock:
            return list(self.requests)

    def delivered(self) -> list[Received]:
        return [r for r in self.sends() if r.status == 200]

    def wait_for(self, count: int, timeout: float = 30.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.sends()) >= count:
                return self.sends()
            time.sleep(0.02)
        raise AssertionError(f"expected {count} FCM requests, got {len(self.sends())}")

    # -- request handling (server threads) ----------------------------------------------------
    def _token(self, form: dict[str, list[str]]) -> tuple[int, dict[str, Any]]:
        assertion = form.get("assertion", [""])[0]
        if form.get("grant_type") != ["urn:ietf:params:oauth:grant-type:jwt-bearer"]:
            return 400, {"error": "unsupported_grant_type"}
        try:
            # google-auth names Google's token endpoint as audience even when it posts to token_uri.
            jwt.decode(
                assertion,
                self._public_key,
                algorithms=["RS256"],
                audience="https://oauth2.googleapis.com/token",
                issuer=f"push@{PROJECT}.iam.gserviceaccount.com",
            )
        except jwt.PyJWTError as exc:
            return 400, {"error": "invalid_grant", "error_description": str(exc)}
        with self._lock:
            self.token_exchanges += 1
        return 200, {"access_token": self.access_token, "expires_in": 3600, "token_type": "Bearer"}

    def _send(
        self, path: str, headers: dict[str, str], body: dict[str, Any]
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        received = Received(time.time(), path, headers, body)
        with self._lock:
            self.requests.append(received)
            scripted = self.script.pop(0) if self.script else None
        self._gate.wait()
        if self.delay_seconds:
            time.sleep(self.delay_seconds)
        match = SEND_PATH.match(path)
        if match is None or match.group(1) != PROJECT:
            status, payload, extra = 404, {"error": {"code": 404, "status": "NOT_FOUND"}}, {}
        elif headers.get("authorization") != f"Bearer {self.access_token}":
            status, payload, extra = 401, {"error": {"code": 401, "status": "UNAUTHENTICATED"}}, {}
        elif scripted is not None:
            status, payload = _error(scripted[0])
            extra = scripted[1]
        elif body.get("message", {}).get("token") in self.unregistered:
            status, payload = _error("UNREGISTERED")
            extra = {}
        else:
            number = secrets.token_hex(8)
            status, payload, extra = 200, {"name": f"projects/{PROJECT}/messages/{number}"}, {}
        received.status = status
        return status, payload, extra


def _error(name: str) -> tuple[int, dict[str, Any]]:
    status, canonical = ERROR_STATUS[name]
    details = []
    if name in ("UNREGISTERED", "SENDER_ID_MISMATCH", "QUOTA_EXCEEDED", "INVALID_ARGUMENT"):
        details = [
            {"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": name}
        ]
    return status, {
        "error": {"code": status, "message": name.lower(), "status": canonical, "details": details}
    }


def _handler(fake: FakeFcm) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            return None

        def do_POST(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            raw = self.rfile.read(length)
            headers = {k.lower(): v for k, v in self.headers.items()}
            extra: dict[str, str] = {}
            if self.path == "/token":
                status, payload = fake._token(parse_qs(raw.decode()))
            else:
                try:
                    body = json.loads(raw or b"{}")
                except ValueError:
                    body = {}
                status, payload, extra = fake._send(self.path, headers, body)
            data = json.dumps(payload).encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in extra.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)
            except OSError:  # the client went away (a killed worker)
                pass

    return Handler

"""Kiosk authentication to the server: a short-lived JWT signed by the kiosk's own key."""

from __future__ import annotations

import base64
import secrets
import time

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

KIOSK_AUDIENCE = "concierge:kiosk-api"
KIOSK_ASSERTION_TYP = "kiosk-auth+jwt"


def public_key_b64(private_key: Ed25519PrivateKey) -> str:
    raw = private_key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def sign_assertion(
    private_key: Ed25519PrivateKey, kiosk_id: str, *, now: float | None = None, lifetime: int = 30
) -> str:
    """A fresh assertion for one request (``jti`` random; the server accepts it once)."""
    issued = int(time.time() if now is None else now)
    claims = {
        "iss": kiosk_id,
        "sub": kiosk_id,
        "aud": KIOSK_AUDIENCE,
        "iat": issued,
        "exp": issued + lifetime,
        "jti": secrets.token_urlsafe(16),
    }
    return jwt.encode(claims, private_key, algorithm="EdDSA", headers={"typ": KIOSK_ASSERTION_TYP})

"""The credential format: one-time, device-bound Ed25519 JWTs (see docs/protocol.md).

This module is the single definition of the wire format. The server imports it to sign, the
kiosk's ``Verifier`` checks exactly what is produced here, so issuer and verifier cannot drift.

- Credential: JWS compact, header exactly ``{"alg": "EdDSA", "kid": kid, "typ": CRED_TYP}``;
  claims ``iss, sub, aud (one kiosk id), jti, iat, nbf, exp, tgt, role, cnf {"jwk": device_jwk}``.
- Emergency credential: same shape, ``typ`` EMERGENCY_TYP, ``aud`` ``"property:<id>"``,
  ``tgt`` ``"any"``, ``role`` ``"staff"``, signed by a key with purpose ``"emergency"``.
- Presentation: ``<credential>~<kb-jwt>``. The kb-jwt is signed by the device key, header exactly
  ``{"alg": "EdDSA", "typ": KB_TYP}``, claims ``iat, aud, nonce, sd_hash`` where
  ``sd_hash = base64url(SHA-256(ASCII "<credential>~"))`` without padding.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

CRED_TYP = "concierge-cred+jwt"
EMERGENCY_TYP = "concierge-emergency+jwt"
KB_TYP = "kb+jwt"
ALG = "EdDSA"
#: Separator between the credential and the key-binding JWT in a presentation.
SEPARATOR = "~"
#: Roles a credential may carry.
ROLES = ("resident", "vendor", "staff", "courier")


def b64url(data: bytes) -> str:
    """Unpadded base64url, as JOSE uses it."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """Strict unpadded base64url decoding (raises ValueError on anything else)."""
    if not isinstance(text, str) or "=" in text:
        raise ValueError("not unpadded base64url")
    raw = text.encode("ascii")
    return base64.urlsafe_b64decode(raw + b"=" * (-len(raw) % 4))


def _canonical_json(value: dict[str, Any]) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def _sign_compact(
    private_key: Ed25519PrivateKey, header: dict[str, Any], claims: dict[str, Any]
) -> str:
    # Hand-rolled compact JWS so the header is exactly what the spec says (PyJWT would add or
    # reorder keys); the verifier parses it with PyJWT all the same.
    signing_input = f"{b64url(_canonical_json(header))}.{b64url(_canonical_json(claims))}"
    signature = private_key.sign(signing_input.encode("ascii"))
    return f"{signing_input}.{b64url(signature)}"


def public_key_b64url(private_key: Ed25519PrivateKey) -> str:
    """The raw 32-byte public key of ``private_key``, unpadded base64url (a JWK ``x``)."""
    raw = private_key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    return b64url(raw)


def device_jwk(public_key_b64url: str) -> dict[str, str]:
    """The OKP/Ed25519 JWK of a device public key: only ``kty``, ``crv`` and ``x``."""
    return {"kty": "OKP", "crv": "Ed25519", "x": public_key_b64url}


def sign_credential(
    private_key: Ed25519PrivateKey, kid: str, claims: dict[str, Any], typ: str = CRED_TYP
) -> str:
    """Sign a credential (or, with ``typ=EMERGENCY_TYP``, an emergency credential)."""
    return _sign_compact(private_key, {"alg": ALG, "kid": kid, "typ": typ}, claims)


def sd_hash(credential: str) -> str:
    """``base64url(SHA-256(ASCII "<credential>~"))``, binding a kb-jwt to one credential."""
    return b64url(hashlib.sha256((credential + SEPARATOR).encode("ascii")).digest())


def new_nonce() -> str:
    """A random 128-bit base64url nonce (what a phone picks for a QR presentation)."""
    return secrets.token_urlsafe(16)


def make_presentation(
    credential: str,
    device_key: Ed25519PrivateKey,
    aud: str,
    nonce: str | None = None,
    iat: int | None = None,
) -> str:
    """``<credential>~<kb-jwt>``: proof that the holder of the device key presents it now.

    ``nonce`` is the kiosk's challenge over BLE; over QR (``None``) a fresh random one is used.
    ``iat`` defaults to the current time; a phone should pass its clock corrected by the
    server-time offset it learned at issuance.
    """
    claims = {
        "iat": int(time.time()) if iat is None else int(iat),
        "aud": aud,
        "nonce": new_nonce() if nonce is None else nonce,
        "sd_hash": sd_hash(credential),
    }
    kb_jwt = _sign_compact(device_key, {"alg": ALG, "typ": KB_TYP}, claims)
    return f"{credential}{SEPARATOR}{kb_jwt}"

"""Helpers shared by the credential, revocation and journal tests (public API only)."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from tests.app_client import AppClient
from tests.world import KioskIdentity, Person, check


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def public_b64(key: Ed25519PrivateKey) -> str:
    return b64url(
        key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    )


async def register_device(
    client: AppClient,
    person: Person,
) -> tuple[str, Ed25519PrivateKey]:
    key = Ed25519PrivateKey.generate()
    body = check(
        await client.post(
            "/v1/devices",
            json={"platform": "ios", "public_key": public_b64(key)},
            headers=person.headers,
        ),
        201,
    )
    return body["id"], key


async def door_credentials(
    client: AppClient,
    person: Person,
    device_id: str,
    door_id: str,
    **extra: Any,
) -> Any:
    return await client.post(
        "/v1/credentials",
        json={"device_id": device_id, "door_id": door_id, **extra},
        headers=person.headers,
    )


async def get_jwks(client: AppClient) -> dict[str, Any]:
    body: dict[str, Any] = check(await client.get("/.well-known/jwks.json"))
    return body


def header_of(token: str) -> dict[str, Any]:
    part = token.split(".")[0]
    parsed: dict[str, Any] = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    return parsed


def verify(token: str, jwks: dict[str, Any], audience: str) -> dict[str, Any]:
    """Verify a credential against a JWKS as a kiosk would (signature, aud, exp)."""
    kid = header_of(token)["kid"]
    (jwk,) = [k for k in jwks["keys"] if k["kid"] == kid]
    raw = base64.urlsafe_b64decode(jwk["x"] + "=" * (-len(jwk["x"]) % 4))
    claims: dict[str, Any] = jwt.decode(
        token,
        Ed25519PublicKey.from_public_bytes(raw),
        algorithms=["EdDSA"],
        audience=audience,
        options={"require": ["exp", "nbf", "iat", "jti", "sub", "iss", "aud"], "strict_aud": True},
    )
    return claims


async def sync(client: AppClient, kiosk: KioskIdentity) -> dict[str, Any]:
    body: dict[str, Any] = check(await client.get("/v1/kiosk/sync", headers=kiosk.headers()))
    return body


async def audit(
    client: AppClient,
    staff: Person,
    property_id: str,
    type_: str | None = None,
) -> list[dict[str, Any]]:
    body = check(
        await client.get(
            f"/v1/staff/properties/{property_id}/audit",
            params={"limit": 1000},
            headers=staff.headers,
        )
    )
    items: list[dict[str, Any]] = body["items"]
    return [e for e in items if type_ is None or e["type"] == type_]


def entry(seq: int, type_: str = "door.closed", **data: Any) -> dict[str, Any]:
    """A journal entry as a kiosk uploads it (hash chain fields filled with stand-ins)."""
    return {
        "seq": seq,
        "type": type_,
        "occurred_at": datetime.now(UTC).isoformat(),
        "prev_hash": f"{seq - 1:064x}",
        "hash": f"{seq:064x}",
        "data": data,
    }


def decision(seq: int, jti: str, target: str, **extra: Any) -> dict[str, Any]:
    data = {
        "granted": True,
        "reason": "ok",
        "jti": jti,
        "target": target,
        "sub": None,
        "role": "resident",
        "emergency": False,
        "channel": "qr",
    }
    data.update(extra)
    return entry(seq, "decision", **data)


async def upload(
    client: AppClient,
    kiosk: KioskIdentity,
    entries: list[dict[str, Any]],
) -> dict[str, Any]:
    body: dict[str, Any] = check(
        await client.post("/v1/kiosk/journal", json={"entries": entries}, headers=kiosk.headers())
    )
    return body

"""Kiosk enrollment and assertion authentication, including every forged-assertion variant."""

from __future__ import annotations

import time

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from backend.db import Database
from backend.settings import Settings
from kiosk.assertion import public_key_b64, sign_assertion
from tests.app_client import AppClient
from tests.world import World, check


async def test_valid_assertion_is_accepted_once(client: AppClient, world: World) -> None:
    kiosk = world.home.kiosk
    headers = kiosk.headers()
    body = check(await client.post("/v1/kiosk/heartbeat", headers=headers))
    assert body["kiosk_id"] == kiosk.id and body["property_id"] == world.home.property_id
    replay = await client.post("/v1/kiosk/heartbeat", headers=headers)
    assert replay.status_code == 401 and replay.json()["code"] == "kiosk_assertion_replayed"


def _claims(kiosk_id: str, **overrides: object) -> dict[str, object]:
    now = int(time.time())
    claims: dict[str, object] = {
        "iss": kiosk_id,
        "sub": kiosk_id,
        "aud": "concierge:kiosk-api",
        "iat": now,
        "exp": now + 30,
        "jti": f"j{time.monotonic_ns()}",
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


FORGERIES = {
    "expired": lambda k, kid: jwt.encode(
        _claims(kid, iat=int(time.time()) - 300, exp=int(time.time()) - 200),
        k,
        "EdDSA",
        headers={"typ": "kiosk-auth+jwt"},
    ),
    "too_long_lived": lambda k, kid: jwt.encode(
        _claims(kid, exp=int(time.time()) + 3600), k, "EdDSA", headers={"typ": "kiosk-auth+jwt"}
    ),
    "other_key": lambda k, kid: jwt.encode(
        _claims(kid), Ed25519PrivateKey.generate(), "EdDSA", headers={"typ": "kiosk-auth+jwt"}
    ),
    "alg_none": lambda k, kid: jwt.encode(
        _claims(kid), None, "none", headers={"typ": "kiosk-auth+jwt"}
    ),
    "wrong_aud": lambda k, kid: jwt.encode(
        _claims(kid, aud="concierge:api"), k, "EdDSA", headers={"typ": "kiosk-auth+jwt"}
    ),
    "list_aud": lambda k, kid: jwt.encode(
        _claims(kid, aud=["concierge:kiosk-api", "x"]),
        k,
        "EdDSA",
        headers={"typ": "kiosk-auth+jwt"},
    ),
    "wrong_typ": lambda k, kid: jwt.encode(_claims(kid), k, "EdDSA", headers={"typ": "JWT"}),
    "no_exp": lambda k, kid: jwt.encode(
        _claims(kid, exp=None), k, "EdDSA", headers={"typ": "kiosk-auth+jwt"}
    ),
    "no_jti": lambda k, kid: jwt.encode(
        _claims(kid, jti=None), k, "EdDSA", headers={"typ": "kiosk-auth+jwt"}
    ),
    "string_exp": lambda k, kid: jwt.encode(
        _claims(kid, exp=str(int(time.time()) + 30)), k, "EdDSA", headers={"typ": "kiosk-auth+jwt"}
    ),
    "sub_mismatch": lambda k, kid: jwt.encode(
        _claims(kid, sub="someone"), k, "EdDSA", headers={"typ": "kiosk-auth+jwt"}
    ),
    "unknown_kiosk": lambda k, kid: jwt.encode(
        _claims("nosuchkiosk"), k, "EdDSA", headers={"typ": "kiosk-auth+jwt"}
    ),
    "jwk_header": lambda k, kid: jwt.encode(
        _claims(kid), k, "EdDSA", headers={"typ": "kiosk-auth+jwt", "jwk": {"kty": "OKP"}}
    ),
    "garbage": lambda k, kid: "eyJhbGciOi.garbage.x",
    "huge": lambda k, kid: "a" * 10_000,
}


@pytest.mark.parametrize("forgery", sorted(FORGERIES))
async def test_forged_assertions_are_refused(client: AppClient, world: World, forgery: str) -> None:  # type: ignore[type-arg]
    kiosk = world.home.kiosk
    token = FORGERIES[forgery](kiosk.key, kiosk.id)
    response = await client.post(
        "/v1/kiosk/heartbeat", headers={"Authorization": f"Bearer {token}"}
    )
    assert response.status_code == 401, response.text
    assert response.json()["code"] == "invalid_kiosk_assertion"


async def test_hs256_signed_with_public_key_is_refused(client: AppClient, world: World) -> None:  # type: ignore[type-arg]
    kiosk = world.home.kiosk
    secret = public_key_b64(kiosk.key).encode()
    token = jwt.encode(_claims(kiosk.id), secret, "HS256", headers={"typ": "kiosk-auth+jwt"})
    response = await client.post(
        "/v1/kiosk/heartbeat", headers={"Authorization": f"Bearer {token}"}
    )
    assert response.status_code == 401


async def test_missing_assertion(client: AppClient, world: World) -> None:
    response = await client.post("/v1/kiosk/heartbeat")
    assert response.status_code == 401 and response.json()["code"] == "invalid_kiosk_assertion"


async def test_user_access_token_is_not_a_kiosk_assertion(client: AppClient, world: World) -> None:  # type: ignore[type-arg]
    response = await client.post("/v1/kiosk/heartbeat", headers=world.home.people["staff"].headers)
    assert response.status_code == 401


async def test_enrollment_code_is_single_use(client: AppClient, world: World) -> None:
    staff = world.home.people["staff"]
    created = check(
        await client.post(
            f"/v1/staff/properties/{world.home.property_id}/kiosks",
            json={"name": "Garage"},
            headers=staff.headers,
        ),
        201,
    )
    key = Ed25519PrivateKey.generate()
    body = {"enrollment_code": created["enrollment_code"], "public_key": public_key_b64(key)}
    enrolled = check(await client.post("/v1/kiosk/enroll", json=body))
    assert enrolled == {"kiosk_id": created["id"], "property_id": world.home.property_id}
    again = await client.post(
        "/v1/kiosk/enroll",
        json={**body, "public_key": public_key_b64(Ed25519PrivateKey.generate())},
    )
    assert again.status_code == 400 and again.json()["code"] == "invalid_enrollment_code"
    # The enrolled key works; the attacker's key from the failed re-enrollment does not.
    check(
        await client.post(
            "/v1/kiosk/heartbeat",
            headers={"Authorization": f"Bearer {sign_assertion(key, created['id'])}"},
        )
    )
    listed = check(await client.get(f"/v1/staff/kiosks/{created['id']}", headers=staff.headers))
    assert listed["enrolled"] is True and "public_key" not in listed


async def test_expired_enrollment_code(client: AppClient, world: World, settings: Settings) -> None:  # type: ignore[type-arg]
    from datetime import UTC, datetime, timedelta

    from sqlmodel import select

    from backend.models import Kiosk

    staff = world.home.people["staff"]
    created = check(
        await client.post(
            f"/v1/staff/properties/{world.home.property_id}/kiosks",
            json={"name": "Old"},
            headers=staff.headers,
        ),
        201,
    )
    # Age the code in the database (time travel is the only way to expire it in a test).
    database = Database(settings)
    try:
        async with database.session() as session:
            kiosk = (await session.exec(select(Kiosk).where(Kiosk.id == created["id"]))).one()
            kiosk.enrollment_expires_at = datetime.now(UTC) - timedelta(seconds=1)
            session.add(kiosk)
    finally:
        await database.dispose()
    response = await client.post(
        "/v1/kiosk/enroll",
        json={
            "enrollment_code": created["enrollment_code"],
            "public_key": public_key_b64(Ed25519PrivateKey.generate()),
        },
    )
    assert response.status_code == 400 and response.json()["code"] == "invalid_enrollment_code"


@pytest.mark.parametrize("public_key", ["", "short", "A" * 43 + "!", "AAAA" * 11])
async def test_enrollment_rejects_bad_keys(
    client: AppClient, world: World, public_key: str
) -> None:  # type: ignore[type-arg]
    response = await client.post(
        "/v1/kiosk/enroll", json={"enrollment_code": "X", "public_key": public_key}
    )
    assert response.status_code == 400

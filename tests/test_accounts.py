"""Accounts from the outside: login, throttling, refresh rotation and reuse, logout, invitations, devices."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta

import jwt
import pytest

from backend.settings import Settings
from tests.app_client import AppClient
from tests.world import PASSWORD, World, check

DEVICE_KEY = base64.urlsafe_b64encode(bytes(range(32))).rstrip(b"=").decode()


async def test_login_me_and_token_shape(client: AppClient, world: World) -> None:
    resident = world.home.people["resident"]
    body = check(
        await client.post("/v1/auth/token", json={"email": resident.email, "password": PASSWORD})
    )
    assert body["token_type"] == "Bearer" and body["expires_in"] > 0
    me = check(
        await client.get("/v1/me", headers={"Authorization": f"Bearer {body['access_token']}"})
    )
    assert me["id"] == resident.user_id
    assert me["memberships"] == [
        {
            "property_id": world.home.property_id,
            "role": "resident",
            "unit_id": world.home.units["4B"],
            "company": None,
        }
    ]


async def test_wrong_password_is_401_problem(client: AppClient, world: World) -> None:
    response = await client.post(
        "/v1/auth/token", json={"email": world.home.people["resident"].email, "password": "nope"}
    )
    assert response.status_code == 401
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["code"] == "invalid_credentials"


async def test_unknown_email_looks_like_wrong_password(client: AppClient, world: World) -> None:  # type: ignore[type-arg]
    response = await client.post(
        "/v1/auth/token", json={"email": "ghost@example.test", "password": "x"}
    )
    assert response.status_code == 401 and response.json()["code"] == "invalid_credentials"


async def test_login_throttled_per_account_even_with_right_password(
    client: AppClient,
    world: World,
    settings: Settings,
) -> None:
    email = world.home.people["vendor"].email
    for _ in range(settings.login_max_failures):
        response = await client.post("/v1/auth/token", json={"email": email, "password": "wrong"})
        assert response.status_code == 401
    response = await client.post("/v1/auth/token", json={"email": email, "password": PASSWORD})
    assert response.status_code == 429
    assert response.json()["code"] == "too_many_attempts"
    assert int(response.headers["retry-after"]) > 0


async def test_login_throttled_per_client_address(
    client: AppClient,
    world: World,
    settings: Settings,
) -> None:
    for i in range(settings.login_max_failures):
        await client.post(
            "/v1/auth/token", json={"email": f"spray{i}@example.test", "password": "x"}
        )
    response = await client.post(
        "/v1/auth/token", json={"email": world.home.people["courier"].email, "password": PASSWORD}
    )
    assert response.status_code == 429


async def test_refresh_rotates_and_reuse_revokes_family(client: AppClient, world: World) -> None:  # type: ignore[type-arg]
    resident = world.home.people["resident"]
    first = check(
        await client.post("/v1/auth/refresh", json={"refresh_token": resident.refresh_token})
    )
    assert first["refresh_token"] != resident.refresh_token
    # The old link again: theft detected, the whole family dies, including the new link.
    reused = await client.post("/v1/auth/refresh", json={"refresh_token": resident.refresh_token})
    assert reused.status_code == 401 and reused.json()["code"] == "refresh_token_reused"
    after = await client.post("/v1/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert after.status_code == 401 and after.json()["code"] == "invalid_refresh_token"


async def test_logout_revokes_family(client: AppClient, world: World) -> None:
    staff = world.home.people["staff"]
    assert (
        await client.post("/v1/auth/logout", json={"refresh_token": staff.refresh_token})
    ).status_code == 204
    response = await client.post("/v1/auth/refresh", json={"refresh_token": staff.refresh_token})
    assert response.status_code == 401


@pytest.mark.parametrize(
    ("mutate", "code"),
    [
        ("garbage", "invalid_token"),
        ("forged", "invalid_token"),
        ("expired", "token_expired"),
        ("none_alg", "invalid_token"),
    ],
)
async def test_bad_access_tokens(client: AppClient, world: World, mutate: str, code: str) -> None:  # type: ignore[type-arg]
    resident = world.home.people["resident"]
    now = datetime.now(UTC)
    claims = {
        "iss": "concierge",
        "aud": "concierge:api",
        "sub": resident.user_id,
        "iat": int(now.timestamp()),
        "exp": int((now + timedelta(minutes=5)).timestamp()),
    }
    token = {
        "garbage": "not.a.jwt",
        "forged": jwt.encode(claims, "a" * 32, algorithm="HS256", headers={"typ": "at+jwt"}),
        "none_alg": jwt.encode(claims, None, algorithm="none", headers={"typ": "at+jwt"}),
        "expired": "",
    }[mutate]
    if mutate == "expired":
        # A genuine token whose expiry has passed: decode it, it must carry a valid signature.
        header, payload, _ = resident.access_token.split(".")
        assert header and payload
        expired_settings_token = await _expired_token(client, world)
        token = expired_settings_token
    response = await client.get("/v1/me", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401
    assert response.json()["code"] == code


async def _expired_token(client: AppClient, world: World) -> str:
    from backend.auth import issue_access_token

    runtime = client.app.state.runtime  # only its key is used: no I/O on the app's loop
    return issue_access_token(
        runtime, world.home.people["resident"].user_id, "s", datetime.now(UTC) - timedelta(hours=2)
    )


async def test_missing_token_is_401(client: AppClient, world: World) -> None:
    response = await client.get("/v1/me")
    assert response.status_code == 401 and response.json()["code"] == "not_authenticated"


async def test_invitation_code_is_single_use(client: AppClient, world: World) -> None:
    staff = world.home.people["staff"]
    invitation = check(
        await client.post(
            f"/v1/staff/properties/{world.home.property_id}/invitations",
            json={"email": "newbie@example.test", "role": "courier"},
            headers=staff.headers,
        ),
        201,
    )
    body = {"code": invitation["code"], "password": PASSWORD, "name": "Newbie"}
    check(await client.post("/v1/auth/invitations/accept", json=body))
    again = await client.post("/v1/auth/invitations/accept", json=body)
    assert again.status_code == 409 and again.json()["code"] == "invitation_used"
    bogus = await client.post("/v1/auth/invitations/accept", json={**body, "code": "nope"})
    assert bogus.status_code == 400 and bogus.json()["code"] == "invalid_invitation"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"email": "r@example.test", "role": "resident"}, None),
        ({"email": "v@example.test", "role": "vendor"}, None),
        ({"email": "x@example.test", "role": "admin"}, None),
        ({"email": "x@example.test", "role": "staff", "extra": 1}, "extra"),
    ],
)
async def test_invitation_validation(
    client: AppClient, world: World, body: dict, field: str | None
) -> None:  # type: ignore[type-arg]
    response = await client.post(
        f"/v1/staff/properties/{world.home.property_id}/invitations",
        json=body,
        headers=world.home.people["staff"].headers,
    )
    assert response.status_code == 400
    problem = response.json()
    assert problem["code"] == "validation_error"
    if field:
        assert field in problem["detail"]


async def test_device_registration_and_ownership(client: AppClient, world: World) -> None:
    resident = world.home.people["resident"]
    device = check(
        await client.post(
            "/v1/devices",
            json={"platform": "ios", "public_key": DEVICE_KEY, "push_token": "tok"},
            headers=resident.headers,
        ),
        201,
    )
    assert device["push_enabled"] is True
    neighbour = world.home.people["neighbour"]
    stolen = await client.patch(
        f"/v1/devices/{device['id']}", json={"push_token": "mine"}, headers=neighbour.headers
    )
    assert stolen.status_code == 404
    gone = await client.delete(f"/v1/devices/{device['id']}", headers=neighbour.headers)
    assert gone.status_code == 404
    assert (
        await client.delete(f"/v1/devices/{device['id']}", headers=resident.headers)
    ).status_code == 204


@pytest.mark.parametrize(
    "body",
    [
        {"platform": "ios", "public_key": "short"},
        {"platform": "nokia", "public_key": DEVICE_KEY},
        {"platform": "ios", "public_key": "A" * 44},
        {"platform": "ios", "public_key": DEVICE_KEY, "unknown": True},
    ],
)
async def test_device_bad_input(client: AppClient, world: World, body: dict) -> None:
    response = await client.post(
        "/v1/devices", json=body, headers=world.home.people["resident"].headers
    )
    assert response.status_code == 400
    assert response.json()["code"] == "validation_error"


async def test_member_removal_cuts_access_at_once(client: AppClient, world: World) -> None:
    home = world.home
    resident = home.people["resident"]
    response = await client.delete(
        f"/v1/staff/properties/{home.property_id}/members/{resident.user_id}",
        headers=home.people["staff"].headers,
    )
    assert response.status_code == 204
    me = check(await client.get("/v1/me", headers=resident.headers))
    assert me["memberships"] == []
    refreshed = await client.post(
        "/v1/auth/refresh", json={"refresh_token": resident.refresh_token}
    )
    assert refreshed.status_code == 401

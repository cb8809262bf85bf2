"""Tenant boundaries from the attacker's side: anything outside the caller's scope is 404 (or 403 by role)."""

from __future__ import annotations

import pytest

from tests.app_client import AppClient
from tests.world import World, check

# (who, method, path template, body, expected status, expected code)
# Paths refer to the *home* property; attackers come from the other property or a lower role.
ATTACKS = [
    ("other_staff", "GET", "/v1/staff/properties/{pid}", None, 404, "not_found"),
    ("other_staff", "PATCH", "/v1/staff/properties/{pid}", {"name": "pwned"}, 404, "not_found"),
    ("other_staff", "GET", "/v1/staff/properties/{pid}/units", None, 404, "not_found"),
    ("other_staff", "POST", "/v1/staff/properties/{pid}/units", {"label": "9Z"}, 404, "not_found"),
    (
        "other_staff",
        "POST",
        "/v1/staff/properties/{pid}/invitations",
        {"email": "a@b.c", "role": "staff"},
        404,
        "not_found",
    ),
    ("other_staff", "GET", "/v1/staff/properties/{pid}/members", None, 404, "not_found"),
    (
        "other_staff",
        "DELETE",
        "/v1/staff/properties/{pid}/members/{resident}",
        None,
        404,
        "not_found",
    ),
    (
        "other_staff",
        "POST",
        "/v1/staff/properties/{pid}/kiosks",
        {"name": "evil"},
        404,
        "not_found",
    ),
    ("other_staff", "GET", "/v1/staff/kiosks/{kid}", None, 404, "not_found"),
    ("other_staff", "GET", "/v1/staff/kiosks/{kid}/compartments", None, 404, "not_found"),
    (
        "other_staff",
        "POST",
        "/v1/staff/kiosks/{kid}/compartments",
        {"label": "Z9", "size": "S"},
        404,
        "not_found",
    ),
    ("other_staff", "POST", "/v1/staff/kiosks/{kid}/enrollment-code", None, 404, "not_found"),
    ("other_staff", "GET", "/v1/staff/properties/{pid}/doors", None, 404, "not_found"),
    ("other_staff", "GET", "/v1/staff/properties/{pid}/audit", None, 404, "not_found"),
    ("other_staff", "GET", "/v1/staff/properties/{pid}/audit/verify", None, 404, "not_found"),
    ("staff", "POST", "/v1/staff/properties", {"name": "mine now"}, 403, "forbidden"),
    ("resident", "GET", "/v1/staff/properties/{pid}", None, 403, "forbidden"),
    (
        "resident",
        "POST",
        "/v1/staff/properties/{pid}/invitations",
        {"email": "a@b.c", "role": "staff"},
        403,
        "forbidden",
    ),
    ("vendor", "GET", "/v1/staff/properties/{pid}/members", None, 403, "forbidden"),
    ("courier", "POST", "/v1/staff/properties/{pid}/kiosks", {"name": "x"}, 403, "forbidden"),
]


def _who(world: World, who: str) -> dict[str, str]:
    if who == "other_staff":
        return world.other.people["staff"].headers
    return world.home.people[who].headers


@pytest.mark.parametrize(("who", "method", "path", "body", "status", "code"), ATTACKS)
async def test_attacks_are_refused(
    client: AppClient,
    world: World,
    who: str,
    method: str,
    path: str,
    body: dict | None,
    status: int,
    code: str,
) -> None:
    home = world.home
    url = path.format(
        pid=home.property_id, kid=home.kiosk.id, resident=home.people["resident"].user_id
    )
    before = check(
        await client.get(
            f"/v1/staff/properties/{home.property_id}/audit", headers=home.people["staff"].headers
        )
    )
    response = await client.request(method, url, json=body, headers=_who(world, who))
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["code"] == code
    after = check(
        await client.get(
            f"/v1/staff/properties/{home.property_id}/audit", headers=home.people["staff"].headers
        )
    )
    assert after["items"] == before["items"], "a refused request wrote to the audit trail"


async def test_staff_lists_only_their_properties(client: AppClient, world: World) -> None:
    listed = check(
        await client.get("/v1/staff/properties", headers=world.other.people["staff"].headers)
    )
    assert [p["id"] for p in listed["items"]] == [world.other.property_id]
    everything = check(await client.get("/v1/staff/properties", headers=world.admin.headers))
    assert {world.home.property_id, world.other.property_id} <= {
        p["id"] for p in everything["items"]
    }


async def test_door_with_other_propertys_kiosk_is_not_found(
    client: AppClient, world: World
) -> None:  # type: ignore[type-arg]
    response = await client.post(
        f"/v1/staff/properties/{world.home.property_id}/doors",
        json={"name": "Back door", "kiosk_id": world.other.kiosk.id},
        headers=world.home.people["staff"].headers,
    )
    assert response.status_code == 404


async def test_invitation_to_other_propertys_unit_is_not_found(
    client: AppClient, world: World
) -> None:  # type: ignore[type-arg]
    response = await client.post(
        f"/v1/staff/properties/{world.home.property_id}/invitations",
        json={
            "email": "sneak@example.test",
            "role": "resident",
            "unit_id": world.other.units["4B"],
        },
        headers=world.home.people["staff"].headers,
    )
    assert response.status_code == 404


async def test_pagination_walks_every_unit(client: AppClient, world: World) -> None:
    home, staff = world.home, world.home.people["staff"]
    for label in ("2A", "2B", "3A"):
        check(
            await client.post(
                f"/v1/staff/properties/{home.property_id}/units",
                json={"label": label},
                headers=staff.headers,
            ),
            201,
        )
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        page = check(
            await client.get(
                f"/v1/staff/properties/{home.property_id}/units",
                params=params,
                headers=staff.headers,
            )
        )
        seen += [u["label"] for u in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert sorted(seen) == ["1A", "2A", "2B", "3A", "4B"]

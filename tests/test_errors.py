"""Bad input gets a problem+json answer with a stable code, never a 500 or a stack trace."""

from __future__ import annotations

import pytest

from backend.settings import Settings
from tests.app_client import AppClient
from tests.world import World, check


def _problem(response: object, status: int, code: str) -> dict:
    assert response.status_code == status, response.text  # type: ignore[attr-defined]
    assert response.headers["content-type"].startswith("application/problem+json")  # type: ignore[attr-defined]
    body = response.json()  # type: ignore[attr-defined]
    assert body["code"] == code and body["status"] == status
    assert {"type", "title", "detail"} <= set(body)
    assert "Traceback" not in response.text  # type: ignore[attr-defined]
    return body


async def test_unknown_route(client: AppClient) -> None:
    _problem(await client.get("/v1/nothing-here"), 404, "not_found")


async def test_wrong_method(client: AppClient) -> None:
    _problem(await client.put("/v1/auth/token", json={}), 405, "method_not_allowed")


async def test_malformed_json(client: AppClient) -> None:
    response = await client.post(
        "/v1/auth/token", content=b'{"email": ', headers={"content-type": "application/json"}
    )
    _problem(response, 400, "malformed_body")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"email": "a@b.c"}, "password"),
        ({"email": 5, "password": "x"}, "email"),
        ({"email": "a@b.c", "password": "x", "admin": True}, "admin"),
        ([], "body"),
    ],
)
async def test_validation_names_the_field(client: AppClient, body: object, field: str) -> None:  # type: ignore[type-arg]
    problem = _problem(await client.post("/v1/auth/token", json=body), 400, "validation_error")
    assert field in problem["detail"]


async def test_oversized_body(client: AppClient, settings: Settings) -> None:
    huge = b'{"email": "' + b"a" * (settings.max_body_bytes + 10) + b'"}'
    response = await client.post(
        "/v1/auth/token", content=huge, headers={"content-type": "application/json"}
    )
    _problem(response, 413, "body_too_large")


async def test_long_path_ids_are_validated(client: AppClient, world: World) -> None:
    response = await client.get(
        "/v1/staff/properties/" + "x" * 200, headers=world.home.people["staff"].headers
    )
    _problem(response, 400, "validation_error")


async def test_health(client: AppClient) -> None:
    assert check(await client.get("/health/live"))["status"] == "ok"
    ready = check(await client.get("/health/ready"))
    assert ready["checks"]["database"] == "ok"


async def test_request_id_is_echoed(client: AppClient) -> None:
    response = await client.get("/health/live", headers={"x-request-id": "abc-123"})
    assert response.headers["x-request-id"] == "abc-123"

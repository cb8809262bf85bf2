"""Fuzz every HTTP operation from the app's own OpenAPI document (schemathesis, in-process).

Against a seeded SQLite world, each operation gets generated requests (valid and invalid) with
a real caller's credentials: staff paths the property's staff member, kiosk paths a fresh
signed kiosk assertion, everything else the resident. Every response must be documented:
no 5xx, a status code the operation lists, the media type it lists (problem+json for errors)
and a body matching its schema. Example counts stay modest so the whole run takes seconds.
"""

from __future__ import annotations

import asyncio
import atexit
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from backend.app import create_app
from backend.migrate import upgrade
from backend.settings import Settings
from tests.app_client import AppClient
from tests.conftest import make_settings
from tests.databases import sqlite_url
from tests.world import World, build_world

EXAMPLES = 5

# Left out, on purpose:
# - positive_data_acceptance: a schema-valid body may still be refused by domain rules the
#   schema cannot express (an unknown invitation code, an opaque cursor that was never issued,
#   a policy value checked against others): those are documented 4xx answers, not bugs;
# - negative_data_rejection: Litestar converts bodies and parameters with msgspec's lax mode
#   (``strict=False``), so a number is taken as a timestamp and "7" as 7: coercions, not
#   accepted garbage; unknown fields and out-of-range values are still refused (their own
#   tests cover that);
# - allow_header_conformance: Litestar answers OPTIONS per registered handler, so a path served
#   by two handlers (PATCH and DELETE) advertises only one method; OPTIONS is not part of the
#   API (no browser clients, no CORS).
EXCLUDED = [
    schemathesis.checks.positive_data_acceptance,
    schemathesis.checks.negative_data_rejection,
    schemathesis.specs.openapi.checks.allow_header_conformance,
]


async def _seed(settings: Settings) -> World:
    async with AppClient(app=create_app(settings)) as client:
        return await build_world(client, settings)


# The schema is loaded at collection (schemathesis' lazy ``from_fixture`` does not work with
# pytest 9: it reads ``Function._nodeid``). It is taken from the app object without starting
# it (the app starts with the first fuzzed request, once the module fixture has migrated and
# seeded the database); the document is the one ``/schema/openapi.json`` serves.
_DIRECTORY = Path(tempfile.mkdtemp(prefix="concierge-fuzz-"))
atexit.register(shutil.rmtree, _DIRECTORY, ignore_errors=True)
_SETTINGS = make_settings(sqlite_url(_DIRECTORY), _DIRECTORY / "var")


def _load_schema() -> tuple[Any, str]:
    """The schema, or why it could not be built (a broken app fails this module's test
    instead of interrupting the collection of the whole session)."""
    try:
        app = create_app(_SETTINGS)
        loaded = schemathesis.openapi.from_dict(app.openapi_schema.to_schema())
    except Exception as exc:
        return None, f"{type(exc).__name__}: {exc}"
    loaded.app = app
    loaded.location = "/schema/openapi.json"
    # Undeclared methods: one probe each is enough (they all hit the same router answer: 405
    # with Allow); OPTIONS is left out for the reason above.
    loaded.config.phases.coverage.unexpected_methods = {"trace", "put"}
    return loaded, ""


schema, SCHEMA_ERROR = _load_schema()


@pytest.fixture(scope="module")
def world() -> World:
    upgrade(_SETTINGS.database_url)
    return asyncio.run(_seed(_SETTINGS))


def caller_headers(world: World, path: str) -> dict[str, str]:
    if path.startswith("/v1/kiosk/"):
        return {} if path == "/v1/kiosk/enroll" else world.home.kiosk.headers()
    if path.startswith("/v1/staff/"):
        return world.home.people["staff"].headers
    return world.home.people["resident"].headers


if schema is None:

    def test_every_operation_answers_as_documented() -> None:
        pytest.fail(f"the app or its OpenAPI document could not be built: {SCHEMA_ERROR}")

else:

    @schema.parametrize()
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,
        database=None,
    )
    def test_every_operation_answers_as_documented(case: Any, world: World) -> None:
        response = case.call_and_validate(
            headers=caller_headers(world, case.path), excluded_checks=EXCLUDED
        )
        assert response.status_code < 500

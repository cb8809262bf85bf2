"""The OpenAPI document is one a phone developer can build a client from.

Walks ``/schema/openapi.json``: every operation has a summary and a unique operationId, lists
its 4xx errors, 500 and 503 as ``application/problem+json``, request bodies refuse unknown fields in the
schema too, and security is declared exactly where authentication is needed (checked by
calling every operation without credentials).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import TestClient

from backend.app import create_app
from backend.migrate import upgrade
from backend.openapi_strict import AUTH_CODES
from backend.problems import PROBLEM_JSON
from tests.conftest import make_settings
from tests.databases import sqlite_url

METHODS = ("get", "put", "post", "delete", "patch")


@pytest.fixture(scope="module")
def api(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[TestClient[Any], dict[str, Any]]]:
    directory: Path = tmp_path_factory.mktemp("openapi")
    url = sqlite_url(directory)
    upgrade(url)
    with TestClient(app=create_app(make_settings(url, directory / "var"))) as client:
        response = client.get("/schema/openapi.json")
        assert response.status_code == 200, response.text
        yield client, response.json()


def operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in document["paths"].items():
        for method in METHODS:
            if method in item:
                yield method, path, item[method]


def resolve(document: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        schema = document["components"]["schemas"][name]
    return schema


def test_every_operation_has_a_summary_and_a_unique_operation_id(
    api: tuple[TestClient[Any], dict[str, Any]],
) -> None:
    _, document = api
    seen: dict[str, str] = {}
    problems = []
    for method, path, operation in operations(document):
        label = f"{method.upper()} {path}"
        if not (operation.get("summary") or "").strip():
            problems.append(f"{label}: no summary")
        operation_id = operation.get("operationId")
        if not operation_id:
            problems.append(f"{label}: no operationId")
        elif operation_id in seen:
            problems.append(
                f"{label}: operationId {operation_id} also used by {seen[operation_id]}"
            )
        else:
            seen[operation_id] = label
    assert not problems, "\n".join(problems)


def test_errors_are_documented_as_problem_json(api: tuple[TestClient[Any], dict[str, Any]]) -> None:
    _, document = api
    problems = []
    for method, path, operation in operations(document):
        label = f"{method.upper()} {path}"
        responses = operation.get("responses", {})
        errors = {code: spec for code, spec in responses.items() if code[0] in "45"}
        if path.startswith("/health/"):  # probes for load balancers: 200 or 503, no input
            continue
        if not any(code.startswith("4") for code in errors):
            problems.append(f"{label}: no 4xx response documented")
        if "500" not in errors:
            problems.append(f"{label}: no 500 documented")
        if "503" not in errors:  # a database outage is answered 503 by every operation
            problems.append(f"{label}: no 503 documented")
        for code, spec in errors.items():
            content = spec.get("content", {})
            if list(content) != [PROBLEM_JSON]:
                problems.append(f"{label}: {code} documented as {list(content)}")
                continue
            schema = resolve(document, content[PROBLEM_JSON].get("schema", {}))
            missing = {"type", "title", "status", "detail", "code"} - set(
                schema.get("required", [])
            )
            if missing:
                problems.append(f"{label}: {code} problem schema lacks required {sorted(missing)}")
    assert not problems, "\n".join(problems)


def test_request_bodies_refuse_unknown_fields_in_the_schema(
    api: tuple[TestClient[Any], dict[str, Any]],
) -> None:
    _, document = api
    problems = []
    for method, path, operation in operations(document):
        body = operation.get("requestBody")
        if not body:
            continue
        for media_type, spec in body.get("content", {}).items():
            schema = resolve(document, spec.get("schema", {}))
            if schema.get("type") == "object" and schema.get("additionalProperties") is not False:
                problems.append(
                    f"{method.upper()} {path}: {media_type} body accepts unknown fields"
                )
    assert not problems, "\n".join(problems)


def _placeholder_path(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "x0000000000000000", path)


def test_security_is_declared_exactly_where_authentication_is_needed(
    api: tuple[TestClient[Any], dict[str, Any]],
) -> None:
    """Call every operation without credentials: an authentication 401 means it needs security."""
    client, document = api
    schemes = set(document.get("components", {}).get("securitySchemes", {}))
    problems = []
    for method, path, operation in operations(document):
        label = f"{method.upper()} {path}"
        security = operation.get("security") or []
        for requirement in security:
            unknown = set(requirement) - schemes
            if unknown:
                problems.append(f"{label}: unknown security scheme {sorted(unknown)}")
        kwargs: dict[str, Any] = {}
        if "requestBody" in operation:
            kwargs["json"] = {}
        response = client.request(method.upper(), _placeholder_path(path), **kwargs)
        assert response.status_code < 500, (label, response.status_code, response.text)
        needs_auth = (
            response.status_code == 401
            and response.headers.get("content-type", "").startswith(PROBLEM_JSON)
            and response.json().get("code") in AUTH_CODES
        )
        if needs_auth and not security:
            problems.append(
                f"{label}: answers 401 {response.json()['code']} but declares no security"
            )
        if security and "401" not in operation.get("responses", {}):
            problems.append(f"{label}: declares security but documents no 401")
        if security and not needs_auth and response.status_code != 401:
            problems.append(
                f"{label}: declares security but answered {response.status_code} without credentials"
            )
    assert not problems, "\n".join(problems)


def test_documented_response_headers_have_a_schema(
    api: tuple[TestClient[Any], dict[str, Any]],
) -> None:
    """OpenAPI requires a schema on every header object; intake documents X-Parcel-Created."""
    _, document = api
    seen = []
    for method, path, operation in operations(document):
        for status, response in operation.get("responses", {}).items():
            for name, header in (response.get("headers") or {}).items():
                assert "schema" in header or "content" in header, (path, method, status, name)
                seen.append((path, method, status, name))
    assert ("/v1/kiosk/deliveries", "post", "201", "X-Parcel-Created") in seen

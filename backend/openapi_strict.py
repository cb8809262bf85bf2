"""OpenAPI schema generation that tells clients the truth about request bodies.

msgspec's ``forbid_unknown_fields=True`` rejects extra keys, but Litestar's schema for a Struct
does not say so, so generated clients and schema fuzzers believe extra keys are accepted.
This plugin documents such Structs with ``additionalProperties: false``; ``finish_openapi``
drops inherited router ``security`` from public operations and gives documented response
headers their schema. Both rely on Litestar internals
(private modules, pinned by the litestar version; the fuzz and schema tests fail if they move).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from litestar._openapi.plugin import OpenAPIPlugin
from litestar._openapi.schema_generation.plugins.struct import StructSchemaPlugin

if TYPE_CHECKING:
    from litestar import Litestar
    from litestar._openapi.schema_generation import SchemaCreator
    from litestar.openapi.spec import OpenAPI, Schema
    from litestar.typing import FieldDefinition


class StrictStructSchemaPlugin(StructSchemaPlugin):
    """Struct schemas, with ``additionalProperties: false`` when unknown fields are refused."""

    def to_openapi_schema(
        self, field_definition: FieldDefinition, schema_creator: SchemaCreator
    ) -> Schema:
        schema = super().to_openapi_schema(field_definition, schema_creator)
        config: Any = getattr(field_definition.type_, "__struct_config__", None)
        if config is not None and config.forbid_unknown_fields:
            schema.additional_properties = False
        return schema


# 401 codes that mean "this operation needs the caller's token or kiosk assertion"; other 401s
# (wrong password, spent refresh token) are answers about the request body of a public operation.
AUTH_CODES = frozenset(
    {
        "not_authenticated",
        "invalid_token",
        "token_expired",
        "invalid_kiosk_assertion",
        "kiosk_assertion_replayed",
    }
)


def _codes(description: str | None) -> set[str]:
    """The problem codes ``backend.problems.responses`` lists in a response description."""
    _, _, tail = (description or "").partition("code one of:")
    return {code.strip() for code in tail.split(",") if code.strip()}


def _drop_security_of_public_operations(document: OpenAPI) -> OpenAPI:
    """Router-level ``security`` is additive in Litestar, so sign-in and kiosk enrollment
    inherit a requirement they do not have: an operation that never answers an authentication
    401 is documented as public (no ``security``)."""
    for path_item in (document.paths or {}).values():
        for method in ("get", "put", "post", "delete", "patch"):
            operation = getattr(path_item, method, None)
            if operation is None or not operation.security:
                continue
            unauthorized = (operation.responses or {}).get("401")
            description = getattr(unauthorized, "description", None)
            if unauthorized is None or not _codes(description) & AUTH_CODES:
                operation.security = None
    return document


def _give_response_headers_a_schema(document: OpenAPI) -> OpenAPI:
    """A documented response header (``ResponseHeader(documentation_only=True)``) comes out of
    Litestar without a ``schema``, which OpenAPI requires of a header: our headers are strings."""
    from litestar.openapi.spec import OpenAPIType
    from litestar.openapi.spec import Schema as SchemaObject

    for path_item in (document.paths or {}).values():
        for method in ("get", "put", "post", "delete", "patch"):
            operation = getattr(path_item, method, None)
            for response in ((operation.responses or {}) if operation else {}).values():
                for header in (getattr(response, "headers", None) or {}).values():
                    if getattr(header, "schema", None) is None and not getattr(
                        header, "content", None
                    ):
                        header.schema = SchemaObject(type=OpenAPIType.STRING)
    return document


class _FinishedOpenAPIPlugin(OpenAPIPlugin):
    __slots__ = ()

    def _build_openapi(self) -> OpenAPI:
        document = _drop_security_of_public_operations(super()._build_openapi())
        return _give_response_headers_a_schema(document)


def finish_openapi(app: Litestar) -> None:
    """Post-process the app's OpenAPI document once, when it is first built (lazily, as before)."""
    plugin = app.plugins.get(OpenAPIPlugin)
    plugin.__class__ = _FinishedOpenAPIPlugin

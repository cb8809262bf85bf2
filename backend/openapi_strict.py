"""OpenAPI schema generation that tells clients the truth about request bodies.

msgspec's ``forbid_unknown_fields=True`` rejects extra keys, but Litestar's schema for a Struct
does not say so, so generated clients and schema fuzzers believe extra keys are accepted.
This plugin documents such Structs with ``additionalProperties: false``. It relies on
Litestar's own Struct plugin (a private module, pinned by the litestar version; the fuzz
and schema tests fail if it moves).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from litestar._openapi.schema_generation.plugins.struct import StructSchemaPlugin

if TYPE_CHECKING:
    from litestar._openapi.schema_generation import SchemaCreator
    from litestar.openapi.spec import Schema
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

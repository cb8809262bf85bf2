"""``GET /.well-known/jwks.json``: the public keys kiosks and third parties verify credentials with.

Published: the ``active`` key of each purpose, the ``next`` key (before it ever signs) and
``retiring`` keys until the last credential they signed has expired. Never a private key.
Also the startup hook that makes sure signing keys exist and rotates the ones that are due.
"""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Litestar, get
from litestar.datastructures import CacheControlHeader

from backend.dependencies import RuntimeDep, SessionDep
from backend.models.base import utcnow
from backend.problems import responses
from backend.runtime import Runtime
from backend.services import signing_keys


class JwkView(msgspec.Struct):
    kty: str
    crv: str
    x: str
    kid: str
    alg: str
    use: str
    status: str
    purpose: str


class JwksView(msgspec.Struct):
    keys: list[JwkView]


@get(
    "/.well-known/jwks.json",
    summary="Credential-signing public keys (active, next and retiring)",
    responses=responses(auth=False),
    security=[],
    tags=["public"],
    cache_control=CacheControlHeader(public=True, max_age=300),
)
async def jwks(runtime: RuntimeDep, session: SessionDep) -> JwksView:
    document = await signing_keys.jwks(session, runtime, utcnow())
    return msgspec.convert(document, JwksView)


async def ensure_signing_keys(_: Litestar, runtime: Runtime) -> None:
    """Startup: create missing keys, rotate due ones (every process; idempotent)."""
    async with runtime.db.session() as session:
        await signing_keys.maintain(session, runtime, utcnow(), force=True)


handlers: list[Any] = [jwks]

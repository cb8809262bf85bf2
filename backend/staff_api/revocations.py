"""``POST /v1/staff/revocations``: revoke a credential, a device or a user."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import msgspec
from litestar import get, post
from litestar.params import FromQuery, JSONBody, Parameter
from sqlmodel import col, select

from backend import errors
from backend.dependencies import ActorDep, RuntimeDep, SessionDep
from backend.models import Revocation
from backend.models.base import utcnow
from backend.pagination import Page, decode_cursor, encode_cursor
from backend.problems import responses
from backend.scoping import staff_property
from backend.services import revocations

Id = Annotated[str, msgspec.Meta(min_length=1, max_length=32)]


class RevocationRequest(msgspec.Struct, forbid_unknown_fields=True):
    """Exactly one of ``user_id``, ``device_id``, ``credential_id``, and why."""

    reason: Annotated[str, msgspec.Meta(min_length=1, max_length=500)]
    user_id: Id | None = None
    device_id: Id | None = None
    credential_id: Id | None = None


class RevocationView(msgspec.Struct):
    id: str
    property_id: str
    kind: str
    subject_id: str
    reason: str
    created_at: datetime
    expires_at: Annotated[
        datetime, msgspec.Meta(description="When the entry drops out of kiosks' lists")
    ]
    version: Annotated[int, msgspec.Meta(description="Revocation list version it appears in")]

    @classmethod
    def of(cls, r: Revocation) -> RevocationView:
        return cls(
            str(r.id),
            r.property_id,
            r.kind,
            r.subject_id,
            r.reason,
            r.created_at,
            r.expires_at,
            r.version,
        )


class RevocationsView(msgspec.Struct):
    revocations: list[RevocationView]


@post(
    "/revocations",
    summary="Revoke a credential, a device (lost phone) or a user; kiosks learn it at sync",
    responses=responses(errors.NotFound),
)
async def create_revocation(
    data: JSONBody[RevocationRequest], actor: ActorDep, runtime: RuntimeDep, session: SessionDep
) -> RevocationsView:
    rows = await revocations.revoke_for_staff(
        session,
        runtime,
        actor,
        user_id=data.user_id,
        device_id=data.device_id,
        credential_id=data.credential_id,
        reason=data.reason,
        now=utcnow(),
    )
    return RevocationsView([RevocationView.of(r) for r in rows])


@get(
    "/properties/{property_id:str}/revocations",
    summary="The property's revocations, newest first (active_only: those kiosks still get)",
    responses=responses(errors.NotFound),
)
async def list_revocations(
    property_id: Annotated[str, Parameter(max_length=32)],
    actor: ActorDep,
    session: SessionDep,
    active_only: FromQuery[bool] = False,
    limit: Annotated[int, Parameter(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Parameter(max_length=200)] = None,
) -> Page[RevocationView]:
    await staff_property(session, actor, property_id)
    statement = select(Revocation).where(Revocation.property_id == property_id)
    if active_only:
        statement = statement.where(col(Revocation.expires_at) > utcnow())
    after = decode_cursor(cursor)
    if after is not None:
        if not after.isdigit():
            raise errors.ValidationFailed("cursor is not valid")
        statement = statement.where(col(Revocation.id) < int(after))
    rows = list(
        (await session.exec(statement.order_by(col(Revocation.id).desc()).limit(limit + 1))).all()
    )
    next_cursor = encode_cursor(rows[limit - 1].id or 0) if len(rows) > limit else None
    return Page([RevocationView.of(r) for r in rows[:limit]], next_cursor)


handlers = [create_revocation, list_revocations]

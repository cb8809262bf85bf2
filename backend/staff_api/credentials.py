"""``GET /v1/staff/properties/{pid}/credentials``: the issued-credential record, for audit."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import msgspec
from litestar import get
from litestar.params import FromQuery, Parameter
from sqlmodel import col, select

from backend import errors
from backend.dependencies import ActorDep, SessionDep
from backend.models import Credential
from backend.models.base import utcnow
from backend.pagination import Page, fetch_page
from backend.problems import responses
from backend.scoping import staff_property


class IssuedCredentialRecordView(msgspec.Struct):
    """What was issued (never the token itself)."""

    id: Annotated[str, msgspec.Meta(description="Also the credential's jti")]
    user_id: str
    device_id: str
    kiosk_id: str | None
    target: str
    role: str
    kind: Annotated[str, msgspec.Meta(description="standard or emergency")]
    signing_kid: str
    parcel_id: str | None
    work_order_id: str | None
    issued_at: datetime
    not_before: datetime
    expires_at: datetime
    redeemed_at: datetime | None
    redemptions: int
    revoked_at: datetime | None

    @classmethod
    def of(cls, c: Credential) -> IssuedCredentialRecordView:
        return cls(
            c.id,
            c.user_id,
            c.device_id,
            c.kiosk_id,
            c.target,
            c.role,
            c.kind,
            c.kid,
            c.parcel_id,
            c.work_order_id,
            c.issued_at,
            c.not_before,
            c.expires_at,
            c.redeemed_at,
            c.redemptions,
            c.revoked_at,
        )


@get(
    "/properties/{property_id:str}/credentials",
    summary="Credentials issued at the property (filters: user, still valid)",
    responses=responses(errors.NotFound),
)
async def list_issued_credentials(
    property_id: Annotated[str, Parameter(max_length=32)],
    actor: ActorDep,
    session: SessionDep,
    user_id: Annotated[str | None, Parameter(max_length=32)] = None,
    valid_only: FromQuery[bool] = False,
    limit: Annotated[int, Parameter(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Parameter(max_length=200)] = None,
) -> Page[IssuedCredentialRecordView]:
    await staff_property(session, actor, property_id)
    statement = select(Credential).where(Credential.property_id == property_id)
    if user_id is not None:
        statement = statement.where(Credential.user_id == user_id)
    if valid_only:
        statement = statement.where(
            col(Credential.expires_at) > utcnow(), col(Credential.revoked_at).is_(None)
        )
    rows, next_cursor = await fetch_page(
        session, statement, Credential.id, limit=limit, cursor=cursor
    )
    return Page([IssuedCredentialRecordView.of(c) for c in rows], next_cursor)


handlers = [list_issued_credentials]

"""``POST /v1/staff/revocations``: revoke a credential, a device or a user."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import msgspec
from litestar import post
from litestar.params import JSONBody

from backend import errors
from backend.dependencies import ActorDep, RuntimeDep, SessionDep
from backend.models import Revocation
from backend.models.base import utcnow
from backend.problems import responses
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


handlers = [create_revocation]

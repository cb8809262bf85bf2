"""``POST /v1/credentials``: one-time credentials for a parcel, a door or a vendor visit."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import msgspec
from litestar import post
from litestar.di import Provide
from litestar.params import JSONBody

from backend import errors
from backend.dependencies import ActorDep, RuntimeDep, SessionDep, provide_app_user
from backend.models import Kiosk
from backend.models.base import utcnow
from backend.problems import responses
from backend.services import credentials

Id = Annotated[str, msgspec.Meta(min_length=1, max_length=32)]


class CredentialRequest(msgspec.Struct, forbid_unknown_fields=True):
    """Exactly one of ``parcel_id``, ``door_id``, ``work_order_id``."""

    device_id: Annotated[str, msgspec.Meta(min_length=1, max_length=32, description="Your device")]
    parcel_id: Id | None = None
    door_id: Id | None = None
    work_order_id: Id | None = None
    target: (
        Annotated[
            str,
            msgspec.Meta(
                max_length=64,
                pattern=r"^(door|compartment):[a-z0-9]{1,32}$",
                description='With work_order_id: "door:<id>" or "compartment:<id>"',
            ),
        ]
        | None
    ) = None
    count: (
        Annotated[
            int,
            msgspec.Meta(
                ge=1,
                le=1000,
                description="Offline batch size (bounded by the server's maximum); "
                "credentials of a batch are valid longer",
            ),
        ]
        | None
    ) = None


class CredentialView(msgspec.Struct):
    id: str
    token: str
    kiosk_id: str
    target: str
    not_before: datetime
    expires_at: datetime
    role: str
    kiosk_public_key: str | None


class CredentialsView(msgspec.Struct):
    credentials: list[CredentialView]
    kiosk_public_key: Annotated[
        str | None,
        msgspec.Meta(
            description="The kiosk's Ed25519 key (base64url): the phone checks the kiosk's "
            "signed BLE challenge with it (null when credentials name several kiosks)"
        ),
    ]
    server_time: Annotated[
        float, msgspec.Meta(description="Server clock (epoch seconds) to correct kb-jwt iat")
    ]


@post(
    "/credentials",
    summary="One-time credentials for a parcel, a door or a vendor visit",
    dependencies={"actor": Provide(provide_app_user)},
    responses=responses(
        errors.NotFound,
        errors.AccessRevoked,
        errors.OutsideAccessWindow,
        errors.Conflict,
        errors.NothingToOpen,
        errors.WorkOrderClosed,
        errors.ParcelStateConflict,
        errors.ServiceUnavailable,
    ),
)
async def issue_credentials(
    data: JSONBody[CredentialRequest], actor: ActorDep, runtime: RuntimeDep, session: SessionDep
) -> CredentialsView:
    now = utcnow()
    grants = await credentials.grants_for_request(
        session,
        actor,
        parcel_id=data.parcel_id,
        door_id=data.door_id,
        work_order_id=data.work_order_id,
        target=data.target,
        now=now,
    )
    rows = await credentials.issue_for_grants(
        session,
        runtime,
        user_id=actor.user_id,
        device_id=data.device_id,
        grants=grants,
        count=data.count,
        offline=data.count is not None,
        now=now,
    )
    kiosk_ids = sorted({r.kiosk_id for r in rows if r.kiosk_id})
    keys = {}
    for kiosk_id in kiosk_ids:  # loaded by the service: no query
        kiosk = await session.get(Kiosk, kiosk_id)
        keys[kiosk_id] = kiosk.public_key if kiosk is not None else None
    items = [
        CredentialView(
            id=r.id,
            token=r.token or "",
            kiosk_id=r.kiosk_id or "",
            target=r.target,
            not_before=r.not_before,
            expires_at=r.expires_at,
            role=r.role,
            kiosk_public_key=keys.get(r.kiosk_id or ""),
        )
        for r in rows
    ]
    single = keys.get(kiosk_ids[0]) if len(kiosk_ids) == 1 else None
    return CredentialsView(items, single, utcnow().timestamp())


handlers = [issue_credentials]

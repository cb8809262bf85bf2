"""``GET /v1/kiosk/sync``: everything a kiosk needs to decide offline."""

from __future__ import annotations

import importlib
from typing import Annotated, Any

import msgspec
from litestar import get
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from backend import errors
from backend.dependencies import KioskDep, RuntimeDep, SessionDep
from backend.jwks import JwkView
from backend.models import Compartment, Door, Kiosk, Property
from backend.models.base import utcnow
from backend.problems import responses
from backend.services import journal, revocations, signing_keys
from backend.services.properties import policy_of


class RevocationEntryView(msgspec.Struct):
    kind: Annotated[str, msgspec.Meta(description="credential, device or user")]
    id: Annotated[
        str,
        msgspec.Meta(
            description="credential: the jti; device: the device public key (cnf.jwk.x); "
            "user: the user id (sub)"
        ),
    ]
    expires_at: str


class RevocationListView(msgspec.Struct):
    version: int
    entries: list[RevocationEntryView]


class SyncJwksView(msgspec.Struct):
    keys: list[JwkView]


class SyncCompartmentView(msgspec.Struct):
    id: str
    label: str
    size: str
    purpose: str
    state: str


class SyncDoorView(msgspec.Struct):
    id: str
    name: str


class SyncView(msgspec.Struct):
    kiosk_id: str
    property_id: str
    issuer: str
    jwks: SyncJwksView
    revocations: RevocationListView
    compartments: list[SyncCompartmentView]
    doors: list[SyncDoorView]
    pin_hashes: list[dict[str, Any]]
    policy: dict[str, Any]
    server_time: Annotated[float, msgspec.Meta(description="Epoch seconds")]
    journal_accepted_through: Annotated[
        int, msgspec.Meta(description="Highest journal seq the server holds with no gap before it")
    ]


async def _pin_hashes(session: AsyncSession, kiosk: Kiosk, now: Any) -> list[dict[str, Any]]:
    try:
        parcel_pins = importlib.import_module("backend.services.parcel_pins")
    except ModuleNotFoundError as exc:
        if exc.name == "backend.services.parcel_pins":
            return []
        raise
    function = getattr(parcel_pins, "pin_hashes_for_kiosk", None)
    if function is None:
        return []
    return list(await function(session, kiosk, now))


@get(
    "/sync",
    summary="Keys, revocations, compartments, doors, PIN hashes and policy for offline decisions",
    responses=responses(
        errors.InvalidKioskAssertion, errors.KioskAssertionReplayed, errors.NotFound, auth=False
    ),
)
async def sync(kiosk: KioskDep, runtime: RuntimeDep, session: SessionDep) -> SyncView:
    now = utcnow()
    prop = await session.get(Property, kiosk.property_id)
    if prop is None:
        raise errors.NotFound("Property not found")
    keys = await signing_keys.jwks(session, runtime, now)
    revoked = await revocations.revocation_list(session, kiosk.property_id, now)
    compartments = (
        await session.exec(
            select(Compartment)
            .where(Compartment.kiosk_id == kiosk.id)
            .order_by(col(Compartment.label))
        )
    ).all()
    doors = (
        await session.exec(
            select(Door).where(Door.kiosk_id == kiosk.id).order_by(col(Door.name), col(Door.id))
        )
    ).all()
    policy = msgspec.to_builtins(policy_of(prop))
    policy["kb_freshness_seconds"] = runtime.settings.kb_freshness_seconds
    policy["clock_skew_seconds"] = runtime.settings.clock_skew_seconds
    through = await journal.accepted_through(session, kiosk)
    return SyncView(
        kiosk_id=kiosk.id,
        property_id=kiosk.property_id,
        issuer=runtime.settings.issuer,
        jwks=msgspec.convert(keys, SyncJwksView),
        revocations=msgspec.convert(revoked, RevocationListView),
        compartments=[
            SyncCompartmentView(c.id, c.label, c.size, c.purpose, c.state) for c in compartments
        ],
        doors=[SyncDoorView(d.id, d.name) for d in doors],
        pin_hashes=await _pin_hashes(session, kiosk, now),
        policy=policy,
        server_time=utcnow().timestamp(),
        journal_accepted_through=through,
    )


handlers = [sync]

"""Kiosks (with enrollment codes), compartments and doors."""

from __future__ import annotations

from typing import Annotated

import msgspec
from litestar import get, post
from litestar.params import JSONBody, Parameter
from sqlmodel import select

from backend import errors
from backend.dependencies import ActorDep, RuntimeDep, SessionDep
from backend.models import Compartment, Door, Kiosk
from backend.models.base import utcnow
from backend.pagination import Page, fetch_page
from backend.problems import responses
from backend.scoping import get_in_property, staff_property
from backend.services import kiosks, properties
from backend.staff_api.views import CompartmentView, DoorView, KioskCreatedView, KioskView

Id = Annotated[str, Parameter(max_length=32)]
Limit = Annotated[int, Parameter(ge=1, le=200)]
Cursor = Annotated[str | None, Parameter(max_length=200)]


class KioskCreate(msgspec.Struct, forbid_unknown_fields=True):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]


class CompartmentCreate(msgspec.Struct, forbid_unknown_fields=True):
    label: Annotated[str, msgspec.Meta(min_length=1, max_length=32)]
    size: Annotated[str, msgspec.Meta(description="S, M, L or XL")]
    purpose: Annotated[str, msgspec.Meta(description="parcel or key")] = "parcel"


class DoorCreate(msgspec.Struct, forbid_unknown_fields=True):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    kiosk_id: Annotated[str, msgspec.Meta(max_length=32)]
    open_to: Annotated[str, msgspec.Meta(description="residents, units or staff")] = "residents"
    unit_ids: list[Annotated[str, msgspec.Meta(max_length=32)]] = msgspec.field(
        default_factory=list
    )


def _created(kiosk: Kiosk, code: str) -> KioskCreatedView:
    assert kiosk.enrollment_expires_at is not None
    return KioskCreatedView(
        kiosk.id, kiosk.property_id, kiosk.name, code, kiosk.enrollment_expires_at
    )


@post(
    "/properties/{property_id:str}/kiosks",
    summary="Create a kiosk and its one-time enrollment code",
    responses=responses(errors.NotFound),
)
async def create_kiosk(
    property_id: Id,
    data: JSONBody[KioskCreate],
    actor: ActorDep,
    runtime: RuntimeDep,
    session: SessionDep,
) -> KioskCreatedView:
    kiosk, code = await kiosks.create_kiosk(
        session, runtime, actor, property_id, data.name, utcnow()
    )
    return _created(kiosk, code)


@get("/properties/{property_id:str}/kiosks", summary="Kiosks", responses=responses(errors.NotFound))
async def list_kiosks(
    property_id: Id, actor: ActorDep, session: SessionDep, limit: Limit = 50, cursor: Cursor = None
) -> Page[KioskView]:
    await staff_property(session, actor, property_id)
    statement = select(Kiosk).where(Kiosk.property_id == property_id)
    rows, next_cursor = await fetch_page(session, statement, Kiosk.id, limit=limit, cursor=cursor)
    return Page([KioskView.of(k) for k in rows], next_cursor)


@get("/kiosks/{kiosk_id:str}", summary="One kiosk", responses=responses(errors.NotFound))
async def get_kiosk(kiosk_id: Id, actor: ActorDep, session: SessionDep) -> KioskView:
    return KioskView.of(await get_in_property(session, actor, Kiosk, kiosk_id))


@post(
    "/kiosks/{kiosk_id:str}/enrollment-code",
    summary="A new enrollment code (replacing the kiosk computer)",
    responses=responses(errors.NotFound),
)
async def new_enrollment_code(
    kiosk_id: Id, actor: ActorDep, runtime: RuntimeDep, session: SessionDep
) -> KioskCreatedView:
    kiosk, code = await kiosks.new_enrollment_code(session, runtime, actor, kiosk_id, utcnow())
    return _created(kiosk, code)


@post(
    "/kiosks/{kiosk_id:str}/compartments",
    summary="Add a compartment",
    responses=responses(errors.NotFound, errors.AlreadyExists),
)
async def create_compartment(
    kiosk_id: Id, data: JSONBody[CompartmentCreate], actor: ActorDep, session: SessionDep
) -> CompartmentView:
    compartment = await kiosks.create_compartment(
        session, actor, kiosk_id, data.label, data.size, data.purpose
    )
    return CompartmentView.of(compartment)


@get(
    "/kiosks/{kiosk_id:str}/compartments",
    summary="Compartments with their state",
    responses=responses(errors.NotFound),
)
async def list_compartments(
    kiosk_id: Id, actor: ActorDep, session: SessionDep, limit: Limit = 200, cursor: Cursor = None
) -> Page[CompartmentView]:
    await get_in_property(session, actor, Kiosk, kiosk_id)
    statement = select(Compartment).where(Compartment.kiosk_id == kiosk_id)
    rows, next_cursor = await fetch_page(
        session, statement, Compartment.id, limit=limit, cursor=cursor
    )
    return Page([CompartmentView.of(c) for c in rows], next_cursor)


@post(
    "/properties/{property_id:str}/doors",
    summary="Add a door",
    responses=responses(errors.NotFound),
)
async def create_door(
    property_id: Id, data: JSONBody[DoorCreate], actor: ActorDep, session: SessionDep
) -> DoorView:
    door = await properties.create_door(
        session,
        actor,
        property_id,
        name=data.name,
        kiosk_id=data.kiosk_id,
        open_to=data.open_to,
        unit_ids=data.unit_ids,
    )
    return DoorView.of(door)


@get("/properties/{property_id:str}/doors", summary="Doors", responses=responses(errors.NotFound))
async def list_doors(
    property_id: Id, actor: ActorDep, session: SessionDep, limit: Limit = 50, cursor: Cursor = None
) -> Page[DoorView]:
    await staff_property(session, actor, property_id)
    statement = select(Door).where(Door.property_id == property_id)
    rows, next_cursor = await fetch_page(session, statement, Door.id, limit=limit, cursor=cursor)
    return Page([DoorView.of(d) for d in rows], next_cursor)


handlers = [
    create_kiosk,
    list_kiosks,
    get_kiosk,
    new_enrollment_code,
    create_compartment,
    list_compartments,
    create_door,
    list_doors,
]

"""Properties, units, invitations and members."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import delete, get, patch, post
from litestar.params import JSONBody, Parameter
from sqlmodel import select

from backend import errors
from backend.dependencies import ActorDep, RuntimeDep, SessionDep
from backend.models import Property, Unit
from backend.models.base import utcnow
from backend.pagination import Page, fetch_page
from backend.problems import responses
from backend.scoping import scope_to_staff, staff_property
from backend.services import accounts, properties
from backend.staff_api.views import InvitationView, MemberView, PropertyView, UnitView

Id = Annotated[str, Parameter(max_length=32)]
Limit = Annotated[int, Parameter(ge=1, le=200)]
Cursor = Annotated[str | None, Parameter(max_length=200)]
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]


class QuietHoursSpec(msgspec.Struct, forbid_unknown_fields=True):
    start: Annotated[str, msgspec.Meta(pattern=r"^\d{2}:\d{2}$")]
    end: Annotated[str, msgspec.Meta(pattern=r"^\d{2}:\d{2}$")]


class PolicySpec(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """Any subset of the property policy; fields not sent keep their value."""

    reminder_after_days: Annotated[int, msgspec.Meta(ge=0, le=365)] | msgspec.UnsetType = (
        msgspec.UNSET
    )
    overflow_after_days: Annotated[int, msgspec.Meta(ge=0, le=365)] | msgspec.UnsetType = (
        msgspec.UNSET
    )
    quiet_hours: QuietHoursSpec | msgspec.UnsetType | None = msgspec.UNSET
    pin_max_attempts: Annotated[int, msgspec.Meta(ge=1, le=100)] | msgspec.UnsetType = msgspec.UNSET
    pin_lockout_minutes: Annotated[int, msgspec.Meta(ge=1, le=10080)] | msgspec.UnsetType = (
        msgspec.UNSET
    )
    minutes_per_package: Annotated[float, msgspec.Meta(ge=0, le=600)] | msgspec.UnsetType = (
        msgspec.UNSET
    )
    key_grace_minutes: Annotated[int, msgspec.Meta(ge=0, le=1440)] | msgspec.UnsetType = (
        msgspec.UNSET
    )
    access_grace_minutes: Annotated[int, msgspec.Meta(ge=0, le=1440)] | msgspec.UnsetType = (
        msgspec.UNSET
    )
    vendor_fail_closed_minutes: Annotated[int, msgspec.Meta(ge=1, le=10080)] | msgspec.UnsetType = (
        msgspec.UNSET
    )
    door_held_open_seconds: Annotated[int, msgspec.Meta(ge=5, le=3600)] | msgspec.UnsetType = (
        msgspec.UNSET
    )
    emergency_requires_approval: bool | msgspec.UnsetType = msgspec.UNSET

    def changes(self) -> dict[str, Any]:
        return dict(msgspec.to_builtins(self).items())


class PropertyCreate(msgspec.Struct, forbid_unknown_fields=True):
    name: Name
    timezone: Annotated[str, msgspec.Meta(min_length=1, max_length=64)] = "UTC"
    policy: PolicySpec | None = None


class PropertyPatch(msgspec.Struct, forbid_unknown_fields=True):
    name: Name | msgspec.UnsetType = msgspec.UNSET
    timezone: Annotated[str, msgspec.Meta(min_length=1, max_length=64)] | msgspec.UnsetType = (
        msgspec.UNSET
    )
    policy: PolicySpec | msgspec.UnsetType = msgspec.UNSET


class UnitCreate(msgspec.Struct, forbid_unknown_fields=True):
    label: Annotated[str, msgspec.Meta(min_length=1, max_length=32)]


class InvitationCreate(msgspec.Struct, forbid_unknown_fields=True):
    email: Annotated[str, msgspec.Meta(min_length=3, max_length=320, pattern=r"^[^@\s]+@[^@\s]+$")]
    role: Annotated[str, msgspec.Meta(description="resident, vendor, courier or staff")]
    unit_id: Annotated[str, msgspec.Meta(max_length=32)] | None = None
    company: Annotated[str, msgspec.Meta(min_length=1, max_length=200)] | None = None


@post(
    "/properties", summary="Create a property (admins)", responses=responses(errors.InvalidTimezone)
)
async def create_property(
    data: JSONBody[PropertyCreate], actor: ActorDep, session: SessionDep
) -> PropertyView:
    policy = data.policy.changes() if data.policy else None
    return PropertyView.of(
        await properties.create_property(session, actor, data.name, data.timezone, policy)
    )


@get("/properties", summary="Properties the caller manages", responses=responses())
async def list_properties(
    actor: ActorDep, session: SessionDep, limit: Limit = 50, cursor: Cursor = None
) -> Page[PropertyView]:
    statement = scope_to_staff(select(Property), actor, Property.id)
    rows, next_cursor = await fetch_page(
        session, statement, Property.id, limit=limit, cursor=cursor
    )
    return Page([PropertyView.of(p) for p in rows], next_cursor)


@get("/properties/{property_id:str}", summary="One property", responses=responses(errors.NotFound))
async def get_property(property_id: Id, actor: ActorDep, session: SessionDep) -> PropertyView:
    return PropertyView.of(await staff_property(session, actor, property_id))


@patch(
    "/properties/{property_id:str}",
    summary="Rename, change timezone or policy",
    responses=responses(errors.NotFound, errors.InvalidTimezone),
)
async def update_property(
    property_id: Id, data: JSONBody[PropertyPatch], actor: ActorDep, session: SessionDep
) -> PropertyView:
    prop = await properties.update_property(
        session,
        actor,
        property_id,
        name=None if data.name is msgspec.UNSET else data.name,
        timezone=None if data.timezone is msgspec.UNSET else data.timezone,
        policy=None if data.policy is msgspec.UNSET else data.policy.changes(),
    )
    return PropertyView.of(prop)


@post(
    "/properties/{property_id:str}/units",
    summary="Add a unit",
    responses=responses(errors.NotFound, errors.AlreadyExists),
)
async def create_unit(
    property_id: Id, data: JSONBody[UnitCreate], actor: ActorDep, session: SessionDep
) -> UnitView:
    return UnitView.of(await properties.create_unit(session, actor, property_id, data.label))


@get("/properties/{property_id:str}/units", summary="Units", responses=responses(errors.NotFound))
async def list_units(
    property_id: Id, actor: ActorDep, session: SessionDep, limit: Limit = 50, cursor: Cursor = None
) -> Page[UnitView]:
    await staff_property(session, actor, property_id)
    statement = select(Unit).where(Unit.property_id == property_id)
    rows, next_cursor = await fetch_page(session, statement, Unit.id, limit=limit, cursor=cursor)
    return Page([UnitView.of(u) for u in rows], next_cursor)


@post(
    "/properties/{property_id:str}/invitations",
    summary="Invite a resident (to a unit), vendor (with company), courier or staff member",
    responses=responses(errors.NotFound),
)
async def create_invitation(
    property_id: Id,
    data: JSONBody[InvitationCreate],
    actor: ActorDep,
    runtime: RuntimeDep,
    session: SessionDep,
) -> InvitationView:
    await staff_property(session, actor, property_id)
    invitation, code = await accounts.create_invitation(
        session,
        runtime,
        actor,
        property_id,
        email=data.email,
        role=data.role,
        unit_id=data.unit_id,
        company=data.company,
        now=utcnow(),
    )
    return InvitationView(invitation.id, code, invitation.expires_at)


@get(
    "/properties/{property_id:str}/members",
    summary="Members and their roles",
    responses=responses(errors.NotFound),
)
async def list_members(property_id: Id, actor: ActorDep, session: SessionDep) -> Page[MemberView]:
    rows = await properties.members(session, actor, property_id)
    items = [MemberView(u.id, u.email, u.name, m.role, m.unit_id, m.company) for m, u in rows]
    return Page(items, None)


@delete(
    "/properties/{property_id:str}/members/{user_id:str}",
    summary="Remove a member: every role at the property; their credentials are revoked",
    responses=responses(errors.NotFound),
)
async def remove_member(property_id: Id, user_id: Id, actor: ActorDep, session: SessionDep) -> None:
    await properties.remove_member(session, actor, property_id, user_id, utcnow())


handlers = [
    create_property,
    list_properties,
    get_property,
    update_property,
    create_unit,
    list_units,
    create_invitation,
    list_members,
    remove_member,
]

__all__ = ["handlers"]

"""Keys: create, list, where is it and who holds it, custody history, place, retrieve, lockout."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from litestar import get, post
from litestar.params import JSONBody, Parameter, QueryParameter
from sqlmodel import col, select

from backend import errors
from backend.dependencies import ActorDep, SessionDep
from backend.models import KeyItem
from backend.models.base import utcnow
from backend.models.work_order import KeyCustody
from backend.pagination import Page, fetch_page
from backend.problems import responses
from backend.scoping import get_in_property, staff_property
from backend.services import doors as _doors  # noqa: F401  (registers door/tamper journal handlers)
from backend.services import emergency as _emergency  # noqa: F401  (registers emergency.used)
from backend.services import keys
from backend.staff_api.visit_views import CustodyView, KeyView

Id = Annotated[str, Parameter(max_length=32)]
Limit = Annotated[int, Parameter(ge=1, le=200)]
Cursor = Annotated[str | None, Parameter(max_length=200)]
RefId = Annotated[str, msgspec.Meta(min_length=1, max_length=32)]
Note = Annotated[str, msgspec.Meta(max_length=500)]


class KeyCreate(msgspec.Struct, forbid_unknown_fields=True):
    label: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    kind: Literal["unit", "master", "fob"] = "unit"
    unit_id: RefId | None = None


class KeyPlacement(msgspec.Struct, forbid_unknown_fields=True):
    compartment_id: RefId
    work_order_id: RefId | None = None


class KeyNote(msgspec.Struct, forbid_unknown_fields=True):
    note: Note | None = None


class LockoutGrant(msgspec.Struct, forbid_unknown_fields=True):
    user_id: RefId


@post(
    "/properties/{property_id:str}/keys",
    summary="Register a key (unit key, master or fob); it starts in the office",
    responses=responses(errors.NotFound),
)
async def create_key(
    property_id: Id, data: JSONBody[KeyCreate], actor: ActorDep, session: SessionDep
) -> KeyView:
    now = utcnow()
    key = await keys.create_key(
        session, actor, property_id, label=data.label, kind=data.kind, unit_id=data.unit_id, now=now
    )
    return KeyView.of(key, now)


@get(
    "/properties/{property_id:str}/keys",
    summary="Keys of a property, where each is and who holds it",
    responses=responses(errors.NotFound),
)
async def list_keys(
    property_id: Id,
    actor: ActorDep,
    session: SessionDep,
    state_filter: Annotated[str | None, QueryParameter(name="state", max_length=16)] = None,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> Page[KeyView]:
    await staff_property(session, actor, property_id)
    statement = select(KeyItem).where(KeyItem.property_id == property_id)
    if state_filter is not None:
        statement = statement.where(KeyItem.state == state_filter)
    rows, next_cursor = await fetch_page(session, statement, KeyItem.id, limit=limit, cursor=cursor)
    now = utcnow()
    return Page([KeyView.of(k, now) for k in rows], next_cursor)


@get(
    "/keys/{key_id:str}",
    summary="Where is key X and who holds it since when",
    responses=responses(errors.NotFound),
)
async def get_key(key_id: Id, actor: ActorDep, session: SessionDep) -> KeyView:
    return KeyView.of(await get_in_property(session, actor, KeyItem, key_id, label="Key"), utcnow())


@get(
    "/keys/{key_id:str}/custody",
    summary="The key's chain of custody, oldest movement first",
    responses=responses(errors.NotFound),
)
async def key_custody(
    key_id: Id, actor: ActorDep, session: SessionDep, limit: Limit = 200, cursor: Cursor = None
) -> Page[CustodyView]:
    key = await get_in_property(session, actor, KeyItem, key_id, label="Key")
    after = 0
    if cursor is not None:
        try:
            after = int(cursor)
        except ValueError:
            raise errors.ValidationFailed("cursor is not valid") from None
    rows = list(
        (
            await session.exec(
                select(KeyCustody)
                .where(KeyCustody.key_id == key.id, col(KeyCustody.id) > after)
                .order_by(col(KeyCustody.id))
                .limit(limit + 1)
            )
        ).all()
    )
    next_cursor = None
    if len(rows) > limit:
        rows = rows[:limit]
        next_cursor = str(rows[-1].id)
    return Page([CustodyView.of(r) for r in rows], next_cursor)


@post(
    "/keys/{key_id:str}/place",
    status_code=200,
    summary="Put the key in a free key compartment, optionally for a vendor visit",
    responses=responses(
        errors.NotFound,
        errors.KeyCheckedOut,
        errors.KeyUnavailable,
        errors.CompartmentOccupied,
        errors.NotAKeyCompartment,
        errors.WorkOrderClosed,
    ),
)
async def place_key(
    key_id: Id, data: JSONBody[KeyPlacement], actor: ActorDep, session: SessionDep
) -> KeyView:
    now = utcnow()
    key = await keys.place_key(
        session,
        actor,
        key_id,
        compartment_id=data.compartment_id,
        work_order_id=data.work_order_id,
        now=now,
    )
    return KeyView.of(key, now)


@post(
    "/keys/{key_id:str}/retrieve",
    status_code=200,
    summary="The key is back in the office (taken out of its compartment or handed in)",
    responses=responses(errors.NotFound, errors.Conflict),
)
async def retrieve_key(
    key_id: Id, data: JSONBody[KeyNote], actor: ActorDep, session: SessionDep
) -> KeyView:
    now = utcnow()
    return KeyView.of(await keys.retrieve_key(session, actor, key_id, data.note, now), now)


@post(
    "/keys/{key_id:str}/lost",
    status_code=200,
    summary="Mark a key lost",
    responses=responses(errors.NotFound, errors.Conflict),
)
async def mark_lost(
    key_id: Id, data: JSONBody[KeyNote], actor: ActorDep, session: SessionDep
) -> KeyView:
    now = utcnow()
    return KeyView.of(await keys.mark_lost(session, actor, key_id, data.note, now), now)


@post(
    "/keys/{key_id:str}/lockout",
    status_code=200,
    summary=(
        "Resident lockout: let the unit's resident take their own key once; their app then "
        "gets a one-time credential from POST /v1/keys/{id}/lockout-credential"
    ),
    responses=responses(errors.NotFound, errors.KeyCheckedOut, errors.KeyUnavailable),
)
async def authorise_lockout(
    key_id: Id, data: JSONBody[LockoutGrant], actor: ActorDep, session: SessionDep
) -> KeyView:
    now = utcnow()
    return KeyView.of(await keys.authorise_lockout(session, actor, key_id, data.user_id, now), now)


handlers = [
    create_key,
    list_keys,
    get_key,
    key_custody,
    place_key,
    retrieve_key,
    mark_lost,
    authorise_lockout,
]

"""Residents' parcels (their unit's, current and past) and the vacation hold on deliveries."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import msgspec
from litestar import get, put
from litestar.di import Provide
from litestar.params import JSONBody, Parameter, QueryParameter
from sqlmodel import col, select

from backend import errors
from backend.dependencies import ActorDep, SessionDep, provide_app_user
from backend.models import Parcel
from backend.models.base import utcnow
from backend.pagination import Page, fetch_page
from backend.parcel_views import HoldView, ParcelView, hold_views, parcel_view, parcel_views
from backend.problems import responses
from backend.services import parcel_policy

Id = Annotated[str, Parameter(max_length=32)]
Limit = Annotated[int, Parameter(ge=1, le=200)]
Cursor = Annotated[str | None, Parameter(max_length=200)]
APP_USER = {"actor": Provide(provide_app_user)}


class HoldRequest(msgspec.Struct, forbid_unknown_fields=True):
    """Pause reminders until ``until`` (null ends the hold)."""

    until: datetime | None


@get(
    "/parcels",
    summary="The caller's unit's parcels, current and past",
    dependencies=APP_USER,
    responses=responses(),
)
async def list_parcels(
    actor: ActorDep,
    session: SessionDep,
    parcel_state: Annotated[str | None, QueryParameter(name="state", max_length=16)] = None,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> Page[ParcelView]:
    statement = select(Parcel).where(col(Parcel.unit_id).in_(sorted(actor.unit_ids)))
    if parcel_state is not None:
        statement = statement.where(Parcel.state == parcel_state)
    rows, next_cursor = await fetch_page(session, statement, Parcel.id, limit=limit, cursor=cursor)
    return Page(await parcel_views(session, rows, show_pin=True), next_cursor)


@get(
    "/parcels/{parcel_id:str}",
    summary="One parcel of the caller's unit; `pickup_pin` while it waits",
    dependencies=APP_USER,
    responses=responses(errors.NotFound),
)
async def get_parcel(parcel_id: Id, actor: ActorDep, session: SessionDep) -> ParcelView:
    parcel = await session.get(Parcel, parcel_id)
    if parcel is None or parcel.unit_id not in actor.unit_ids:
        raise errors.NotFound("Parcel not found")
    return await parcel_view(session, parcel, show_pin=True)


@put(
    "/delivery-hold",
    status_code=200,
    summary="Vacation hold: no reminders for the caller's unit until `until` (null ends it)",
    dependencies=APP_USER,
    responses=responses(),
)
async def set_hold(
    data: JSONBody[HoldRequest], actor: ActorDep, session: SessionDep
) -> list[HoldView]:
    if data.until is not None and data.until.tzinfo is None:
        raise errors.ValidationFailed("until needs a timezone")
    return hold_views(await parcel_policy.set_hold(session, actor, data.until, utcnow()))


@get(
    "/delivery-hold",
    summary="The caller's units' current holds",
    dependencies=APP_USER,
    responses=responses(),
)
async def get_hold(actor: ActorDep, session: SessionDep) -> list[HoldView]:
    return hold_views(await parcel_policy.holds_of(session, actor, utcnow()))


handlers = [list_parcels, get_parcel, set_hold, get_hold]

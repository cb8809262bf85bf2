"""Vendor visits (work orders): schedule, list, cancel, shorten."""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Literal

import msgspec
from litestar import get, post
from litestar.params import JSONBody, Parameter, QueryParameter
from sqlmodel import select

from backend import errors
from backend.dependencies import ActorDep, SessionDep
from backend.models import WorkOrder
from backend.models.base import utcnow
from backend.pagination import Page, fetch_page
from backend.problems import responses
from backend.scoping import staff_property
from backend.services import work_orders
from backend.staff_api.visit_views import WorkOrderView, work_order_view

Id = Annotated[str, Parameter(max_length=32)]
Limit = Annotated[int, Parameter(ge=1, le=200)]
Cursor = Annotated[str | None, Parameter(max_length=200)]
RefId = Annotated[str, msgspec.Meta(min_length=1, max_length=32)]
Aware = Annotated[datetime, msgspec.Meta(tz=True, description="ISO 8601 with a UTC offset")]
Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
LocalTime = Annotated[str, msgspec.Meta(pattern=r"^\d{2}:\d{2}$", description="HH:MM local")]


class RecurrenceSpec(msgspec.Struct, forbid_unknown_fields=True):
    """Weekly: every listed weekday from ``start_time`` to ``end_time`` (property local time;
    an end before the start crosses midnight), from ``starts_on`` (default today) to ``until``."""

    weekdays: Annotated[list[Weekday], msgspec.Meta(max_length=7)]
    start_time: LocalTime
    end_time: LocalTime
    until: date
    starts_on: date | None = None


class WorkOrderCreate(msgspec.Struct, forbid_unknown_fields=True):
    """A one-off window (``starts_at``/``ends_at``) or a weekly ``recurrence``."""

    vendor_user_id: RefId
    unit_id: RefId | None = None
    description: Annotated[str, msgspec.Meta(max_length=2000)] = ""
    starts_at: Aware | None = None
    ends_at: Aware | None = None
    recurrence: RecurrenceSpec | None = None
    door_ids: Annotated[list[RefId], msgspec.Meta(max_length=50)] = msgspec.field(
        default_factory=list
    )
    key_ids: Annotated[list[RefId], msgspec.Meta(max_length=50)] = msgspec.field(
        default_factory=list
    )


class WorkOrderCancel(msgspec.Struct, forbid_unknown_fields=True):
    reason: Annotated[str, msgspec.Meta(max_length=500)] | None = None


class WorkOrderShorten(msgspec.Struct, forbid_unknown_fields=True):
    ends_at: Aware


WO_ERRORS = (
    errors.NotFound,
    errors.InvalidWindow,
    errors.WindowInPast,
    errors.RecurrenceNeverOccurs,
    errors.KeyUnavailable,
)


@post(
    "/properties/{property_id:str}/work-orders",
    summary="Schedule a vendor visit (one-off or weekly); the unit's residents are told",
    responses=responses(*WO_ERRORS),
)
async def create_work_order(
    property_id: Id, data: JSONBody[WorkOrderCreate], actor: ActorDep, session: SessionDep
) -> WorkOrderView:
    now = utcnow()
    rule = data.recurrence
    wo = await work_orders.create_work_order(
        session,
        actor,
        property_id,
        unit_id=data.unit_id,
        vendor_user_id=data.vendor_user_id,
        description=data.description,
        starts_at=data.starts_at,
        ends_at=data.ends_at,
        recurrence=(
            work_orders.Recurrence(
                tuple(rule.weekdays), rule.start_time, rule.end_time, rule.until, rule.starts_on
            )
            if rule
            else None
        ),
        door_ids=data.door_ids,
        key_ids=data.key_ids,
        now=now,
    )
    return await work_order_view(session, wo, now)


@get(
    "/properties/{property_id:str}/work-orders",
    summary="Vendor visits of a property",
    responses=responses(errors.NotFound),
)
async def list_work_orders(
    property_id: Id,
    actor: ActorDep,
    session: SessionDep,
    state_filter: Annotated[str | None, QueryParameter(name="state", max_length=12)] = None,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> Page[WorkOrderView]:
    await staff_property(session, actor, property_id)
    statement = select(WorkOrder).where(WorkOrder.property_id == property_id)
    if state_filter is not None:
        statement = statement.where(WorkOrder.state == state_filter)
    rows, next_cursor = await fetch_page(
        session, statement, WorkOrder.id, limit=limit, cursor=cursor
    )
    now = utcnow()
    return Page([await work_order_view(session, wo, now) for wo in rows], next_cursor)


@get("/work-orders/{work_order_id:str}", summary="One visit", responses=responses(errors.NotFound))
async def get_work_order(work_order_id: Id, actor: ActorDep, session: SessionDep) -> WorkOrderView:
    wo = await work_orders.staff_work_order(session, actor, work_order_id)
    return await work_order_view(session, wo, utcnow())


@post(
    "/work-orders/{work_order_id:str}/cancel",
    status_code=200,
    summary="Cancel a visit: its outstanding credentials are revoked (kiosks learn on sync)",
    responses=responses(errors.NotFound, errors.WorkOrderClosed),
)
async def cancel_work_order(
    work_order_id: Id, data: JSONBody[WorkOrderCancel], actor: ActorDep, session: SessionDep
) -> WorkOrderView:
    now = utcnow()
    wo = await work_orders.cancel_work_order(session, actor, work_order_id, data.reason, now)
    return await work_order_view(session, wo, now)


@post(
    "/work-orders/{work_order_id:str}/shorten",
    status_code=200,
    summary="End a visit earlier: credentials valid beyond the new end are revoked",
    responses=responses(errors.NotFound, errors.WorkOrderClosed, errors.InvalidWindow),
)
async def shorten_work_order(
    work_order_id: Id, data: JSONBody[WorkOrderShorten], actor: ActorDep, session: SessionDep
) -> WorkOrderView:
    now = utcnow()
    wo = await work_orders.shorten_work_order(session, actor, work_order_id, data.ends_at, now)
    return await work_order_view(session, wo, now)


handlers = [
    create_work_order,
    list_work_orders,
    get_work_order,
    cancel_work_order,
    shorten_work_order,
]

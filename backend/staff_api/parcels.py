"""Staff: parcel search and lists, overflow and return, custody history, occupancy, weekly report."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

import msgspec
from litestar import Response, get, post
from litestar.params import FromQuery, JSONBody, Parameter, QueryParameter
from sqlmodel import col, select

from backend import errors
from backend.dependencies import ActorDep, SessionDep
from backend.models import Kiosk, Parcel
from backend.models.base import utcnow
from backend.pagination import Page, fetch_page
from backend.parcel_views import (
    CustodyEventView,
    OccupancyReportView,
    OccupancyView,
    ParcelView,
    custody_views,
    parcel_view,
    parcel_views,
)
from backend.problems import responses
from backend.scoping import staff_property
from backend.services import parcel_staff, parcels

Id = Annotated[str, Parameter(max_length=32)]
Limit = Annotated[int, Parameter(ge=1, le=200)]
Cursor = Annotated[str | None, Parameter(max_length=200)]
ParcelState = Literal[
    "announced", "assigned", "deposited", "picked_up", "overflowed", "returned", "cancelled"
]


class OverflowMove(msgspec.Struct, forbid_unknown_fields=True):
    location: Annotated[str, msgspec.Meta(min_length=1, max_length=200)] = "office"


class ReturnToCarrier(msgspec.Struct, forbid_unknown_fields=True):
    reason: Annotated[str, msgspec.Meta(min_length=1, max_length=200)] = "unclaimed"


class OfficeIntake(msgspec.Struct, forbid_unknown_fields=True):
    carrier: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    tracking: Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[\x21-\x7e]+$")]
    unit: Annotated[str, msgspec.Meta(min_length=1, max_length=32)]
    size: Literal["S", "M", "L", "XL"] = "M"


class Period(msgspec.Struct):
    start: datetime
    end: datetime


class UnclaimedView(msgspec.Struct):
    parcel_id: str
    unit: str
    days: int


class OccupancyCell(msgspec.Struct):
    kiosk_id: str
    size: str
    occupied: int
    total: int


class PickupMinutes(msgspec.Struct):
    p50: float | None
    p90: float | None


class WeeklyReportView(msgspec.Struct):
    period: Period
    deposits: int
    pickups: int
    unclaimed: list[UnclaimedView]
    occupancy: list[OccupancyCell]
    pickup_minutes: PickupMinutes
    failed_pin_attempts: int
    overflow_moves: int
    returns: int
    keys_overdue: int
    staff_minutes_saved: float


@get(
    "/properties/{property_id:str}/parcels",
    summary="Parcels: filter by state, unit label, tracking, age (older_than_days), overflow list",
    responses=responses(errors.NotFound),
)
async def list_parcels(
    property_id: Id,
    actor: ActorDep,
    session: SessionDep,
    parcel_state: Annotated[ParcelState | None, QueryParameter(name="state")] = None,
    unit: Annotated[str | None, Parameter(max_length=32, description="label or id")] = None,
    older_than_days: Annotated[int | None, Parameter(ge=0, le=3650)] = None,
    tracking: Annotated[str | None, Parameter(max_length=64, description="exact")] = None,
    overflow_due: FromQuery[bool | None] = None,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> Page[ParcelView]:
    await staff_property(session, actor, property_id)
    statement = select(Parcel).where(Parcel.property_id == property_id)
    if parcel_state is not None:
        statement = statement.where(Parcel.state == parcel_state)
    if unit is not None:  # a unit label ("4B") or a unit id
        found = await parcels.find_unit(session, property_id, unit)
        unit_id = found.id if found is not None else unit.strip()
        statement = statement.where(Parcel.unit_id == unit_id)
    if tracking is not None:
        statement = statement.where(Parcel.tracking == tracking.strip())
    if older_than_days is not None:
        cutoff = utcnow() - timedelta(days=older_than_days)
        since = col(Parcel.deposited_at)
        statement = statement.where(since.is_not(None), since <= cutoff)
    if overflow_due is not None:
        due = col(Parcel.overflow_due_at).is_not(None) & (Parcel.state == "deposited")
        statement = statement.where(due if overflow_due else ~due)
    rows, next_cursor = await fetch_page(session, statement, Parcel.id, limit=limit, cursor=cursor)
    return Page(await parcel_views(session, rows, show_pin=True), next_cursor)


@post(
    "/properties/{property_id:str}/parcels",
    summary="Office intake: a delivery handed to the office (bank full); recorded as overflowed",
    responses=responses(errors.NotFound, errors.UnknownUnit),
)
async def office_intake(
    property_id: Id, data: JSONBody[OfficeIntake], actor: ActorDep, session: SessionDep
) -> ParcelView:
    parcel = await parcels.office_intake(
        session,
        actor,
        property_id,
        carrier=data.carrier,
        tracking=data.tracking,
        unit_label=data.unit,
        size=data.size,
        now=utcnow(),
    )
    return await parcel_view(session, parcel, show_pin=True)


@get(
    "/parcels/{parcel_id:str}",
    summary="One parcel (with its PIN while it waits)",
    responses=responses(errors.NotFound),
)
async def get_parcel(parcel_id: Id, actor: ActorDep, session: SessionDep) -> ParcelView:
    return await parcel_view(
        session, await parcel_staff.staff_parcel(session, actor, parcel_id), show_pin=True
    )


@get(
    "/parcels/{parcel_id:str}/custody",
    summary="The parcel's chain of custody: every step, oldest first",
    responses=responses(errors.NotFound),
)
async def parcel_custody(
    parcel_id: Id, actor: ActorDep, session: SessionDep
) -> Page[CustodyEventView]:
    return Page(custody_views(await parcel_staff.custody(session, actor, parcel_id)), None)


@post(
    "/parcels/{parcel_id:str}/overflow",
    status_code=200,
    summary="Staff moved the parcel to overflow: the compartment frees, the resident is told",
    responses=responses(errors.NotFound, errors.ParcelStateConflict),
)
async def move_to_overflow(
    parcel_id: Id,
    actor: ActorDep,
    session: SessionDep,
    data: JSONBody[OverflowMove | None] = None,
) -> ParcelView:
    location = data.location if data is not None else "office"
    parcel = await parcel_staff.move_to_overflow(session, actor, parcel_id, location, utcnow())
    return await parcel_view(session, parcel, show_pin=True)


@post(
    "/parcels/{parcel_id:str}/return",
    status_code=200,
    summary="Return the parcel to its carrier: the compartment frees, the resident is told",
    responses=responses(errors.NotFound, errors.ParcelStateConflict),
)
async def return_parcel(
    parcel_id: Id,
    actor: ActorDep,
    session: SessionDep,
    data: JSONBody[ReturnToCarrier | None] = None,
) -> ParcelView:
    reason = data.reason if data is not None else "unclaimed"
    parcel = await parcel_staff.return_to_carrier(session, actor, parcel_id, reason, utcnow())
    return await parcel_view(session, parcel, show_pin=True)


@post(
    "/parcels/{parcel_id:str}/handover",
    status_code=200,
    summary="Staff handed an office (overflowed) parcel to the resident: picked up",
    responses=responses(errors.NotFound, errors.ParcelStateConflict),
)
async def hand_over(parcel_id: Id, actor: ActorDep, session: SessionDep) -> ParcelView:
    parcel = await parcel_staff.hand_over(session, actor, parcel_id, utcnow())
    return await parcel_view(session, parcel, show_pin=True)


@get(
    "/properties/{property_id:str}/occupancy",
    summary="Occupied compartments per kiosk and size; warnings when a size is nearly full",
    responses=responses(errors.NotFound),
)
async def occupancy(property_id: Id, actor: ActorDep, session: SessionDep) -> OccupancyReportView:
    await staff_property(session, actor, property_id)
    cells = await parcel_staff.occupancy(session, property_id)
    names = {
        k.id: k.name
        for k in (await session.exec(select(Kiosk).where(Kiosk.property_id == property_id))).all()
    }
    items = [
        OccupancyView(c.kiosk_id, c.size, c.occupied, c.total, c.total - c.occupied, c.nearly_full)
        for c in cells
    ]
    warnings = [
        f"{names.get(c.kiosk_id, c.kiosk_id)}: size {c.size} nearly full "
        f"({c.occupied} of {c.total} occupied)"
        for c in cells
        if c.nearly_full
    ]
    return OccupancyReportView(items, warnings)


def _csv(report: dict[str, Any]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["metric", "value"])
    writer.writerow(["period_start", report["period"]["start"].isoformat()])
    writer.writerow(["period_end", report["period"]["end"].isoformat()])
    for name in (
        "deposits",
        "pickups",
        "failed_pin_attempts",
        "overflow_moves",
        "returns",
        "keys_overdue",
        "staff_minutes_saved",
    ):
        writer.writerow([name, report[name]])
    for q in ("p50", "p90"):
        value = report["pickup_minutes"][q]
        writer.writerow([f"pickup_minutes_{q}", "" if value is None else value])
    writer.writerow(["unclaimed_count", len(report["unclaimed"])])
    writer.writerow([])
    writer.writerow(["unclaimed_parcel_id", "unit", "days"])
    for row in report["unclaimed"]:
        writer.writerow([row["parcel_id"], row["unit"], row["days"]])
    writer.writerow([])
    writer.writerow(["occupancy_kiosk_id", "size", "occupied", "total"])
    for row in report["occupancy"]:
        writer.writerow([row["kiosk_id"], row["size"], row["occupied"], row["total"]])
    return buffer.getvalue()


@get(
    "/properties/{property_id:str}/reports/weekly",
    summary="Weekly audit: deposits, pickups, unclaimed, occupancy, pickup times, PIN failures",
    description=(
        "The seven days up to now, or the week from `start` (ISO date or date-time). "
        "`format=csv` gives the same figures as CSV."
    ),
    responses=responses(errors.NotFound),
)
async def weekly_report(
    property_id: Id,
    actor: ActorDep,
    session: SessionDep,
    start: Annotated[str | None, Parameter(max_length=40)] = None,
    format: FromQuery[Literal["json", "csv"]] = "json",
) -> Response[Any]:
    begin: datetime | None = None
    if start is not None:
        try:
            begin = datetime.fromisoformat(start)
        except ValueError:
            raise errors.ValidationFailed("start must be an ISO date or date-time") from None
        if begin.tzinfo is None:
            begin = begin.replace(tzinfo=UTC)
    report = await parcel_staff.weekly_report(session, actor, property_id, begin, utcnow())
    if format == "csv":
        return Response(_csv(report), media_type="text/csv")
    return Response(msgspec.convert(report, WeeklyReportView))


handlers = [
    list_parcels,
    office_intake,
    get_parcel,
    parcel_custody,
    move_to_overflow,
    return_parcel,
    hand_over,
    occupancy,
    weekly_report,
]

"""Courier intake at the kiosk, and PIN pickup checked online.

A refused request that names another kiosk's compartment or parcel is still recorded
(``kiosk.request_rejected``, for staff): the compartment or parcel is looked up (read-only)
before anything is written, so on refusal the event is committed alone, then the error is
answered.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Annotated, Any, Literal, TypeVar

import msgspec
from litestar import Response, post
from litestar.datastructures import ResponseHeader
from litestar.params import JSONBody, Parameter
from sqlmodel.ext.asyncio.session import AsyncSession

from backend import errors
from backend.dependencies import KioskDep, SessionDep
from backend.models import Compartment, Kiosk, Parcel
from backend.models.base import utcnow
from backend.parcel_views import DeliveryView, PinDecisionView, delivery_view
from backend.problems import responses
from backend.services import parcel_pins, parcels

Id = Annotated[str, Parameter(max_length=32)]
Size = Literal["S", "M", "L", "XL"]
T = TypeVar("T")
KIOSK_ERRORS = (errors.InvalidKioskAssertion, errors.KioskAssertionReplayed)


class Dimensions(msgspec.Struct, forbid_unknown_fields=True):
    length_cm: Annotated[float, msgspec.Meta(gt=0, le=1000)]
    width_cm: Annotated[float, msgspec.Meta(gt=0, le=1000)]
    height_cm: Annotated[float, msgspec.Meta(gt=0, le=1000)]


class DeliveryIntake(msgspec.Struct, forbid_unknown_fields=True):
    """A courier's scan. ``unit`` is the label on the parcel; ``size`` or ``dimensions``."""

    carrier: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    tracking: Annotated[
        str,
        msgspec.Meta(
            min_length=1, max_length=64, pattern=r"^[\x21-\x7e]+$", description="barcode text"
        ),
    ]
    unit: Annotated[str, msgspec.Meta(min_length=1, max_length=32)]
    size: Size | None = None
    dimensions: Dimensions | None = None
    compartment_id: (
        Annotated[str, msgspec.Meta(max_length=32, description="ask for this compartment")] | None
    ) = None
    to_office: Annotated[
        bool, msgspec.Meta(description="bank full: the courier hands the parcel to the office")
    ] = False


class DepositConfirmation(msgspec.Struct, forbid_unknown_fields=True):
    closed_at: datetime | None = None


class DeliveryCancel(msgspec.Struct, forbid_unknown_fields=True):
    reason: Annotated[str, msgspec.Meta(min_length=1, max_length=64)] = "courier_cancelled"


class PinPickup(msgspec.Struct, forbid_unknown_fields=True):
    unit: Annotated[str, msgspec.Meta(min_length=1, max_length=32)]
    pin: Annotated[str, msgspec.Meta(min_length=1, max_length=16)]


async def _recorded_rejection(
    session: AsyncSession,
    kiosk: Kiosk,
    lookup: Callable[[], Awaitable[T]],
    reason: str,
    **payload: Any,
) -> T:
    """Run a read-only ownership ``lookup``; a ``NotFound`` is recorded for staff, committed
    (with the spent assertion), then raised."""
    try:
        return await lookup()
    except errors.NotFound:
        await parcels.record_rejection(session, kiosk, reason, **payload)
        await session.commit()
        raise


@post(
    "/deliveries",
    summary="Courier intake: reserve the smallest free compartment that fits, or the office",
    description=(
        "201 with the compartment whose door opens (state `assigned`); the same tracking at "
        "the same kiosk answers the same parcel (also 201; header `X-Parcel-Created: false`). 409 `no_compartment_fits` lists the "
        "free larger sizes in `free_sizes`; then `to_office: true` records an office hand-over."
    ),
    response_headers=[
        ResponseHeader(
            name="X-Parcel-Created",
            description="`true` for a new parcel, `false` when this tracking number at this "
            "kiosk already had one (the same parcel is answered)",
            required=True,
            documentation_only=True,
        )
    ],
    responses=responses(
        errors.UnknownUnit,
        errors.NotFound,
        errors.NoCompartmentFits,
        errors.ParcelStateConflict,
        *KIOSK_ERRORS,
        auth=False,
    ),
)
async def create_delivery(
    data: JSONBody[DeliveryIntake], kiosk: KioskDep, session: SessionDep
) -> Response[DeliveryView]:
    size: str | None = data.size
    if data.dimensions is not None:
        d = data.dimensions
        fitted = parcels.size_for_dimensions(d.length_cm, d.width_cm, d.height_cm)
        if fitted is None:
            raise errors.NoCompartmentFits(
                "the parcel is larger than any compartment", free_sizes=[]
            )
        size = (
            fitted if size is None or parcels.SIZE_RANK[fitted] > parcels.SIZE_RANK[size] else size
        )
    if size is None:
        raise errors.ValidationFailed("size or dimensions is required")
    requested = data.compartment_id
    if requested is not None:
        await _recorded_rejection(
            session,
            kiosk,
            lambda: parcels.kiosk_compartment(session, kiosk, requested),
            "foreign_compartment",
            compartment_id=requested,
        )
    result = await parcels.intake(
        session,
        kiosk,
        carrier=data.carrier,
        tracking=data.tracking,
        unit_label=data.unit,
        size=size,
        compartment_id=requested,
        to_office=data.to_office,
        now=utcnow(),
    )
    view = await delivery_view(session, result.parcel, result.compartment)
    # A repeated scan answers the same parcel, and the same status, so retries look alike.
    return Response(
        view, status_code=201, headers={"X-Parcel-Created": str(result.created).lower()}
    )


@post(
    "/deliveries/{parcel_id:str}/deposited",
    status_code=200,
    summary="The door closed on the parcel: it is deposited and the unit told (idempotent)",
    responses=responses(errors.NotFound, errors.ParcelStateConflict, *KIOSK_ERRORS, auth=False),
)
async def confirm_deposit(
    parcel_id: Id,
    kiosk: KioskDep,
    session: SessionDep,
    data: JSONBody[DepositConfirmation | None] = None,
) -> DeliveryView:
    closed_at = data.closed_at if data is not None else None
    if closed_at is not None and closed_at.tzinfo is None:
        raise errors.ValidationFailed("closed_at needs a timezone")
    parcel = await _recorded_rejection(
        session,
        kiosk,
        lambda: parcels.kiosk_parcel(session, kiosk, parcel_id),
        "foreign_parcel",
        parcel_id=parcel_id,
    )
    await parcels.confirm_deposit(session, kiosk, parcel, closed_at, utcnow())
    return await delivery_view(session, parcel, await _compartment(session, parcel))


@post(
    "/deliveries/{parcel_id:str}/cancel",
    status_code=200,
    summary="The courier gave up or the door never closed: the compartment is released",
    responses=responses(errors.NotFound, errors.ParcelStateConflict, *KIOSK_ERRORS, auth=False),
)
async def cancel_delivery(
    parcel_id: Id,
    kiosk: KioskDep,
    session: SessionDep,
    data: JSONBody[DeliveryCancel | None] = None,
) -> DeliveryView:
    reason = data.reason if data is not None else "courier_cancelled"
    parcel = await _recorded_rejection(
        session,
        kiosk,
        lambda: parcels.kiosk_parcel(session, kiosk, parcel_id),
        "foreign_parcel",
        parcel_id=parcel_id,
    )
    await parcels.cancel_delivery(session, kiosk, parcel, utcnow(), reason)
    return await delivery_view(session, parcel, None)


@post(
    "/pickups",
    status_code=200,
    summary="Unit and PIN typed at the kiosk: the decision and the compartments to open",
    description=(
        "Opens every compartment holding the unit's waiting parcels for that PIN. Failures are "
        "budgeted per (kiosk, unit) and per kiosk; past the budget the reason is `locked_out` "
        "(even for the right PIN) until `retry_after_seconds` have passed."
    ),
    responses=responses(*KIOSK_ERRORS, auth=False),
)
async def pin_pickup(
    data: JSONBody[PinPickup], kiosk: KioskDep, session: SessionDep
) -> PinDecisionView:
    decision = await parcel_pins.pin_pickup(session, kiosk, data.unit, data.pin, utcnow())
    return PinDecisionView(
        decision.granted, decision.reason, decision.compartments, decision.retry_after_seconds
    )


async def _compartment(session: AsyncSession, parcel: Parcel) -> Compartment | None:
    if parcel.compartment_id is None or parcel.state not in ("assigned", "deposited"):
        return None
    return await session.get(Compartment, parcel.compartment_id)


handlers = [create_delivery, confirm_deposit, cancel_delivery, pin_pickup]

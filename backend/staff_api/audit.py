"""The audit trail export and its hash-chain verification."""

from __future__ import annotations

import csv
import io
from typing import Annotated, Any, Literal

from litestar import Response, get
from litestar.params import FromQuery, Parameter
from sqlmodel import col, select

from backend import errors
from backend.dependencies import ActorDep, SessionDep
from backend.models import Event
from backend.pagination import Page
from backend.problems import responses
from backend.scoping import staff_property
from backend.services.events import verify_chain
from backend.staff_api.views import AuditEventView, ChainVerificationView

Id = Annotated[str, Parameter(max_length=32)]


def _view(e: Event) -> AuditEventView:
    return AuditEventView(
        str(e.id),
        e.type,
        e.severity,
        e.actor,
        e.subject,
        e.occurred_at,
        e.recorded_at,
        e.property_id,
        e.payload,
        e.prev_hash,
        e.hash,
    )


@get(
    "/properties/{property_id:str}/audit",
    summary="The audit trail, oldest first (JSON page, or CSV with format=csv)",
    responses=responses(errors.NotFound),
)
async def export_audit(
    property_id: Id,
    actor: ActorDep,
    session: SessionDep,
    after: Annotated[int, Parameter(ge=0)] = 0,
    limit: Annotated[int, Parameter(ge=1, le=1000)] = 200,
    format: FromQuery[Literal["json", "csv"]] = "json",
) -> Response[Any]:
    await staff_property(session, actor, property_id)
    rows = list(
        (
            await session.exec(
                select(Event)
                .where(Event.property_id == property_id, col(Event.id) > after)
                .order_by(col(Event.id))
                .limit(limit + 1)
            )
        ).all()
    )
    more = len(rows) > limit
    rows = rows[:limit]
    next_cursor = str(rows[-1].id) if more and rows else None
    if format == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(
            ["id", "type", "severity", "actor", "subject", "occurred_at", "recorded_at", "hash"]
        )
        for e in rows:
            writer.writerow(
                [
                    e.id,
                    e.type,
                    e.severity,
                    e.actor,
                    e.subject,
                    e.occurred_at.isoformat(),
                    e.recorded_at.isoformat(),
                    e.hash,
                ]
            )
        return Response(buffer.getvalue(), media_type="text/csv")
    return Response(Page([_view(e) for e in rows], next_cursor))


@get(
    "/properties/{property_id:str}/audit/verify",
    summary="Recompute the property's event hash chain",
    responses=responses(errors.NotFound),
)
async def verify_audit(
    property_id: Id, actor: ActorDep, session: SessionDep
) -> ChainVerificationView:
    await staff_property(session, actor, property_id)
    report = await verify_chain(session, property_id)
    bad = str(report.first_bad_id) if report.first_bad_id is not None else None
    return ChainVerificationView(property_id, report.checked, report.valid, bad)


handlers = [export_audit, verify_audit]

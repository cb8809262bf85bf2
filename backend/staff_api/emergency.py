"""Break-glass emergency access: permission, request, second-staff approval, credential."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import msgspec
from litestar import get, post, put
from litestar.params import JSONBody, Parameter
from sqlmodel import col, select

from backend import errors
from backend.dependencies import ActorDep, RuntimeDep, SessionDep
from backend.models import EmergencyRequest
from backend.models.base import utcnow
from backend.pagination import Page, fetch_page
from backend.problems import responses
from backend.scoping import staff_property
from backend.services import emergency
from backend.staff_api.visit_views import IssuedCredentialView

Id = Annotated[str, Parameter(max_length=32)]
Limit = Annotated[int, Parameter(ge=1, le=200)]
Cursor = Annotated[str | None, Parameter(max_length=200)]


class EmergencyPermission(msgspec.Struct, forbid_unknown_fields=True):
    can_emergency: bool


class EmergencyPermissionView(msgspec.Struct):
    property_id: str
    user_id: str
    can_emergency: bool


class EmergencyAccessRequest(msgspec.Struct, forbid_unknown_fields=True):
    device_id: Annotated[str, msgspec.Meta(min_length=1, max_length=32)]
    reason: Annotated[str, msgspec.Meta(min_length=1, max_length=500)]


class EmergencyRequestView(msgspec.Struct):
    id: str
    property_id: str
    requested_by: str
    reason: str
    state: str
    approved_by: str | None
    expires_at: datetime
    credential: IssuedCredentialView | None = None

    @classmethod
    def of(cls, row: EmergencyRequest, credential: object | None = None) -> EmergencyRequestView:
        return cls(
            row.id,
            row.property_id,
            row.requested_by,
            row.reason,
            row.state,
            row.approved_by,
            row.expires_at,
            IssuedCredentialView.of(credential) if credential is not None else None,
        )


@put(
    "/properties/{property_id:str}/members/{user_id:str}/emergency-permission",
    summary="Grant or withdraw a staff member's break-glass permission",
    responses=responses(errors.NotFound, errors.EmergencyNotPermitted),
)
async def set_emergency_permission(
    property_id: Id,
    user_id: Id,
    data: JSONBody[EmergencyPermission],
    actor: ActorDep,
    session: SessionDep,
) -> EmergencyPermissionView:
    member = await emergency.set_permission(
        session, actor, property_id, user_id, data.can_emergency, utcnow()
    )
    return EmergencyPermissionView(property_id, member.user_id, member.can_emergency)


@post(
    "/properties/{property_id:str}/emergency-access",
    summary=(
        "Break-glass: a short-lived emergency credential for every kiosk of the property "
        "(state issued), or a request waiting for a second staff member (state pending)"
    ),
    responses=responses(
        errors.NotFound,
        errors.EmergencyNotPermitted,
        errors.AccessRevoked,
        errors.ServiceUnavailable,
    ),
)
async def request_emergency_access(
    property_id: Id,
    data: JSONBody[EmergencyAccessRequest],
    actor: ActorDep,
    runtime: RuntimeDep,
    session: SessionDep,
) -> EmergencyRequestView:
    request, credential = await emergency.request_access(
        session,
        runtime,
        actor,
        property_id,
        device_id=data.device_id,
        reason=data.reason,
        now=utcnow(),
    )
    return EmergencyRequestView.of(request, credential)


@get(
    "/properties/{property_id:str}/emergency-access",
    summary="Emergency access requests of a property",
    responses=responses(errors.NotFound),
)
async def list_emergency_requests(
    property_id: Id, actor: ActorDep, session: SessionDep, limit: Limit = 50, cursor: Cursor = None
) -> Page[EmergencyRequestView]:
    await staff_property(session, actor, property_id)
    statement = select(EmergencyRequest).where(EmergencyRequest.property_id == property_id)
    rows, next_cursor = await fetch_page(
        session, statement, col(EmergencyRequest.id), limit=limit, cursor=cursor
    )
    return Page([EmergencyRequestView.of(r) for r in rows], next_cursor)


@post(
    "/emergency-access/{request_id:str}/approve",
    status_code=200,
    summary="Approve another staff member's emergency request",
    responses=responses(errors.NotFound, errors.Conflict),
)
async def approve_emergency_request(
    request_id: Id, actor: ActorDep, session: SessionDep
) -> EmergencyRequestView:
    return EmergencyRequestView.of(await emergency.approve(session, actor, request_id, utcnow()))


@post(
    "/emergency-access/{request_id:str}/credential",
    summary="Collect the approved emergency credential (requester only, once)",
    responses=responses(
        errors.NotFound,
        errors.Conflict,
        errors.ApprovalRequired,
        errors.EmergencyNotPermitted,
        errors.AccessRevoked,
        errors.ServiceUnavailable,
    ),
)
async def collect_emergency_credential(
    request_id: Id, actor: ActorDep, runtime: RuntimeDep, session: SessionDep
) -> EmergencyRequestView:
    request, credential = await emergency.collect(session, runtime, actor, request_id, utcnow())
    return EmergencyRequestView.of(request, credential)


handlers = [
    set_emergency_permission,
    request_emergency_access,
    list_emergency_requests,
    approve_emergency_request,
    collect_emergency_credential,
]

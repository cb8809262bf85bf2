"""Vendor visits and keys in the phone app: assigned visits, keys in my custody, lockout key."""

from __future__ import annotations

from typing import Annotated

import msgspec
from litestar import get, post
from litestar.di import Provide
from litestar.params import JSONBody, Parameter, QueryParameter
from sqlmodel import select

from backend import errors
from backend.dependencies import ActorDep, RuntimeDep, SessionDep, provide_app_user
from backend.models import KeyItem, WorkOrder
from backend.models.base import utcnow
from backend.pagination import Page, fetch_page
from backend.problems import responses
from backend.services import credentials, keys, work_orders
from backend.staff_api.visit_views import (
    IssuedCredentialsView,
    IssuedCredentialView,
    KeyView,
    WorkOrderView,
    work_order_view,
)

Id = Annotated[str, Parameter(max_length=32)]
Limit = Annotated[int, Parameter(ge=1, le=200)]
Cursor = Annotated[str | None, Parameter(max_length=200)]
APP_USER = {"actor": Provide(provide_app_user)}


class LockoutCredentialRequest(msgspec.Struct, forbid_unknown_fields=True):
    device_id: Annotated[str, msgspec.Meta(min_length=1, max_length=32)]


@get(
    "/work-orders",
    summary="Vendor: my assigned visits with their windows, doors and keys (residents: visits "
    "to their unit)",
    dependencies=APP_USER,
    responses=responses(),
)
async def list_my_work_orders(
    actor: ActorDep,
    session: SessionDep,
    state_filter: Annotated[str | None, QueryParameter(name="state", max_length=12)] = None,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> Page[WorkOrderView]:
    statement = select(WorkOrder).where(work_orders.app_filter(actor))
    if state_filter is not None:
        statement = statement.where(WorkOrder.state == state_filter)
    rows, next_cursor = await fetch_page(
        session, statement, WorkOrder.id, limit=limit, cursor=cursor
    )
    now = utcnow()
    return Page([await work_order_view(session, wo, now) for wo in rows], next_cursor)


@get(
    "/work-orders/{work_order_id:str}",
    summary="One of my visits",
    dependencies=APP_USER,
    responses=responses(errors.NotFound),
)
async def get_my_work_order(
    work_order_id: Id, actor: ActorDep, session: SessionDep
) -> WorkOrderView:
    wo = await work_orders.app_work_order(session, actor, work_order_id)
    return await work_order_view(session, wo, utcnow())


@get(
    "/keys",
    summary="Keys in my custody (with when they are due back)",
    dependencies=APP_USER,
    responses=responses(),
)
async def list_my_keys(
    actor: ActorDep, session: SessionDep, limit: Limit = 50, cursor: Cursor = None
) -> Page[KeyView]:
    statement = select(KeyItem).where(
        KeyItem.holder_user_id == actor.user_id, KeyItem.state == "checked_out"
    )
    rows, next_cursor = await fetch_page(session, statement, KeyItem.id, limit=limit, cursor=cursor)
    now = utcnow()
    return Page([KeyView.of(k, now) for k in rows], next_cursor)


@post(
    "/keys/{key_id:str}/lockout-credential",
    summary="Locked out: a one-time credential for the compartment holding my own unit key "
    "(after staff authorised it)",
    dependencies=APP_USER,
    responses=responses(
        errors.NotFound,
        errors.KeyUnavailable,
        errors.Conflict,
        errors.AccessRevoked,
        errors.ServiceUnavailable,
    ),
)
async def lockout_credential(
    key_id: Id,
    data: JSONBody[LockoutCredentialRequest],
    actor: ActorDep,
    runtime: RuntimeDep,
    session: SessionDep,
) -> IssuedCredentialsView:
    now = utcnow()
    grants = await keys.lockout_grants(session, actor, key_id, now)
    rows = await credentials.issue_for_grants(
        session, runtime, user_id=actor.user_id, device_id=data.device_id, grants=grants, now=now
    )
    return IssuedCredentialsView([IssuedCredentialView.of(r) for r in rows])


handlers = [list_my_work_orders, get_my_work_order, list_my_keys, lockout_credential]

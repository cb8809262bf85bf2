"""The staff router: every handler below requires a staff or admin caller."""

from __future__ import annotations

from litestar import Router
from litestar.di import Provide

from backend.dependencies import provide_staff
from backend.staff_api import (
    audit,
    commands,
    emergency,
    keys,
    kiosks,
    properties,
    revocations,
    work_orders,
)
from backend.staff_api import credentials as issued_credentials
from backend.staff_api import notifications as push_notifications
from backend.staff_api import parcels as parcel_handlers


def build_router() -> Router:
    return Router(
        path="/v1/staff",
        route_handlers=[
            *properties.handlers,
            *kiosks.handlers,
            *audit.handlers,
            *parcel_handlers.handlers,
            *revocations.handlers,
            *issued_credentials.handlers,
            *push_notifications.handlers,
            *work_orders.handlers,
            *keys.handlers,
            *commands.handlers,
            *emergency.handlers,
        ],
        dependencies={"actor": Provide(provide_staff)},
        tags=["staff"],
        security=[{"bearer": []}],
    )

"""The phone-app router: one place listing the resident and vendor handlers."""

from __future__ import annotations

from litestar import Router

from mobile_api import accounts, credentials, parcels
from mobile_api import events as event_history
from mobile_api import notifications as push_preferences
from mobile_api import work_orders as visits


def build_router() -> Router:
    return Router(
        path="/v1",
        route_handlers=[
            *accounts.handlers,
            *credentials.handlers,
            *parcels.handlers,
            *push_preferences.handlers,
            *event_history.handlers,
            *visits.handlers,
        ],
        tags=["phone apps"],
        security=[{"bearer": []}],
    )

"""The phone-app router: one place listing the resident and vendor handlers."""

from __future__ import annotations

from litestar import Router

from mobile_api import accounts


def build_router() -> Router:
    return Router(
        path="/v1",
        route_handlers=[*accounts.handlers],
        tags=["phone apps"],
        security=[{"bearer": []}],
    )

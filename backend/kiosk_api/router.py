"""The kiosk router. Handlers that take ``kiosk`` are authenticated by a kiosk assertion."""

from __future__ import annotations

from litestar import Router
from litestar.di import Provide

from backend.dependencies import provide_kiosk
from backend.kiosk_api import deliveries, enrollment


def build_router() -> Router:
    return Router(
        path="/v1/kiosk",
        route_handlers=[*enrollment.handlers, *deliveries.handlers],
        dependencies={"kiosk": Provide(provide_kiosk)},
        tags=["kiosks"],
        security=[{"kiosk_assertion": []}],
    )

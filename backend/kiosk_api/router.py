"""The kiosk router. Handlers that take ``kiosk`` are authenticated by a kiosk assertion."""

from __future__ import annotations

from litestar import Router
from litestar.di import Provide

from backend.dependencies import provide_kiosk
from backend.kiosk_api import deliveries, enrollment
from backend.kiosk_api import journal as journal_api
from backend.kiosk_api import keys as key_returns
from backend.kiosk_api import sync as sync_api


def build_router() -> Router:
    return Router(
        path="/v1/kiosk",
        route_handlers=[
            *enrollment.handlers,
            *deliveries.handlers,
            *sync_api.handlers,
            *journal_api.handlers,
            *key_returns.handlers,
        ],
        dependencies={"kiosk": Provide(provide_kiosk)},
        tags=["kiosks"],
        security=[{"kiosk_assertion": []}],
    )

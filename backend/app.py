"""``create_app(settings)``: the table of contents of the server."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from litestar import Litestar
from litestar.datastructures import State
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.openapi.spec import Components, SecurityScheme

import mobile_api
from backend import health, jwks, kiosk_api, staff_api
from backend.dependencies import close_sessions_middleware, provide_runtime, provide_session
from backend.logs import request_id_middleware
from backend.openapi_strict import StrictStructSchemaPlugin, finish_openapi
from backend.problems import exception_handlers
from backend.runtime import Runtime
from backend.services import parcel_journal, parcel_policy, parcels, pin_hasher, policy  # noqa: F401  (register their jobs and journal handlers)
from backend.settings import Settings
from push.dispatcher import start_push_dispatcher
from realtime import kiosk_channel, relay
from realtime import websocket as realtime_websocket
from realtime.frames import remember_raw_send

StartupHook = Callable[[Litestar, Runtime], Awaitable[None]]

# Started in this order when the server starts (each stops with the runtime's background tasks
# and closers): signing keys exist before anything signs; parcels' PIN key and the realtime
# relay before requests; then the jobs that only run with ``background_jobs``.
STARTUP_HOOKS: list[StartupHook] = [
    jwks.ensure_signing_keys,
    parcels.on_startup,
    relay.startup,
    start_push_dispatcher,
    policy.start_policy_scheduler,
    pin_hasher.start_pin_hasher,
]


class ConciergeApp(Litestar):
    """Litestar, keeping the server's own websocket ``send`` for the fan-out fast path
    (realtime/frames.py): it is only reachable here, before Litestar wraps it."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        remember_raw_send(scope, send)
        await super().__call__(scope, receive, send)


def _openapi() -> OpenAPIConfig:
    return OpenAPIConfig(
        title="Concierge API",
        version="1.0.0",
        description=(
            "Smart lockers and building doors: phone apps (residents, vendors), staff consoles and "
            "kiosks. Every error is application/problem+json with a stable `code`."
        ),
        path="/schema",
        render_plugins=[SwaggerRenderPlugin(path="/")],
        components=Components(
            security_schemes={
                "bearer": SecurityScheme(
                    type="http", scheme="bearer", bearer_format="JWT", description="Access token"
                ),
                "kiosk_assertion": SecurityScheme(
                    type="http",
                    scheme="bearer",
                    bearer_format="JWT",
                    description="Kiosk assertion signed by the kiosk's Ed25519 key (kiosk-auth+jwt)",
                ),
            }
        ),
    )


def create_app(settings: Settings | None = None, runtime: Runtime | None = None) -> Litestar:
    """A new application; each call builds fresh state (tests start several)."""
    settings = settings or Settings()
    runtime = runtime or Runtime.create(settings)

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        try:
            for hook in STARTUP_HOOKS:
                await hook(app, runtime)
            yield
        finally:
            for task in runtime.background:
                task.cancel()
            for closer in reversed(runtime.extensions.get("closers", [])):
                await closer()
            await runtime.db.dispose()

    app = ConciergeApp(
        route_handlers=[
            *health.handlers,
            *jwks.handlers,
            mobile_api.build_router(),
            staff_api.build_router(),
            kiosk_api.build_router(),
            *realtime_websocket.handlers,
            *kiosk_channel.handlers,
        ],
        dependencies={
            "runtime": Provide(provide_runtime, sync_to_thread=False),
            "session": Provide(provide_session),
        },
        exception_handlers=exception_handlers,
        middleware=[request_id_middleware, close_sessions_middleware],
        openapi_config=_openapi(),
        plugins=[StrictStructSchemaPlugin()],
        request_max_body_size=settings.max_body_bytes,
        state=State({"runtime": runtime}),
        lifespan=[lifespan],
        # Logging is ours (backend.logs: plain or JSON lines with the request id); Litestar's
        # default config would replace the root handlers.
        logging_config=None,
        debug=False,
    )
    finish_openapi(app)
    return app

"""Request-scoped dependencies: the runtime, the unit-of-work session, the caller."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

from litestar import Litestar, Request
from litestar.di import NamedDependency
from litestar.types import ASGIApp, Receive, Scope, Send
from sqlmodel.ext.asyncio.session import AsyncSession

from backend import errors
from backend.auth import Actor, authenticate, bearer_token
from backend.models import Kiosk
from backend.models.base import utcnow
from backend.runtime import Runtime
from backend.services.kiosks import authenticate_kiosk

# Explicit dependency markers for handler signatures (Litestar 2.25 deprecates inferred ones).
RuntimeDep = NamedDependency[Runtime]
SessionDep = NamedDependency[AsyncSession]
ActorDep = NamedDependency[Actor]
KioskDep = NamedDependency[Kiosk]


def provide_runtime(scope: Scope) -> Runtime:
    """The app's runtime, read from the app itself (a ``state`` parameter would make Litestar
    copy the application state for every request)."""
    runtime: Runtime = Litestar.from_scope(scope).state.runtime
    return runtime


OPEN_SESSIONS = "concierge.sessions"


async def provide_session(runtime: RuntimeDep, scope: Scope) -> AsyncGenerator[AsyncSession, None]:
    """The request's unit of work: committed before the response is sent, else rolled back.

    The session is also noted in the ASGI scope: Litestar skips a generator dependency's
    cleanup when a *later* dependency (authentication) raises, so ``close_sessions_middleware``
    closes whatever is still open once the request is done. It takes ``runtime`` (rather
    than reading ``state``) so that Litestar resolves the dependencies one after the other:
    dependencies that do not depend on each other are resolved in an anyio task group, whose
    set-up costs more than these dependencies themselves.
    """
    async with runtime.db.sessions() as session:
        scope.setdefault(OPEN_SESSIONS, []).append(session)  # type: ignore[misc,typeddict-unknown-key]
        try:
            yield session
        except BaseException:
            await session.rollback()
            raise
        else:
            await session.commit()


def close_sessions_middleware(app: ASGIApp) -> ASGIApp:
    """Close sessions whose dependency cleanup never ran (see ``provide_session``)."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await app(scope, receive, send)
        finally:
            for session in scope.get(OPEN_SESSIONS, []):  # type: ignore[attr-defined]
                await session.close()

    return middleware


async def provide_user(
    request: Request[Any, Any, Any], runtime: RuntimeDep, session: SessionDep
) -> Actor:
    """Any signed-in user (``GET /v1/me``, devices, auth)."""
    return await authenticate(runtime, session, bearer_token(request))


async def provide_app_user(
    request: Request[Any, Any, Any], runtime: RuntimeDep, session: SessionDep
) -> Actor:
    """Phone-app audience: residents and vendors (and staff using the app)."""
    actor = await authenticate(runtime, session, bearer_token(request))
    if not (actor.is_admin or actor.has_role("resident", "vendor", "staff")):
        raise errors.Forbidden("This API is for residents and vendors")
    return actor


async def provide_staff(
    request: Request[Any, Any, Any], runtime: RuntimeDep, session: SessionDep
) -> Actor:
    """Staff audience: staff of at least one property, or an admin."""
    actor = await authenticate(runtime, session, bearer_token(request))
    if not (actor.is_admin or actor.staff_property_ids):
        raise errors.Forbidden("This API is for property staff")
    return actor


async def provide_kiosk(
    request: Request[Any, Any, Any], runtime: RuntimeDep, session: SessionDep
) -> Kiosk:
    """The kiosk whose own key signed this request's assertion."""
    try:
        assertion = bearer_token(request)
    except errors.NotAuthenticated:
        raise errors.InvalidKioskAssertion("Kiosk assertion missing") from None
    return await authenticate_kiosk(session, runtime, assertion, utcnow())

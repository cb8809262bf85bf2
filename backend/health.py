"""Liveness and readiness."""

from __future__ import annotations

import msgspec
from litestar import Response, get
from sqlalchemy import text

from backend.dependencies import RuntimeDep


class HealthView(msgspec.Struct):
    status: str
    checks: dict[str, str] = msgspec.field(default_factory=dict)


@get("/health/live", summary="The process is up", tags=["health"])
async def live() -> HealthView:
    return HealthView("ok")


@get(
    "/health/ready",
    summary="The database (and Redis when configured) answer; 503 otherwise",
    tags=["health"],
)
async def ready(runtime: RuntimeDep) -> Response[HealthView]:
    checks: dict[str, str] = {}
    try:
        async with runtime.db.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception:  # any driver failure means not ready; details stay in the server log
        checks["database"] = "unavailable"
    for name, probe in runtime.extensions.get("readiness", {}).items():
        try:
            checks[name] = "ok" if await probe() else "unavailable"
        except Exception:
            checks[name] = "unavailable"
    ok = all(v == "ok" for v in checks.values())
    return Response(
        HealthView("ok" if ok else "unavailable", checks), status_code=200 if ok else 503
    )


handlers = [live, ready]

"""The benchmark server: the real Concierge app plus two baseline endpoints on the same setup.

- ``GET /bench/bare``: a bare Litestar JSON endpoint (no database, no auth): the ceiling of
  the HTTP stack itself on this machine.
- ``POST /bench/insert``: one INSERT through the app's own request session (same engine,
  pool, unit-of-work dependency, commit): the fair baseline for endpoints that write.

Served by uvicorn exactly as ``concierge serve`` configures it (``serve`` below mirrors its
options), so the ratios compare like with like. Only benchmarks use this module.
"""

from __future__ import annotations

import argparse
import secrets
import sys

import msgspec
from litestar import Litestar, get, post
from sqlalchemy import text

from backend.asgi import app_from_env as concierge_app_from_env
from backend.cli import uvicorn_options
from backend.dependencies import SessionDep
from backend.settings import Settings

TABLE = "bench_insert"


class BareView(msgspec.Struct):
    status: str


@get("/bench/bare", summary="Bench baseline: bare JSON", include_in_schema=False)
async def bare() -> BareView:
    return BareView("ok")


@post(
    "/bench/insert", summary="Bench baseline: one INSERT", include_in_schema=False, status_code=201
)
async def insert(session: SessionDep) -> BareView:
    statement = text(f"INSERT INTO {TABLE} (id, note) VALUES (:id, :note)")
    await session.exec(statement.bindparams(id=secrets.token_hex(8), note="bench"))  # type: ignore[call-overload]
    return BareView("ok")


async def create_table(database_url: str) -> None:
    """Create the baseline's table (before the server starts: workers must not race on DDL)."""
    from backend.db import create_engine

    engine = create_engine(database_url)
    try:
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    f"CREATE TABLE IF NOT EXISTS {TABLE} (id VARCHAR(32) PRIMARY KEY, note VARCHAR(32))"
                )
            )
    finally:
        await engine.dispose()


def app_from_env() -> Litestar:
    app = concierge_app_from_env()
    app.register(bare)
    app.register(insert)
    return app


def serve(host: str, port: int, workers: int) -> None:
    """``concierge serve`` with this module's app (no migrations: the bench applies them)."""
    import uvicorn

    settings = Settings.from_env()
    uvicorn.run(
        "bench.server:app_from_env",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        **uvicorn_options(settings),
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    serve(args.host, args.port, args.workers)
    sys.exit(0)

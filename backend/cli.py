"""The ``concierge`` command line: serve, migrate, demo, create-admin (and feature commands).

Command names are part of the contract: scripts and the README use them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable
from typing import Any

from backend import keys_cli, logs, policy_cli
from backend.settings import Settings
from push import cli as push_cli

# Feature packages register subcommands: name -> (configure parser, run(args, settings) -> exit code)
Command = tuple[
    Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace, Settings], int]
]
COMMANDS: dict[str, Command] = {}
COMMANDS["worker"] = (push_cli.configure, push_cli.run)
COMMANDS["keys"] = (keys_cli.configure, keys_cli.run)
COMMANDS["policy"] = (policy_cli.configure, policy_cli.run)


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    from backend.migrate import upgrade

    if not args.no_migrate:
        upgrade(settings.database_url)
    uvicorn.run(
        "backend.asgi:app_from_env",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        proxy_headers=args.proxy_headers,
        forwarded_allow_ips=args.forwarded_allow_ips,
        **uvicorn_options(settings),
    )
    return 0


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """How ``serve`` runs uvicorn (benchmarks and live-server tests reuse it, to measure and
    test what is deployed): websocket frames capped before buffering, no compression, our
    pings, our logging, and the sans-I/O websocket protocol the fan-out fast path writes to
    (realtime/frames.py)."""
    return {
        "ws": "websockets-sansio",
        "ws_max_size": settings.ws_max_message_bytes,
        "ws_per_message_deflate": False,
        "ws_ping_interval": settings.ws_ping_interval_seconds,
        "ws_ping_timeout": settings.ws_ping_interval_seconds,
        "log_config": None,
        "server_header": False,
    }


def _migrate(_: argparse.Namespace, settings: Settings) -> int:
    from backend.migrate import upgrade

    upgrade(settings.database_url)
    print("migrations applied")
    return 0


def _demo(args: argparse.Namespace, settings: Settings) -> int:
    if args.story:
        from backend.story import play_story  # type: ignore[import-not-found,unused-ignore]

        story_exit: int = play_story(settings)
        return story_exit
    from backend.demo import seed_demo
    from backend.migrate import upgrade
    from backend.runtime import Runtime

    upgrade(settings.database_url)

    async def run() -> Any:
        runtime = Runtime.create(settings)
        try:
            return await seed_demo(runtime)
        finally:
            await runtime.db.dispose()

    seed = asyncio.run(run())
    if not seed.created:
        print(f"demo property already seeded (property {seed.property_id}, kiosk {seed.kiosk_id});")
        print("its passwords were printed when it was created. Delete ./var/ to start over.")
        return 0
    print(
        "Demo property seeded. These passwords are shown once and exist only in this demo database:"
    )
    for role, (email, password) in seed.accounts.items():
        print(f"  {role:9s} {email:28s} {password}")
    print(f"  property  {seed.property_id}")
    print(f"  kiosk     {seed.kiosk_id}  enrollment code {seed.enrollment_code} (valid 24 h)")
    return 0


def _create_admin(args: argparse.Namespace, settings: Settings) -> int:
    from backend.migrate import upgrade
    from backend.runtime import Runtime
    from backend.services.accounts import create_admin

    password = sys.stdin.readline().rstrip("\n")
    if len(password) < 10:
        print(
            "error: the password (read from stdin) must be at least 10 characters", file=sys.stderr
        )
        return 2
    upgrade(settings.database_url)

    async def run() -> str:
        runtime = Runtime.create(settings)
        try:
            async with runtime.db.session() as session:
                user = await create_admin(session, runtime, args.email, password, args.name)
                return user.id
        finally:
            await runtime.db.dispose()

    print(
        json.dumps(
            {"id": asyncio.run(run()), "email": args.email.strip().lower(), "is_admin": True}
        )
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="concierge", description="Concierge server")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the HTTP/websocket server")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1)
    serve.add_argument("--no-migrate", action="store_true", help="do not apply migrations first")
    serve.add_argument(
        "--proxy-headers", action="store_true", help="trust X-Forwarded-* (behind a proxy)"
    )
    serve.add_argument("--forwarded-allow-ips", default="127.0.0.1")
    serve.set_defaults(run=_serve)

    sub.add_parser("migrate", help="apply database migrations").set_defaults(run=_migrate)

    demo = sub.add_parser("demo", help="seed the demo property (--story: play the whole journey)")
    demo.add_argument("--story", action="store_true")
    demo.set_defaults(run=_demo)

    admin = sub.add_parser("create-admin", help="create or promote an admin; password on stdin")
    admin.add_argument("--email", required=True)
    admin.add_argument("--name", default="Administrator")
    admin.add_argument("--password-stdin", action="store_true", required=True)
    admin.set_defaults(run=_create_admin)

    for name, (configure, run) in COMMANDS.items():
        command = sub.add_parser(name)
        configure(command)
        command.set_defaults(run=run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_env()
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    logs.configure(settings.log_level, settings.json_logs)
    result: int = args.run(args, settings)
    return result


if __name__ == "__main__":
    sys.exit(main())

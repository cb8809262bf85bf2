"""``concierge keys rotate [--purpose credential|emergency]``: rotate a signing key now.

Prints one JSON line: the new active key, the new next key and the retiring key with the time
until which it stays published. Never prints key material.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from backend.settings import Settings


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = "Signing keys: rotate (next -> active, active -> retiring)"
    sub = parser.add_subparsers(dest="keys_action", required=True)
    rotate = sub.add_parser("rotate", help="promote the published next key; publish a new next")
    rotate.add_argument("--purpose", choices=("credential", "emergency"), default="credential")
    sub.add_parser("list", help="the published keys (public parts) as JSON")


def run(args: argparse.Namespace, settings: Settings) -> int:
    from backend.migrate import upgrade
    from backend.models.base import utcnow
    from backend.runtime import Runtime
    from backend.services import signing_keys

    upgrade(settings.database_url)

    async def main() -> Any:
        runtime = Runtime.create(settings)
        try:
            async with runtime.db.session() as session:
                now = utcnow()
                if args.keys_action == "rotate":
                    return await signing_keys.rotate(session, runtime, args.purpose, now)
                return await signing_keys.jwks(session, runtime, now)
        finally:
            await runtime.db.dispose()

    from backend.errors import ConciergeError

    try:
        result = asyncio.run(main())
    except ConciergeError as exc:
        print(f"error: {exc.detail}", file=sys.stderr)
        return 1
    print(json.dumps(result))
    return 0

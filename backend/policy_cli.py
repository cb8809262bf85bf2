"""``concierge policy run-once``: every property's due policy work now, one JSON line per action."""

from __future__ import annotations

import argparse
import asyncio
import json

from backend.settings import Settings


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = "Policy engine: reminders, overflow list, overdue keys"
    actions = parser.add_subparsers(dest="policy_action", required=True)
    actions.add_parser(
        "run-once", help="do every property's due work now; one JSON line per action"
    )


def run(args: argparse.Namespace, settings: Settings) -> int:
    import backend.app  # noqa: F401  (imports every feature, which registers its policy jobs)
    from backend.migrate import upgrade
    from backend.runtime import Runtime
    from backend.services import parcels, policy

    upgrade(settings.database_url)

    async def once() -> list[dict[str, object]]:
        runtime = Runtime.create(settings)
        parcels.register_runtime(runtime)
        try:
            return await policy.run_once(runtime)
        finally:
            await runtime.db.dispose()

    for action in asyncio.run(once()):
        print(json.dumps(action, default=str, sort_keys=True), flush=True)
    return 0

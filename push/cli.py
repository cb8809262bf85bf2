"""``concierge worker``: the background jobs as their own process (several may run at once).

It sends push notifications from the outbox, and runs the jobs that take a lease (one process
at a time across servers and workers): the policy scheduler (reminders, overflow list) and the
pickup-PIN hasher. With workers running, servers can run with ``CONCIERGE_BACKGROUND_JOBS=false``
and keep their event loops for requests and websockets.

``--once`` drains what is due now and exits, printing one JSON summary line. Without it, the
worker polls until SIGTERM or SIGINT, then finishes its current round and exits 0; a worker
killed outright loses nothing (its leased notifications are re-sent after the lease expires).

The long-running worker also sweeps kiosk presence leases (realtime/presence.py): a kiosk whose
server process died is reported offline even while no server runs the realtime hub.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal

from backend.settings import Settings


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Run the background jobs: push notifications from the outbox (FCM or the log sender),"
        " the policy scheduler and the pickup-PIN hasher"
    )
    parser.add_argument("--once", action="store_true", help="send what is due now, then exit")


async def _main(args: argparse.Namespace, settings: Settings) -> int:
    import backend.app  # noqa: F401  (imports every feature, which registers its policy jobs)
    from backend.runtime import Runtime
    from backend.services import parcels, pin_hasher, policy
    from push.dispatcher import Dispatcher
    from push.senders import make_sender
    from realtime.presence import sweep_forever

    runtime = Runtime.create(settings)
    parcels.register_runtime(runtime)  # the PIN key, for the hasher and the policy jobs
    sender = make_sender(settings)
    dispatcher = Dispatcher(runtime, sender)
    try:
        if args.once:
            report = await dispatcher.drain()
            print(json.dumps(report.as_dict(), sort_keys=True), flush=True)
            return 0
        from backend import gc_tuning

        gc_tuning.tune_for_long_running_process()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        print(json.dumps({"worker": "started", "sender": type(sender).__name__}), flush=True)
        sweeper = asyncio.create_task(sweep_forever(runtime, stop), name="presence-sweeper")
        leased_jobs = [
            asyncio.create_task(policy.run_scheduler(runtime), name="policy-scheduler"),
            asyncio.create_task(pin_hasher.run(runtime), name="pin-hasher"),
        ]
        try:
            await dispatcher.run(stop)
        finally:
            stop.set()
            for job in leased_jobs:
                job.cancel()
            await asyncio.gather(*leased_jobs, return_exceptions=True)
            await sweeper
        return 0
    finally:
        await sender.close()
        await runtime.db.dispose()


def run(args: argparse.Namespace, settings: Settings) -> int:
    return asyncio.run(_main(args, settings))

"""CPU-heavy background work that yields the processor to requests.

Why: the pickup PIN's slow hash (scrypt, 40-55 ms of CPU each, ``pin_hasher``) is derived after
every deposit. Run at normal priority it takes a core from the servers exactly while deliveries
are busiest, and on a 2-core machine that doubles the time a deposit waits for the CPU (it was
most of a worker's CPU in the journey bench). Nobody waits for that hash: a kiosk that syncs
before it exists gets it derived on the spot.

So such work runs on one dedicated thread at the lowest scheduling priority (``nice`` 19; on
Linux niceness is per thread, so the rest of the process, its event loop and its database
connections, keep their priority). The thread holds no lock and no transaction while it
computes, so running it last cannot stall anything else (no priority inversion). When the
machine is idle it runs at full speed. Where per-thread niceness is unavailable (not Linux) the
work runs at normal priority, as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")

LOWEST_PRIORITY = 19  # nice value; unprivileged threads may lower their priority, never raise it

_executor: ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()


def _lower_own_priority() -> None:
    if sys.platform != "linux":
        return
    with contextlib.suppress(OSError):  # e.g. a sandbox that forbids setpriority
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), LOWEST_PRIORITY)


def _shared_executor() -> ThreadPoolExecutor:
    global _executor
    with _executor_lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="idle-cpu", initializer=_lower_own_priority
            )
        return _executor


async def run(fn: Callable[..., T], *args: object) -> T:
    """``fn(*args)`` on the low-priority thread; the caller's event loop stays free meanwhile."""
    return await asyncio.get_running_loop().run_in_executor(_shared_executor(), fn, *args)

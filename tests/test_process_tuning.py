"""How long-running processes spend CPU: background work (the PIN's slow hash) runs on a thread
at the lowest priority, and only that thread (the event loop keeps its own); the server's
entry point freezes what start-up created and collects garbage less often."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from backend import gc_tuning, idle_cpu
from backend.services import parcels
from tests.databases import sqlite_url
from tests.processes import ROOT, concierge_env

linux_only = pytest.mark.skipif(
    sys.platform != "linux", reason="per-thread niceness is a Linux feature"
)


def _own_priority() -> tuple[int, int]:
    thread = threading.get_native_id()
    return thread, os.getpriority(os.PRIO_PROCESS, thread)


@linux_only
async def test_work_runs_at_the_lowest_priority_on_another_thread() -> None:
    caller_thread, caller_priority = _own_priority()

    worker_thread, worker_priority = await idle_cpu.run(_own_priority)

    assert worker_thread != caller_thread
    assert worker_priority == idle_cpu.LOWEST_PRIORITY
    assert _own_priority() == (caller_thread, caller_priority)  # the loop's thread is untouched


async def test_a_pin_hash_computed_there_checks_like_any_other() -> None:
    digest = await idle_cpu.run(parcels.hash_pin, "482913")

    assert parcels.check_pin_hash(digest, "482913")
    assert not parcels.check_pin_hash(digest, "482914")


PROBE = """
import gc, json
before = gc.get_threshold()
from backend.asgi import app_from_env
app_from_env()
print(json.dumps({"before": before, "after": gc.get_threshold(), "frozen": gc.get_freeze_count()}))
"""


def test_the_server_entry_point_freezes_start_up_and_raises_the_thresholds(tmp_path: Path) -> None:
    env = concierge_env({"database_url": sqlite_url(tmp_path), "var_dir": str(tmp_path / "var")})
    probe = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert probe.returncode == 0, probe.stderr[-2000:]
    state = json.loads(probe.stdout.strip().splitlines()[-1])

    assert tuple(state["before"]) != gc_tuning.THRESHOLDS  # CPython's defaults
    assert tuple(state["after"]) == gc_tuning.THRESHOLDS
    assert state["frozen"] > 10_000  # the app, its modules and caches

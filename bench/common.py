"""Measurement helpers shared by the benchmarks.

- ``Samples``: latencies of one kind of operation, with throughput and p50/p99.
- ``alternate``: run subject and baseline in alternating short bursts, several rounds, and
  report each one's figures plus the median of the per-round throughput ratios.
- ``emit``: print one JSON document (what ``make bench`` shows and CI can keep).
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

QUICK = os.environ.get("BENCH_QUICK", "") not in ("", "0")


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile (``fraction`` in 0..1) of unsorted values; 0.0 when empty."""
    if not values:
        return 0.0
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))
    return ordered[index]


@dataclass
class Samples:
    """Latencies (seconds) of one operation and the wall time they took together."""

    name: str
    latencies: list[float] = field(default_factory=list)
    wall: float = 0.0
    errors: int = 0

    def add(self, other: Samples) -> None:
        self.latencies.extend(other.latencies)
        self.wall += other.wall
        self.errors += other.errors

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.wall if self.wall > 0 else 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "count": len(self.latencies),
            "errors": self.errors,
            "per_second": round(self.rate, 1),
            "p50_ms": round(percentile(self.latencies, 0.50) * 1000, 2),
            "p99_ms": round(percentile(self.latencies, 0.99) * 1000, 2),
        }


Operation = Callable[[int], Awaitable[Any]]


async def burst(name: str, operation: Operation, count: int, concurrency: int) -> Samples:
    """Run ``operation(i)`` for i in range(count) with ``concurrency`` in flight at once."""
    samples = Samples(name)
    queue = iter(range(count))

    async def lane() -> None:
        for i in queue:
            started = time.perf_counter()
            try:
                await operation(i)
            except Exception:
                samples.errors += 1
                continue
            samples.latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(lane() for _ in range(concurrency)))
    samples.wall = time.perf_counter() - started
    return samples


async def alternate(
    subject: tuple[str, Operation],
    baselines: list[tuple[str, Operation]],
    *,
    rounds: int,
    per_burst: int,
    concurrency: int,
) -> dict[str, Any]:
    """Alternate short bursts of the subject and each baseline; median per-round ratios.

    Operation indices keep increasing across rounds so subjects that consume fixtures
    (one parcel per call) never see the same index twice.
    """
    totals = {name: Samples(name) for name, _ in [subject, *baselines]}
    ratios: dict[str, list[float]] = {name: [] for name, _ in baselines}
    offsets = dict.fromkeys(totals, 0)
    for _ in range(rounds):
        this_round: dict[str, Samples] = {}
        for name, operation in [subject, *baselines]:
            base = offsets[name]

            async def shifted(i: int, operation: Operation = operation, base: int = base) -> Any:
                return await operation(base + i)

            this_round[name] = await burst(name, shifted, per_burst, concurrency)
            offsets[name] += per_burst
            totals[name].add(this_round[name])
        for name, _ in baselines:
            if this_round[name].rate > 0:
                ratios[name].append(this_round[subject[0]].rate / this_round[name].rate)
    result: dict[str, Any] = {name: samples.summary() for name, samples in totals.items()}
    result["ratio_to"] = {
        name: round(statistics.median(values), 3) if values else None
        for name, values in ratios.items()
    }
    return result


def _process_tree_ticks(root: int) -> int:
    """CPU ticks (user + system) of ``root`` and every live descendant, from /proc."""
    children: dict[int, list[int]] = {}
    ticks: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid = int(entry)
        children.setdefault(int(fields[1]), []).append(pid)
        ticks[pid] = int(fields[11]) + int(fields[12])
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        total += ticks.get(pid, 0)
        stack.extend(children.get(pid, []))
    return total


class CpuMeter:
    """CPU seconds spent by named process trees (servers, workers) and by this
    (load-generating) process between ``start`` and ``stop``: on a 2-core machine shared by
    all of them, a figure per operation says where the time goes better than throughput does."""

    def __init__(self, **processes: int) -> None:
        self.processes = processes
        self._tick = os.sysconf("SC_CLK_TCK")
        self._ticks: dict[str, int] = {}
        self._client = 0.0

    def _client_seconds(self) -> float:
        usage = os.times()
        return usage.user + usage.system

    def start(self) -> None:
        self._ticks = {name: _process_tree_ticks(pid) for name, pid in self.processes.items()}
        self._client = self._client_seconds()

    def stop(self, operations: int) -> dict[str, Any]:
        per = max(operations, 1)
        spent = {
            name: (_process_tree_ticks(pid) - self._ticks[name]) / self._tick
            for name, pid in self.processes.items()
        }
        client = self._client_seconds() - self._client
        return {
            **{f"{name}_cpu_ms_per_op": round(s * 1000 / per, 2) for name, s in spent.items()},
            "load_generator_cpu_ms_per_op": round(client * 1000 / per, 2),
            "cpu_s": {
                **{k: round(v, 2) for k, v in spent.items()},
                "load_generator": round(client, 2),
            },
        }


def machine() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "platform": platform.platform(terse=True),
        # Other work on the machine skews absolute figures (ratios much less): say how busy it was.
        "load_average_1m": round(os.getloadavg()[0], 2),
    }


def emit(document: dict[str, Any]) -> None:
    document.setdefault("machine", machine())
    sys.stdout.write(json.dumps(document, indent=2, sort_keys=False) + "\n")
    sys.stdout.flush()

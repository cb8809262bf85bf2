"""The benchmark helpers count, index and summarise correctly (no timings are asserted)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from bench.common import Samples, alternate, burst, percentile
from tests.processes import ROOT


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.50) == 50.0
    assert percentile(values, 0.99) == 99.0
    assert percentile(values, 1.0) == 100.0
    assert percentile([], 0.5) == 0.0
    assert percentile([3.0], 0.99) == 3.0


async def test_burst_runs_every_index_once_and_counts_errors() -> None:
    seen: list[int] = []

    async def operation(i: int) -> None:
        seen.append(i)
        if i % 10 == 3:
            raise RuntimeError("boom")

    samples = await burst("op", operation, 50, concurrency=4)
    assert sorted(seen) == list(range(50))
    assert samples.errors == 5
    assert len(samples.latencies) == 45
    summary = samples.summary()
    assert summary["count"] == 45
    assert summary["errors"] == 5


async def test_alternate_gives_each_operation_fresh_indices_and_ratios() -> None:
    calls: dict[str, list[int]] = {"subject": [], "baseline": []}

    def recorder(name: str):  # type: ignore[no-untyped-def]
        async def operation(i: int) -> None:
            calls[name].append(i)

        return operation

    result = await alternate(
        ("subject", recorder("subject")),
        [("baseline", recorder("baseline"))],
        rounds=3,
        per_burst=7,
        concurrency=2,
    )
    assert sorted(calls["subject"]) == list(range(21))
    assert sorted(calls["baseline"]) == list(range(21))
    assert result["subject"]["count"] == 21
    assert result["baseline"]["count"] == 21
    assert result["ratio_to"]["baseline"] is not None
    assert result["ratio_to"]["baseline"] > 0


def test_samples_rate_and_add() -> None:
    a, b = Samples("x", [0.1, 0.2], wall=1.0), Samples("x", [0.3], wall=1.0, errors=1)
    a.add(b)
    assert a.rate == 1.5
    assert a.errors == 1


def test_runner_reports_missing_benchmarks_and_runs_by_name() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench", "no_such_bench"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"benchmark": "no_such_bench", "skipped": "not present"}


def test_journey_benchmark_runs_and_loses_nothing(tmp_path: Path) -> None:
    """``make bench``'s journey, short and on SQLite: it completes and its checks hold.

    Only correctness is asserted (every deposit one parcel, every resident exactly their
    events, no outbox row left pending); the figures it prints are not.
    """
    result = subprocess.run(
        [sys.executable, "-m", "bench", "journey_bench", "--quick"],
        cwd=ROOT,
        env={**os.environ, "BENCH_BACKENDS": "sqlite", "TMPDIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    document = json.loads(result.stdout)
    assert document["backend"] == "sqlite"
    checks = document["nothing_lost"]
    assert checks["deposits"] > 0
    assert checks["every_deposit_one_parcel"] is True
    assert checks["residents_with_exactly_their_events"] == checks["residents"]
    assert checks["outbox_all_delivered_or_visibly_failed"] is True
    assert document["deliveries"]["failures"] == {}
    assert document["pickups"]["denied"] == 0
    for target in document["targets"].values():
        assert isinstance(target["met"], bool)

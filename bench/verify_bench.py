"""Offline verification throughput: the kiosk ``Verifier`` next to two raw Ed25519 verifies.

``python -m bench.verify_bench`` prints JSON:

- ``decision``: ``Verifier.check`` on distinct presentations (parse, header allowlist, two
  signature checks through PyJWT, the strict msgspec passes, every policy check, the spent-store
  lookup in SQLite), against ``raw_two_verifies`` (two bare Ed25519 verifications of the same
  two signatures), in alternating bursts; ``ratio_to_raw`` is the median of per-round rate
  ratios (the target is at least 0.33).
- ``durable``: ``Verifier.redeem`` latency, i.e. the decision plus the durable commit of the
  spent jti and the journal entry (SQLite WAL, ``synchronous=FULL``); target p99 < 10 ms.
"""

from __future__ import annotations

import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.common import QUICK, Samples, emit
from kiosk.credential import b64url_decode
from kiosk.store import KioskStore
from kiosk.verifier import Verifier
from tests.kiosk_support import NOW, Scene


def _burst(name: str, operation: Callable[[int], Any], start: int, count: int) -> Samples:
    samples = Samples(name)
    began = time.perf_counter()
    for i in range(start, start + count):
        t0 = time.perf_counter()
        operation(i)
        samples.latencies.append(time.perf_counter() - t0)
    samples.wall = time.perf_counter() - began
    return samples


def main() -> None:
    rounds, per_burst, durable_count = (3, 100, 200) if QUICK else (15, 400, 2000)
    with tempfile.TemporaryDirectory() as tmp:
        store = KioskStore(Path(tmp) / "kiosk.db")
        scene = Scene(store)
        scene.sync()
        verifier = Verifier(store)
        pool = [scene.present(scene.credential()) for _ in range(500)]
        # The raw baseline verifies the same two signatures with bare public-key objects.
        issuer_pub, device_pub = scene.issuer_key.public_key(), scene.device.public_key()
        raw_inputs = []
        for presentation in pool:
            credential, kb = presentation.split("~")
            c_head, c_body, c_sig = credential.split(".")
            k_head, k_body, k_sig = kb.split(".")
            raw_inputs.append(
                (
                    f"{c_head}.{c_body}".encode(),
                    b64url_decode(c_sig),
                    f"{k_head}.{k_body}".encode(),
                    b64url_decode(k_sig),
                )
            )

        def decision(i: int) -> None:
            result = verifier.check(pool[i % len(pool)], now=NOW)
            if not result.granted:
                raise RuntimeError(result.reason)

        def raw(i: int) -> None:
            c_msg, c_sig, k_msg, k_sig = raw_inputs[i % len(raw_inputs)]
            issuer_pub.verify(c_sig, c_msg)
            device_pub.verify(k_sig, k_msg)

        totals = {"decision": Samples("decision"), "raw_two_verifies": Samples("raw")}
        ratios = []
        _burst("warmup", decision, 0, 50)
        _burst("warmup", raw, 0, 50)
        for r in range(rounds):
            d = _burst("decision", decision, r * per_burst, per_burst)
            b = _burst("raw", raw, r * per_burst, per_burst)
            totals["decision"].add(d)
            totals["raw_two_verifies"].add(b)
            ratios.append(d.rate / b.rate)

        fresh = [scene.present(scene.credential()) for _ in range(durable_count)]

        def durable(i: int) -> None:
            result = verifier.redeem(fresh[i], now=NOW)
            if not result.granted:
                raise RuntimeError(result.reason)

        # Baseline for the durable path: one bare INSERT + COMMIT with the same pragmas (the
        # fsync the disk charges for any durable write), alternated with the redeem bursts.
        raw_db = sqlite3.connect(str(Path(tmp) / "raw.db"), isolation_level=None)
        raw_db.execute("PRAGMA journal_mode=WAL")
        raw_db.execute("PRAGMA synchronous=FULL")
        raw_db.execute("CREATE TABLE spent (jti TEXT PRIMARY KEY)")

        def raw_commit(i: int) -> None:
            raw_db.execute("BEGIN IMMEDIATE")
            raw_db.execute("INSERT INTO spent VALUES (?)", (str(i),))
            raw_db.execute("COMMIT")

        durable_samples, commit_samples = Samples("durable"), Samples("raw_commit")
        step = max(1, durable_count // 10)
        for start in range(0, durable_count, step):
            durable_samples.add(_burst("durable", durable, start, step))
            commit_samples.add(_burst("raw_commit", raw_commit, start, step))
        raw_db.close()
        store.close()

    emit(
        {
            "benchmark": "verify_bench",
            "quick": QUICK,
            "decision": totals["decision"].summary(),
            "raw_two_verifies": totals["raw_two_verifies"].summary(),
            "ratio_to_raw": round(statistics.median(ratios), 3),
            "ratio_target": 0.333,
            "durable": {
                **durable_samples.summary(),
                "p99_target_ms": 10.0,
                "sqlite": "WAL, synchronous=FULL",
            },
            "raw_sqlite_commit": commit_samples.summary(),
            "rounds": rounds,
            "per_burst": per_burst,
        }
    )


if __name__ == "__main__":
    main()

"""``concierge demo --story`` runs from a clean directory and tells the whole journey."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.processes import ROOT


@pytest.mark.slow
def test_story_plays_the_whole_journey(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONCIERGE_")}
    env["PYTHONPATH"] = str(ROOT)
    result = subprocess.run(
        [sys.executable, "-m", "backend", "demo", "--story"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    out = result.stdout
    assert result.returncode == 0, out + result.stderr[-3000:]
    expected = [
        "server ready",
        "kiosk enrolled",
        "parcel deposited",
        "websocket receives parcel.deposited",
        "push notification handed to the log sender",
        "pickup credential",
        "QR code (PNG)",
        "kiosk network cut",
        "kiosk verifies offline",
        "decision: granted=True",
        "same QR scanned again: granted=False",
        "journal uploaded",
        "websocket receives parcel.picked_up",
        "plumber visit",
        "key state checked_out, holder the vendor",
        "key state in_compartment",
        "story complete",
    ]
    positions = []
    for text in expected:
        assert text in out, f"missing {text!r} in:\n{out}"
        positions.append(out.index(text))
    assert positions == sorted(positions), out
    # Every numbered step shows its latency.
    steps = re.findall(r"^\s+(\d+)\. .+?\s([\d.]+) ms$", out, flags=re.MULTILINE)
    assert len(steps) >= 25, out
    assert [int(number) for number, _ in steps] == list(range(1, len(steps) + 1))
    # It ran over a fresh database under ./var/demo/ and left the QR code it rendered there.
    demo = tmp_path / "var" / "demo"
    assert (demo / "concierge.db").exists()
    assert (demo / "pickup-qr.png").read_bytes().startswith(b"\x89PNG")
    assert "parcel" in (demo / "push.log").read_text().lower()

"""Door drivers: what physically opens a door or a compartment.

A driver is told to open a target (``door:<id>`` or ``compartment:<id>``) only after the
verifier has durably recorded the credential spent. Real installations implement
``DoorDriver`` for their relay board or GPIO lines (pulse the strike for ``pulse_seconds``);
``SimulatedDoorDriver`` records opens in memory and, with a log path, as JSON lines (tests,
the demo and ``concierge-kiosk verify`` on a computer without relays use it).
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable


@runtime_checkable
class DoorDriver(Protocol):
    def open(self, target: str, *, reason: str) -> bool:
        """Release the lock of ``target``; True when the hardware acknowledged it."""
        ...


@dataclass
class DoorOpen:
    target: str
    reason: str
    at: float


@dataclass
class SimulatedDoorDriver:
    """Records every open; optionally appends it to a JSON-lines file."""

    log_path: Path | None = None
    opens: list[DoorOpen] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def open(self, target: str, *, reason: str) -> bool:
        record = DoorOpen(target, reason, time.time())
        with self._lock:
            self.opens.append(record)
            if self.log_path is not None:
                with self.log_path.open("a", encoding="utf-8") as handle:
                    handle.write(json.dumps(record.__dict__) + "\n")
        return True

    def logged(self) -> list[DoorOpen]:
        """Opens recorded in the log file (by any process sharing the state dir)."""
        if self.log_path is None or not self.log_path.exists():
            return list(self.opens)
        lines = self.log_path.read_text(encoding="utf-8").splitlines()
        return [DoorOpen(**json.loads(line)) for line in lines if line.strip()]


@dataclass
class RelayDoorDriver:
    """Pulses one relay channel per target through a board-specific ``pulse`` callable.

    ``channels`` maps ``door:<id>`` / ``compartment:<id>`` to the relay channel number;
    ``pulse(channel, seconds)`` is the board library's call (e.g. gpiozero's
    ``OutputDevice.blink`` or a USB relay's write). Unknown targets are refused.
    """

    channels: dict[str, int]
    pulse: object
    pulse_seconds: float = 3.0

    def open(self, target: str, *, reason: str) -> bool:
        channel = self.channels.get(target)
        if channel is None or not callable(self.pulse):
            return False
        self.pulse(channel, self.pulse_seconds)
        return True

"""The kiosk's state directory: its identity, its key, and its SQLite store.

Layout of ``DIR``::

    config.json     {"server_url", "kiosk_id", "property_id", "door_driver": "simulated"}
    kiosk_key.pem   the kiosk's own Ed25519 private key (PKCS#8, mode 0600); never leaves DIR
    kiosk.db        spent jtis, synced state, time floor, journal (see kiosk/store.py)
    doors.jsonl     opens recorded by the simulated door driver
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from kiosk.doors import DoorDriver, SimulatedDoorDriver
from kiosk.store import UPLOAD_BATCH, KioskStore
from kiosk.verifier import Decision, Verifier

CONFIG_FILE = "config.json"
KEY_FILE = "kiosk_key.pem"
DB_FILE = "kiosk.db"
DOOR_LOG = "doors.jsonl"


class NotEnrolled(Exception):
    """The state directory holds no enrolled kiosk."""


@dataclass(frozen=True)
class KioskConfig:
    server_url: str
    kiosk_id: str
    property_id: str
    door_driver: str = "simulated"


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(path, 0o600)


def load_or_create_key(state_dir: Path) -> Ed25519PrivateKey:
    """The kiosk's key, created (0600) on first use."""
    path = state_dir / KEY_FILE
    if path.exists():
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise NotEnrolled(f"{path} is not an Ed25519 key")
        return key
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = Ed25519PrivateKey.generate()
    save_key(state_dir, key)
    return key


def save_key(state_dir: Path, key: Ed25519PrivateKey) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    _write_private(state_dir / KEY_FILE, pem)


class KioskState:
    """An enrolled kiosk: config, key, store, verifier and door driver."""

    def __init__(
        self, state_dir: Path, config: KioskConfig, key: Ed25519PrivateKey, store: KioskStore
    ) -> None:
        self.state_dir = state_dir
        self.config = config
        self.key = key
        self.store = store
        self.verifier = Verifier(store)
        self.doors: DoorDriver = SimulatedDoorDriver(state_dir / DOOR_LOG)

    @classmethod
    def open(cls, state_dir: str | Path) -> KioskState:
        directory = Path(state_dir)
        config_path = directory / CONFIG_FILE
        if not config_path.exists() or not (directory / KEY_FILE).exists():
            raise NotEnrolled(f"no enrolled kiosk in {directory}")
        raw = json.loads(config_path.read_text(encoding="utf-8"))
        config = KioskConfig(
            server_url=raw["server_url"],
            kiosk_id=raw["kiosk_id"],
            property_id=raw["property_id"],
            door_driver=raw.get("door_driver", "simulated"),
        )
        return cls(
            directory, config, load_or_create_key(directory), KioskStore(directory / DB_FILE)
        )

    @classmethod
    def create(
        cls, state_dir: str | Path, config: KioskConfig, key: Ed25519PrivateKey
    ) -> KioskState:
        directory = Path(state_dir)
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not (directory / KEY_FILE).exists():
            save_key(directory, key)
        tmp = directory / (CONFIG_FILE + ".tmp")
        tmp.write_text(json.dumps(asdict(config), indent=2), encoding="utf-8")
        tmp.replace(directory / CONFIG_FILE)
        return cls(directory, config, key, KioskStore(directory / DB_FILE))

    def close(self) -> None:
        self.store.close()

    # -- contract surface used by the courier CLI and the demo ---------------------------

    @property
    def synced(self) -> dict[str, Any] | None:
        """The last sync document, or None before the first sync."""
        return self.store.synced()

    def now(self) -> float:
        return self.store.now()

    def journal_append(self, type_: str, data: dict[str, Any]) -> int:
        """Append a journal entry (hash-chained, kept until the server acknowledges it)."""
        return self.store.journal_append(type_, data)

    def upload_journal(self) -> int:
        """Send pending entries; returns the acknowledged seq. Raises ``client.Offline``."""
        from kiosk.client import ServerClient

        return upload_journal(self, ServerClient(self))

    # -- presenting a credential ----------------------------------------------------------

    def present(
        self,
        presentation: str | bytes,
        *,
        channel: str = "qr",
        nonce: str | None = None,
        target: str | None = None,
    ) -> Decision:
        """Verify, record (spent + journal) and, on a grant, open what it grants."""
        decision = self.verifier.redeem(presentation, channel=channel, nonce=nonce, target=target)
        if decision.granted and decision.target is not None:
            for opened in self.targets_of(decision.target):
                self.doors.open(opened, reason=f"credential:{channel}")
        return decision

    def targets_of(self, target: str) -> list[str]:
        """``any`` (an emergency credential without a reader target) opens every door."""
        if target != "any":
            return [target]
        doors = (self.synced or {}).get("doors") or []
        return [f"door:{door['id']}" for door in doors]

    def status(self) -> dict[str, Any]:
        age = self.verifier.revocation_age()
        return {
            "kiosk_id": self.config.kiosk_id,
            "property_id": self.config.property_id,
            "server_url": self.config.server_url,
            "synced": self.synced is not None,
            "revocation_list_age_seconds": None if age is None else round(age, 1),
            "revocations_version": ((self.synced or {}).get("revocations") or {}).get("version"),
            "journal_last_seq": self.store.last_seq(),
            "journal_acked_through": self.store.acked_through(),
            "spent_jtis": self.store.spent_count(),
            "now": self.now(),
        }


def upload_journal(state: KioskState, client: Any) -> int:
    """Upload pending entries in batches (sync client); returns the acknowledged seq."""
    while True:
        entries = state.store.pending_entries(limit=UPLOAD_BATCH)
        if not entries:
            return state.store.acked_through()
        answer = client.request("POST", "/v1/kiosk/journal", json={"entries": entries})
        accepted = int(answer.get("accepted_through", 0))
        before = state.store.acked_through()
        state.store.acknowledge(accepted)
        if state.store.acked_through() == before:
            return before

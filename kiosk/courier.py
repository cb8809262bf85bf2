"""The courier's and the PIN user's flows at the kiosk: ``deliver`` and ``pickup``.

They stand in for the kiosk's touch screen. Online they use the kiosk API
(``POST /v1/kiosk/deliveries`` then ``.../deposited`` once the door closed; ``POST
/v1/kiosk/pickups``). When the server cannot be reached they decide from the last sync and
write the journal, which the server reconciles on upload:

- ``deliver`` picks the smallest free parcel compartment that fits from the synced list,
  minus the ones this kiosk filled offline since (kept in the store's meta until a sync shows
  the server knows, or for a day), and journals ``parcel.deposited_offline``.
- ``pickup`` checks the unit's synced PIN hashes (scrypt, parameters in each entry), with the
  property's attempt budget enforced locally per unit and per kiosk, and journals every
  attempt as ``pin.pickup`` (granted or not).

Each prints one JSON object; exit code 0 when the compartment opens, 1 otherwise.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import re
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

SIZES = ("S", "M", "L", "XL")
PIN_DIGITS = 6
KIOSK_BUDGET_FACTOR = 4  # the kiosk-wide budget is this many units' worth (as on the server)
USED_KEY = "courier.offline_used"
FAILURES_KEY = "courier.pin_failures"
PICKED_KEY = "courier.offline_picked"
USED_TTL_SECONDS = 86400


def _emit(value: dict[str, Any]) -> None:
    from kiosk.cli import emit

    emit(value)


def _open_state(state_dir: Path) -> Any:
    from kiosk.state import KioskState, NotEnrolled

    try:
        return KioskState.open(state_dir)
    except (NotEnrolled, OSError, KeyError, ValueError):
        return None


def _meta(state: Any, key: str, default: Any) -> Any:
    raw = state.store.get_meta(key)
    if raw is None:
        return default
    try:
        return json.loads(raw)
    except ValueError:
        return default


def _set_meta(state: Any, key: str, value: Any) -> None:
    state.store.set_meta(key, json.dumps(value))


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


# -- deliver --------------------------------------------------------------------------------


def _configure_deliver(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--state-dir", required=True, type=Path, help="kiosk state directory")
    parser.add_argument("--unit", required=True, help="unit label on the parcel, e.g. 4B")
    parser.add_argument("--carrier", required=True)
    parser.add_argument("--tracking", required=True, help="the scanned tracking barcode")
    parser.add_argument("--size", required=True, choices=SIZES)


def _free_larger(detail: str) -> list[str]:
    match = re.search(r"free larger sizes: ([A-Z, ]+)", detail or "")
    return [s.strip() for s in match.group(1).split(",")] if match else []


def _used_offline(state: Any, synced: dict[str, Any]) -> dict[str, Any]:
    """Compartments filled offline that the synced list may still show as free."""
    by_id = {c["id"]: c for c in synced.get("compartments") or []}
    now = state.now()
    used = _meta(state, USED_KEY, {})
    kept = {
        cid: entry
        for cid, entry in used.items()
        if cid in by_id
        and by_id[cid].get("state") == "free"
        and now - float(entry.get("at", 0)) < USED_TTL_SECONDS
    }
    if kept != used:
        _set_meta(state, USED_KEY, kept)
    return kept


def _deliver_offline(state: Any, args: argparse.Namespace) -> int:
    synced = state.synced
    if not synced:
        _emit({"ok": False, "mode": "offline", "reason": "not_synced"})
        return 1
    used = _used_offline(state, synced)
    for cid, entry in used.items():
        if entry.get("tracking") == args.tracking:  # the same scan again: same compartment
            label = entry.get("label", "")
            _emit(
                {
                    "ok": True,
                    "mode": "offline",
                    "parcel_id": None,
                    "compartment": {"id": cid, "label": label},
                    "state": "deposited",
                    "duplicate": True,
                }
            )
            return 0
    rank = {s: i for i, s in enumerate(SIZES)}
    candidates = [
        c
        for c in synced.get("compartments") or []
        if c.get("purpose") == "parcel"
        and c.get("state") == "free"
        and c["id"] not in used
        and rank.get(c.get("size"), -1) >= rank[args.size]
    ]
    if not candidates:
        _emit({"ok": False, "mode": "offline", "reason": "no_compartment_fits"})
        return 1
    chosen = min(candidates, key=lambda c: (rank[c["size"]], c["label"]))
    state.doors.open(f"compartment:{chosen['id']}", reason="delivery")
    return _journal_offline_deposit(state, args, chosen, used)


def _journal_offline_deposit(
    state: Any,
    args: argparse.Namespace,
    chosen: dict[str, Any],
    used: dict[str, Any] | None = None,
    parcel_id: str | None = None,
) -> int:
    """Record the deposit for the server to reconcile on upload."""
    if used is None:
        used = _meta(state, USED_KEY, {})
    closed_at = _iso(state.now())
    seq = state.journal_append(
        "parcel.deposited_offline",
        {
            "carrier": args.carrier,
            "tracking": args.tracking,
            "unit": args.unit,
            "size": args.size,
            "compartment_id": chosen["id"],
            "closed_at": closed_at,
        },
    )
    used[chosen["id"]] = {"tracking": args.tracking, "label": chosen["label"], "at": state.now()}
    _set_meta(state, USED_KEY, used)
    _emit(
        {
            "ok": True,
            "mode": "offline",
            "parcel_id": parcel_id,
            "compartment": {"id": chosen["id"], "label": chosen["label"]},
            "state": "deposited",
            "journal_seq": seq,
        }
    )
    return 0


def _run_deliver(args: argparse.Namespace) -> int:
    from kiosk.client import Offline, ServerClient, ServerError

    state = _open_state(args.state_dir)
    if state is None:
        _emit({"ok": False, "reason": "not_enrolled"})
        return 1
    client = ServerClient(state)
    assigned: dict[str, Any] | None = None
    parcel_id: str | None = None
    try:
        body = client.request(
            "POST",
            "/v1/kiosk/deliveries",
            json={
                "carrier": args.carrier,
                "tracking": args.tracking,
                "unit": args.unit,
                "size": args.size,
            },
        )
        compartment = body.get("compartment")
        if compartment and body.get("state") == "assigned":
            assigned, parcel_id = compartment, body.get("parcel_id")
            state.doors.open(f"compartment:{compartment['id']}", reason="delivery")
            # The simulated door closes on the parcel at once; a real kiosk waits for it.
            body = client.request(
                "POST",
                f"/v1/kiosk/deliveries/{body['parcel_id']}/deposited",
                json={"closed_at": _iso(state.now())},
            )
    except Offline:
        if assigned is not None:  # the door opened on a reservation, then the network dropped
            return _journal_offline_deposit(state, args, assigned, parcel_id=parcel_id)
        return _deliver_offline(state, args)
    except ServerError as exc:
        result: dict[str, Any] = {
            "ok": False,
            "mode": "online",
            "reason": exc.code or f"status_{exc.status}",
            "detail": exc.detail,
        }
        if exc.code == "no_compartment_fits":
            result["free_sizes"] = _free_larger(exc.detail)
        _emit(result)
        return 1
    _emit({"ok": True, "mode": "online", **body})
    return 0


# -- pickup ---------------------------------------------------------------------------------


def _configure_pickup(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--state-dir", required=True, type=Path, help="kiosk state directory")
    parser.add_argument("--unit", required=True, help="the unit label, e.g. 4B")
    parser.add_argument("--pin", required=True, help="the 6-digit pickup PIN")


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def pin_matches(entry: dict[str, Any], pin: str) -> bool:
    """Check a PIN against one synced ``pin_hashes`` entry (scrypt, parameters in the entry)."""
    if entry.get("alg") != "scrypt" or not pin.isdigit() or len(pin) != PIN_DIGITS:
        return False
    try:
        expected = _b64decode(entry["hash"])
        digest = hashlib.scrypt(
            pin.encode("ascii"),
            salt=_b64decode(entry["salt"]),
            n=int(entry["n"]),
            r=int(entry["r"]),
            p=int(entry["p"]),
            dklen=len(expected),
            maxmem=256 * 1024 * 1024,
        )
    except (KeyError, ValueError, TypeError):
        return False
    return hmac.compare_digest(digest, expected)


def _normal(label: str) -> str:
    return label.strip().upper()


def _pickup_offline(state: Any, unit: str, pin: str) -> tuple[dict[str, Any], int]:
    synced = state.synced or {}
    policy = synced.get("policy") or {}
    max_attempts = int(policy.get("pin_max_attempts", 5))
    window = float(policy.get("pin_lockout_minutes", 15)) * 60
    now = state.now()
    failures = [f for f in _meta(state, FAILURES_KEY, []) if now - float(f[1]) < window]
    label = _normal(unit)
    unit_failures = [f for f in failures if f[0] == label]
    picked = set(_meta(state, PICKED_KEY, []))

    def journal(granted: bool, reason: str, entries: list[dict[str, Any]]) -> None:
        state.journal_append(
            "pin.pickup",
            {
                "unit": label,
                "granted": granted,
                "reason": reason,
                "parcel_ids": [e["parcel_id"] for e in entries],
                "compartment_ids": [e["compartment_id"] for e in entries],
            },
        )

    if len(unit_failures) >= max_attempts or len(failures) >= max_attempts * KIOSK_BUDGET_FACTOR:
        oldest = min(float(f[1]) for f in (unit_failures or failures))
        journal(False, "locked_out", [])
        return (
            {
                "granted": False,
                "reason": "locked_out",
                "compartments": [],
                "retry_after_seconds": max(1, int(oldest + window - now) + 1),
            },
            1,
        )
    matches = [
        e
        for e in synced.get("pin_hashes") or []
        if _normal(str(e.get("unit", ""))) == label
        and e.get("parcel_id") not in picked
        and pin_matches(e, pin)
    ]
    if not matches:
        failures.append([label, now])
        _set_meta(state, FAILURES_KEY, failures)
        journal(False, "wrong_pin", [])
        return {"granted": False, "reason": "wrong_pin", "compartments": []}, 1
    for entry in matches:
        state.doors.open(f"compartment:{entry['compartment_id']}", reason="pin")
    journal(True, "pin_ok", matches)
    _set_meta(state, PICKED_KEY, sorted(picked | {e["parcel_id"] for e in matches}))
    compartments = [
        {
            "id": e["compartment_id"],
            "label": e.get("compartment_label", ""),
            "parcel_id": e["parcel_id"],
        }
        for e in matches
    ]
    return {"granted": True, "reason": "pin_ok", "compartments": compartments}, 0


def _run_pickup(args: argparse.Namespace) -> int:
    from kiosk.client import Offline, ServerClient, ServerError

    state = _open_state(args.state_dir)
    if state is None:
        _emit({"granted": False, "reason": "not_enrolled", "compartments": []})
        return 1
    try:
        decision = ServerClient(state).request(
            "POST", "/v1/kiosk/pickups", json={"unit": args.unit, "pin": args.pin}
        )
    except Offline:
        result, code = _pickup_offline(state, args.unit, args.pin)
        _emit({**result, "mode": "offline"})
        return code
    except ServerError as exc:
        _emit(
            {
                "granted": False,
                "reason": exc.code or f"status_{exc.status}",
                "compartments": [],
                "mode": "online",
            }
        )
        return 1
    if decision.get("granted"):
        for compartment in decision.get("compartments") or []:
            state.doors.open(f"compartment:{compartment['id']}", reason="pin")
    _emit({**decision, "mode": "online"})
    return 0 if decision.get("granted") else 1


Configure = Callable[[argparse.ArgumentParser], None]
Run = Callable[[argparse.Namespace], int]

COMMANDS: dict[str, tuple[Configure, Run]] = {
    "deliver": (_configure_deliver, _run_deliver),
    "pickup": (_configure_pickup, _run_pickup),
}

__all__ = ["COMMANDS", "pin_matches"]

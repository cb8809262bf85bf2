"""``concierge-kiosk``: enroll, sync, run the agent, verify a presentation, show status.

Commands live in ``COMMANDS`` (name -> (configure_parser, run(args) -> exit code)). Another
module adds its own by defining a ``COMMANDS`` dict of the same shape and being listed in
``EXTENSIONS`` (the courier's ``deliver``/``pickup`` live in ``kiosk/courier.py``).

``verify`` prints one JSON object ``{"granted", "reason", "target", ...}`` and exits 0 when
granted, 1 when denied; it works with the network down, records the decision in the journal
(spent jti first) and opens the target through the door driver. No command prints a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kiosk.client import Offline, ServerClient, ServerError

Configure = Callable[[argparse.ArgumentParser], None]
Run = Callable[[argparse.Namespace], int]

#: Modules that may contribute commands (a missing module is skipped).
EXTENSIONS = ("kiosk.courier",)


def emit(value: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(value) + "\n")
    sys.stdout.flush()


def _fail(reason: str, **extra: Any) -> int:
    emit({"ok": False, "reason": reason, **extra})
    return 1


def _state_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--state-dir", required=True, type=Path, help="kiosk state directory")


# -- enroll ----------------------------------------------------------------------------------


def _configure_enroll(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--server", required=True, help="server base URL, e.g. https://c.example")
    parser.add_argument("--code", required=True, help="one-time enrollment code from staff")
    _state_dir(parser)


def _run_enroll(args: argparse.Namespace) -> int:
    from kiosk.agent import EnrollmentFailed, enroll, sync_blocking

    try:
        state = asyncio.run(enroll(args.server, args.code, args.state_dir))
    except Offline:
        return _fail("server_unreachable")
    except EnrollmentFailed as exc:
        return _fail("enrollment_failed", code=str(exc))
    sync_error = None
    try:
        sync_blocking(state, ServerClient(state))
    except Offline:
        sync_error = "server_unreachable"
    except ServerError as exc:
        sync_error = exc.code or f"status_{exc.status}"
    emit(
        {
            "ok": True,
            "kiosk_id": state.config.kiosk_id,
            "property_id": state.config.property_id,
            "synced": sync_error is None,
            "sync_error": sync_error,
        }
    )
    return 0


# -- sync ------------------------------------------------------------------------------------


def _run_sync(args: argparse.Namespace) -> int:
    from kiosk.agent import sync_blocking

    state = _open(args.state_dir)
    if state is None:
        return _fail("not_enrolled")
    client = ServerClient(state)
    try:
        doc = sync_blocking(state, client)
        acked = state.upload_journal()
    except Offline:
        return _fail("server_unreachable", **state.status())
    except ServerError as exc:
        return _fail("server_error", code=exc.code, status=exc.status)
    emit(
        {
            "ok": True,
            "revocations_version": (doc.get("revocations") or {}).get("version"),
            "keys": len((doc.get("jwks") or {}).get("keys") or []),
            "compartments": len(doc.get("compartments") or []),
            "doors": len(doc.get("doors") or []),
            "journal_acked_through": acked,
        }
    )
    return 0


# -- run -------------------------------------------------------------------------------------


def _configure_run(parser: argparse.ArgumentParser) -> None:
    _state_dir(parser)
    parser.add_argument("--sync-interval", type=float, default=60.0, help="seconds between syncs")
    parser.add_argument(
        "--upload-interval", type=float, default=5.0, help="seconds between journal uploads"
    )


def _run_agent(args: argparse.Namespace) -> int:
    from kiosk.agent import Agent

    state = _open(args.state_dir)
    if state is None:
        return _fail("not_enrolled")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    agent = Agent(state, sync_interval=args.sync_interval, upload_interval=args.upload_interval)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(agent.run())
    return 0


# -- verify ----------------------------------------------------------------------------------


def _configure_verify(parser: argparse.ArgumentParser) -> None:
    _state_dir(parser)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--qr", type=Path, help="camera image holding the QR code")
    source.add_argument("--presentation", help="the presentation text <credential>~<kb-jwt>")
    source.add_argument("--presentation-file", help="file holding the presentation, - for stdin")
    parser.add_argument("--target", help="door:<id> or compartment:<id> this reader is attached to")
    parser.add_argument("--nonce", help="the challenge this kiosk issued (BLE)")
    parser.add_argument("--channel", choices=("qr", "ble"), default=None)


def _read_presentation(args: argparse.Namespace) -> str | None:
    if args.presentation is not None:
        return str(args.presentation)
    if args.presentation_file is not None:
        from kiosk.verifier import MAX_PRESENTATION_CHARS

        if args.presentation_file == "-":
            return sys.stdin.read(MAX_PRESENTATION_CHARS + 1)
        with open(args.presentation_file, encoding="ascii", errors="replace") as handle:
            return handle.read(MAX_PRESENTATION_CHARS + 1)
    from kiosk import qr

    return qr.decode(args.qr)


def _run_verify(args: argparse.Namespace) -> int:
    state = _open(args.state_dir)
    if state is None:
        emit({"granted": False, "reason": "not_enrolled", "target": None})
        return 1
    try:
        presentation = _read_presentation(args)
    except Exception:  # unreadable file or image (incl. PIL's decompression-bomb guard)
        presentation = None
    if presentation is None:
        reason = "no_qr_code" if args.qr is not None else "unreadable_input"
        state.journal_append(
            "decision",
            {
                "granted": False,
                "reason": reason,
                "jti": None,
                "target": None,
                "sub": None,
                "role": None,
                "emergency": False,
                "channel": args.channel or "qr",
            },
        )
        emit({"granted": False, "reason": reason, "target": None})
        return 1
    decision = state.present(
        presentation, channel=args.channel or "qr", nonce=args.nonce, target=args.target
    )
    emit(decision.public())
    return 0 if decision.granted else 1


# -- ble -------------------------------------------------------------------------------------


def _run_ble(args: argparse.Namespace) -> int:
    """Serve the BLE GATT protocol on this computer's adapter (needs the optional ``bless``)."""
    from kiosk import ble

    state = _open(args.state_dir)
    if state is None:
        return _fail("not_enrolled")
    if not ble.bless_available():
        return _fail("ble_unavailable", detail="install bless and run on a host with BlueZ")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    server = ble.KioskBleServer(
        state.config.kiosk_id,
        state.key,
        lambda presentation, nonce: state.present(presentation, channel="ble", nonce=nonce),
        clock=state.now,
    )

    async def serve() -> None:
        peripheral = ble.BlessPeripheral(server)
        await peripheral.start()
        try:
            await asyncio.Event().wait()
        finally:
            await peripheral.stop()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())
    return 0


# -- status ----------------------------------------------------------------------------------


def _run_status(args: argparse.Namespace) -> int:
    state = _open(args.state_dir)
    if state is None:
        return _fail("not_enrolled")
    emit({"ok": True, **state.status()})
    return 0


def _open(state_dir: Path) -> Any:
    from kiosk.state import KioskState, NotEnrolled

    try:
        return KioskState.open(state_dir)
    except (NotEnrolled, OSError, KeyError, ValueError):
        return None


COMMANDS: dict[str, tuple[Configure, Run]] = {
    "enroll": (_configure_enroll, _run_enroll),
    "sync": (_state_dir, _run_sync),
    "run": (_configure_run, _run_agent),
    "verify": (_configure_verify, _run_verify),
    "status": (_state_dir, _run_status),
    "ble": (_state_dir, _run_ble),
}


def _load_extensions() -> None:
    for name in EXTENSIONS:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        for command, entry in getattr(module, "COMMANDS", {}).items():
            COMMANDS.setdefault(command, entry)


def build_parser() -> argparse.ArgumentParser:
    _load_extensions()
    parser = argparse.ArgumentParser(prog="concierge-kiosk", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (configure, _) in COMMANDS.items():
        configure(sub.add_parser(name))
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command][1](args)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # never a traceback on the kiosk's console
        emit(
            {"granted": False, "ok": False, "reason": "internal_error", "error": type(exc).__name__}
        )
        return 1


if __name__ == "__main__":
    raise SystemExit(main())

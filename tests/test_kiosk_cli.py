"""``concierge-kiosk verify`` as a subprocess: JSON out, exit 0/1, offline, journaled."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from PIL import Image

from kiosk import qr
from kiosk.state import KioskConfig, KioskState
from tests.kiosk_support import Scene


def kiosk_cli(*args: str, stdin: str | None = None) -> tuple[int, dict, str]:
    done = subprocess.run(
        [sys.executable, "-m", "kiosk.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )
    lines = done.stdout.strip().splitlines()
    return done.returncode, json.loads(lines[-1]) if lines else {}, done.stderr


@pytest.fixture
def state_dir(tmp_path: Path) -> tuple[Path, Scene]:
    directory = tmp_path / "kiosk"
    # The server URL is a closed port: verify must not need the network.
    state = KioskState.create(
        directory,
        KioskConfig("http://127.0.0.1:9", "kiosk-home-1", "prop-home"),
        Ed25519PrivateKey.generate(),
    )
    scene = Scene(state.store)
    scene.sync()
    return directory, scene


def test_verify_exit_codes_json_and_journal(state_dir: tuple[Path, Scene], tmp_path: Path) -> None:
    directory, scene = state_dir
    now = int(scene.store.now())
    credential = scene.credential()
    presentation = scene.present(credential, iat=now)
    code, out, err = kiosk_cli(
        "verify", "--state-dir", str(directory), "--presentation", presentation
    )
    assert (code, out["granted"], out["reason"], out["target"]) == (
        0,
        True,
        "granted",
        f"compartment:{scene.compartment}",
    )
    assert "Traceback" not in err
    code, out, _ = kiosk_cli(
        "verify", "--state-dir", str(directory), "--presentation", presentation
    )
    assert (code, out["granted"], out["reason"]) == (1, False, "already_used")

    # stdin, and a QR image, each with a fresh credential.
    code, out, _ = kiosk_cli(
        "verify",
        "--state-dir",
        str(directory),
        "--presentation-file",
        "-",
        stdin=scene.present(iat=now),
    )
    assert (code, out["granted"]) == (0, True)
    image = tmp_path / "scan.png"
    image.write_bytes(qr.render_png(scene.present(iat=now)))
    code, out, _ = kiosk_cli("verify", "--state-dir", str(directory), "--qr", str(image))
    assert (code, out["granted"]) == (0, True)

    state = KioskState.open(directory)
    reasons = [e["data"]["reason"] for e in state.store.pending_entries()]
    assert reasons == ["granted", "already_used", "granted", "granted"]
    opens = state.doors.logged()  # type: ignore[attr-defined]
    assert [o.target for o in opens] == [f"compartment:{scene.compartment}"] * 3


@pytest.mark.parametrize(
    "args",
    [
        ["--presentation", "garbage~garbage"],
        ["--presentation", "A" * 100_000],
        ["--presentation-file", "/nonexistent/file"],
        ["--qr", "/nonexistent/image.png"],
        ["--qr", "BLANK"],
    ],
    ids=["garbage", "huge", "missing-file", "missing-image", "blank-image"],
)
def test_verify_denials_are_json_never_tracebacks(
    state_dir: tuple[Path, Scene], tmp_path: Path, args: list[str]
) -> None:
    directory, _ = state_dir
    if args[-1] == "BLANK":
        blank = io.BytesIO()
        Image.new("L", (120, 120), 255).save(blank, format="PNG")
        (tmp_path / "blank.png").write_bytes(blank.getvalue())
        args = ["--qr", str(tmp_path / "blank.png")]
    code, out, err = kiosk_cli("verify", "--state-dir", str(directory), *args)
    assert code == 1
    assert out["granted"] is False
    assert out["reason"] in {"malformed", "too_large", "unreadable_input", "no_qr_code"}
    assert "Traceback" not in err
    assert len(KioskState.open(directory).store.pending_entries()) == 1


def test_verify_without_an_enrolled_kiosk(tmp_path: Path) -> None:
    code, out, err = kiosk_cli(
        "verify", "--state-dir", str(tmp_path / "none"), "--presentation", "x"
    )
    assert (code, out["reason"]) == (1, "not_enrolled")
    assert "Traceback" not in err


def test_sync_while_offline_reports_staleness(state_dir: tuple[Path, Scene]) -> None:
    directory, _ = state_dir
    code, out, err = kiosk_cli("sync", "--state-dir", str(directory))
    assert (code, out["reason"]) == (1, "server_unreachable")
    assert out["revocation_list_age_seconds"] is not None
    assert "Traceback" not in err


def test_agent_keeps_running_offline_and_reports_staleness(
    state_dir: tuple[Path, Scene], tmp_path: Path
) -> None:
    directory, _ = state_dir
    log_path = tmp_path / "agent.log"
    with log_path.open("w") as log_file:
        agent = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "kiosk.cli",
                "run",
                "--state-dir",
                str(directory),
                "--sync-interval",
                "1",
                "--upload-interval",
                "0.2",
            ],
            stdout=subprocess.DEVNULL,
            stderr=log_file,
            text=True,
        )
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                log = log_path.read_text()
                if log.count("kiosk.offline") >= 2 or agent.poll() is not None:
                    break
                time.sleep(0.2)
            still_running = agent.poll() is None
        finally:
            agent.terminate()
            agent.wait(timeout=20)
    log = log_path.read_text()
    assert still_running, log
    assert log.count("kiosk.offline") >= 2  # it retried, with backoff
    assert "kiosk.revocation_list_age" in log
    assert "Traceback" not in log


def test_two_processes_cannot_both_spend_one_jti(state_dir: tuple[Path, Scene]) -> None:
    directory, scene = state_dir
    presentation = scene.present(iat=int(scene.store.now()))
    script = (
        "import sys, json; from kiosk.state import KioskState; "
        "d = KioskState.open(sys.argv[1]).verifier.redeem(sys.argv[2]); "
        "print(json.dumps({'granted': d.granted, 'reason': d.reason}))"
    )
    runs = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(directory), presentation],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    results = [json.loads(p.communicate(timeout=60)[0]) for p in runs]
    assert sorted(r["reason"] for r in results) == ["already_used"] * 3 + ["granted"]


def test_ble_command_without_a_bluetooth_stack_is_a_clean_refusal(
    state_dir: tuple[Path, Scene],
) -> None:
    from kiosk import ble

    if ble.bless_available():
        pytest.skip("bless is installed: the command would start a real GATT server")
    code, out, err = kiosk_cli("ble", "--state-dir", str(state_dir[0]))
    assert (code, out["reason"]) == (1, "ble_unavailable")
    assert "Traceback" not in err

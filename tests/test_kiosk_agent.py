"""The kiosk agent against a real server: CLI enroll and sync, ``run`` executing an override."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

from backend.settings import Settings
from kiosk.state import KioskState
from tests.live_server import live_server
from tests.world import build_world, check


def kiosk_cli(*args: str) -> tuple[int, dict[str, Any], str]:
    done = subprocess.run(
        [sys.executable, "-m", "kiosk.cli", *args], capture_output=True, text=True, timeout=60
    )
    lines = done.stdout.strip().splitlines()
    return done.returncode, json.loads(lines[-1]) if lines else {}, done.stderr


async def test_enroll_sync_run_and_remote_open(settings: Settings, tmp_path: Path) -> None:
    state_dir = tmp_path / "kiosk"
    async with live_server(settings) as server:
        world = await build_world(server.http, settings)  # type: ignore[arg-type]
        home = world.home
        staff = home.people["staff"]
        created = check(
            await server.http.post(
                f"/v1/staff/properties/{home.property_id}/kiosks",
                json={"name": "Garage kiosk"},
                headers=staff.headers,
            ),
            201,
        )
        door = check(
            await server.http.post(
                f"/v1/staff/properties/{home.property_id}/doors",
                json={"name": "Garage", "kiosk_id": created["id"], "open_to": "staff"},
                headers=staff.headers,
            ),
            201,
        )
        code, out, err = await asyncio.to_thread(
            kiosk_cli,
            "enroll",
            "--server",
            server.url,
            "--code",
            created["enrollment_code"],
            "--state-dir",
            str(state_dir),
        )
        assert (code, out["ok"], out["kiosk_id"], out["synced"]) == (
            0,
            True,
            created["id"],
            True,
        ), out
        assert "Traceback" not in err
        key_mode = stat.S_IMODE(os.stat(state_dir / "kiosk_key.pem").st_mode)
        assert key_mode == 0o600
        # The same code cannot enroll a second kiosk.
        code, again, _ = await asyncio.to_thread(
            kiosk_cli,
            "enroll",
            "--server",
            server.url,
            "--code",
            created["enrollment_code"],
            "--state-dir",
            str(tmp_path / "second"),
        )
        assert (code, again["reason"]) == (1, "enrollment_failed")

        code, synced, _ = await asyncio.to_thread(kiosk_cli, "sync", "--state-dir", str(state_dir))
        assert (code, synced["doors"]) == (0, 1)
        code, status, _ = await asyncio.to_thread(
            kiosk_cli, "status", "--state-dir", str(state_dir)
        )
        assert status["synced"] is True
        assert status["revocation_list_age_seconds"] < 60

        agent = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "kiosk.cli",
                "run",
                "--state-dir",
                str(state_dir),
                "--sync-interval",
                "2",
                "--upload-interval",
                "0.5",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            body: dict[str, Any] = {}
            for _ in range(100):  # until the agent's command channel is up
                response = await server.http.post(
                    f"/v1/staff/kiosks/{created['id']}/commands",
                    json={"action": "open", "door_id": door["id"], "reason": "locked out"},
                    headers=staff.headers,
                )
                if response.status_code == 200:
                    body = response.json()
                    break
                assert response.json()["code"] == "kiosk_offline"
                await asyncio.sleep(0.2)
            assert (body.get("acknowledged"), body.get("ok")) == (True, True), body
            opened = KioskState.open(state_dir).doors.logged()  # type: ignore[attr-defined]
            assert [o.target for o in opened] == [f"door:{door['id']}"]
            # A door of another kiosk is refused by the kiosk itself.
            from realtime.kiosk_channel import send_command

            refused = await send_command(
                server.runtime,
                created["id"],
                {
                    "type": "command",
                    "id": "c-other",
                    "action": "open",
                    "door_id": home.door_id,
                    "reason": "test",
                },
                10,
            )
            assert (refused["ok"], refused["detail"]) == (False, "unknown_target")
            # "sync now" makes the kiosk pull a revocation at once.
            synced_ack = await send_command(
                server.runtime,
                created["id"],
                {"type": "command", "id": "c-sync", "action": "sync"},
                10,
            )
            assert (synced_ack["ok"], synced_ack["detail"]) == (True, "synced")
            # The command is journaled and the agent uploads it.
            for _ in range(100):
                if not KioskState.open(state_dir).store.pending_entries():
                    break
                await asyncio.sleep(0.2)
            state = KioskState.open(state_dir)
            assert state.store.pending_entries() == []
            assert state.store.acked_through() >= 1
        finally:
            agent.terminate()
            _, agent_err = await asyncio.to_thread(agent.communicate, timeout=20)
        assert "Traceback" not in agent_err, agent_err

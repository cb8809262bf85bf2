"""The `concierge` command line, run as a user would: a subprocess with CONCIERGE_* variables."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent


def run(
    args: list[str], tmp_path: Path, stdin: str = "", **env: str
) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("CONCIERGE_")}
    environment.update(
        CONCIERGE_DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path / 'cli.db'}",
        CONCIERGE_VAR_DIR=str(tmp_path / "var"),
        CONCIERGE_PASSWORD_HASH_MEMORY_KIB="1024",
        CONCIERGE_PASSWORD_HASH_TIME_COST="1",
    )
    environment.update(env)
    return subprocess.run(
        [str(BIN / "concierge"), *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=environment,
        timeout=120,
    )


def test_migrate_is_idempotent(tmp_path: Path) -> None:
    assert run(["migrate"], tmp_path).returncode == 0
    second = run(["migrate"], tmp_path)
    assert second.returncode == 0 and "migrations applied" in second.stdout


def test_create_admin_reads_password_from_stdin(tmp_path: Path) -> None:
    result = run(
        ["create-admin", "--email", "Root@Example.com", "--password-stdin"],
        tmp_path,
        stdin="a long admin password\n",
    )
    assert result.returncode == 0, result.stderr
    body = json.loads(result.stdout.strip().splitlines()[-1])
    assert body["email"] == "root@example.com" and body["is_admin"] is True
    assert "a long admin password" not in result.stdout + result.stderr


def test_create_admin_refuses_a_short_password(tmp_path: Path) -> None:
    result = run(
        ["create-admin", "--email", "a@b.c", "--password-stdin"], tmp_path, stdin="short\n"
    )
    assert result.returncode == 2 and "at least 10" in result.stderr


def test_demo_seeds_once_and_prints_passwords_once(tmp_path: Path) -> None:
    first = run(["demo"], tmp_path)
    assert first.returncode == 0, first.stderr
    assert "staff@demo.concierge" in first.stdout and "enrollment code" in first.stdout
    second = run(["demo"], tmp_path)
    assert second.returncode == 0 and "already seeded" in second.stdout
    assert "staff@demo.concierge" not in second.stdout


def test_unknown_setting_fails_loudly(tmp_path: Path) -> None:
    result = run(["migrate"], tmp_path, CONCIERGE_DATABSE_URL="typo")
    assert result.returncode == 2 and "CONCIERGE_DATABSE_URL" in result.stderr


def test_serve_logs_json_lines_with_the_request_id_and_no_secrets(tmp_path: Path) -> None:
    """`CONCIERGE_JSON_LOGS=true`: every line is JSON, carries the request id, never a password."""
    import httpx

    from tests.databases import sqlite_url
    from tests.processes import ServerProcess, run_cli

    env = {"database_url": sqlite_url(tmp_path), "var_dir": tmp_path / "var", "json_logs": "true"}
    assert run_cli(["migrate"], env).returncode == 0
    with ServerProcess.start(env, log_dir=tmp_path) as server:
        response = httpx.post(
            server.url + "/v1/auth/token",
            json={"email": "nobody@example.test", "password": "hunter2-secret"},
            headers={"x-request-id": "rid-4242"},
        )
        assert response.status_code == 401
        server.stop()
        log = server.log()
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    assert lines, log
    assert any(line["request_id"] == "rid-4242" for line in lines)
    assert "hunter2-secret" not in log

"""Real Concierge processes for tests and benchmarks: ``concierge serve`` and ``concierge worker``.

Each process gets its settings as ``CONCIERGE_*`` variables built from a dict (the way a
deployment configures them), its own free port, and a log file (stdout and stderr) so a
failing test can show what the server said. ``stop()`` sends SIGTERM and waits (a graceful
shutdown); ``kill()`` sends SIGKILL (a crash). Processes run in their own process group so
``uvicorn --workers N`` children go with their parent.

    with ServerProcess.start(env, log_dir=tmp_path) as server:
        httpx.get(server.url + "/health/ready")
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
CONCIERGE = [sys.executable, "-m", "backend"]


def free_port() -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def concierge_env(settings: Mapping[str, Any]) -> dict[str, str]:
    """The process environment: ours minus any ``CONCIERGE_*``, plus ``settings`` as variables.

    Keys are setting names (``database_url``) or full variable names (``CONCIERGE_DATABASE_URL``);
    ``None`` values are left out (the setting keeps its default).
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONCIERGE_")}
    for key, value in settings.items():
        if value is None:
            continue
        name = key if key.startswith("CONCIERGE_") else "CONCIERGE_" + key.upper()
        if isinstance(value, bool):
            value = "true" if value else "false"
        env[name] = str(value)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def settings_env(settings: Any) -> dict[str, Any]:
    """A ``Settings`` object (or a dict) as the mapping ``concierge_env`` takes."""
    if isinstance(settings, Mapping):
        return dict(settings)
    return {name: getattr(settings, name) for name in settings.__struct_fields__}


class ManagedProcess:
    """One child process with a log file; a context manager that always cleans up."""

    def __init__(self, argv: list[str], env: dict[str, str], log_path: Path, name: str) -> None:
        self.argv = argv
        self.env = env
        self.log_path = log_path
        self.name = name
        self.proc: subprocess.Popen[bytes] | None = None

    def spawn(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        try:
            self.proc = subprocess.Popen(
                self.argv,
                env=self.env,
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        finally:
            log.close()

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def _signal_group(self, sig: int) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM (graceful), then SIGKILL if it does not exit in ``timeout`` seconds."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self._signal_group(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                self.proc.wait(10)
        # Children of a --workers server may outlive a parent that died first.
        self._signal_group(signal.SIGKILL)
        return self.proc.returncode

    def kill(self) -> int | None:
        """SIGKILL the whole process group at once: a crash, no shutdown code runs."""
        if self.proc is None:
            return None
        self._signal_group(signal.SIGKILL)
        self.proc.wait(10)
        return self.proc.returncode

    def __enter__(self) -> ManagedProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class ServerProcess(ManagedProcess):
    """``concierge serve`` on a free port; ``start`` returns once ``/health/ready`` says 200."""

    def __init__(
        self, env: dict[str, str], log_path: Path, port: int, host: str, name: str
    ) -> None:
        self.host = host
        self.port = port
        super().__init__([], env, log_path, name)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    @classmethod
    def start(
        cls,
        settings: Mapping[str, Any] | Any,
        *,
        log_dir: Path,
        name: str = "server",
        workers: int = 1,
        migrate: bool = False,
        port: int | None = None,
        host: str = "127.0.0.1",
        ready_timeout: float = 60.0,
        extra_args: list[str] | None = None,
        command: list[str] | None = None,
    ) -> ServerProcess:
        """Spawn and wait until ready; on timeout the process is stopped and its log raised.

        ``command`` replaces ``concierge serve`` (the benchmark server takes the same options).
        """
        server = cls(
            concierge_env(settings_env(settings)),
            log_dir / f"{name}.log",
            port or free_port(),
            host,
            name,
        )
        server.argv = [
            *(command or [*CONCIERGE, "serve"]),
            "--host",
            host,
            "--port",
            str(server.port),
            "--workers",
            str(workers),
            *([] if migrate or command else ["--no-migrate"]),
            *(extra_args or []),
        ]
        server.spawn()
        try:
            server.wait_ready(ready_timeout)
        except BaseException:
            server.stop()
            raise
        return server

    def restart(self, ready_timeout: float = 60.0) -> None:
        """Start again on the same port (after ``stop`` or ``kill``)."""
        self.spawn()
        self.wait_ready(ready_timeout)

    def ready(self) -> tuple[int, dict[str, Any]] | None:
        """``(status, body)`` of ``/health/ready``, or None when nothing answers."""
        try:
            response = httpx.get(self.url + "/health/ready", timeout=5)
        except httpx.HTTPError:
            return None
        try:
            body = response.json()
        except ValueError:
            body = {}
        return response.status_code, body

    def wait_ready(self, timeout: float = 60.0, *, status: int = 200) -> dict[str, Any]:
        """Poll ``/health/ready`` until it answers ``status``; raises with the log on failure."""
        deadline = time.monotonic() + timeout
        last: tuple[int, dict[str, Any]] | None = None
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"{self.name} exited early:\n{self.log()[-4000:]}")
            last = self.ready()
            if last is not None and last[0] == status:
                return last[1]
            time.sleep(0.1)
        raise TimeoutError(
            f"{self.name} not {status} on /health/ready within {timeout}s "
            f"(last {last}):\n{self.log()[-4000:]}"
        )


class WorkerProcess(ManagedProcess):
    """``concierge worker`` (the push dispatcher running outside the server)."""

    @classmethod
    def start(
        cls,
        settings: Mapping[str, Any] | Any,
        *,
        log_dir: Path,
        name: str = "worker",
        extra_args: list[str] | None = None,
        settle: float = 0.0,
    ) -> WorkerProcess:
        worker = cls(
            [*CONCIERGE, "worker", *(extra_args or [])],
            concierge_env(settings_env(settings)),
            log_dir / f"{name}.log",
            name,
        )
        worker.spawn()
        if settle:
            time.sleep(settle)
            if not worker.alive():
                raise RuntimeError(f"{name} exited early:\n{worker.log()[-4000:]}")
        return worker


def run_cli(
    args: list[str],
    settings: Mapping[str, Any] | Any,
    *,
    input: str | None = None,
    timeout: float = 120.0,
) -> subprocess.CompletedProcess[str]:
    """``concierge <args>`` to completion (migrate, create-admin, policy run-once, ...)."""
    return subprocess.run(
        [*CONCIERGE, *args],
        env=concierge_env(settings_env(settings)),
        cwd=ROOT,
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )

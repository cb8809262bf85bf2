"""Hostile frames at scale on the websockets of a real server process (hypothesis-generated).

Each example opens ``WS /v1/realtime`` (or ``/v1/kiosk/channel``) on a running
``concierge serve``, optionally authenticates as the demo resident, and sends generated frames:
random text and bytes, JSON of every shape, frame-like objects with wrong types. Every
connection must end in a documented close code (or stay open and answer), never in 1011
(internal error) or a dropped connection, and the server must stay healthy.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from realtime.protocol import CLOSE_REASONS, INTERNAL
from tests.deployment import parse_demo_output
from tests.processes import ServerProcess, run_cli

DOCUMENTED = set(CLOSE_REASONS) - {INTERNAL} | {1000}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)
frame_like = st.fixed_dictionaries(
    {
        "type": st.sampled_from(["auth", "resume", "ping", "pong", "ack", "event", "", "AUTH"])
        | json_values
    },
    optional={
        "token": json_values,
        "after": json_values | st.integers(min_value=-(2**70), max_value=2**70).map(str),
        "assertion": json_values,
        "id": json_values,
    },
)
frames = st.lists(
    st.text(max_size=300).map(lambda t: ("text", t))
    | st.binary(max_size=300).map(lambda b: ("bytes", b))
    | (frame_like | json_values).map(lambda v: ("text", json.dumps(v))),
    min_size=1,
    max_size=4,
)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, str]]:
    root: Path = tmp_path_factory.mktemp("wsfuzz")
    env: dict[str, Any] = {
        "database_url": f"sqlite+aiosqlite:///{root / 'concierge.db'}",
        "var_dir": root / "var",
        "password_hash_time_cost": 1,
        "password_hash_memory_kib": 1024,
        "background_jobs": False,
        "ws_auth_timeout_seconds": 2.0,
        "log_level": "WARNING",
    }
    assert run_cli(["migrate"], env).returncode == 0
    demo = run_cli(["demo"], env)
    assert demo.returncode == 0, demo.stderr
    email, password = parse_demo_output(demo.stdout).accounts["resident"]
    with ServerProcess.start(env, log_dir=root, name="wsfuzz") as server:
        tokens = httpx.post(
            server.url + "/v1/auth/token", json={"email": email, "password": password}
        ).json()
        yield server, tokens["access_token"]


async def _exchange(url: str, token: str | None, sent: list[tuple[str, Any]]) -> int | None:
    """Send the frames; the close code the server chose (None: still open and answering)."""
    async with websockets.connect(url, open_timeout=10, max_size=2**20) as socket:
        if token is not None:
            await socket.send(json.dumps({"type": "auth", "token": token}))
            ready = json.loads(await asyncio.wait_for(socket.recv(), 10))
            assert ready["type"] == "ready", ready
        try:
            for _kind, payload in sent:
                await socket.send(payload)
            # Whatever it answers, the server either closes or keeps the socket usable.
            await socket.send(json.dumps({"type": "ping"}))
            while True:
                message = await asyncio.wait_for(socket.recv(), 5)
                if isinstance(message, str) and '"pong"' in message:
                    return None
        except websockets.ConnectionClosed as closed:
            return closed.rcvd.code if closed.rcvd else None
        except TimeoutError:
            return -1


@pytest.mark.slow
@settings(
    max_examples=int(os.environ.get("WS_FUZZ_EXAMPLES", "40")),
    deadline=None,
    suppress_health_check=list(HealthCheck),
    database=None,
)
@given(
    sent=frames,
    authenticated=st.booleans(),
    path=st.sampled_from(["/v1/realtime", "/v1/kiosk/channel"]),
)
def test_hostile_frames_get_a_documented_close_code(
    served: tuple[ServerProcess, str],
    sent: list[tuple[str, Any]],
    authenticated: bool,
    path: str,
) -> None:
    server, token = served
    use_token = token if authenticated and path == "/v1/realtime" else None
    code = asyncio.run(_exchange(server.ws_url + path, use_token, sent))
    assert code != -1, "the server neither answered nor closed"
    if code is not None:
        assert code in DOCUMENTED, (code, sent)
    assert server.alive()
    assert httpx.get(server.url + "/health/live", timeout=5).status_code == 200

"""The client-frame parser is total: every input yields a frame or a documented close code."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from realtime.protocol import (
    CLOSE_REASONS,
    Ack,
    Auth,
    Close,
    KioskAuth,
    Ping,
    Pong,
    Resume,
    parse_client_frame,
)

MAX = 4096
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
frame_like = st.fixed_dictionaries(
    {"type": st.sampled_from(["auth", "resume", "ping", "pong", "ack", "event", "", "AUTH"])},
    optional={
        "token": json_values,
        "after": json_values | st.integers(min_value=-5, max_value=2**64).map(str),
        "assertion": json_values,
        "id": json_values,
        "ok": json_values,
        "detail": json_values,
    },
)


def _check(result: object) -> None:
    if isinstance(result, Close):
        assert result.code in CLOSE_REASONS
        assert result.reason
    else:
        assert isinstance(result, Auth | KioskAuth | Resume | Ping | Pong | Ack)
    if isinstance(result, Auth | Resume) and result.after is not None:
        assert 0 <= result.after < 2**63


@settings(max_examples=300, deadline=None)
@given(raw=st.text(max_size=200) | st.binary(max_size=200))
def test_arbitrary_text_and_bytes(raw: str | bytes) -> None:
    for channel in ("app", "kiosk"):
        _check(parse_client_frame(raw, MAX, channel=channel))  # type: ignore[arg-type]


@settings(max_examples=500, deadline=None)
@given(body=frame_like | json_values)
def test_arbitrary_json(body: object) -> None:
    raw = json.dumps(body)
    for channel in ("app", "kiosk"):
        _check(parse_client_frame(raw, MAX, channel=channel))  # type: ignore[arg-type]


def test_known_frames() -> None:
    assert parse_client_frame('{"type":"auth","token":"t","after":"12"}', MAX) == Auth("t", 12)
    assert parse_client_frame('{"type":"auth","token":"t","after":12}', MAX) == Auth("t", 12)
    assert parse_client_frame('{"type":"resume","after":"0"}', MAX) == Resume(0)
    assert parse_client_frame('{"type":"ping"}', MAX) == Ping()
    assert parse_client_frame('{"type":"auth"}', MAX) == Close.of(
        4001, "token missing or malformed"
    )
    assert parse_client_frame('{"type":"resume","after":"1e3"}', MAX).code == 4000  # type: ignore[union-attr]
    assert parse_client_frame('{"type":"resume","after":true}', MAX).code == 4000  # type: ignore[union-attr]
    assert parse_client_frame("x" * (MAX + 1), MAX).code == 1009  # type: ignore[union-attr]
    assert parse_client_frame(b"\xff\xfe", MAX).code == 4000  # type: ignore[union-attr]
    assert parse_client_frame(None, MAX).code == 4000  # type: ignore[union-attr]
    kiosk = parse_client_frame(
        '{"type":"ack","id":"c1","ok":true,"detail":"opened"}', MAX, channel="kiosk"
    )
    assert kiosk == Ack("c1", True, "opened")
    assert parse_client_frame('{"type":"auth","token":"t"}', MAX, channel="kiosk").code == 4013  # type: ignore[union-attr]

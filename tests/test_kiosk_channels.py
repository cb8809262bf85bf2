"""QR round trip (segno -> PNG/camera-like image -> zxing-cpp) and the BLE loopback protocol."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from PIL import Image, ImageFilter

from kiosk import ble, qr
from kiosk.credential import public_key_b64url
from kiosk.state import KioskConfig, KioskState
from tests.kiosk_support import NOW, Scene


@pytest.fixture
def kiosk(tmp_path: Path) -> tuple[KioskState, Scene]:
    key = Ed25519PrivateKey.generate()
    state = KioskState.create(
        tmp_path / "state", KioskConfig("http://127.0.0.1:9", "kiosk-home-1", "prop-home"), key
    )
    scene = Scene(state.store)
    scene.sync()
    return state, scene


def test_qr_png_round_trip_through_a_degraded_camera_image(kiosk: tuple[KioskState, Scene]) -> None:
    state, scene = kiosk
    presentation = scene.present()
    png = qr.render_png(presentation, scale=4)
    assert qr.version_of(presentation) <= 25
    assert qr.decode(png) == presentation
    # Like a camera frame: grey, blurred, scaled down to ~2.8 px per module, JPEG-recompressed.
    image = Image.open(io.BytesIO(png)).convert("L").filter(ImageFilter.GaussianBlur(0.8))
    image = image.resize((int(image.width * 0.7), int(image.height * 0.7)))
    jpeg = io.BytesIO()
    image.save(jpeg, format="JPEG", quality=60)
    decoded = qr.decode(jpeg.getvalue())
    assert decoded == presentation
    decision = state.present(decoded)
    assert (decision.granted, decision.target) == (True, f"compartment:{scene.compartment}")
    assert [o.target for o in state.doors.opens] == [f"compartment:{scene.compartment}"]
    # The second scan of the same code is refused and opens nothing.
    assert state.present(qr.decode(png) or "").reason == "already_used"
    assert len(state.doors.opens) == 1


def test_qr_svg_render_and_no_code_in_a_blank_image(tmp_path: Path) -> None:
    svg = qr.render_svg("x" * 800)
    assert svg.startswith(b"<?xml")
    assert b"<svg" in svg
    blank = io.BytesIO()
    Image.new("L", (200, 200), 255).save(blank, format="PNG")
    assert qr.decode(blank.getvalue()) is None
    saved = qr.save("hello", tmp_path / "code.png")
    assert qr.decode(saved) == "hello"


def test_chunking_round_trips_and_the_reassembler_refuses_misuse() -> None:
    message = bytes(range(256)) * 4
    for mtu in (23, 185, 517):
        frames = ble.chunk(message, mtu)
        assert all(len(f) <= mtu - 3 for f in frames)
        reassembler = ble.Reassembler(limit=4096)
        results = [reassembler.feed(f) for f in frames]
        assert results[-1] == message
        assert all(r is None for r in results[:-1])
    frames = ble.chunk(message, 23)
    reassembler = ble.Reassembler(limit=4096)
    reassembler.feed(frames[0])
    with pytest.raises(ValueError, match="order"):
        reassembler.feed(frames[2])
    with pytest.raises(ValueError, match="too large"):
        ble.Reassembler(limit=100).feed(frames[0])
    with pytest.raises(ValueError, match="before first"):
        ble.Reassembler().feed(frames[1])


def _ble(state: KioskState) -> ble.LoopbackTransport:
    server = ble.KioskBleServer(
        state.config.kiosk_id,
        state.key,
        lambda presentation, nonce: state.present(presentation, channel="ble", nonce=nonce),
        clock=state.now,
    )
    return ble.LoopbackTransport(server)


async def test_ble_loopback_unlock_once_with_explicit_confirm(
    kiosk: tuple[KioskState, Scene],
) -> None:
    state, scene = kiosk
    transport = _ble(state)
    credential = scene.credential()
    asked: list[str] = []

    def confirm(kiosk_id: str) -> bool:
        asked.append(kiosk_id)
        return True

    kwargs = {
        "credential": credential,
        "device_key": scene.device,
        "kiosk_id": state.config.kiosk_id,
        "kiosk_public_key": public_key_b64url(state.key),
        "iat": int(state.now()),
    }
    link = transport.connect(mtu=23)
    result = await ble.unlock_over_ble(link, confirm=confirm, **kwargs)  # type: ignore[arg-type]
    assert result == {
        "granted": True,
        "reason": "granted",
        "target": f"compartment:{scene.compartment}",
    }
    assert asked == [state.config.kiosk_id]
    assert len(link.writes) > 30  # 23-byte MTU: the presentation really went in chunks
    [entry] = state.store.pending_entries()
    assert entry["data"]["channel"] == "ble"
    # Same credential again on a new connection: refused (one time), nothing more opens.
    again = await ble.unlock_over_ble(transport.connect(), confirm=confirm, **kwargs)  # type: ignore[arg-type]
    assert again["reason"] == "already_used"
    assert len(state.doors.opens) == 1


async def test_ble_phone_refuses_an_impostor_kiosk_and_waits_for_the_tap(
    kiosk: tuple[KioskState, Scene],
) -> None:
    state, scene = kiosk
    transport = _ble(state)
    kwargs = {
        "credential": scene.credential(),
        "device_key": scene.device,
        "kiosk_id": state.config.kiosk_id,
        "iat": int(state.now()),
    }
    impostor = public_key_b64url(Ed25519PrivateKey.generate())
    link = transport.connect()
    with pytest.raises(ble.BleError, match="challenge rejected"):
        await ble.unlock_over_ble(link, kiosk_public_key=impostor, confirm=lambda _: True, **kwargs)  # type: ignore[arg-type]
    assert link.writes == []
    link = transport.connect()
    with pytest.raises(ble.BleError, match="cancelled"):
        await ble.unlock_over_ble(
            link,
            kiosk_public_key=public_key_b64url(state.key),
            confirm=lambda _: False,
            **kwargs,  # type: ignore[arg-type]
        )
    assert link.writes == []
    assert state.doors.opens == []


async def test_ble_proof_for_another_session_nonce_is_refused(
    kiosk: tuple[KioskState, Scene],
) -> None:
    state, scene = kiosk
    transport = _ble(state)
    results: list[bytes] = []
    link = transport.connect()
    await link.subscribe(ble.RESULT_UUID, results.append)
    await link.read(ble.CHALLENGE_UUID)
    # A presentation whose nonce came from elsewhere (e.g. a relayed, earlier session).
    stale = scene.present(nonce="r" * 22, iat=int(state.now()))
    for frame in ble.chunk(stale.encode(), link.mtu):
        await link.write(ble.PRESENTATION_UUID, frame)
    assert b"nonce_mismatch" in results[0]
    assert state.doors.opens == []
    assert NOW > 0

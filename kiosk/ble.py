"""Bluetooth LE presentation: a small GATT protocol over a transport interface.

GATT service ``SERVICE_UUID`` on the kiosk (peripheral), three characteristics:

- ``CHALLENGE_UUID`` (read): a compact JWS signed by the kiosk's own Ed25519 key, header
  ``{"alg": "EdDSA", "typ": "kiosk-challenge+jwt"}``, claims ``{"iss": kiosk_id, "nonce":
  <128-bit random base64url>, "iat", "exp"}`` (``exp = iat + CHALLENGE_SECONDS``). Each
  connection gets its own nonce; a nonce is consumed by the first presentation written.
- ``PRESENTATION_UUID`` (write with response): the presentation ``<credential>~<kb-jwt>``
  whose kb-jwt ``nonce`` is the challenge's nonce, in chunks. Each write is one header byte
  then payload: bit 7 FIRST, bit 6 LAST, bits 0-5 a sequence number (mod 64) starting at 0.
  The FIRST chunk's payload starts with the total length (2 bytes, big endian). A chunk is at
  most ``ATT_MTU - 3`` bytes (the ATT write header), so payload ``ATT_MTU - 4``.
- ``RESULT_UUID`` (notify): UTF-8 JSON ``{"granted", "reason", "target"}`` after the last chunk.

The phone checks the challenge with the kiosk's public key (delivered with the credential),
checks ``iss`` is the kiosk the credential is for, and answers only after the user confirms
(``confirm`` callback): a relay cannot make a phone sign for a kiosk it did not choose, and
the nonce makes a proof captured at one session useless at another. Residual risk: a relay
that forwards a genuine kiosk's challenge to a phone whose user is tapping "unlock" at that
same kiosk's door within the freshness window (see docs/trust-model.md).

Transports: ``LoopbackTransport`` (in-process, tests and demo); ``BlessPeripheral`` (kiosk
hardware, optional ``bless``) and ``BleakCentral`` (a phone stand-in, optional ``bleak``) load
only when those libraries are installed.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from kiosk.credential import make_presentation
from kiosk.verifier import MAX_PRESENTATION_CHARS, Decision, public_key_from_x

SERVICE_UUID = "6c0b0001-4e0f-4b6e-9b3a-c0c1e2c3d4e5"
CHALLENGE_UUID = "6c0b0002-4e0f-4b6e-9b3a-c0c1e2c3d4e5"
PRESENTATION_UUID = "6c0b0003-4e0f-4b6e-9b3a-c0c1e2c3d4e5"
RESULT_UUID = "6c0b0004-4e0f-4b6e-9b3a-c0c1e2c3d4e5"
CHALLENGE_TYP = "kiosk-challenge+jwt"
CHALLENGE_SECONDS = 60
FIRST, LAST = 0x80, 0x40
DEFAULT_MTU = 23  # the ATT minimum; phones usually negotiate 185 or 517

Present = Callable[[str, str], Decision]  # (presentation, nonce) -> decision


class BleError(Exception):
    """Protocol failure on the phone side (bad challenge, no result, cancelled)."""


# -- framing -----------------------------------------------------------------------------------


def chunk(data: bytes, mtu: int) -> list[bytes]:
    """Split ``data`` into writes of at most ``mtu - 3`` bytes, each with its header byte."""
    if mtu < 8:
        raise ValueError("MTU too small")
    if len(data) > 0xFFFF:
        raise ValueError("presentation too long")
    payload_size = mtu - 4
    body = len(data).to_bytes(2, "big") + data
    pieces = [body[i : i + payload_size] for i in range(0, len(body), payload_size)]
    frames = []
    for index, piece in enumerate(pieces):
        header = index % 64
        if index == 0:
            header |= FIRST
        if index == len(pieces) - 1:
            header |= LAST
        frames.append(bytes([header]) + piece)
    return frames


@dataclass
class Reassembler:
    """Kiosk side of the chunked write; bounded, strict about order."""

    limit: int = MAX_PRESENTATION_CHARS
    buffer: bytearray = field(default_factory=bytearray)
    expected: int | None = None
    next_seq: int = 0

    def feed(self, frame: bytes) -> bytes | None:
        """Add one write; returns the whole message after LAST. Raises ValueError on misuse."""
        if not frame:
            raise ValueError("empty write")
        header, payload = frame[0], frame[1:]
        if header & FIRST:
            if len(payload) < 2:
                raise ValueError("first chunk too short")
            self.buffer = bytearray()
            self.expected = int.from_bytes(payload[:2], "big")
            self.next_seq = 0
            payload = payload[2:]
            if self.expected > self.limit:
                raise ValueError("too large")
        elif self.expected is None:
            raise ValueError("chunk before first")
        if header & 0x3F != self.next_seq % 64:
            raise ValueError("chunk out of order")
        self.next_seq += 1
        self.buffer.extend(payload)
        if len(self.buffer) > self.expected:
            raise ValueError("longer than announced")
        if header & LAST:
            if len(self.buffer) != self.expected:
                raise ValueError("shorter than announced")
            message, self.buffer, self.expected = bytes(self.buffer), bytearray(), None
            return message
        return None


# -- challenge -----------------------------------------------------------------------------------


def sign_challenge(kiosk_key: Ed25519PrivateKey, kiosk_id: str, nonce: str, now: float) -> str:
    issued = int(now)
    claims = {"iss": kiosk_id, "nonce": nonce, "iat": issued, "exp": issued + CHALLENGE_SECONDS}
    return jwt.encode(claims, kiosk_key, algorithm="EdDSA", headers={"typ": CHALLENGE_TYP})


def verify_challenge(
    challenge: bytes | str,
    kiosk_public_key: str | Ed25519PublicKey,
    kiosk_id: str,
    *,
    now: float | None = None,
    skew: int = 30,
) -> str:
    """The phone's check of a kiosk challenge; returns the nonce or raises BleError."""
    try:
        token = challenge.decode("ascii") if isinstance(challenge, bytes) else challenge
        if len(token) > 1024:
            raise BleError("challenge too long")
        header = jwt.get_unverified_header(token)
        if set(header) != {"alg", "typ"} or header["typ"] != CHALLENGE_TYP:
            raise BleError("not a kiosk challenge")
        key = (
            public_key_from_x(kiosk_public_key)
            if isinstance(kiosk_public_key, str)
            else kiosk_public_key
        )
        claims = jwt.decode(
            token,
            key,
            algorithms=["EdDSA"],
            issuer=kiosk_id,
            options={
                "require": ["iss", "nonce", "iat", "exp"],
                "verify_exp": False,
                "verify_iat": False,
                "verify_nbf": False,
            },
        )
    except (jwt.PyJWTError, UnicodeDecodeError, ValueError) as exc:
        raise BleError(f"challenge rejected: {type(exc).__name__}") from None
    moment = time.time() if now is None else now
    nonce, iat, exp = claims.get("nonce"), claims.get("iat"), claims.get("exp")
    if not (isinstance(nonce, str) and isinstance(iat, int) and isinstance(exp, int)):
        raise BleError("challenge claims malformed")
    if not (iat - skew <= moment <= exp + skew) or exp - iat > CHALLENGE_SECONDS:
        raise BleError("challenge not current")
    if not 22 <= len(nonce) <= 256:
        raise BleError("challenge nonce too short")
    return nonce


# -- kiosk side -----------------------------------------------------------------------------------


class Notifier(Protocol):
    async def notify(self, connection: str, characteristic: str, value: bytes) -> None: ...


class KioskBleServer:
    """The kiosk's GATT logic, independent of the radio stack."""

    def __init__(
        self,
        kiosk_id: str,
        kiosk_key: Ed25519PrivateKey,
        present: Present,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.kiosk_id = kiosk_id
        self.kiosk_key = kiosk_key
        self.present = present
        self.clock = clock
        self.notifier: Notifier | None = None
        self._sessions: dict[str, tuple[str, str, Reassembler]] = {}

    def connected(self, connection: str) -> None:
        nonce = secrets.token_urlsafe(16)
        challenge = sign_challenge(self.kiosk_key, self.kiosk_id, nonce, self.clock())
        self._sessions[connection] = (nonce, challenge, Reassembler())

    def disconnected(self, connection: str) -> None:
        self._sessions.pop(connection, None)

    def read(self, connection: str, characteristic: str) -> bytes:
        if characteristic != CHALLENGE_UUID:
            return b""
        if connection not in self._sessions:
            self.connected(connection)
        return self._sessions[connection][1].encode("ascii")

    async def write(self, connection: str, characteristic: str, value: bytes) -> None:
        session = self._sessions.get(connection)
        if characteristic != PRESENTATION_UUID or session is None:
            return
        nonce, _, reassembler = session
        try:
            message = reassembler.feed(value)
        except ValueError:
            self._sessions.pop(connection, None)  # a fresh challenge is needed after a failure
            await self._result(
                connection, {"granted": False, "reason": "ble_framing", "target": None}
            )
            return
        if message is None:
            return
        self._sessions.pop(connection, None)  # the nonce is single-use
        decision = await asyncio.to_thread(self.present, message.decode("latin-1"), nonce)
        await self._result(
            connection,
            {"granted": decision.granted, "reason": decision.reason, "target": decision.target},
        )

    async def _result(self, connection: str, body: dict[str, Any]) -> None:
        if self.notifier is not None:
            await self.notifier.notify(connection, RESULT_UUID, json.dumps(body).encode())


# -- phone side -------------------------------------------------------------------------------------


class CentralLink(Protocol):
    """A connected phone-to-kiosk link (what a BLE central library gives)."""

    mtu: int

    async def read(self, characteristic: str) -> bytes: ...

    async def write(self, characteristic: str, value: bytes) -> None: ...

    async def subscribe(self, characteristic: str, callback: Callable[[bytes], None]) -> None: ...

    async def disconnect(self) -> None: ...


Confirm = Callable[[str], bool | Awaitable[bool]]


async def unlock_over_ble(
    link: CentralLink,
    *,
    credential: str,
    device_key: Ed25519PrivateKey,
    kiosk_id: str,
    kiosk_public_key: str | Ed25519PublicKey,
    confirm: Confirm,
    iat: int | None = None,
    result_timeout: float = 10.0,
) -> dict[str, Any]:
    """The phone's side: check the kiosk, wait for the user's tap, present, read the result."""
    results: asyncio.Queue[bytes] = asyncio.Queue()
    await link.subscribe(RESULT_UUID, results.put_nowait)
    # The phone's clock corrected by the server offset (``iat``) when it has one.
    nonce = verify_challenge(await link.read(CHALLENGE_UUID), kiosk_public_key, kiosk_id, now=iat)
    answer = confirm(kiosk_id)
    if inspect.isawaitable(answer):
        answer = await answer
    if answer is not True:
        raise BleError("cancelled by the user")
    presentation = make_presentation(credential, device_key, kiosk_id, nonce=nonce, iat=iat)
    for frame in chunk(presentation.encode("ascii"), link.mtu):
        await link.write(PRESENTATION_UUID, frame)
    try:
        raw = await asyncio.wait_for(results.get(), timeout=result_timeout)
    except TimeoutError:
        raise BleError("no result from the kiosk") from None
    result: dict[str, Any] = json.loads(raw)
    return result


# -- loopback transport -------------------------------------------------------------------------------


class LoopbackTransport:
    """In-process radio: ``connect()`` gives a CentralLink wired to a KioskBleServer."""

    def __init__(self, server: KioskBleServer) -> None:
        self.server = server
        self._subscribers: dict[tuple[str, str], Callable[[bytes], None]] = {}
        self._counter = 0
        server.notifier = self

    async def notify(self, connection: str, characteristic: str, value: bytes) -> None:
        callback = self._subscribers.get((connection, characteristic))
        if callback is not None:
            callback(value)

    def connect(self, mtu: int = 185) -> LoopbackLink:
        self._counter += 1
        connection = f"loopback-{self._counter}"
        self.server.connected(connection)
        return LoopbackLink(self, connection, mtu)


@dataclass
class LoopbackLink:
    transport: LoopbackTransport
    connection: str
    mtu: int
    writes: list[bytes] = field(default_factory=list)

    async def read(self, characteristic: str) -> bytes:
        return self.transport.server.read(self.connection, characteristic)

    async def write(self, characteristic: str, value: bytes) -> None:
        if len(value) > self.mtu - 3:
            raise BleError("write longer than the negotiated MTU allows")
        self.writes.append(value)
        await self.transport.server.write(self.connection, characteristic, value)

    async def subscribe(self, characteristic: str, callback: Callable[[bytes], None]) -> None:
        self.transport._subscribers[(self.connection, characteristic)] = callback

    async def disconnect(self) -> None:
        self.transport.server.disconnected(self.connection)


# -- real radios (optional libraries) ---------------------------------------------------------------


def bless_available() -> bool:
    try:
        import bless  # type: ignore[import-not-found]  # noqa: F401
    except Exception:
        return False
    return True


class BlessPeripheral:
    """The kiosk's GATT server on real hardware via ``bless`` (BlueZ/D-Bus, CoreBluetooth).

    bless reports no connection identity to its callbacks, so the peripheral serves one
    central at a time (a kiosk has one reader); a new challenge is made per read.
    """

    CONNECTION = "bless"

    def __init__(self, server: KioskBleServer, name: str = "Concierge kiosk") -> None:
        self.server = server
        self.name = name
        self._bless: Any = None
        server.notifier = self

    async def start(self) -> None:
        from bless import (  # type: ignore[import-not-found]
            BlessServer,
            GATTAttributePermissions,
            GATTCharacteristicProperties,
        )

        bless_server = BlessServer(name=self.name)
        bless_server.read_request_func = self._read
        bless_server.write_request_func = self._write
        await bless_server.add_new_service(SERVICE_UUID)
        props, perms = GATTCharacteristicProperties, GATTAttributePermissions
        await bless_server.add_new_characteristic(
            SERVICE_UUID, CHALLENGE_UUID, props.read, None, perms.readable
        )
        await bless_server.add_new_characteristic(
            SERVICE_UUID, PRESENTATION_UUID, props.write, None, perms.writeable
        )
        await bless_server.add_new_characteristic(
            SERVICE_UUID, RESULT_UUID, props.notify, None, perms.readable
        )
        await bless_server.start()
        self._bless = bless_server
        self._loop = asyncio.get_running_loop()

    async def stop(self) -> None:
        if self._bless is not None:
            await self._bless.stop()

    def _read(self, characteristic: Any, **_: Any) -> bytearray:
        uuid = str(characteristic.uuid).lower()
        if uuid == CHALLENGE_UUID:
            self.server.connected(self.CONNECTION)
        return bytearray(self.server.read(self.CONNECTION, uuid))

    def _write(self, characteristic: Any, value: Any, **_: Any) -> None:
        uuid = str(characteristic.uuid).lower()
        asyncio.run_coroutine_threadsafe(
            self.server.write(self.CONNECTION, uuid, bytes(value)), self._loop
        )

    async def notify(self, connection: str, characteristic: str, value: bytes) -> None:
        if self._bless is None:
            return
        self._bless.get_characteristic(characteristic).value = bytearray(value)
        self._bless.update_value(SERVICE_UUID, characteristic)


class BleakCentral:
    """A phone stand-in on a laptop via ``bleak`` (for bench tests against a real kiosk)."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.mtu = int(getattr(client, "mtu_size", DEFAULT_MTU))

    @classmethod
    async def connect(cls, address: str) -> BleakCentral:
        from bleak import BleakClient

        client = BleakClient(address)
        await client.connect()
        return cls(client)

    async def read(self, characteristic: str) -> bytes:
        return bytes(await self.client.read_gatt_char(characteristic))

    async def write(self, characteristic: str, value: bytes) -> None:
        await self.client.write_gatt_char(characteristic, value, response=True)

    async def subscribe(self, characteristic: str, callback: Callable[[bytes], None]) -> None:
        await self.client.start_notify(characteristic, lambda _sender, data: callback(bytes(data)))

    async def disconnect(self) -> None:
        await self.client.disconnect()

"""A kiosk offline for a simulated day, with hundreds of decisions, then back online.

The kiosk (the kiosk package: its own key, its own SQLite state) syncs once, loses the
network, and spends a day deciding alone: residents redeem offline batches of door
credentials, a few presentations are replays or come from the wrong phone, some credentials
were revoked on the server meanwhile (the kiosk cannot know), and a clone of the kiosk's
state (a restored backup) redeems credentials the original already redeemed. Back online:
the journal is ingested exactly once (a second upload changes nothing), redemptions of
credentials revoked while it was offline are flagged, the clone's redemptions surface as
double spends, and after the next sync the kiosk refuses revoked credentials.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from kiosk import agent
from kiosk.assertion import public_key_b64, sign_assertion
from kiosk.client import ServerClient
from kiosk.credential import make_presentation
from kiosk.state import KioskState
from tests.app_client import AppClient
from tests.world import Person, World, check


class ServerClockClient(ServerClient):
    """The kiosk's HTTP client, signing its assertions at the server's (real) time."""

    def _headers(self) -> dict[str, str]:
        assertion = sign_assertion(self.state.key, self.state.config.kiosk_id, now=time.time())
        return {"Authorization": f"Bearer {assertion}"}


BATCHES = 20  # x 10 credentials per offline batch = 200 grants, plus denials
DAY = 86400.0


async def _device(client: AppClient, person: Person) -> tuple[str, Ed25519PrivateKey]:
    key = Ed25519PrivateKey.generate()
    device = check(
        await client.post(
            "/v1/devices",
            json={"platform": "ios", "public_key": public_key_b64(key)},
            headers=person.headers,
        ),
        201,
    )
    return device["id"], key


async def _audit(client: AppClient, staff: Person, property_id: str) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    after = 0
    while True:
        page = check(
            await client.get(
                f"/v1/staff/properties/{property_id}/audit?after={after}&limit=1000",
                headers=staff.headers,
            )
        )
        events.extend(page["items"])
        if not page["next_cursor"]:
            return events
        after = int(page["next_cursor"])


def _payload(event: dict[str, Any]) -> dict[str, Any]:
    return event.get("payload") or event.get("data") or {}


async def test_kiosk_offline_for_a_day_then_back(
    client: AppClient,
    world: World,
    tmp_path: Path,
) -> None:
    site = world.home
    staff, resident, neighbour = (site.people[r] for r in ("staff", "resident", "neighbour"))
    pid = site.property_id
    created = check(
        await client.post(
            f"/v1/staff/properties/{pid}/kiosks", json={"name": "Garage"}, headers=staff.headers
        ),
        201,
    )
    door = check(
        await client.post(
            f"/v1/staff/properties/{pid}/doors",
            json={"name": "Garage door", "kiosk_id": created["id"], "open_to": "residents"},
            headers=staff.headers,
        ),
        201,
    )
    kiosk = await agent.enroll(
        "http://testserver.local", created["enrollment_code"], tmp_path / "kiosk", http=client
    )
    online = ServerClient(kiosk, async_http=client)
    await agent.sync(kiosk, online)

    # Phones stock up on offline batches while the kiosk is still reachable.
    holders = []
    for person in (resident, neighbour):
        device_id, key = await _device(client, person)
        holders.append((person, device_id, key))
    credentials: list[tuple[dict[str, Any], Ed25519PrivateKey, Person, str]] = []
    for i in range(BATCHES):
        person, device_id, key = holders[i % 2]
        answer = check(
            await client.post(
                "/v1/credentials",
                json={"device_id": device_id, "door_id": door["id"], "count": 10},
                headers=person.headers,
            ),
            201,
        )
        assert len(answer["credentials"]) == 10
        credentials.extend((c, key, person, device_id) for c in answer["credentials"])

    # The kiosk goes offline. On the server, staff revoke a few credentials (and the
    # neighbour's phone); the kiosk cannot learn it before it comes back.
    revoked = [credentials[i][0]["id"] for i in (3, 40, 77, 150, 198)]
    held_back = [credentials[i] for i in (5, 9)]  # revoked, and still unused at the end
    revoked += [c[0]["id"] for c in held_back]
    for credential_id in revoked:
        response = await client.post(
            "/v1/staff/revocations",
            json={"credential_id": credential_id, "reason": "lost phone"},
            headers=staff.headers,
        )
        assert response.status_code in (200, 201), response.text

    # A simulated day of decisions, alone. Midway, a backup of the kiosk state is taken;
    # the restored copy later redeems three credentials the original already redeemed.
    start = kiosk.now()
    usable = [c for c in credentials if c not in held_back]
    granted = denied = 0
    clone_dir = tmp_path / "kiosk-restored"
    cloned_jtis: list[dict[str, Any]] = []

    def decide(
        state: KioskState, credential: dict[str, Any], key: Ed25519PrivateKey, at: float
    ) -> Any:
        presentation = make_presentation(
            credential["token"], key, aud=credential["kiosk_id"], nonce="n" * 22, iat=int(at)
        )
        return state.verifier.redeem(presentation, channel="qr", now=at)

    for i, (credential, key, _person, _device_id) in enumerate(usable):
        at = start + 60 + i * (DAY - 7200) / len(usable)
        if i == len(usable) // 2:
            shutil.copytree(kiosk.state_dir, clone_dir)
        decision = decide(kiosk, credential, key, at)
        assert decision.granted, (i, decision)
        granted += 1
        if i > len(usable) // 2 and len(cloned_jtis) < 3:
            cloned_jtis.append(credential)
        # Every tenth person tries the same code again, and one in twenty a forwarded
        # screenshot from another phone: both refused.
        if i % 10 == 0:
            assert not decide(kiosk, credential, key, at + 5).granted
            denied += 1
        if i % 20 == 0:
            other = holders[0][2] if key is not holders[0][2] else holders[1][2]
            assert not decide(kiosk, credential, other, at + 7).granted
            denied += 1
    assert granted + denied >= 200
    last_seq = kiosk.store.last_seq()
    assert last_seq == granted + denied

    # Back online: the journal goes up, once. (The kiosk's clock ran a simulated day ahead;
    # the server's cannot be moved, so its calls are signed at the server's time, which is
    # what the kiosk's clock reads once the day has passed for the server too.)
    back = ServerClockClient(kiosk, async_http=client)
    acked = await agent.upload(kiosk, back)
    assert acked == last_seq
    before = await _audit(client, staff, pid)
    assert await agent.upload(kiosk, back) == last_seq
    # The whole batch resent (a kiosk that lost the acknowledgement) changes nothing either.
    entries = kiosk.store.pending_entries() or []
    assert entries == []
    after_resend = await _audit(client, staff, pid)
    assert len(after_resend) == len(before)

    redeemed = [e for e in before if e["type"] == "credential.redeemed"]
    redeemed_ids = [_payload(e).get("credential_id") for e in redeemed]
    assert len(redeemed) == granted
    assert len(set(redeemed_ids)) == granted  # each credential redeemed once
    flagged = {_payload(e)["credential_id"] for e in redeemed if _payload(e).get("revoked")}
    assert flagged == {cid for cid in revoked if cid not in {c[0]["id"] for c in held_back}}

    # The restored copy comes online and uploads what it decided: double spends surface.
    restored = KioskState.open(clone_dir)
    for credential in cloned_jtis:
        key = next(c[1] for c in credentials if c[0]["id"] == credential["id"])
        assert decide(restored, credential, key, start + DAY - 3600).granted  # it forgot
    await agent.upload(restored, ServerClockClient(restored, async_http=client))
    events = await _audit(client, staff, pid)
    double = {
        _payload(e).get("credential_id") for e in events if e["type"] == "credential.double_spent"
    }
    assert {c["id"] for c in cloned_jtis} <= double
    assert any(e["type"] == "kiosk.journal_forked" for e in events)

    # Next sync: the revocations reach the kiosk, which now refuses the revoked credentials.
    await agent.sync(kiosk, back)
    now = time.time()
    for credential, key, _person, _device_id in held_back:
        decision = decide(kiosk, credential, key, max(now, kiosk.now()))
        assert not decision.granted
        assert decision.reason == "revoked", decision
    restored.close()
    kiosk.close()

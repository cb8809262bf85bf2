"""The kiosk's offline verifier: a hostile-input table, clock rollback, restart persistence."""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed448 import Ed448PrivateKey
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kiosk.credential import CRED_TYP, KB_TYP, public_key_b64url, sd_hash, sign_credential
from kiosk.store import GENESIS_HASH, KioskStore, entry_hash
from kiosk.verifier import MAX_PRESENTATION_CHARS, REASONS, Verifier
from tests.kiosk_support import NOW, Scene, make_scene


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def compact(header: dict, claims: dict, sign: Callable[[bytes], bytes] | None = None) -> str:
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    signature = b"" if sign is None else sign(signing_input.encode())
    return f"{signing_input}.{b64(signature)}"


def kb_jwt(scene: Scene, credential: str, header: dict | None = None, **claims: object) -> str:
    body: dict[str, object] = {
        "iat": NOW,
        "aud": scene.kiosk_id,
        "nonce": "n" * 22,
        "sd_hash": sd_hash(credential),
    }
    body.update(claims)
    body = {k: v for k, v in body.items() if v is not None}
    return compact(header or {"alg": "EdDSA", "typ": KB_TYP}, body, scene.device.sign)


def with_kb(scene: Scene, credential: str, **kw: object) -> str:
    return f"{credential}~{kb_jwt(scene, credential, **kw)}"


def cred_with_header(scene: Scene, header: dict, **claims: object) -> str:
    return compact(header, scene.claims(**claims), scene.issuer_key.sign)


def _public_pem(scene: Scene) -> bytes:
    return scene.issuer_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _hs256_with_public_key(scene: Scene) -> str:
    import hashlib
    import hmac

    pem = _public_pem(scene)
    header = {"alg": "HS256", "kid": "k1", "typ": CRED_TYP}
    credential = compact(
        header, scene.claims(), lambda data: hmac.new(pem, data, hashlib.sha256).digest()
    )
    return scene.present(credential)


def _ed448(scene: Scene) -> str:
    rogue = Ed448PrivateKey.generate()
    credential = compact({"alg": "EdDSA", "kid": "k1", "typ": CRED_TYP}, scene.claims(), rogue.sign)
    return scene.present(credential)


def _attacker_jwk_header(scene: Scene, name: str) -> str:
    attacker = Ed25519PrivateKey.generate()
    value: object = {"kty": "OKP", "crv": "Ed25519", "x": public_key_b64url(attacker)}
    if name in ("jku", "x5u"):
        value = "https://attacker.example/keys"
    if name == "crit":
        value = ["exp"]
    header = {"alg": "EdDSA", "kid": "k1", "typ": CRED_TYP, name: value}
    return scene.present(compact(header, scene.claims(), attacker.sign))


def _tampered(scene: Scene) -> str:
    credential = scene.credential()
    head, _, sig = credential.split(".")
    forged = b64(json.dumps(scene.claims(tgt=f"door:{scene.door}", sub="intruder")).encode())
    return scene.present(f"{head}.{forged}.{sig}")


def _swapped_kb(scene: Scene) -> str:
    first, second = scene.credential(), scene.credential()
    return f"{second}~{scene.present(first).split('~')[1]}"


# (name, builder, expected reason). Every row must be a clean denial with that reason.
HOSTILE: list[tuple[str, Callable[[Scene], str | bytes], str]] = [
    ("random bytes", lambda s: os.urandom(400), "malformed"),
    ("random text", lambda s: b64(os.urandom(600)), "malformed"),
    ("empty", lambda s: "", "malformed"),
    ("non-ascii", lambda s: s.present() + "é", "malformed"),
    ("truncated credential", lambda s: s.present()[:300], "malformed"),
    ("truncated proof", lambda s: s.present()[:-12], "bad_proof"),
    ("no proof", lambda s: s.credential(), "malformed"),
    ("empty proof", lambda s: s.credential() + "~", "malformed"),
    ("disclosure segment", lambda s: s.credential() + "~WyJhIl0~" + "x.y.z", "malformed"),
    ("huge", lambda s: "A" * (MAX_PRESENTATION_CHARS + 1), "too_large"),
    ("huge bytes", lambda s: b"A" * 10_000_000, "too_large"),
    ("header not json", lambda s: "bm90IGpzb24.e30.AA~x.y.z", "malformed"),
    ("header a list", lambda s: f"{b64(b'[1]')}.e30.AA~x.y.z", "malformed"),
    (
        "alg none",
        lambda s: s.present(compact({"alg": "none", "kid": "k1", "typ": CRED_TYP}, s.claims())),
        "unsupported_alg",
    ),
    ("HS256 signed with the public key", _hs256_with_public_key, "unsupported_alg"),
    ("Ed448 under EdDSA", _ed448, "bad_signature"),
    (
        "unknown kid",
        lambda s: s.present(cred_with_header(s, {"alg": "EdDSA", "kid": "k9", "typ": CRED_TYP})),
        "unknown_kid",
    ),
    ("jwk header", lambda s: _attacker_jwk_header(s, "jwk"), "bad_header"),
    ("jku header", lambda s: _attacker_jwk_header(s, "jku"), "bad_header"),
    ("x5u header", lambda s: _attacker_jwk_header(s, "x5u"), "bad_header"),
    ("crit header", lambda s: _attacker_jwk_header(s, "crit"), "bad_header"),
    (
        "typ missing",
        lambda s: s.present(cred_with_header(s, {"alg": "EdDSA", "kid": "k1"})),
        "bad_header",
    ),
    (
        "typ JWT",
        lambda s: s.present(cred_with_header(s, {"alg": "EdDSA", "kid": "k1", "typ": "JWT"})),
        "wrong_typ",
    ),
    ("signature over other claims", _tampered, "bad_signature"),
    ("another kiosk", lambda s: s.present(s.credential(aud="kiosk-elsewhere")), "wrong_audience"),
    ("list aud", lambda s: s.present(s.credential(aud=[s.kiosk_id])), "wrong_audience"),
    ("wrong issuer", lambda s: s.present(s.credential(iss="https://evil")), "wrong_issuer"),
    ("string exp", lambda s: s.present(s.credential(exp=str(NOW + 290))), "bad_claims"),
    ("float exp", lambda s: s.present(s.credential(exp=NOW + 290.5)), "bad_claims"),
    ("bool nbf", lambda s: s.present(s.credential(nbf=True)), "bad_claims"),
    ("missing exp", lambda s: s.present(s.credential(exp=None)), "bad_claims"),
    ("missing cnf", lambda s: s.present(s.credential(cnf=None)), "bad_claims"),
    ("unknown claim", lambda s: s.present(s.credential(admin=True)), "bad_claims"),
    ("unknown role", lambda s: s.present(s.credential(role="root")), "bad_claims"),
    (
        "private d in cnf jwk",
        lambda s: s.present(
            s.credential(
                cnf={
                    "jwk": {
                        "kty": "OKP",
                        "crv": "Ed25519",
                        "x": public_key_b64url(s.device),
                        "d": b64(b"\x00" * 32),
                    }
                }
            )
        ),
        "bad_cnf",
    ),
    (
        "X25519 cnf",
        lambda s: s.present(
            s.credential(
                cnf={"jwk": {"kty": "OKP", "crv": "X25519", "x": public_key_b64url(s.device)}}
            )
        ),
        "bad_claims",
    ),
    ("expired", lambda s: s.present(s.credential(exp=NOW - 31)), "expired"),
    ("not yet valid", lambda s: s.present(s.credential(nbf=NOW + 31)), "not_yet_valid"),
    ("unknown target", lambda s: s.present(s.credential(tgt="door:elsewhere")), "unknown_target"),
    (
        "proof from another device",
        lambda s: s.present(device=Ed25519PrivateKey.generate()),
        "bad_proof",
    ),
    ("stale proof", lambda s: s.present(iat=NOW - 31), "proof_stale"),
    ("proof from the future", lambda s: s.present(iat=NOW + 31), "proof_stale"),
    ("proof for another kiosk", lambda s: s.present(aud="kiosk-elsewhere"), "proof_wrong_audience"),
    ("proof for another credential", _swapped_kb, "proof_mismatch"),
    (
        "missing nonce",
        lambda s: (lambda c: with_kb(s, c, nonce=None))(s.credential()),
        "nonce_missing",
    ),
    ("short nonce", lambda s: s.present(nonce="abc"), "nonce_missing"),
    (
        "proof with jwk header",
        lambda s: (lambda c: with_kb(s, c, header={"alg": "EdDSA", "typ": KB_TYP, "jwk": {}}))(
            s.credential()
        ),
        "bad_proof",
    ),
    (
        "proof typ JWT",
        lambda s: (lambda c: with_kb(s, c, header={"alg": "EdDSA", "typ": "JWT"}))(s.credential()),
        "bad_proof",
    ),
    (
        "proof string iat",
        lambda s: (lambda c: with_kb(s, c, iat=str(NOW)))(s.credential()),
        "bad_proof",
    ),
    (
        "emergency signed by a credential key",
        lambda s: s.present(
            sign_credential(
                s.issuer_key,
                "k1",
                s.claims(aud=f"property:{s.property_id}", tgt="any", role="staff"),
                "concierge-emergency+jwt",
            )
        ),
        "unknown_kid",
    ),
    (
        "emergency for another property",
        lambda s: s.present(s.emergency(aud="property:elsewhere")),
        "wrong_audience",
    ),
    (
        "credential signed by the emergency key",
        lambda s: s.present(sign_credential(s.emergency_key, "e1", s.claims())),
        "unknown_kid",
    ),
]


@pytest.mark.parametrize(("name", "build", "reason"), HOSTILE, ids=[row[0] for row in HOSTILE])
def test_hostile_input_is_a_clean_denial(
    tmp_path: Path, name: str, build: Callable[[Scene], str | bytes], reason: str
) -> None:
    scene = make_scene(tmp_path)
    presentation = build(scene)
    decision = scene.verifier.redeem(presentation)
    assert not decision.granted
    assert decision.reason == reason, name
    assert reason in REASONS
    # Every denial is journaled too, and nothing is marked spent.
    [entry] = scene.store.pending_entries()
    assert entry["data"]["granted"] is False
    assert entry["data"]["reason"] == reason
    assert scene.store.spent_count() == 0


def test_valid_presentation_is_granted_once_then_replay_refused(tmp_path: Path) -> None:
    scene = make_scene(tmp_path)
    credential = scene.credential()
    first = scene.verifier.redeem(scene.present(credential))
    assert (first.granted, first.reason, first.target) == (
        True,
        "granted",
        f"compartment:{scene.compartment}",
    )
    # The identical text, and a fresh proof over the same credential, are both replays.
    assert scene.verifier.redeem(scene.present(credential)).reason == "already_used"
    again = scene.verifier.check(scene.present(credential))
    assert (again.granted, again.reason) == (False, "already_used")


def test_door_credential_and_reader_target(tmp_path: Path) -> None:
    scene = make_scene(tmp_path)
    door = f"door:{scene.door}"
    wrong = scene.verifier.check(scene.present(scene.credential(tgt=door)), target="compartment:x")
    assert wrong.reason == "wrong_target"
    right = scene.verifier.redeem(scene.present(scene.credential(tgt=door)), target=door)
    assert (right.granted, right.target) == (True, door)


@pytest.mark.parametrize("kind", ["credential", "device", "user"])
def test_revoked(tmp_path: Path, kind: str) -> None:
    scene = make_scene(tmp_path)
    credential = scene.credential()
    subject = {
        "credential": json.loads(base64.urlsafe_b64decode(credential.split(".")[1] + "=="))["jti"],
        "device": public_key_b64url(scene.device),
        "user": "user-resident",
    }[kind]
    scene.revocations.append({"kind": kind, "id": subject, "expires_at": "2031-01-01T00:00:00Z"})
    scene.sync()
    assert scene.verifier.redeem(scene.present(credential)).reason == "revoked"
    # Others are unaffected by a revocation that is not theirs (except a user revocation).
    other = scene.verifier.check(scene.present(scene.credential(sub="user-neighbour")))
    assert other.granted is (kind != "device")


def test_vendor_fails_closed_on_a_stale_revocation_list_resident_does_not(tmp_path: Path) -> None:
    scene = make_scene(tmp_path)
    scene.sync(server_time=NOW - 61 * 60)  # last successful sync 61 minutes ago
    scene.store.set_meta("clock_offset", repr(NOW - time.time()))
    vendor = scene.verifier.check(scene.present(scene.credential(role="vendor")))
    assert vendor.reason == "revocation_list_stale"
    resident = scene.verifier.check(scene.present(scene.credential()))
    assert resident.granted
    # Per-role policy from sync: residents fail closed after 30 minutes, vendors never.
    scene.policy = {"fail_closed_minutes": {"resident": 30, "vendor": None}}
    scene.sync(server_time=NOW - 31 * 60)
    scene.store.set_meta("clock_offset", repr(NOW - time.time()))
    assert scene.verifier.check(scene.present(scene.credential())).reason == (
        "revocation_list_stale"
    )
    assert scene.verifier.check(scene.present(scene.credential(role="vendor"))).granted
    scene.sync()
    assert scene.verifier.check(scene.present(scene.credential(role="vendor"))).granted


def test_emergency_credential_opens_any_target_of_this_property(tmp_path: Path) -> None:
    scene = make_scene(tmp_path)
    decision = scene.verifier.redeem(scene.present(scene.emergency()), target=f"door:{scene.door}")
    assert (decision.granted, decision.emergency, decision.target) == (
        True,
        True,
        f"door:{scene.door}",
    )
    bad_target = scene.verifier.check(scene.present(scene.emergency()), target="door:elsewhere")
    assert bad_target.reason == "unknown_target"
    [entry] = scene.store.pending_entries()
    assert entry["data"]["emergency"] is True


def test_ble_nonce_must_match_the_challenge(tmp_path: Path) -> None:
    scene = make_scene(tmp_path)
    challenge = "c" * 22
    wrong = scene.verifier.check(scene.present(nonce="d" * 22), nonce=challenge)
    assert wrong.reason == "nonce_mismatch"
    assert scene.verifier.check(scene.present(nonce=challenge), nonce=challenge).granted


def test_not_synced_kiosk_denies(tmp_path: Path) -> None:
    scene = Scene(KioskStore(tmp_path / "kiosk.db"))
    assert scene.verifier.check(scene.present()).reason == "not_synced"


def test_clock_rollback_does_not_revive_an_expired_credential(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scene = make_scene(tmp_path)  # the server said it is NOW
    credential = scene.credential(exp=NOW + 290)
    real_time = time.time
    # Time passes to NOW+400 and the kiosk records it (every decision, and the agent, do).
    monkeypatch.setattr(time, "time", lambda: real_time() + 400)
    scene.store.touch_floor()
    scene.store.close()
    # Someone sets the kiosk's clock back an hour and restarts it.
    monkeypatch.setattr(time, "time", lambda: real_time() - 3600)
    store = KioskStore(tmp_path / "kiosk.db")
    assert store.now() >= NOW + 400
    decision = Verifier(store).check(scene.present(credential, iat=NOW + 400))
    assert decision.reason == "expired"
    # Control: with an honest clock before expiry the same credential would pass.
    assert Verifier(store).check(scene.present(credential), now=NOW).reason == "granted"


def test_spent_store_survives_restart_and_is_pruned_after_expiry(tmp_path: Path) -> None:
    scene = make_scene(tmp_path)
    credential = scene.credential(exp=NOW + 100)
    assert scene.verifier.redeem(scene.present(credential)).granted
    scene.store.close()
    reopened = KioskStore(tmp_path / "kiosk.db")
    assert Verifier(reopened).redeem(scene.present(credential)).reason == "already_used"
    assert reopened.spent_count() == 1
    assert reopened.prune_spent(now=NOW + 100, skew=30) == 0
    assert reopened.prune_spent(now=NOW + 131, skew=30) == 1


def test_journal_is_hash_chained_and_kept_until_acknowledged(tmp_path: Path) -> None:
    scene = make_scene(tmp_path)
    for _ in range(3):
        scene.verifier.redeem(scene.present())
    entries = scene.store.pending_entries()
    assert [e["seq"] for e in entries] == [1, 2, 3]
    prev = GENESIS_HASH
    for e in entries:
        assert e["prev_hash"] == prev
        assert e["hash"] == entry_hash(prev, e["seq"], e["type"], e["occurred_at"], e["data"])
        prev = e["hash"]
    scene.store.acknowledge(2)
    scene.store.close()
    store = KioskStore(tmp_path / "kiosk.db")
    assert [e["seq"] for e in store.pending_entries()] == [3]
    seq = store.journal_append("door.closed", {"door_id": scene.door})
    [_, last] = store.pending_entries()
    assert (seq, last["prev_hash"]) == (4, entries[2]["hash"])


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.one_of(
        st.binary(max_size=2000),
        st.text(max_size=2000),
        st.text(alphabet="ABCxyz019_-.~", max_size=1500),
    )
)
def test_fuzzed_input_never_raises_and_never_grants(tmp_path: Path, blob: str | bytes) -> None:
    store = KioskStore(tmp_path / "fuzz.db")
    try:
        scene = Scene(store)
        if store.synced() is None:
            scene.sync()
        decision = Verifier(store).check(blob)
        assert not decision.granted
        assert decision.reason in REASONS
        assert decision.reason != "internal_error"
    finally:
        store.close()


def test_mutations_of_a_valid_presentation_never_grant(tmp_path: Path) -> None:
    scene = make_scene(tmp_path)
    presentation = scene.present()
    verifier = scene.verifier
    for index in range(0, len(presentation), 7):
        for replacement in ("A", "_", "~", "."):
            if presentation[index] == replacement:
                continue
            mutated = presentation[:index] + replacement + presentation[index + 1 :]
            decision = verifier.check(mutated)
            assert decision.reason != "internal_error", (index, replacement)
            if decision.granted:
                # Only the kb signature's last character has unused bits (same signed bytes).
                assert index == len(presentation) - 1, (index, replacement)


def test_a_grant_that_cannot_be_recorded_is_a_denial(tmp_path: Path) -> None:
    scene = make_scene(tmp_path)
    presentation = scene.present()
    # The disk refuses writes (as when full or remounted read-only).
    scene.store._db.execute("PRAGMA query_only=1")
    decision = scene.verifier.redeem(presentation)
    assert (decision.granted, decision.reason) == (False, "storage_error")
    scene.store._db.execute("PRAGMA query_only=0")
    assert scene.store.spent_count() == 0
    assert scene.verifier.redeem(presentation).granted  # nothing was spent, so it still works

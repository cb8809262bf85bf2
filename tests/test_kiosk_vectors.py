"""The published test vectors (tests/vectors/presentations.json) stay true.

1. The file is exactly what the reference implementation (kiosk/credential.py) produces from
   the fixed seeds: a change to the wire format shows up as a diff here.
2. The keys in the file derive from their seeds, so other implementations can sign with them.
3. The Verifier reaches every case's expected decision.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from kiosk.credential import public_key_b64url
from kiosk.store import KioskStore
from kiosk.verifier import Verifier
from tests.vectors import generate

VECTORS = json.loads(generate.PATH.read_text(encoding="utf-8"))


def test_vector_file_is_reproducible() -> None:
    assert generate.PATH.read_text(encoding="utf-8") == generate.render(), (
        "run `python -m tests.vectors.generate` and review the diff"
    )


def test_vector_keys_derive_from_their_seeds() -> None:
    published = {k["kid"]: k["x"] for k in VECTORS["sync"]["jwks"]["keys"]}
    for entry in VECTORS["keys"].values():
        key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(entry["seed_hex"]))
        if "kid" in entry:
            assert published[entry["kid"]] == public_key_b64url(key)
        else:
            assert entry["x"] == public_key_b64url(key)


@pytest.mark.parametrize("case", VECTORS["cases"], ids=[c["name"] for c in VECTORS["cases"]])
def test_vector_decision(tmp_path: Path, case: dict) -> None:
    store = KioskStore(tmp_path / "kiosk.db")
    store.save_sync(VECTORS["sync"], float(case["synced_at"]))
    for jti in case["spent"]:
        store.record_decision({"granted": True}, spend=(jti, case["now"] + 300.0), now=case["now"])
    decision = Verifier(store).check(
        case["presentation"], nonce=case["nonce"], target=case["reader_target"], now=case["now"]
    )
    expected = case["expected"]
    got = {"granted": decision.granted, "reason": decision.reason, "target": decision.target}
    if "emergency" in expected:
        got["emergency"] = decision.emergency
    assert got == expected


def test_ble_vectors() -> None:
    from kiosk import ble

    vector = VECTORS["ble"]
    nonce = ble.verify_challenge(
        vector["challenge"],
        vector["kiosk_public_key"],
        VECTORS["sync"]["kiosk_id"],
        now=generate.NOW,
    )
    assert nonce == vector["challenge_nonce"]
    reassembler = ble.Reassembler()
    results = [reassembler.feed(bytes.fromhex(w)) for w in vector["writes_hex"]]
    [case] = [c for c in VECTORS["cases"] if c["name"] == vector["presentation_case"]]
    assert results[-1] == case["presentation"].encode()
    assert all(len(bytes.fromhex(w)) <= vector["mtu"] - 3 for w in vector["writes_hex"])

"""Regenerate the protocol test vectors: ``python -m tests.vectors.generate``.

Everything is deterministic (fixed seeds, fixed claims, Ed25519's deterministic signatures), so
``tests/test_kiosk_vectors.py`` both re-derives the file byte for byte and checks that the
``Verifier`` reaches each case's expected decision.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from kiosk.credential import (
    CRED_TYP,
    EMERGENCY_TYP,
    KB_TYP,
    _sign_compact,
    b64url,
    device_jwk,
    make_presentation,
    public_key_b64url,
    sd_hash,
    sign_credential,
)

PATH = Path(__file__).with_name("presentations.json")
NOW = 1_893_456_000  # 2030-01-01T00:00:00Z
KIOSK = "kiosk-lobby-01"
PROPERTY = "prop-maple-court"
ISSUER = "https://concierge.example"
COMPARTMENT = "cmp-a1"
DOOR = "door-main"
NONCE = "bm9uY2Utbm9uY2Utbm9uY2U"  # 23 chars, what a phone would pick at random
BLE_NONCE = "a2lvc2stY2hhbGxlbmdlLTAx"


def seed_key(label: str) -> tuple[Ed25519PrivateKey, str]:
    seed = hashlib.sha256(f"concierge test vector {label}".encode()).digest()
    return Ed25519PrivateKey.from_private_bytes(seed), seed.hex()


def jwk(key: Ed25519PrivateKey, kid: str, purpose: str, status: str = "active") -> dict[str, str]:
    return {
        "kty": "OKP",
        "crv": "Ed25519",
        "x": public_key_b64url(key),
        "kid": kid,
        "alg": "EdDSA",
        "use": "sig",
        "status": status,
        "purpose": purpose,
    }


def build() -> dict[str, Any]:
    issuer, issuer_seed = seed_key("issuer")
    nxt, next_seed = seed_key("issuer next")
    emergency, emergency_seed = seed_key("emergency")
    device, device_seed = seed_key("device")
    other, other_seed = seed_key("other device")
    sync = {
        "kiosk_id": KIOSK,
        "property_id": PROPERTY,
        "issuer": ISSUER,
        "jwks": {
            "keys": [
                jwk(issuer, "cred-2030-01", "credential"),
                jwk(nxt, "cred-2030-02", "credential", "next"),
                jwk(emergency, "emerg-2030-01", "emergency"),
            ]
        },
        "revocations": {
            "version": 7,
            "entries": [
                {"kind": "user", "id": "usr-revoked", "expires_at": "2030-01-02T00:00:00+00:00"},
                {
                    "kind": "credential",
                    "id": "jti-revoked",
                    "expires_at": "2030-01-02T00:00:00+00:00",
                },
            ],
        },
        "compartments": [
            {
                "id": COMPARTMENT,
                "label": "A1",
                "size": "S",
                "purpose": "parcel",
                "state": "occupied",
            }
        ],
        "doors": [{"id": DOOR, "name": "Main entrance"}],
        "pin_hashes": [],
        "policy": {
            "kb_freshness_seconds": 30,
            "clock_skew_seconds": 30,
            "vendor_fail_closed_minutes": 60,
        },
        "server_time": float(NOW),
    }

    def claims(jti: str, **overrides: Any) -> dict[str, Any]:
        body: dict[str, Any] = {
            "iss": ISSUER,
            "sub": "usr-resident-4b",
            "aud": KIOSK,
            "jti": jti,
            "iat": NOW - 60,
            "nbf": NOW - 60,
            "exp": NOW + 240,
            "tgt": f"compartment:{COMPARTMENT}",
            "role": "resident",
            "cnf": {"jwk": device_jwk(public_key_b64url(device))},
        }
        body.update(overrides)
        return {k: v for k, v in body.items() if v is not None}

    def cred(
        jti: str,
        key: Ed25519PrivateKey = issuer,
        kid: str = "cred-2030-01",
        typ: str = CRED_TYP,
        **overrides: Any,
    ) -> str:
        return sign_credential(key, kid, claims(jti, **overrides), typ)

    def present(
        credential: str,
        *,
        holder: Ed25519PrivateKey = device,
        iat: int = NOW - 5,
        nonce: str = NONCE,
        aud: str = KIOSK,
    ) -> str:
        return make_presentation(credential, holder, aud, nonce=nonce, iat=iat)

    def raw_kb(credential: str, header: dict[str, Any], body: dict[str, Any]) -> str:
        return f"{credential}~{_sign_compact(device, header, body)}"

    emergency_claims = {
        "aud": f"property:{PROPERTY}",
        "tgt": "any",
        "role": "staff",
        "sub": "usr-staff-1",
    }
    tampered = cred("jti-tampered")
    head, _, sig = tampered.split(".")
    forged_body = b64url(json.dumps(claims("jti-tampered", tgt=f"door:{DOOR}")).encode())
    none_cred = _sign_compact(
        issuer, {"alg": "none", "kid": "cred-2030-01", "typ": CRED_TYP}, claims("jti-none")
    )
    none_cred = none_cred.rsplit(".", 1)[0] + "."
    attacker, _ = seed_key("attacker")
    jwk_header_cred = _sign_compact(
        attacker,
        {
            "alg": "EdDSA",
            "kid": "cred-2030-01",
            "typ": CRED_TYP,
            "jwk": device_jwk(public_key_b64url(attacker)),
        },
        claims("jti-jwk-header"),
    )
    no_nonce_cred = cred("jti-no-nonce")
    cases: list[dict[str, Any]] = []

    def case(
        name: str, presentation: str, granted: bool, reason: str, target: str | None, **extra: Any
    ) -> None:
        cases.append(
            {
                "name": name,
                "presentation": presentation,
                "nonce": extra.pop("nonce", None),
                "reader_target": extra.pop("reader_target", None),
                "spent": extra.pop("spent", []),
                "synced_at": extra.pop("synced_at", NOW),
                "now": NOW,
                "expected": {"granted": granted, "reason": reason, "target": target, **extra},
            }
        )

    case(
        "resident opens a parcel compartment",
        present(cred("jti-ok-1")),
        True,
        "granted",
        f"compartment:{COMPARTMENT}",
        emergency=False,
    )
    case(
        "door credential signed by the published next key",
        present(cred("jti-ok-2", nxt, "cred-2030-02", tgt=f"door:{DOOR}")),
        True,
        "granted",
        f"door:{DOOR}",
        emergency=False,
    )
    case(
        "ble: nonce equals the kiosk challenge",
        present(cred("jti-ble-1"), nonce=BLE_NONCE),
        True,
        "granted",
        f"compartment:{COMPARTMENT}",
        nonce=BLE_NONCE,
        emergency=False,
    )
    case(
        "emergency credential at a door of the property",
        present(cred("jti-emerg-1", emergency, "emerg-2030-01", EMERGENCY_TYP, **emergency_claims)),
        True,
        "granted",
        f"door:{DOOR}",
        reader_target=f"door:{DOOR}",
        emergency=True,
    )
    case(
        "replay of a spent jti",
        present(cred("jti-spent")),
        False,
        "already_used",
        f"compartment:{COMPARTMENT}",
        spent=["jti-spent"],
    )
    case(
        "ble: nonce from another session",
        present(cred("jti-ble-2"), nonce=NONCE),
        False,
        "nonce_mismatch",
        f"compartment:{COMPARTMENT}",
        nonce=BLE_NONCE,
    )
    case("expired", present(cred("jti-expired", exp=NOW - 31)), False, "expired", None)
    case("not yet valid", present(cred("jti-early", nbf=NOW + 31)), False, "not_yet_valid", None)
    case(
        "credential for another kiosk",
        present(cred("jti-aud", aud="kiosk-elsewhere")),
        False,
        "wrong_audience",
        None,
    )
    case("list aud", present(cred("jti-list-aud", aud=[KIOSK])), False, "wrong_audience", None)
    case(
        "numeric-string exp",
        present(cred("jti-str-exp", exp=str(NOW + 240))),
        False,
        "bad_claims",
        None,
    )
    case("missing exp", present(cred("jti-no-exp", exp=None)), False, "bad_claims", None)
    case(
        "private d in cnf jwk",
        present(
            cred(
                "jti-d",
                cnf={"jwk": {**device_jwk(public_key_b64url(device)), "d": b64url(bytes(32))}},
            )
        ),
        False,
        "bad_cnf",
        None,
    )
    case(
        "target this kiosk does not control",
        present(cred("jti-tgt", tgt="compartment:cmp-elsewhere")),
        False,
        "unknown_target",
        None,
    )
    case(
        "revoked user",
        present(cred("jti-user-rev", sub="usr-revoked")),
        False,
        "revoked",
        f"compartment:{COMPARTMENT}",
    )
    case(
        "revoked credential",
        present(cred("jti-revoked")),
        False,
        "revoked",
        f"compartment:{COMPARTMENT}",
    )
    case(
        "vendor with a revocation list 61 minutes old",
        present(cred("jti-vendor", role="vendor", sub="usr-vendor")),
        False,
        "revocation_list_stale",
        f"compartment:{COMPARTMENT}",
        synced_at=NOW - 61 * 60,
    )
    case(
        "resident with a revocation list 61 minutes old",
        present(cred("jti-res-old")),
        True,
        "granted",
        f"compartment:{COMPARTMENT}",
        synced_at=NOW - 61 * 60,
        emergency=False,
    )
    case(
        "proof signed by another device",
        present(cred("jti-other-dev"), holder=other),
        False,
        "bad_proof",
        f"compartment:{COMPARTMENT}",
    )
    case(
        "stale proof (iat 31 s old)",
        present(cred("jti-stale"), iat=NOW - 31),
        False,
        "proof_stale",
        f"compartment:{COMPARTMENT}",
    )
    case(
        "proof for another kiosk",
        present(cred("jti-kb-aud"), aud="kiosk-elsewhere"),
        False,
        "proof_wrong_audience",
        f"compartment:{COMPARTMENT}",
    )
    case(
        "proof without nonce",
        raw_kb(
            no_nonce_cred,
            {"alg": "EdDSA", "typ": KB_TYP},
            {"iat": NOW - 5, "aud": KIOSK, "sd_hash": sd_hash(no_nonce_cred)},
        ),
        False,
        "nonce_missing",
        f"compartment:{COMPARTMENT}",
    )
    case(
        "proof bound to another credential",
        f"{cred('jti-swap-b')}~{present(cred('jti-swap-a')).split('~')[1]}",
        False,
        "proof_mismatch",
        f"compartment:{COMPARTMENT}",
    )
    case(
        "alg none",
        f"{none_cred}~{present(cred('jti-x')).split('~')[1]}",
        False,
        "unsupported_alg",
        None,
    )
    case("attacker key in a jwk header", present(jwk_header_cred), False, "bad_header", None)
    case("unknown kid", present(cred("jti-kid", kid="cred-1999")), False, "unknown_kid", None)
    case(
        "claims changed after signing",
        present(f"{head}.{forged_body}.{sig}"),
        False,
        "bad_signature",
        None,
    )
    case(
        "emergency token signed by a credential key",
        present(cred("jti-emerg-2", issuer, "cred-2030-01", EMERGENCY_TYP, **emergency_claims)),
        False,
        "unknown_kid",
        None,
    )

    from kiosk import ble

    kiosk_key, kiosk_seed = seed_key("kiosk")
    challenge = ble.sign_challenge(kiosk_key, KIOSK, BLE_NONCE, NOW - 2)
    ble_presentation = cases[2]["presentation"]
    frames = ble.chunk(ble_presentation.encode("ascii"), 23)

    return {
        "ble": {
            "kiosk_seed_hex": kiosk_seed,
            "kiosk_public_key": public_key_b64url(kiosk_key),
            "challenge": challenge,
            "challenge_nonce": BLE_NONCE,
            "presentation_case": cases[2]["name"],
            "mtu": 23,
            "writes_hex": [frame.hex() for frame in frames],
        },
        "description": "Concierge credential/presentation test vectors; see docs/protocol.md. "
        "Evaluate each case at `now` with the kiosk state `sync` (revocation list synced at "
        "`synced_at`), the jtis in `spent` already spent, the BLE challenge `nonce` (null over "
        "QR) and the reader's `reader_target` (null: the credential's own target).",
        "keys": {
            "issuer": {"kid": "cred-2030-01", "seed_hex": issuer_seed},
            "issuer_next": {"kid": "cred-2030-02", "seed_hex": next_seed},
            "emergency": {"kid": "emerg-2030-01", "seed_hex": emergency_seed},
            "device": {"seed_hex": device_seed, "x": public_key_b64url(device)},
            "other_device": {"seed_hex": other_seed, "x": public_key_b64url(other)},
        },
        "sync": sync,
        "cases": cases,
    }


def render() -> str:
    return json.dumps(build(), indent=2, sort_keys=False) + "\n"


if __name__ == "__main__":
    PATH.write_text(render(), encoding="utf-8")
    print(f"wrote {PATH}")

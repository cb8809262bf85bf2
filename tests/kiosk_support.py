"""Helpers for kiosk tests: an issuer, a device and a synced kiosk store, all in-process."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from kiosk.credential import (
    CRED_TYP,
    EMERGENCY_TYP,
    device_jwk,
    make_presentation,
    public_key_b64url,
    sign_credential,
)
from kiosk.store import KioskStore
from kiosk.verifier import Verifier

ISSUER = "https://concierge.test"
NOW = 1_900_000_000


def jwk_of(key: Ed25519PrivateKey, kid: str, purpose: str = "credential") -> dict[str, str]:
    return {
        "kty": "OKP",
        "crv": "Ed25519",
        "x": public_key_b64url(key),
        "kid": kid,
        "alg": "EdDSA",
        "use": "sig",
        "status": "active",
        "purpose": purpose,
    }


@dataclass
class Scene:
    """One property with one kiosk, an issuer key, an emergency key and a phone."""

    store: KioskStore
    issuer_key: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)
    emergency_key: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)
    device: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)
    kiosk_id: str = "kiosk-home-1"
    property_id: str = "prop-home"
    compartment: str = "comp-a1"
    door: str = "door-main"
    revocations: list[dict[str, Any]] = field(default_factory=list)
    policy: dict[str, Any] = field(default_factory=dict)

    @property
    def verifier(self) -> Verifier:
        return Verifier(self.store)

    def sync_doc(self) -> dict[str, Any]:
        return {
            "kiosk_id": self.kiosk_id,
            "property_id": self.property_id,
            "issuer": ISSUER,
            "jwks": {
                "keys": [
                    jwk_of(self.issuer_key, "k1"),
                    jwk_of(self.emergency_key, "e1", "emergency"),
                ]
            },
            "revocations": {"version": len(self.revocations), "entries": self.revocations},
            "compartments": [
                {
                    "id": self.compartment,
                    "label": "A1",
                    "size": "S",
                    "purpose": "parcel",
                    "state": "occupied",
                }
            ],
            "doors": [{"id": self.door, "name": "Main entrance"}],
            "pin_hashes": [],
            "policy": {
                "kb_freshness_seconds": 30,
                "clock_skew_seconds": 30,
                "vendor_fail_closed_minutes": 60,
                **self.policy,
            },
            "server_time": float(NOW),
        }

    def sync(self, server_time: float = NOW) -> None:
        self.store.save_sync(self.sync_doc(), server_time)

    def claims(self, **overrides: Any) -> dict[str, Any]:
        claims: dict[str, Any] = {
            "iss": ISSUER,
            "sub": "user-resident",
            "aud": self.kiosk_id,
            "jti": secrets.token_urlsafe(12),
            "iat": NOW - 10,
            "nbf": NOW - 10,
            "exp": NOW + 290,
            "tgt": f"compartment:{self.compartment}",
            "role": "resident",
            "cnf": {"jwk": device_jwk(public_key_b64url(self.device))},
        }
        claims.update(overrides)
        return claims

    def credential(self, **overrides: Any) -> str:
        return sign_credential(self.issuer_key, "k1", self.claims(**overrides), CRED_TYP)

    def emergency(self, **overrides: Any) -> str:
        claims = self.claims(aud=f"property:{self.property_id}", tgt="any", role="staff")
        claims.update(overrides)
        return sign_credential(self.emergency_key, "e1", claims, EMERGENCY_TYP)

    def present(self, credential: str | None = None, **kb: Any) -> str:
        return make_presentation(
            credential or self.credential(),
            kb.pop("device", self.device),
            kb.pop("aud", self.kiosk_id),
            kb.pop("nonce", None),
            kb.pop("iat", NOW),
        )


def make_scene(tmp_path: Path, **kwargs: Any) -> Scene:
    scene = Scene(KioskStore(tmp_path / "kiosk.db"), **kwargs)
    scene.sync()
    return scene

"""The credential format helpers produce exactly the documented shape."""

from __future__ import annotations

import base64
import hashlib
import json

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from kiosk.credential import (
    CRED_TYP,
    EMERGENCY_TYP,
    KB_TYP,
    device_jwk,
    make_presentation,
    public_key_b64url,
    sign_credential,
)


def _part(token: str, index: int) -> dict:
    raw = token.split(".")[index]
    return json.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))


def test_credential_and_presentation_shape() -> None:
    issuer = Ed25519PrivateKey.generate()
    device = Ed25519PrivateKey.generate()
    claims = {
        "iss": "https://concierge.test",
        "sub": "user1",
        "aud": "kiosk1",
        "jti": "j1",
        "iat": 1000,
        "nbf": 1000,
        "exp": 1300,
        "tgt": "door:d1",
        "role": "resident",
        "cnf": {"jwk": device_jwk(public_key_b64url(device))},
    }
    credential = sign_credential(issuer, "k1", claims)
    assert _part(credential, 0) == {"alg": "EdDSA", "kid": "k1", "typ": CRED_TYP}
    assert (
        jwt.decode(
            credential,
            issuer.public_key(),
            algorithms=["EdDSA"],
            audience="kiosk1",
            options={"verify_exp": False, "verify_iat": False, "verify_nbf": False},
        )
        == claims
    )
    assert set(claims["cnf"]["jwk"]) == {"kty", "crv", "x"}
    emergency = sign_credential(issuer, "e1", claims, typ=EMERGENCY_TYP)
    assert _part(emergency, 0)["typ"] == EMERGENCY_TYP

    presentation = make_presentation(credential, device, "kiosk1", nonce="n0", iat=1100)
    cred_part, kb = presentation.split("~")
    assert cred_part == credential
    assert _part(kb, 0) == {"alg": "EdDSA", "typ": KB_TYP}
    kb_claims = jwt.decode(
        kb,
        device.public_key(),
        algorithms=["EdDSA"],
        audience="kiosk1",
        options={"verify_iat": False},
    )
    expected_hash = (
        base64.urlsafe_b64encode(hashlib.sha256((credential + "~").encode()).digest())
        .rstrip(b"=")
        .decode()
    )
    assert kb_claims == {"iat": 1100, "aud": "kiosk1", "nonce": "n0", "sd_hash": expected_hash}
    # Without a nonce the phone picks a random one of at least 128 bits.
    random_nonce = _part(make_presentation(credential, device, "kiosk1").split("~")[1], 1)["nonce"]
    assert len(base64.urlsafe_b64decode(random_nonce + "==")) >= 16

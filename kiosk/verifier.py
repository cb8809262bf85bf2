"""Offline verification of presentations (``<credential>~<kb-jwt>``): the kiosk's decision.

The ``Verifier`` answers granted (with the target) or denied (with a machine-readable reason)
from the presentation and the kiosk's cached state only; it never raises on hostile input.
PyJWT checks signatures, but it is wrapped (see issue 3): the length is bounded before any
parsing, header keys are allowlisted (``jwk``/``jku``/``x5u``/``crit`` are refused), keys are
Ed25519 objects pinned from the synced JWKS, every claim is required with ``strict_aud``, a
second strict msgspec pass checks claim types, and one-time use is keyed on ``jti``.

Reasons (stable strings, also written to the journal): see ``REASONS``.
"""

from __future__ import annotations

import base64
import hmac
import re
import sqlite3
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import jwt
import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from kiosk.credential import ALG, CRED_TYP, EMERGENCY_TYP, KB_TYP, sd_hash
from kiosk.store import AlreadySpent, KioskStore

#: Longest presentation a kiosk parses (a typical one is ~800 characters).
MAX_PRESENTATION_CHARS = 4096
DEFAULT_KB_FRESHNESS = 30
DEFAULT_CLOCK_SKEW = 30
DEFAULT_VENDOR_FAIL_CLOSED_MINUTES = 60
NONCE_MIN, NONCE_MAX = 22, 256

REASONS = {
    "granted": "all checks passed",
    "not_synced": "the kiosk has no synced keys yet",
    "too_large": "longer than MAX_PRESENTATION_CHARS",
    "malformed": "not <jwt>~<kb-jwt> in base64url JSON",
    "bad_header": "credential header is not exactly alg/kid/typ (jwk, jku, x5u, crit refused)",
    "unsupported_alg": "alg is not EdDSA",
    "wrong_typ": "typ is not concierge-cred+jwt or concierge-emergency+jwt",
    "unknown_kid": "kid is not a synced key for this purpose",
    "bad_signature": "credential signature invalid",
    "bad_claims": "claims missing, of the wrong type, or unknown",
    "bad_cnf": "cnf.jwk is not a public OKP Ed25519 key",
    "wrong_issuer": "iss is not the synced issuer",
    "wrong_audience": "aud is not this kiosk (or, for emergency, this property)",
    "not_yet_valid": "nbf (or iat) is in the future beyond the clock skew",
    "expired": "exp has passed beyond the clock skew",
    "unknown_target": "tgt is not a door or compartment this kiosk controls",
    "wrong_target": "tgt is not the target asked for at this reader",
    "revoked": "credential, device or user is on the revocation list",
    "revocation_list_stale": "role is fail-closed and the revocation list is too old",
    "bad_proof": "kb-jwt header, signature or claims invalid",
    "proof_mismatch": "kb-jwt sd_hash does not bind this credential",
    "proof_wrong_audience": "kb-jwt aud is not this kiosk",
    "proof_stale": "kb-jwt iat outside the freshness window",
    "nonce_missing": "kb-jwt has no usable nonce",
    "nonce_mismatch": "kb-jwt nonce is not the kiosk's challenge",
    "already_used": "jti already spent at this kiosk",
    "internal_error": "unexpected failure (denied, fail closed)",
    "storage_error": "the spent store could not be written (denied, fail closed)",
}

_CHARSET = re.compile(r"\A[A-Za-z0-9_\-.~]+\Z")
_CRED_HEADER_KEYS = frozenset({"alg", "kid", "typ"})
_KB_HEADER_KEYS = frozenset({"alg", "typ"})
_FORBIDDEN_HEADER_KEYS = frozenset({"jwk", "jku", "x5u", "x5c", "crit"})

Short = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
Role = Literal["resident", "vendor", "staff", "courier"]


class Jwk(msgspec.Struct, forbid_unknown_fields=True):
    kty: Literal["OKP"]
    crv: Literal["Ed25519"]
    x: Annotated[str, msgspec.Meta(min_length=43, max_length=43)]


class Cnf(msgspec.Struct, forbid_unknown_fields=True):
    jwk: Jwk


class Claims(msgspec.Struct, forbid_unknown_fields=True):
    iss: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
    sub: Short
    aud: Annotated[str, msgspec.Meta(min_length=1, max_length=160)]
    jti: Short
    iat: int
    nbf: int
    exp: int
    tgt: Annotated[str, msgspec.Meta(min_length=1, max_length=160)]
    role: Role
    cnf: Cnf


class KbClaims(msgspec.Struct, forbid_unknown_fields=True):
    iat: int
    aud: Annotated[str, msgspec.Meta(min_length=1, max_length=160)]
    nonce: str
    sd_hash: Annotated[str, msgspec.Meta(min_length=43, max_length=43)]


class Decision(msgspec.Struct, kw_only=True):
    """The verifier's answer; ``journal_data`` is the contract's decision entry."""

    granted: bool
    reason: str
    target: str | None = None
    jti: str | None = None
    sub: str | None = None
    role: str | None = None
    emergency: bool = False
    exp: int | None = None
    kid: str | None = None

    def journal_data(self, channel: str) -> dict[str, Any]:
        return {
            "granted": self.granted,
            "reason": self.reason,
            "jti": self.jti,
            "target": self.target,
            "sub": self.sub,
            "role": self.role,
            "emergency": self.emergency,
            "channel": channel,
        }

    def public(self) -> dict[str, Any]:
        """What ``concierge-kiosk verify`` prints."""
        return {
            "granted": self.granted,
            "reason": self.reason,
            "target": self.target,
            "emergency": self.emergency,
            "jti": self.jti,
        }


class _Denied(Exception):
    def __init__(self, reason: str, **known: Any) -> None:
        super().__init__(reason)
        self.reason = reason
        self.known = known


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _header(segment: str) -> dict[str, Any]:
    try:
        value = msgspec.json.decode(_b64url_decode(segment))
    except (ValueError, msgspec.DecodeError):
        raise _Denied("malformed") from None
    if not isinstance(value, dict):
        raise _Denied("malformed")
    return value


def public_key_from_x(x: str) -> Ed25519PublicKey:
    raw = _b64url_decode(x)
    if len(raw) != 32:
        raise ValueError("not 32 bytes")
    return Ed25519PublicKey.from_public_bytes(raw)


@dataclass(frozen=True)
class TrustState:
    """What the kiosk trusts, derived from its last sync document."""

    kiosk_id: str
    property_id: str
    issuer: str
    credential_keys: dict[str, Ed25519PublicKey]
    emergency_keys: dict[str, Ed25519PublicKey]
    targets: frozenset[str]
    revoked_credentials: frozenset[str]
    revoked_devices: frozenset[str]
    revoked_users: frozenset[str]
    kb_freshness: int = DEFAULT_KB_FRESHNESS
    skew: int = DEFAULT_CLOCK_SKEW
    fail_closed: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_sync(cls, doc: dict[str, Any]) -> TrustState:
        credential_keys: dict[str, Ed25519PublicKey] = {}
        emergency_keys: dict[str, Ed25519PublicKey] = {}
        for key in (doc.get("jwks") or {}).get("keys") or []:
            if not isinstance(key, dict) or "d" in key:
                continue
            if key.get("kty") != "OKP" or key.get("crv") != "Ed25519":
                continue
            if key.get("alg", ALG) != ALG or key.get("use", "sig") != "sig":
                continue
            kid, x = key.get("kid"), key.get("x")
            if not isinstance(kid, str) or not isinstance(x, str):
                continue
            try:
                public = public_key_from_x(x)
            except ValueError:
                continue
            purpose = key.get("purpose", "credential")
            (emergency_keys if purpose == "emergency" else credential_keys)[kid] = public
        targets = {f"compartment:{c['id']}" for c in doc.get("compartments") or []}
        targets |= {f"door:{d['id']}" for d in doc.get("doors") or []}
        revoked: dict[str, set[str]] = {"credential": set(), "device": set(), "user": set()}
        for entry in (doc.get("revocations") or {}).get("entries") or []:
            kind = entry.get("kind")
            if kind in revoked:
                for name in ("id", "jti", "public_key"):
                    if isinstance(entry.get(name), str):
                        revoked[kind].add(entry[name])
        policy = doc.get("policy") or {}
        fail_closed: dict[str, float] = {
            "vendor": float(
                policy.get("vendor_fail_closed_minutes", DEFAULT_VENDOR_FAIL_CLOSED_MINUTES)
            )
        }
        for role, minutes in (policy.get("fail_closed_minutes") or {}).items():
            if minutes is None:
                fail_closed.pop(role, None)
            else:
                fail_closed[role] = float(minutes)
        return cls(
            kiosk_id=str(doc["kiosk_id"]),
            property_id=str(doc["property_id"]),
            issuer=str(doc["issuer"]),
            credential_keys=credential_keys,
            emergency_keys=emergency_keys,
            targets=frozenset(targets),
            revoked_credentials=frozenset(revoked["credential"]),
            revoked_devices=frozenset(revoked["device"]),
            revoked_users=frozenset(revoked["user"]),
            kb_freshness=int(policy.get("kb_freshness_seconds", DEFAULT_KB_FRESHNESS)),
            skew=int(policy.get("clock_skew_seconds", DEFAULT_CLOCK_SKEW)),
            fail_closed=fail_closed,
        )


class Verifier:
    """Decisions for one kiosk from its ``KioskStore`` (synced state, clock, spent jtis)."""

    def __init__(self, store: KioskStore) -> None:
        self.store = store
        self._trust: tuple[str | None, TrustState | None] = (None, None)

    def trust(self) -> TrustState | None:
        serial = self.store.sync_serial()
        if serial != self._trust[0]:
            doc = self.store.synced()
            try:
                state = None if doc is None else TrustState.from_sync(doc)
            except (KeyError, TypeError, ValueError, AttributeError):
                state = None
            self._trust = (serial, state)
        return self._trust[1]

    def revocation_age(self, now: float | None = None) -> float | None:
        """Seconds since the revocation list was synced (None: never)."""
        synced_at = self.store.synced_at()
        if synced_at is None:
            return None
        return max(0.0, (self.store.now() if now is None else now) - synced_at)

    # -- public API ----------------------------------------------------------------------

    def check(
        self,
        presentation: str | bytes,
        *,
        nonce: str | None = None,
        target: str | None = None,
        now: float | None = None,
    ) -> Decision:
        """The decision, without recording anything (the spent store is only read).

        ``nonce``: the challenge this kiosk issued (BLE); the kb-jwt must carry exactly it.
        ``target``: the door or compartment the reader is attached to, when it is one.
        """
        try:
            return self._check(presentation, nonce, target, now)
        except _Denied as denied:
            return Decision(granted=False, reason=denied.reason, **denied.known)
        except Exception:
            return Decision(granted=False, reason="internal_error")

    def redeem(
        self,
        presentation: str | bytes,
        *,
        channel: str = "qr",
        nonce: str | None = None,
        target: str | None = None,
        now: float | None = None,
    ) -> Decision:
        """Decide, then journal the decision; a grant records the jti spent in the same commit.

        Open the door only after this returns a grant: the jti is durable by then.
        """
        moment = self.store.now() if now is None else now
        decision = self.check(presentation, nonce=nonce, target=target, now=moment)
        spend = None
        if decision.granted and decision.jti is not None and decision.exp is not None:
            spend = (decision.jti, float(decision.exp))
        try:
            self.store.record_decision(decision.journal_data(channel), spend=spend, now=moment)
        except sqlite3.Error:
            # Nothing durable, so nothing opens (the journal could not take it either).
            return Decision(granted=False, reason="storage_error", jti=decision.jti)
        except AlreadySpent:
            decision = Decision(
                granted=False,
                reason="already_used",
                jti=decision.jti,
                sub=decision.sub,
                role=decision.role,
                target=decision.target,
                emergency=decision.emergency,
            )
            self.store.record_decision(decision.journal_data(channel), spend=None, now=moment)
        return decision

    # -- the checks ----------------------------------------------------------------------

    def _check(
        self,
        presentation: str | bytes,
        expected_nonce: str | None,
        requested_target: str | None,
        now: float | None,
    ) -> Decision:
        if isinstance(presentation, bytes | bytearray):
            if len(presentation) > MAX_PRESENTATION_CHARS:
                raise _Denied("too_large")
            try:
                presentation = bytes(presentation).decode("ascii")
            except UnicodeDecodeError:
                raise _Denied("malformed") from None
        if not isinstance(presentation, str):
            raise _Denied("malformed")
        if len(presentation) > MAX_PRESENTATION_CHARS:
            raise _Denied("too_large")
        presentation = presentation.strip()
        if not _CHARSET.match(presentation):
            raise _Denied("malformed")
        trust = self.trust()
        if trust is None:
            raise _Denied("not_synced")
        moment = self.store.now() if now is None else now

        parts = presentation.split("~")
        if len(parts) != 2 or not parts[0] or not parts[1]:
            raise _Denied("malformed")
        credential, kb = parts
        segments = credential.split(".")
        if len(segments) != 3 or not segments[0]:
            raise _Denied("malformed")

        # 1. Credential header: exact allowlist before any key lookup.
        header = _header(segments[0])
        if set(header) & _FORBIDDEN_HEADER_KEYS or set(header) != _CRED_HEADER_KEYS:
            raise _Denied("bad_header")
        if header["alg"] != ALG:
            raise _Denied("unsupported_alg")
        typ = header["typ"]
        if typ not in (CRED_TYP, EMERGENCY_TYP):
            raise _Denied("wrong_typ")
        emergency = typ == EMERGENCY_TYP
        kid = header["kid"]
        keys = trust.emergency_keys if emergency else trust.credential_keys
        if not isinstance(kid, str) or kid not in keys:
            raise _Denied("unknown_kid")
        if not (segments[1] and segments[2]):
            raise _Denied("malformed")
        expected_aud = f"property:{trust.property_id}" if emergency else trust.kiosk_id

        # 2. Signature (pinned Ed25519 key, EdDSA only), aud/iss, every claim present.
        try:
            raw_claims = jwt.decode(
                credential,
                keys[kid],
                algorithms=[ALG],
                audience=expected_aud,
                issuer=trust.issuer,
                options={
                    "require": ["iss", "sub", "aud", "jti", "iat", "nbf", "exp"],
                    "strict_aud": True,
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                },
            )
        except jwt.InvalidSignatureError:
            raise _Denied("bad_signature") from None
        except jwt.InvalidAudienceError:
            raise _Denied("wrong_audience") from None
        except jwt.InvalidIssuerError:
            raise _Denied("wrong_issuer") from None
        except jwt.MissingRequiredClaimError:
            raise _Denied("bad_claims") from None
        except jwt.DecodeError:
            raise _Denied("malformed") from None
        except jwt.PyJWTError:
            raise _Denied("bad_claims") from None

        # 3. Strict second pass over the claims' types.
        jwk = (raw_claims.get("cnf") or {}).get("jwk") if isinstance(raw_claims, dict) else None
        if isinstance(jwk, dict) and "d" in jwk:
            raise _Denied("bad_cnf")
        try:
            claims = msgspec.convert(raw_claims, Claims, strict=True)
        except msgspec.ValidationError:
            raise _Denied("bad_claims") from None
        known: dict[str, Any] = {
            "jti": claims.jti,
            "sub": claims.sub,
            "role": claims.role,
            "emergency": emergency,
            "kid": kid,
        }

        def deny(reason: str, **more: Any) -> _Denied:
            return _Denied(reason, **known, **more)

        # 4. Time, with the kiosk's floor clock.
        if claims.nbf > moment + trust.skew or claims.iat > moment + trust.skew:
            raise deny("not_yet_valid")
        if claims.exp + trust.skew <= moment:
            raise deny("expired")

        # 5. Target.
        if emergency:
            if claims.tgt != "any" or claims.role != "staff":
                raise deny("bad_claims")
            target = requested_target or "any"
            if requested_target is not None and requested_target not in trust.targets:
                raise deny("unknown_target")
        else:
            if claims.tgt not in trust.targets:
                raise deny("unknown_target")
            if requested_target is not None and requested_target != claims.tgt:
                raise deny("wrong_target")
            target = claims.tgt
        known["target"] = target

        # 6. Revocation, and the fail-closed age limit for some roles.
        device_x = claims.cnf.jwk.x
        if (
            claims.jti in trust.revoked_credentials
            or device_x in trust.revoked_devices
            or claims.sub in trust.revoked_users
        ):
            raise deny("revoked")
        limit = trust.fail_closed.get(claims.role)
        if limit is not None:
            age = self.revocation_age(moment)
            if age is None or age > limit * 60:
                raise deny("revocation_list_stale")

        # 7. Holder binding: kb-jwt by the cnf key, over this credential, for this kiosk, now.
        try:
            device_key = public_key_from_x(device_x)
        except ValueError:
            raise deny("bad_cnf") from None
        kb_segments = kb.split(".")
        if len(kb_segments) != 3 or not all(kb_segments):
            raise deny("bad_proof")
        try:
            kb_header = _header(kb_segments[0])
        except _Denied:
            raise deny("bad_proof") from None
        if set(kb_header) != _KB_HEADER_KEYS:
            raise deny("bad_proof")
        if kb_header["alg"] != ALG or kb_header["typ"] != KB_TYP:
            raise deny("bad_proof")
        try:
            raw_kb = jwt.decode(
                kb,
                device_key,
                algorithms=[ALG],
                options={
                    "require": ["iat", "aud", "sd_hash"],
                    "verify_aud": False,
                    "verify_iat": False,
                    "verify_exp": False,
                    "verify_nbf": False,
                },
            )
        except jwt.PyJWTError:
            raise deny("bad_proof") from None
        if not isinstance(raw_kb, dict):
            raise deny("bad_proof")
        if "nonce" not in raw_kb:
            raise deny("nonce_missing")
        try:
            kb_claims = msgspec.convert(raw_kb, KbClaims, strict=True)
        except msgspec.ValidationError:
            raise deny("bad_proof") from None
        if not hmac.compare_digest(kb_claims.sd_hash, sd_hash(credential)):
            raise deny("proof_mismatch")
        if kb_claims.aud != trust.kiosk_id:
            raise deny("proof_wrong_audience")
        # Age bounded by the freshness window alone (phone and kiosk both run on server time);
        # the clock skew only forgives a proof that seems to come from the near future.
        if not (moment - trust.kb_freshness <= kb_claims.iat <= moment + trust.skew):
            raise deny("proof_stale")
        if not NONCE_MIN <= len(kb_claims.nonce) <= NONCE_MAX:
            raise deny("nonce_missing")
        if expected_nonce is not None and not hmac.compare_digest(
            kb_claims.nonce.encode(), expected_nonce.encode()
        ):
            raise deny("nonce_mismatch")

        # 8. One time only (keyed on jti, never on the token text).
        if self.store.is_spent(claims.jti):
            raise deny("already_used")
        return Decision(granted=True, reason="granted", exp=claims.exp, **known)

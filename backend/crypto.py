"""The key-encryption key (KEK) and what is derived from it.

Every process pointed at the same database and the same KEK agrees on every key and token:
signing keys live in the database sealed with the KEK (AES-256-GCM), and the access-token MAC
key is derived from it with HKDF. With no KEK configured, the embedded default creates a key
file under ``var/`` on first start (mode 0600). The KEK itself is never logged.
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from backend.settings import Settings


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _parse_kek(text: str) -> bytes:
    key = b64url_decode(text.strip())
    if len(key) != 32:
        raise ValueError("the key-encryption key must be 32 bytes, base64url-encoded")
    return key


def load_kek(settings: Settings) -> bytes:
    """The KEK from the setting, the file setting, or the embedded default file (created once)."""
    if settings.key_encryption_key:
        return _parse_kek(settings.key_encryption_key)
    path = Path(settings.key_encryption_key_file or Path(settings.var_dir) / "key-encryption.key")
    if settings.key_encryption_key_file is None and not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(b64url(secrets.token_bytes(32)) + "\n")
    return _parse_kek(path.read_text())


def derive_key(kek: bytes, purpose: str) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=purpose.encode()).derive(kek)


def seal(kek: bytes, plaintext: bytes, *, context: str) -> str:
    """Encrypt with a key derived for ``context`` (bound as associated data too)."""
    nonce = secrets.token_bytes(12)
    key = derive_key(kek, "seal:" + context)
    return b64url(nonce + AESGCM(key).encrypt(nonce, plaintext, context.encode()))


def unseal(kek: bytes, sealed: str, *, context: str) -> bytes:
    raw = b64url_decode(sealed)
    key = derive_key(kek, "seal:" + context)
    return AESGCM(key).decrypt(raw[:12], raw[12:], context.encode())


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def fingerprint(secret: str) -> str:
    """A short, non-reversible name for a secret (token, push token) that is safe to log."""
    return sha256_hex(secret)[:12]

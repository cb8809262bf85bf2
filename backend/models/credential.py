"""Signing keys, issued credentials, revocations and the kiosk journal.

Invariants:
- At most one ``active`` and one ``next`` signing key per purpose (a partial unique index):
  every process agrees on which key signs. A key is published (JWKS, kiosk sync) as ``next``
  before it signs anything, and stays published as ``retiring`` until ``publish_until``, the
  expiry of the last credential it signed.
- Private keys are stored only sealed with the key-encryption key (``backend.crypto.seal``).
- A credential's ``jti`` is its ``id``: what kiosks report and revoke is what the server stores.
- ``(kiosk_id, seq)`` is unique in the journal: resending a batch stores nothing twice.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar

from sqlalchemy import Index, UniqueConstraint, text
from sqlmodel import Field, SQLModel

from backend.models.base import fk, id_field, json_field, time_field

KEY_PURPOSES = ("credential", "emergency")
KEY_STATUSES = ("next", "active", "retiring", "retired")


class SigningKey(SQLModel, table=True):
    """An Ed25519 credential-signing key; ``private_key_sealed`` is wiped once it stops signing."""

    __tablename__ = "signing_key"
    __table_args__ = (
        Index(
            "uq_signing_key_current",
            "purpose",
            "status",
            unique=True,
            sqlite_where=text("status IN ('active', 'next')"),
            postgresql_where=text("status IN ('active', 'next')"),
        ),
    )

    kid: str = Field(primary_key=True, max_length=64)
    purpose: str = Field(default="credential", max_length=16)  # credential | emergency
    status: str = Field(default="next", max_length=16, index=True)
    public_key: str = Field(max_length=64)  # raw Ed25519, base64url
    private_key_sealed: str | None = Field(default=None, max_length=256)
    created_at: datetime = time_field()
    activated_at: datetime | None = time_field(nullable=True)
    retired_at: datetime | None = time_field(nullable=True)  # when it stopped signing
    publish_until: datetime | None = time_field(nullable=True)  # retiring: last signed expiry


class Credential(SQLModel, table=True):
    """Every credential issued: who, which phone, which kiosk and target, valid when."""

    id: str = id_field()  # also the JWT's jti
    jti: str = Field(max_length=32, unique=True)
    kid: str = Field(max_length=64, index=True)
    user_id: str = fk("user.id", ondelete="CASCADE")
    device_id: str = fk("device.id", ondelete="CASCADE")
    kiosk_id: str | None = fk("kiosk.id", nullable=True, ondelete="CASCADE")
    property_id: str = fk("property.id", ondelete="CASCADE")
    target: str = Field(max_length=64)
    role: str = Field(max_length=16)
    kind: str = Field(default="standard", max_length=16)  # standard | emergency
    parcel_id: str | None = Field(default=None, max_length=32, index=True)
    work_order_id: str | None = Field(default=None, max_length=32, index=True)
    key_id: str | None = Field(default=None, max_length=32)
    issued_at: datetime = time_field()
    not_before: datetime = time_field()
    expires_at: datetime = time_field(index=True)
    redeemed_at: datetime | None = time_field(nullable=True)
    redeemed_kiosk_id: str | None = Field(default=None, max_length=32)
    redemptions: int = 0
    revoked_at: datetime | None = time_field(nullable=True)

    # The signed token, present only on rows returned by issuance; never stored.
    token: ClassVar[str | None] = None


class CredentialRedemption(SQLModel, table=True):
    """Every redemption a kiosk reported (a double spend keeps both rows)."""

    __tablename__ = "credential_redemption"

    id: int | None = Field(default=None, primary_key=True)
    credential_id: str = fk("credential.id", ondelete="CASCADE")
    kiosk_id: str = fk("kiosk.id", ondelete="CASCADE")
    seq: int
    occurred_at: datetime = time_field()
    forked: bool = False
    revoked: bool = False


class Revocation(SQLModel, table=True):
    """One entry of a property's revocation list, synced to its kiosks until ``expires_at``.

    ``subject_id`` is what staff named (credential, device or user id); ``match`` is what a
    kiosk can compare offline: the credential's ``jti``, the device's public key (the ``x`` of
    ``cnf.jwk``) or the user id (``sub``). The list's version is the largest ``id``.
    """

    id: int | None = Field(default=None, primary_key=True)
    property_id: str = fk("property.id", ondelete="CASCADE")
    kind: str = Field(max_length=16)  # credential | device | user
    subject_id: str = Field(max_length=32)
    match: str = Field(max_length=64)
    reason: str = Field(default="", max_length=500)
    actor: str = Field(default="system", max_length=64)
    created_at: datetime = time_field()
    expires_at: datetime = time_field(index=True)

    @property
    def version(self) -> int:
        return self.id or 0


class JournalEntry(SQLModel, table=True):
    """One entry of a kiosk's append-only journal, as the kiosk sent it."""

    __tablename__ = "journal_entry"
    __table_args__ = (
        UniqueConstraint("kiosk_id", "epoch", "seq", name="uq_journal_entry_kiosk_epoch_seq"),
    )

    id: int | None = Field(default=None, primary_key=True)
    kiosk_id: str = fk("kiosk.id", index=False, ondelete="CASCADE")
    epoch: int = 0  # the kiosk's enrollment (``Kiosk.journal_epoch``): seqs restart at 1 in each
    seq: int
    type: str = Field(max_length=64, index=True)
    occurred_at: datetime = time_field()
    data: dict[str, Any] = json_field()
    prev_hash: str = Field(default="", max_length=128)
    hash: str = Field(default="", max_length=128)
    content_hash: str = Field(max_length=64)
    status: str = Field(default="stored", max_length=16)  # stored | handled | failed
    received_at: datetime = time_field()


class JournalFork(SQLModel, table=True):
    """A second version of an already stored ``(kiosk, seq)``: evidence of a cloned or
    rolled-back kiosk, kept for staff (one row per distinct content)."""

    __tablename__ = "journal_fork"
    __table_args__ = (
        UniqueConstraint(
            "kiosk_id", "epoch", "seq", "content_hash", name="uq_journal_fork_epoch_content"
        ),
    )

    id: int | None = Field(default=None, primary_key=True)
    kiosk_id: str = fk("kiosk.id", index=False, ondelete="CASCADE")
    epoch: int = 0
    seq: int
    type: str = Field(max_length=64)
    occurred_at: datetime = time_field()
    data: dict[str, Any] = json_field()
    prev_hash: str = Field(default="", max_length=128)
    hash: str = Field(default="", max_length=128)
    content_hash: str = Field(max_length=64)
    received_at: datetime = time_field()


class JournalCursor(SQLModel, table=True):
    """Per kiosk: every seq of ``epoch`` up to ``accepted_through`` is stored (so gaps are
    searched above it); a cursor of an older epoch counts as 0."""

    __tablename__ = "journal_cursor"

    kiosk_id: str = Field(
        foreign_key="kiosk.id", primary_key=True, max_length=32, ondelete="CASCADE"
    )
    epoch: int = 0
    accepted_through: int = 0
    updated_at: datetime = time_field()

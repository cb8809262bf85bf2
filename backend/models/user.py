"""People, their roles per property, their phones, and their sessions."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import UniqueConstraint
from sqlmodel import Field, SQLModel

from backend.models.base import fk, id_field, time_field


class User(SQLModel, table=True):
    id: str = id_field()
    email: str = Field(max_length=320, unique=True, index=True)
    name: str = Field(default="", max_length=200)
    password_hash: str = Field(max_length=256)
    is_admin: bool = False
    is_active: bool = True
    created_at: datetime = time_field()


class Membership(SQLModel, table=True):
    """A user's role at one property: resident (with unit), vendor (with company), courier, staff."""

    __table_args__ = (UniqueConstraint("user_id", "property_id", "role"),)

    id: str = id_field()
    user_id: str = fk("user.id", ondelete="CASCADE")
    property_id: str = fk("property.id", ondelete="CASCADE")
    role: str = Field(max_length=16)
    unit_id: str | None = fk("unit.id", nullable=True, ondelete="CASCADE")
    company: str | None = Field(default=None, max_length=200)
    can_emergency: bool = False
    created_at: datetime = time_field()


class Invitation(SQLModel, table=True):
    """A one-time code that turns into a user and a membership; only the code's hash is stored."""

    id: str = id_field()
    property_id: str = fk("property.id", ondelete="CASCADE")
    email: str = Field(max_length=320)
    role: str = Field(max_length=16)
    unit_id: str | None = fk("unit.id", nullable=True, ondelete="CASCADE")
    company: str | None = Field(default=None, max_length=200)
    code_hash: str = Field(max_length=64, unique=True)
    invited_by: str | None = fk("user.id", nullable=True, ondelete="SET NULL")
    expires_at: datetime = time_field()
    accepted_at: datetime | None = time_field(nullable=True)
    created_at: datetime = time_field()


class RefreshToken(SQLModel, table=True):
    """One link of a rotating refresh-token family; presenting a used link revokes the family."""

    __tablename__ = "refresh_token"

    id: str = id_field()
    family_id: str = Field(max_length=32, index=True)
    user_id: str = fk("user.id", ondelete="CASCADE")
    token_hash: str = Field(max_length=64, unique=True)
    expires_at: datetime = time_field()
    used_at: datetime | None = time_field(nullable=True)
    revoked_at: datetime | None = time_field(nullable=True)
    created_at: datetime = time_field()


class LoginFailure(SQLModel, table=True):
    """Failed logins, counted per account and per client address for throttling."""

    __tablename__ = "login_failure"

    id: int | None = Field(default=None, primary_key=True)
    email: str = Field(max_length=320, index=True)
    address: str = Field(max_length=64, index=True)
    at: datetime = time_field(index=True)


class Device(SQLModel, table=True):
    """A phone: credentials are bound to its Ed25519 key; pushes go to its token."""

    id: str = id_field()
    user_id: str = fk("user.id", ondelete="CASCADE")
    platform: str = Field(max_length=16)
    public_key: str = Field(max_length=64)
    push_token: str | None = Field(default=None, max_length=4096)
    push_token_disabled_at: datetime | None = time_field(nullable=True)
    revoked_at: datetime | None = time_field(nullable=True)
    created_at: datetime = time_field()

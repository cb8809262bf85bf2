"""Shared column helpers: string ids, aware timestamps, JSON columns."""

from __future__ import annotations

import base64
import secrets
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, Column, DateTime
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator
from sqlmodel import Field


class AwareDateTime(TypeDecorator[datetime]):
    """Timestamps are always aware UTC in Python, whatever the database returns.

    SQLite has no time zone type and hands back naive values; PostgreSQL uses timestamptz.
    A naive datetime on the way in is a bug and raises.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def new_id() -> str:
    """16 lowercase base32 characters (80 random bits): unguessable, short enough for QR codes."""
    return base64.b32encode(secrets.token_bytes(10)).decode().lower()


def utcnow() -> datetime:
    return datetime.now(UTC)


def id_field() -> Any:
    return Field(default_factory=new_id, primary_key=True, max_length=32)


def fk(
    target: str, *, index: bool = True, nullable: bool = False, ondelete: str | None = None
) -> Any:
    options: dict[str, Any] = {"ondelete": ondelete} if ondelete else {}
    return Field(
        default=None if nullable else ...,
        foreign_key=target,
        index=index,
        max_length=32,
        nullable=nullable,
        **options,
    )


def json_field(default_factory: Any = dict) -> Any:
    return Field(default_factory=default_factory, sa_column=Column(JSON, nullable=False))


def time_field(*, nullable: bool = False, index: bool = False) -> Any:
    if nullable:
        return Field(default=None, sa_column=Column(AwareDateTime(), nullable=True, index=index))
    return Field(
        default_factory=utcnow, sa_column=Column(AwareDateTime(), nullable=False, index=index)
    )

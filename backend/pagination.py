"""Keyset pagination: lists answer ``{items, next_cursor}`` and take ``?limit=&cursor=``."""

from __future__ import annotations

import base64
from typing import Any, Generic, TypeVar

import msgspec
from sqlmodel import col
from sqlmodel.ext.asyncio.session import AsyncSession

from backend import errors

T = TypeVar("T")
MAX_LIMIT = 200


class Page(msgspec.Struct, Generic[T]):
    items: list[T]
    next_cursor: str | None


def encode_cursor(value: str | int) -> str:
    return base64.urlsafe_b64encode(str(value).encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> str | None:
    if cursor is None:
        return None
    try:
        return base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (ValueError, UnicodeDecodeError):
        raise errors.ValidationFailed("cursor is not valid") from None


async def fetch_page(
    session: AsyncSession, statement: Any, key_column: Any, *, limit: int, cursor: str | None
) -> tuple[list[Any], str | None]:
    """Rows ordered by ``key_column`` after the cursor, and the cursor of the next page."""
    if not 1 <= limit <= MAX_LIMIT:
        raise errors.ValidationFailed(f"limit must be between 1 and {MAX_LIMIT}")
    after = decode_cursor(cursor)
    if after is not None:
        statement = statement.where(col(key_column) > after)
    rows = list((await session.exec(statement.order_by(col(key_column)).limit(limit + 1))).all())
    next_cursor = None
    if len(rows) > limit:
        rows = rows[:limit]
        last = rows[-1]
        next_cursor = encode_cursor(getattr(last, key_column.key))
    return rows, next_cursor

"""Who is calling: access tokens, the Actor, and the per-audience dependencies.

Access tokens are short-lived HS256 JWTs keyed from the KEK (every process agrees), pinned to
one algorithm, audience and issuer. They carry only the user id; roles are loaded from the
database on every request, so removing a member takes effect at once.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import jwt
from litestar.connection import ASGIConnection
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from backend import errors
from backend.models import Membership, User
from backend.runtime import Runtime

ACCESS_AUDIENCE = "concierge:api"
ACCESS_TYP = "at+jwt"
ROLES = ("resident", "vendor", "courier", "staff", "admin")


@dataclass(frozen=True)
class Role:
    property_id: str
    role: str
    unit_id: str | None = None
    company: str | None = None
    can_emergency: bool = False


@dataclass(frozen=True)
class Actor:
    """The authenticated user and their roles; the input of every scoping decision."""

    user_id: str
    email: str
    name: str
    is_admin: bool
    roles: tuple[Role, ...] = field(default_factory=tuple)

    def properties_as(self, *roles: str) -> set[str]:
        return {r.property_id for r in self.roles if r.role in roles}

    @property
    def staff_property_ids(self) -> set[str]:
        return self.properties_as("staff")

    @property
    def unit_ids(self) -> set[str]:
        return {r.unit_id for r in self.roles if r.role == "resident" and r.unit_id}

    def is_staff_at(self, property_id: str) -> bool:
        return self.is_admin or property_id in self.staff_property_ids

    def has_role(self, *roles: str) -> bool:
        return any(r.role in roles for r in self.roles)


def issue_access_token(runtime: Runtime, user_id: str, session_id: str, now: datetime) -> str:
    settings = runtime.settings
    claims = {
        "iss": settings.issuer,
        "aud": ACCESS_AUDIENCE,
        "sub": user_id,
        "sid": session_id,
        "iat": int(now.timestamp()),
        "exp": int((now + timedelta(seconds=settings.access_token_ttl_seconds)).timestamp()),
        "jti": secrets.token_urlsafe(12),
    }
    return jwt.encode(
        claims, runtime.access_token_key, algorithm="HS256", headers={"typ": ACCESS_TYP}
    )


def decode_access_token(runtime: Runtime, token: str) -> dict[str, Any]:
    """Claims of a valid access token; ``TokenExpired`` and ``InvalidToken`` are distinct."""
    if len(token) > 2048:
        raise errors.InvalidToken()
    try:  # one pass: signature, then claims; the header's type is checked after
        decoded = jwt.decode_complete(
            token,
            runtime.access_token_key,
            algorithms=["HS256"],
            audience=ACCESS_AUDIENCE,
            issuer=runtime.settings.issuer,
            leeway=runtime.settings.clock_skew_seconds,
            options={"require": ["exp", "iat", "sub", "aud", "iss"], "strict_aud": True},
        )
    except jwt.ExpiredSignatureError:
        raise errors.TokenExpired() from None
    except jwt.PyJWTError:
        raise errors.InvalidToken() from None
    header, claims = decoded["header"], decoded["payload"]
    if header.get("typ") != ACCESS_TYP or header.get("alg") != "HS256":
        raise errors.InvalidToken()
    if (
        not isinstance(claims, dict)
        or not isinstance(claims.get("exp"), int)
        or not isinstance(claims.get("sub"), str)
    ):
        raise errors.InvalidToken()
    return claims


def bearer_token(connection: ASGIConnection[Any, Any, Any, Any]) -> str:
    header = connection.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise errors.NotAuthenticated()
    return token.strip()


async def load_actor(session: AsyncSession, user_id: str) -> Actor:
    """The actor for a user id; an unknown or deactivated user is not authenticated."""
    # One round trip for the user and their memberships: every authenticated request runs this.
    rows = (
        await session.exec(
            select(User, Membership)
            .outerjoin(Membership, col(Membership.user_id) == col(User.id))
            .where(User.id == user_id)
        )
    ).all()
    user = rows[0][0] if rows else None
    if user is None or not user.is_active:
        raise errors.InvalidToken()
    roles = tuple(
        Role(m.property_id, m.role, m.unit_id, m.company, m.can_emergency)
        for _, m in rows
        if m is not None
    )
    return Actor(user.id, user.email, user.name, user.is_admin, roles)


async def authenticate(runtime: Runtime, session: AsyncSession, token: str) -> Actor:
    claims = decode_access_token(runtime, token)
    return await load_actor(session, claims["sub"])

"""Sign-in, token refresh, logout, invitation acceptance, profile and devices."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import Request, Response, delete, get, patch, post
from litestar.di import Provide
from litestar.params import JSONBody, Parameter

from backend import errors
from backend.dependencies import ActorDep, RuntimeDep, SessionDep, provide_user
from backend.models.base import utcnow
from backend.problems import responses
from backend.services import accounts

Email = Annotated[str, msgspec.Meta(min_length=3, max_length=320, pattern=r"^[^@\s]+@[^@\s]+$")]
Password = Annotated[str, msgspec.Meta(min_length=1, max_length=1024)]
NewPassword = Annotated[str, msgspec.Meta(min_length=10, max_length=1024)]
Token = Annotated[str, msgspec.Meta(min_length=1, max_length=4096)]


class PasswordLogin(msgspec.Struct, forbid_unknown_fields=True):
    email: Email
    password: Password


class RefreshRequest(msgspec.Struct, forbid_unknown_fields=True):
    refresh_token: Token


class InvitationAcceptance(msgspec.Struct, forbid_unknown_fields=True):
    code: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
    password: NewPassword
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]


class TokenView(msgspec.Struct):
    access_token: str
    refresh_token: str
    expires_in: int
    token_type: str = "Bearer"


class MembershipView(msgspec.Struct):
    property_id: str
    role: str
    unit_id: str | None = None
    company: str | None = None


class MeView(msgspec.Struct):
    id: str
    email: str
    name: str
    is_admin: bool
    memberships: list[MembershipView]


class DeviceRegistration(msgspec.Struct, forbid_unknown_fields=True):
    platform: Annotated[str, msgspec.Meta(description="ios, android or web")]
    public_key: Annotated[
        str, msgspec.Meta(min_length=43, max_length=44, description="Ed25519, base64url")
    ]
    push_token: Annotated[str, msgspec.Meta(min_length=1, max_length=4096)] | None = None


class DevicePatch(msgspec.Struct, forbid_unknown_fields=True):
    push_token: Annotated[str, msgspec.Meta(min_length=1, max_length=4096)] | None


class DeviceView(msgspec.Struct):
    id: str
    platform: str
    public_key: str
    push_enabled: bool


def _tokens(pair: accounts.TokenPair) -> TokenView:
    return TokenView(pair.access_token, pair.refresh_token, pair.expires_in)


def _address(request: Request[Any, Any, Any]) -> str:
    return request.client.host if request.client else "unknown"


@post(
    "/auth/token",
    status_code=200,
    summary="Sign in with email and password",
    responses=responses(errors.InvalidCredentials, errors.TooManyAttempts, auth=False),
)
async def sign_in(
    data: JSONBody[PasswordLogin],
    request: Request[Any, Any, Any],
    runtime: RuntimeDep,
    session: SessionDep,
) -> TokenView:
    """A failure is committed before the error is raised, so the throttle counts it."""
    now = utcnow()
    try:
        return _tokens(
            await accounts.login(
                session, runtime, data.email, data.password, _address(request), now
            )
        )
    except errors.InvalidCredentials:
        await accounts.record_login_failure(session, data.email, _address(request), now)
        await session.commit()
        raise


@post(
    "/auth/refresh",
    status_code=200,
    summary="Rotate a refresh token",
    responses=responses(errors.InvalidRefreshToken, errors.RefreshTokenReused, auth=False),
)
async def refresh_tokens(
    data: JSONBody[RefreshRequest], runtime: RuntimeDep, session: SessionDep
) -> TokenView:
    """Reuse of a spent refresh token revokes its family; that revocation must persist."""
    try:
        return _tokens(await accounts.refresh(session, runtime, data.refresh_token, utcnow()))
    except errors.RefreshTokenReused:
        await session.commit()
        raise


@post(
    "/auth/logout",
    status_code=204,
    summary="Revoke the refresh-token family (sign out everywhere this login reached)",
    responses=responses(errors.InvalidRefreshToken, auth=False),
)
async def sign_out(data: JSONBody[RefreshRequest], session: SessionDep) -> None:
    await accounts.logout(session, data.refresh_token, utcnow())


@post(
    "/auth/invitations/accept",
    status_code=200,
    summary="Join with an invitation code and set a password",
    responses=responses(
        errors.InvalidInvitation, errors.InvitationUsed, errors.InvalidCredentials, auth=False
    ),
)
async def accept_invitation(
    data: JSONBody[InvitationAcceptance], runtime: RuntimeDep, session: SessionDep
) -> TokenView:
    pair = await accounts.accept_invitation(
        session, runtime, data.code, data.password, data.name, utcnow()
    )
    return _tokens(pair)


@get(
    "/me",
    summary="The signed-in user and their roles",
    dependencies={"actor": Provide(provide_user)},
    responses=responses(),
)
async def me(actor: ActorDep) -> MeView:
    return MeView(
        id=actor.user_id,
        email=actor.email,
        name=actor.name,
        is_admin=actor.is_admin,
        memberships=[
            MembershipView(r.property_id, r.role, r.unit_id, r.company) for r in actor.roles
        ],
    )


def _device(device: Any) -> DeviceView:
    enabled = device.push_token is not None and device.push_token_disabled_at is None
    return DeviceView(device.id, device.platform, device.public_key, enabled)


@post(
    "/devices",
    summary="Register this phone: its Ed25519 key (credentials bind to it) and push token",
    dependencies={"actor": Provide(provide_user)},
    responses=responses(),
)
async def register_device(
    data: JSONBody[DeviceRegistration], actor: ActorDep, session: SessionDep
) -> DeviceView:
    return _device(
        await accounts.register_device(
            session, actor, data.platform, data.public_key, data.push_token
        )
    )


@patch(
    "/devices/{device_id:str}",
    summary="Replace (or clear) the device's push token",
    dependencies={"actor": Provide(provide_user)},
    responses=responses(errors.NotFound),
)
async def update_device(
    device_id: Annotated[str, Parameter(max_length=32)],
    data: JSONBody[DevicePatch],
    actor: ActorDep,
    session: SessionDep,
) -> DeviceView:
    return _device(
        await accounts.update_device_push_token(session, actor, device_id, data.push_token)
    )


@delete(
    "/devices/{device_id:str}",
    summary="Remove a device: its credentials stop being issued and pushes stop",
    dependencies={"actor": Provide(provide_user)},
    responses=responses(errors.NotFound),
)
async def remove_device(
    device_id: Annotated[str, Parameter(max_length=32)], actor: ActorDep, session: SessionDep
) -> None:
    await accounts.remove_device(session, actor, device_id, utcnow())


handlers = [
    sign_in,
    refresh_tokens,
    sign_out,
    accept_invitation,
    me,
    register_device,
    update_device,
    remove_device,
]

__all__ = ["Response", "handlers"]

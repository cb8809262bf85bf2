"""Kiosk enrollment: the kiosk sends its own public key with a one-time code."""

from __future__ import annotations

from typing import Annotated

import msgspec
from litestar import post
from litestar.params import JSONBody

from backend import errors
from backend.dependencies import KioskDep, SessionDep
from backend.models.base import utcnow
from backend.problems import responses
from backend.services import kiosks


class Enrollment(msgspec.Struct, forbid_unknown_fields=True):
    enrollment_code: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    public_key: Annotated[
        str, msgspec.Meta(min_length=43, max_length=44, description="Ed25519, base64url")
    ]


class EnrollmentView(msgspec.Struct):
    kiosk_id: str
    property_id: str


@post(
    "/enroll",
    status_code=200,
    summary="Enroll a kiosk with its one-time code and its own Ed25519 public key",
    responses=responses(errors.InvalidEnrollmentCode, auth=False),
    security=[],
)
async def enroll(data: JSONBody[Enrollment], session: SessionDep) -> EnrollmentView:
    kiosk = await kiosks.enroll(session, data.enrollment_code, data.public_key, utcnow())
    return EnrollmentView(kiosk.id, kiosk.property_id)


handlers = [enroll]


class HeartbeatView(msgspec.Struct):
    kiosk_id: str
    property_id: str
    server_time: float


@post(
    "/heartbeat",
    status_code=200,
    summary="Check the kiosk's assertion and get the server time",
    responses=responses(errors.InvalidKioskAssertion, errors.KioskAssertionReplayed, auth=False),
)
async def heartbeat(kiosk: KioskDep) -> HeartbeatView:
    return HeartbeatView(kiosk.id, kiosk.property_id, utcnow().timestamp())


handlers.append(heartbeat)

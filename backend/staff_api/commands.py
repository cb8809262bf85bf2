"""Manual override: remote-open a door or compartment through an online kiosk."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from litestar import post
from litestar.params import JSONBody, Parameter

from backend import errors
from backend.dependencies import ActorDep, RuntimeDep, SessionDep
from backend.models.base import utcnow
from backend.problems import responses
from backend.services import overrides

Id = Annotated[str, Parameter(max_length=32)]
RefId = Annotated[str, msgspec.Meta(min_length=1, max_length=32)]


class KioskCommand(msgspec.Struct, forbid_unknown_fields=True):
    """Open one door or one compartment of the kiosk; ``reason`` is mandatory (audited)."""

    action: Literal["open"]
    reason: Annotated[str, msgspec.Meta(min_length=1, max_length=500)]
    door_id: RefId | None = None
    compartment_id: RefId | None = None


class CommandResultView(msgspec.Struct):
    command_id: str
    kiosk_id: str
    action: str
    target: str
    acknowledged: bool
    ok: bool
    detail: str


@post(
    "/kiosks/{kiosk_id:str}/commands",
    status_code=200,
    summary="Manual override: remote-open a door or compartment (audited as override.used)",
    description=(
        "Sent over the kiosk's command channel; the answer is the kiosk's acknowledgement "
        "(`ok`, `detail`). A kiosk without an open channel, or that does not acknowledge in "
        "time, is 409 `kiosk_offline`."
    ),
    responses=responses(errors.NotFound, errors.KioskOffline),
)
async def send_kiosk_command(
    kiosk_id: Id,
    data: JSONBody[KioskCommand],
    actor: ActorDep,
    runtime: RuntimeDep,
    session: SessionDep,
) -> CommandResultView:
    result = await overrides.open_remotely(
        session,
        runtime,
        actor,
        kiosk_id,
        action=data.action,
        door_id=data.door_id,
        compartment_id=data.compartment_id,
        reason=data.reason,
        now=utcnow(),
    )
    return msgspec.convert(result, CommandResultView)


handlers = [send_kiosk_command]

"""Key returns at an online kiosk: checked before the kiosk lets go of the compartment."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import msgspec
from litestar import post
from litestar.params import JSONBody

from backend import errors
from backend.dependencies import KioskDep, SessionDep
from backend.models.base import utcnow
from backend.problems import responses
from backend.services import keys

RefId = Annotated[str, msgspec.Meta(min_length=1, max_length=32)]


class KeyReturn(msgspec.Struct, forbid_unknown_fields=True):
    """The key (its tag) and the free key compartment of this kiosk it was dropped into."""

    key_id: RefId
    compartment_id: RefId


class KeyReturnView(msgspec.Struct):
    key_id: str
    state: str
    compartment_id: str | None
    since: datetime


@post(
    "/key-returns",
    status_code=200,
    summary="A key returned into a free key compartment of this kiosk (online)",
    description=(
        "Offline, the kiosk journals `key.returned` instead. A parcel compartment "
        "(`not_a_key_compartment`), an occupied one (`compartment_occupied`) or a key that is "
        "not checked out (`key_unavailable`) is refused and nothing changes."
    ),
    responses=responses(
        errors.InvalidKioskAssertion,
        errors.KioskAssertionReplayed,
        errors.NotFound,
        errors.NotAKeyCompartment,
        errors.CompartmentOccupied,
        errors.KeyUnavailable,
        auth=False,
    ),
)
async def return_key(
    data: JSONBody[KeyReturn], kiosk: KioskDep, session: SessionDep
) -> KeyReturnView:
    key = await keys.return_key(
        session, kiosk, key_id=data.key_id, compartment_id=data.compartment_id, now=utcnow()
    )
    return KeyReturnView(key.id, key.state, key.compartment_id, key.since)


handlers = [return_key]

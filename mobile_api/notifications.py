"""Push notification preferences of the signed-in user: per event type, push on or off."""

from __future__ import annotations

from typing import Annotated

import msgspec
from litestar import get, put
from litestar.di import Provide
from litestar.params import JSONBody
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from backend import errors
from backend.auth import Actor
from backend.dependencies import ActorDep, SessionDep, provide_app_user
from backend.models import Property
from backend.models.base import utcnow
from backend.problems import responses
from backend.services.properties import policy_of
from push import preferences

EventType = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[a-z_]+\.[a-z_]+$")]


class PreferenceChoice(msgspec.Struct, forbid_unknown_fields=True):
    event_type: EventType
    push: bool
    # Read-only fields of the GET answer, accepted so a client can send back what it read.
    locked: Annotated[bool | None, msgspec.Meta(description="Read-only; ignored")] = None
    category: (
        Annotated[str, msgspec.Meta(max_length=16, description="Read-only; ignored")] | None
    ) = None


class QuietHoursEcho(msgspec.Struct, forbid_unknown_fields=True):
    property_id: Annotated[str, msgspec.Meta(max_length=32)]
    timezone: Annotated[str, msgspec.Meta(max_length=64)]
    start: Annotated[str, msgspec.Meta(max_length=5)] | None
    end: Annotated[str, msgspec.Meta(max_length=5)] | None


class PreferenceUpdate(msgspec.Struct, forbid_unknown_fields=True):
    """The choices to change; event types not listed keep their current setting.

    The GET answer may be sent back as is (with some ``push`` flipped): ``locked``, ``category``
    and ``quiet_hours`` are read-only and ignored (quiet hours are the property's policy).
    """

    preferences: Annotated[list[PreferenceChoice], msgspec.Meta(min_length=1, max_length=64)]
    quiet_hours: Annotated[list[QuietHoursEcho], msgspec.Meta(max_length=64)] | None = None


class PreferenceView(msgspec.Struct):
    event_type: str
    push: bool
    locked: bool  # security alerts cannot be turned off for staff
    category: str  # info | reminder | alarm


class QuietHoursView(msgspec.Struct):
    property_id: str
    timezone: str
    start: str | None  # null: the property has no quiet hours
    end: str | None


class PreferencesView(msgspec.Struct):
    preferences: list[PreferenceView]
    quiet_hours: list[QuietHoursView]  # reminders wait for these to end; alarms never do


async def _view(session: AsyncSession, actor: Actor) -> PreferencesView:
    states = await preferences.preference_states(session, actor)
    property_ids = sorted({role.property_id for role in actor.roles})
    quiet: list[QuietHoursView] = []
    if property_ids:
        rows = (
            await session.exec(select(Property).where(col(Property.id).in_(property_ids)))
        ).all()
        for prop in sorted(rows, key=lambda p: p.id):
            hours = policy_of(prop).quiet_hours
            quiet.append(
                QuietHoursView(
                    prop.id,
                    prop.timezone,
                    hours.start if hours else None,
                    hours.end if hours else None,
                )
            )
    return PreferencesView(
        [PreferenceView(s.event_type, s.push, s.locked, s.category) for s in states], quiet
    )


@get(
    "/notification-preferences",
    summary="Push on/off per event type, and the quiet hours that delay reminders",
    dependencies={"actor": Provide(provide_app_user)},
    responses=responses(),
)
async def get_notification_preferences(actor: ActorDep, session: SessionDep) -> PreferencesView:
    return await _view(session, actor)


@put(
    "/notification-preferences",
    summary="Turn pushes on or off per event type (security alerts stay on for staff)",
    dependencies={"actor": Provide(provide_app_user)},
    responses=responses(errors.PreferenceLocked),
)
async def put_notification_preferences(
    data: JSONBody[PreferenceUpdate], actor: ActorDep, session: SessionDep
) -> PreferencesView:
    choices = {choice.event_type: choice.push for choice in data.preferences}
    await preferences.set_preferences(session, actor, choices, utcnow())
    return await _view(session, actor)


handlers = [get_notification_preferences, put_notification_preferences]

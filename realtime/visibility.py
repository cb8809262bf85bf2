"""Who may see an event: the ONE rule used by the websocket, ``GET /v1/events`` and replay.

The rule (contracts.md, "Who sees an event"), for an event of property P:
- admins see every event;
- staff of P see every event of P;
- any other member of P sees the event when its ``user_id`` is themselves, and a resident of P
  also when its ``unit_id`` is one of their units;
- nobody sees anything of a property they do not belong to (a user removed from P stops seeing
  P's events, even those about themselves).

``may_see`` is the decision. ``visible_clause`` is the same rule written as SQL so that a
query never reads other tenants' rows; every row a query returns is still passed through
``may_see`` before it is sent (tests/test_realtime_visibility.py checks they agree).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import ColumnElement, false, or_, true
from sqlmodel import col

from backend.auth import Actor
from backend.models import Event


class EventLike(Protocol):
    @property
    def property_id(self) -> str: ...
    @property
    def unit_id(self) -> str | None: ...
    @property
    def user_id(self) -> str | None: ...


@dataclass(frozen=True, slots=True)
class Audience:
    """What the rule needs to know about a viewer, precomputed from an ``Actor``."""

    user_id: str
    is_admin: bool
    member_of: frozenset[str]
    staff_of: frozenset[str]
    unit_ids: frozenset[str]

    @classmethod
    def of(cls, actor: Actor) -> Audience:
        return cls(
            user_id=actor.user_id,
            is_admin=actor.is_admin,
            member_of=frozenset(r.property_id for r in actor.roles),
            staff_of=frozenset(actor.staff_property_ids),
            unit_ids=frozenset(actor.unit_ids),
        )

    @property
    def sees_anything(self) -> bool:
        return self.is_admin or bool(self.member_of)


def may_see(audience: Audience, event: EventLike | Any) -> bool:
    """True when ``audience`` may see ``event`` (anything with property_id, unit_id, user_id)."""
    if audience.is_admin:
        return True
    property_id = event.property_id
    if property_id not in audience.member_of:
        return False
    if property_id in audience.staff_of:
        return True
    if event.user_id is not None and event.user_id == audience.user_id:
        return True
    return event.unit_id is not None and event.unit_id in audience.unit_ids


def visible_clause(audience: Audience) -> ColumnElement[bool]:
    """``may_see`` as a WHERE clause on the Event table."""
    if audience.is_admin:
        return true()
    if not audience.member_of:
        return false()
    alternatives: list[ColumnElement[bool]] = [col(Event.user_id) == audience.user_id]
    if audience.staff_of:
        alternatives.append(col(Event.property_id).in_(sorted(audience.staff_of)))
    if audience.unit_ids:
        alternatives.append(col(Event.unit_id).in_(sorted(audience.unit_ids)))
    return col(Event.property_id).in_(sorted(audience.member_of)) & or_(*alternatives)

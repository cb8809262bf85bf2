"""``may_see`` (the rule) and ``visible_clause`` (its SQL form) agree on every audience and event."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator

import pytest
from sqlmodel import col, select

from backend.models import Event
from backend.runtime import Runtime
from backend.services.events import record_event
from backend.settings import Settings
from realtime.visibility import Audience, may_see, visible_clause

PROPERTIES = ("p1", "p2")
UNITS = {"u1": "p1", "u2": "p1", "u3": "p2"}
USERS = ("me", "someone", None)


@pytest.fixture
async def runtime(settings: Settings) -> AsyncIterator[Runtime]:
    rt = Runtime.create(settings)
    yield rt
    await rt.db.dispose()


def _subsets(items: tuple[str, ...]) -> list[frozenset[str]]:
    return [
        frozenset(combo)
        for size in range(len(items) + 1)
        for combo in itertools.combinations(items, size)
    ]


def _audiences() -> list[Audience]:
    audiences = []
    for is_admin in (False, True):
        for member_of in _subsets(PROPERTIES):
            for staff_of in _subsets(tuple(sorted(member_of))):
                units = tuple(u for u, p in UNITS.items() if p in member_of)
                for unit_ids in _subsets(units):
                    audiences.append(Audience("me", is_admin, member_of, staff_of, unit_ids))
    return audiences


async def test_rule_and_sql_agree(runtime: Runtime) -> None:
    async with runtime.db.session() as session:
        for property_id in PROPERTIES:
            for unit_id in [None, *(u for u, p in UNITS.items() if p == property_id)]:
                for user_id in USERS:
                    await record_event(
                        session,
                        property_id=property_id,
                        type="test.x",
                        actor="system",
                        unit_id=unit_id,
                        user_id=user_id,
                        notify=False,
                    )
    async with runtime.db.sessions() as session:
        events = (await session.exec(select(Event).order_by(col(Event.id)))).all()
        audiences = _audiences()
        assert len(audiences) > 20
        for audience in audiences:
            by_rule = {e.id for e in events if may_see(audience, e)}
            rows = await session.exec(select(Event.id).where(visible_clause(audience)))
            assert set(rows.all()) == by_rule, audience


def test_rule_examples() -> None:
    class E:
        def __init__(self, property_id: str, unit_id: str | None, user_id: str | None) -> None:
            self.property_id, self.unit_id, self.user_id = property_id, unit_id, user_id

    resident = Audience("me", False, frozenset({"p1"}), frozenset(), frozenset({"u1"}))
    assert may_see(resident, E("p1", "u1", None))
    assert may_see(resident, E("p1", None, "me"))
    assert not may_see(resident, E("p1", "u2", None))
    assert not may_see(resident, E("p1", None, None))  # property-wide alarm: staff only
    assert not may_see(resident, E("p2", None, "me"))  # not a member there
    staff = Audience("s", False, frozenset({"p1"}), frozenset({"p1"}), frozenset())
    assert may_see(staff, E("p1", None, None))
    assert not may_see(staff, E("p2", None, None))
    admin = Audience("a", True, frozenset(), frozenset(), frozenset())
    assert may_see(admin, E("p2", "u3", "x"))
    nobody = Audience("n", False, frozenset(), frozenset(), frozenset())
    assert not nobody.sees_anything

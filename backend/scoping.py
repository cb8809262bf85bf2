"""The one place tenant boundaries are applied.

Every read of tenant data goes through ``staff_property`` / ``get_in_property`` (single rows)
or ``scope_to_staff`` (queries). Something outside the caller's scope is ``NotFound``, never
``Forbidden``: an attacker must not learn that another tenant's id exists.
"""

from __future__ import annotations

from typing import Any, TypeVar

from sqlalchemy import Select, false
from sqlmodel import SQLModel, col
from sqlmodel.ext.asyncio.session import AsyncSession

from backend import errors
from backend.auth import Actor
from backend.models import Compartment, Kiosk, Property

M = TypeVar("M", bound=SQLModel)


def can_staff(actor: Actor, property_id: str) -> bool:
    return actor.is_staff_at(property_id)


async def staff_property(session: AsyncSession, actor: Actor, property_id: str) -> Property:
    """A property the caller manages (staff there, or admin)."""
    prop = await session.get(Property, property_id)
    if prop is None or not can_staff(actor, prop.id):
        raise errors.NotFound("Property not found")
    return prop


async def get_in_property(
    session: AsyncSession, actor: Actor, model: type[M], object_id: str, *, label: str = ""
) -> M:
    """A row with a ``property_id`` (or a kiosk's compartment) that the caller manages."""
    row = await session.get(model, object_id)
    name = label or model.__name__
    if row is None:
        raise errors.NotFound(f"{name} not found")
    if not can_staff(actor, await property_of(session, row)):
        raise errors.NotFound(f"{name} not found")
    return row


async def property_of(session: AsyncSession, row: Any) -> str:
    """The property a tenant row belongs to."""
    if isinstance(row, Property):
        return row.id
    if isinstance(row, Compartment):
        kiosk = await session.get(Kiosk, row.kiosk_id)
        return kiosk.property_id if kiosk else ""
    property_id = getattr(row, "property_id", None)
    if not isinstance(property_id, str):
        raise TypeError(f"{type(row).__name__} has no property")
    return property_id


def scope_to_staff(statement: Select[Any], actor: Actor, property_column: Any) -> Select[Any]:
    """Restrict a query to the properties the caller manages (admins see everything)."""
    if actor.is_admin:
        return statement
    ids = actor.staff_property_ids
    if not ids:
        return statement.where(false())
    return statement.where(col(property_column).in_(ids))

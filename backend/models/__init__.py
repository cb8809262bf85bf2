"""All tables; importing this module registers every table on ``SQLModel.metadata``."""

from backend.models.event import Event, Outbox
from backend.models.kiosk import Compartment, Kiosk, KioskAssertionUse
from backend.models.parcel import DeliveryHold, JobLease, Parcel, PinAttempt
from backend.models.property import Door, Property, Unit
from backend.models.user import Device, Invitation, LoginFailure, Membership, RefreshToken, User
from backend.models.work_order import DoorStatus, EmergencyRequest, KeyCustody, KeyItem, WorkOrder

__all__ = [
    "DoorStatus",
    "EmergencyRequest",
    "KeyCustody",
    "KeyItem",
    "WorkOrder",
    "Compartment",
    "DeliveryHold",
    "JobLease",
    "Parcel",
    "PinAttempt",
    "Device",
    "Door",
    "Event",
    "Invitation",
    "Kiosk",
    "KioskAssertionUse",
    "LoginFailure",
    "Membership",
    "Outbox",
    "Property",
    "RefreshToken",
    "Unit",
    "User",
]

"""All tables; importing this module registers every table on ``SQLModel.metadata``."""

from backend.models.credential import (
    Credential,
    CredentialRedemption,
    JournalCursor,
    JournalEntry,
    JournalFork,
    Revocation,
    SigningKey,
)
from backend.models.event import Event, Outbox
from backend.models.kiosk import Compartment, Kiosk, KioskAssertionUse
from backend.models.parcel import DeliveryHold, JobLease, Parcel, PinAttempt
from backend.models.property import Door, Property, Unit
from backend.models.push import NotificationPreference, PushDelivery
from backend.models.user import Device, Invitation, LoginFailure, Membership, RefreshToken, User
from backend.models.work_order import DoorStatus, EmergencyRequest, KeyCustody, KeyItem, WorkOrder

__all__ = [
    "Credential",
    "CredentialRedemption",
    "JournalCursor",
    "JournalEntry",
    "JournalFork",
    "Revocation",
    "SigningKey",
    "Compartment",
    "DeliveryHold",
    "JobLease",
    "Parcel",
    "PinAttempt",
    "Device",
    "Door",
    "DoorStatus",
    "EmergencyRequest",
    "Event",
    "Invitation",
    "KeyCustody",
    "KeyItem",
    "Kiosk",
    "KioskAssertionUse",
    "LoginFailure",
    "Membership",
    "Outbox",
    "NotificationPreference",
    "PushDelivery",
    "Property",
    "RefreshToken",
    "Unit",
    "User",
    "WorkOrder",
]

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
from backend.models.kiosk_command import KioskCommand
from backend.models.parcel import DeliveryHold, JobLease, Parcel, PinAttempt
from backend.models.presence import KioskPresence
from backend.models.property import Door, Property, Unit
from backend.models.push import NotificationPreference, PushDelivery
from backend.models.user import Device, Invitation, LoginFailure, Membership, RefreshToken, User
from backend.models.work_order import DoorStatus, EmergencyRequest, KeyCustody, KeyItem, WorkOrder

__all__ = [
    "Compartment",
    "Credential",
    "CredentialRedemption",
    "DeliveryHold",
    "Device",
    "Door",
    "DoorStatus",
    "EmergencyRequest",
    "Event",
    "Invitation",
    "JobLease",
    "JournalCursor",
    "JournalEntry",
    "JournalFork",
    "KeyCustody",
    "KeyItem",
    "Kiosk",
    "KioskAssertionUse",
    "KioskCommand",
    "KioskPresence",
    "LoginFailure",
    "Membership",
    "NotificationPreference",
    "Outbox",
    "Parcel",
    "PinAttempt",
    "Property",
    "PushDelivery",
    "RefreshToken",
    "Revocation",
    "SigningKey",
    "Unit",
    "User",
    "WorkOrder",
]

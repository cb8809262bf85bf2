"""What a push says, per event type: texts, deep-link data, and Android/APNs delivery options.

All user-visible texts live in ``CATALOG`` (one dict per locale, keyed by message id, with
``str.format`` placeholders), ready for translation; a message also carries its loc keys and
arguments so apps may render it in the phone's own language. Only allowlisted fields reach a
push: ids for deep links and display labels. Secrets that events may carry (the pickup PIN
above all) never appear in a notification's text or data: nothing outside the allowlists is
ever read from an event.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal

from firebase_admin import messaging

Category = Literal["info", "reminder", "alarm"]
Audience = Literal["unit", "user", "staff"]


@dataclass(frozen=True)
class Template:
    """How one event type is pushed.

    ``audiences``: who may receive it (``unit``: the residents of the event's unit; ``user``:
    the single user it concerns, e.g. the vendor of a work order; ``staff``: the property's staff).
    ``category``: ``alarm`` ignores quiet hours and cannot be turned off by staff;
    ``reminder`` waits for quiet hours to end.
    """

    audiences: frozenset[Audience]
    category: Category = "info"
    high_priority: bool = False
    ttl: timedelta = timedelta(days=1)
    time_sensitive: bool = False
    link: str = ""  # deep-link kind: the app opens concierge://<kind>/<id>


def _t(*audiences: Audience, **options: Any) -> Template:
    return Template(frozenset(audiences), **options)


HOUR = timedelta(hours=1)

TEMPLATES: dict[str, Template] = {
    "parcel.deposited": _t("unit", high_priority=True, ttl=timedelta(days=2), link="parcels"),
    "parcel.reminder": _t("unit", category="reminder", link="parcels"),
    "parcel.picked_up": _t("unit", link="parcels"),
    "parcel.overflowed": _t("unit", ttl=timedelta(days=2), link="parcels"),
    "parcel.returned": _t("unit", link="parcels"),
    "work_order.starting": _t("user", category="reminder", link="work-orders"),
    "work_order.started": _t("user", "unit", high_priority=True, ttl=HOUR, link="work-orders"),
    "work_order.ended": _t("user", "unit", link="work-orders"),
    "work_order.scheduled": _t("user", "unit", link="work-orders"),
    "work_order.shortened": _t("user", "unit", high_priority=True, link="work-orders"),
    "work_order.cancelled": _t("user", "unit", high_priority=True, link="work-orders"),
    "key.overdue": _t("user", "staff", category="alarm", high_priority=True, link="keys"),
    "door.forced": _t(
        "staff", category="alarm", high_priority=True, ttl=HOUR, time_sensitive=True, link="doors"
    ),
    "door.held_open": _t(
        "staff", category="alarm", high_priority=True, ttl=HOUR, time_sensitive=True, link="doors"
    ),
    "kiosk.tamper": _t(
        "staff", category="alarm", high_priority=True, ttl=HOUR, time_sensitive=True, link="kiosks"
    ),
    "emergency.used": _t(
        "staff", category="alarm", high_priority=True, ttl=HOUR, time_sensitive=True, link="events"
    ),
    "credential.double_spent": _t("staff", category="alarm", high_priority=True, link="events"),
    "kiosk.journal_forked": _t("staff", category="alarm", high_priority=True, link="kiosks"),
    "emergency.requested": _t(
        "staff",
        category="alarm",
        high_priority=True,
        ttl=HOUR,
        time_sensitive=True,
        link="emergency-requests",
    ),
    "pin.burst": _t("staff", category="alarm", high_priority=True, link="kiosks"),
    "key.lost": _t("staff", category="alarm", high_priority=True, link="keys"),
    "kiosk.offline": _t("staff", ttl=HOUR, link="kiosks"),
}

# Message catalog: "<event type>.title" / "<event type>.body"; placeholders are filled from the
# display labels below. Add a locale by adding a dict with the same keys.
CATALOG: dict[str, dict[str, str]] = {
    "en": {
        "parcel.deposited.title": "Parcel waiting for you",
        "parcel.deposited.body": "A parcel is in locker {compartment} at {kiosk}.",
        "parcel.reminder.title": "Your parcel is still waiting",
        "parcel.reminder.body": "A parcel has been waiting in locker {compartment} at {kiosk}.",
        "parcel.picked_up.title": "Parcel picked up",
        "parcel.picked_up.body": "Your parcel was collected from locker {compartment}.",
        "parcel.overflowed.title": "Parcel moved to the front office",
        "parcel.overflowed.body": "A parcel for unit {unit} was moved out of the lockers.",
        "parcel.returned.title": "Parcel returned to the carrier",
        "parcel.returned.body": "A parcel for unit {unit} was returned to the carrier.",
        "work_order.starting.title": "Your visit starts soon",
        "work_order.starting.body": "Your access window for unit {unit} opens soon.",
        "work_order.started.title": "Visit started",
        "work_order.started.body": "The access window for unit {unit} is open.",
        "work_order.ended.title": "Visit ended",
        "work_order.ended.body": "The access window for unit {unit} has closed.",
        "work_order.scheduled.title": "Visit scheduled",
        "work_order.scheduled.body": "A visit to unit {unit} has been scheduled.",
        "work_order.shortened.title": "Visit shortened",
        "work_order.shortened.body": "The access window for unit {unit} now ends earlier.",
        "work_order.cancelled.title": "Visit cancelled",
        "work_order.cancelled.body": "The visit to unit {unit} was cancelled.",
        "key.overdue.title": "Key overdue",
        "key.overdue.body": "Key {key} has not been returned on time.",
        "door.forced.title": "Door forced open",
        "door.forced.body": "{door} was opened without access.",
        "door.held_open.title": "Door held open",
        "door.held_open.body": "{door} is being held open.",
        "kiosk.tamper.title": "Kiosk tamper alarm",
        "kiosk.tamper.body": "{kiosk} reported tampering.",
        "emergency.used.title": "Emergency access used",
        "emergency.used.body": "An emergency credential was used at {kiosk}.",
        "credential.double_spent.title": "Credential used twice",
        "credential.double_spent.body": "A one-time credential was presented twice at {kiosk}.",
        "kiosk.journal_forked.title": "Kiosk journal conflict",
        "kiosk.journal_forked.body": "{kiosk} sent conflicting journal entries.",
        "emergency.requested.title": "Emergency access requested",
        "emergency.requested.body": "A colleague asks for emergency access: approval needed.",
        "pin.burst.title": "Many wrong PINs",
        "pin.burst.body": "{kiosk} saw many wrong pickup PINs and paused PIN entry.",
        "key.lost.title": "Key reported lost",
        "key.lost.body": "Key {key} was reported lost.",
        "kiosk.offline.title": "Kiosk offline",
        "kiosk.offline.body": "{kiosk} is not connected.",
    }
}
DEFAULT_LOCALE = "en"

# The only event payload fields a push may carry (as data, for deep links) ...
ID_FIELDS = (
    "parcel_id",
    "compartment_id",
    "kiosk_id",
    "door_id",
    "key_id",
    "work_order_id",
    "credential_id",
    "unit_id",
    "request_id",
)
# ... and the only display labels its text may use (resolved from the database by id).
LABELS = ("compartment", "kiosk", "door", "unit", "key")
FALLBACK_LABELS = {
    "compartment": "(see the app)",
    "kiosk": "the kiosk",
    "door": "A door",
    "unit": "your unit",
    "key": "a key",
}
DEEP_LINK_ID = {
    "parcels": "parcel_id",
    "work-orders": "work_order_id",
    "keys": "key_id",
    "doors": "door_id",
    "kiosks": "kiosk_id",
    "emergency-requests": "request_id",
}


def text(key: str, labels: dict[str, str], locale: str = DEFAULT_LOCALE) -> str:
    catalog = CATALOG.get(locale, CATALOG[DEFAULT_LOCALE])
    values = {name: labels.get(name) or FALLBACK_LABELS[name] for name in LABELS}
    return catalog[key].format(**values)


def collapse_key(event_id: int) -> str:
    """Same for every resend of one notification: the phone shows it once."""
    return f"concierge-{event_id}"


@dataclass(frozen=True)
class Notice:
    """One notification, independent of the device it goes to."""

    event_type: str
    title: str
    body: str
    data: dict[str, str]
    template: Template
    collapse_key: str
    loc_args: tuple[str, ...]


def build_notice(
    *,
    event_id: int,
    event_type: str,
    property_id: str,
    payload: dict[str, Any],
    labels: dict[str, str],
) -> Notice:
    template = TEMPLATES[event_type]
    key = collapse_key(event_id)
    data = {
        "notification_id": key,
        "event_id": str(event_id),
        "type": event_type,
        "property_id": property_id,
    }
    for name in ID_FIELDS:
        value = payload.get(name)
        if isinstance(value, str | int) and not isinstance(value, bool):
            data[name] = str(value)
    target = data.get(DEEP_LINK_ID.get(template.link, ""), "")
    data["link"] = f"concierge://{template.link}/{target}".rstrip("/")
    return Notice(
        event_type=event_type,
        title=text(f"{event_type}.title", labels),
        body=text(f"{event_type}.body", labels),
        data=data,
        template=template,
        collapse_key=key,
        loc_args=tuple(labels.get(name) or FALLBACK_LABELS[name] for name in LABELS),
    )


def fcm_message(notice: Notice, token: str, *, expires_at_epoch: int) -> messaging.Message:
    """The FCM v1 message for one device: notification, data, Android and APNs options."""
    template = notice.template
    aps_extra: dict[str, Any] = {}
    if template.time_sensitive:
        aps_extra["interruption-level"] = "time-sensitive"
    with warnings.catch_warnings():
        # firebase-admin 7.7 deprecates ``token`` in favour of Firebase installation ids; phones
        # register FCM registration tokens, which the v1 API still takes as ``message.token``.
        warnings.simplefilter("ignore", DeprecationWarning)
        return _message(notice, token, expires_at_epoch, aps_extra)


def _message(
    notice: Notice, token: str, expires_at_epoch: int, aps_extra: dict[str, Any]
) -> messaging.Message:
    template = notice.template
    return messaging.Message(
        token=token,
        notification=messaging.Notification(title=notice.title, body=notice.body),
        data=notice.data,
        android=messaging.AndroidConfig(
            collapse_key=notice.collapse_key,
            priority="high" if template.high_priority else "normal",
            ttl=template.ttl,
            notification=messaging.AndroidNotification(
                tag=notice.collapse_key,
                channel_id=template.category,
                title_loc_key=f"{notice.event_type}.title",
                body_loc_key=f"{notice.event_type}.body",
                body_loc_args=list(notice.loc_args),
            ),
        ),
        apns=messaging.APNSConfig(
            headers={
                "apns-collapse-id": notice.collapse_key,
                "apns-priority": "10" if template.high_priority else "5",
                "apns-expiration": str(expires_at_epoch),
                "apns-push-type": "alert",
            },
            payload=messaging.APNSPayload(
                aps=messaging.Aps(
                    alert=messaging.ApsAlert(
                        title=notice.title,
                        body=notice.body,
                        title_loc_key=f"{notice.event_type}.title",
                        loc_key=f"{notice.event_type}.body",
                        loc_args=list(notice.loc_args),
                    ),
                    sound="default",
                    thread_id=notice.event_type,
                    custom_data=aps_extra or None,
                )
            ),
        ),
    )

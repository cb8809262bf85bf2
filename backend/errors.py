"""The error vocabulary: every failure a client can see has a stable ``code``.

Errors render as ``application/problem+json`` (RFC 9457): ``type``, ``title``, ``status``,
``detail``, ``code`` and, for validation errors, ``errors`` naming the fields. Domain services
raise ``ConciergeError`` subclasses; ``backend.problems`` turns them (and framework and
unexpected errors) into responses without echoing driver or exception text.
"""

from __future__ import annotations

from typing import Any, ClassVar


class ConciergeError(Exception):
    status: ClassVar[int] = 400
    code: ClassVar[str] = "bad_request"
    title: ClassVar[str] = "Bad request"

    def __init__(self, detail: str | None = None, **extra: Any) -> None:
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        self.extra = extra


def _error(name: str, status: int, code: str, title: str) -> type[ConciergeError]:
    return type(name, (ConciergeError,), {"status": status, "code": code, "title": title})


# 400
ValidationFailed = _error("ValidationFailed", 400, "validation_error", "The request is not valid")
InvalidTimezone = _error("InvalidTimezone", 400, "invalid_timezone", "Unknown IANA timezone")
# 401
NotAuthenticated = _error("NotAuthenticated", 401, "not_authenticated", "Authentication required")
InvalidToken = _error("InvalidToken", 401, "invalid_token", "The access token is not valid")
TokenExpired = _error("TokenExpired", 401, "token_expired", "The access token has expired")
InvalidCredentials = _error(
    "InvalidCredentials", 401, "invalid_credentials", "Wrong email or password"
)
InvalidRefreshToken = _error(
    "InvalidRefreshToken", 401, "invalid_refresh_token", "Refresh token not valid"
)
RefreshTokenReused = _error(
    "RefreshTokenReused",
    401,
    "refresh_token_reused",
    "Refresh token reused: the session was revoked",
)
InvalidKioskAssertion = _error(
    "InvalidKioskAssertion", 401, "invalid_kiosk_assertion", "The kiosk assertion is not valid"
)
KioskAssertionReplayed = _error(
    "KioskAssertionReplayed",
    401,
    "kiosk_assertion_replayed",
    "The kiosk assertion was already used",
)
# 403
Forbidden = _error("Forbidden", 403, "forbidden", "This role may not do that")
# 404
NotFound = _error("NotFound", 404, "not_found", "Not found")
# 409 / 410
Conflict = _error("Conflict", 409, "conflict", "Conflicts with the current state")
AlreadyExists = _error("AlreadyExists", 409, "already_exists", "It already exists")
InvalidInvitation = _error(
    "InvalidInvitation", 400, "invalid_invitation", "Invitation code not valid"
)
InvitationUsed = _error("InvitationUsed", 409, "invitation_used", "Invitation already accepted")
InvalidEnrollmentCode = _error(
    "InvalidEnrollmentCode", 400, "invalid_enrollment_code", "Enrollment code not valid or expired"
)
# 413 / 415 / 429 / 5xx
BodyTooLarge = _error("BodyTooLarge", 413, "body_too_large", "The request body is too large")
TooManyAttempts = _error("TooManyAttempts", 429, "too_many_attempts", "Too many attempts")
ServiceUnavailable = _error(
    "ServiceUnavailable", 503, "service_unavailable", "Temporarily unavailable"
)
# Vendor visits, keys, override, emergency (issue 7)
OutsideAccessWindow = _error(
    "OutsideAccessWindow", 403, "outside_access_window", "Outside the visit's access window"
)
InvalidWindow = _error("InvalidWindow", 400, "invalid_window", "The window ends before it starts")
WindowInPast = _error("WindowInPast", 400, "window_in_past", "The window is in the past")
RecurrenceNeverOccurs = _error(
    "RecurrenceNeverOccurs", 400, "recurrence_never_occurs", "The recurring rule never occurs"
)
NothingToOpen = _error("NothingToOpen", 409, "nothing_to_open", "The visit opens nothing now")
WorkOrderClosed = _error(
    "WorkOrderClosed", 409, "work_order_closed", "The visit is cancelled or completed"
)
KeyCheckedOut = _error("KeyCheckedOut", 409, "key_checked_out", "The key is checked out")
KeyUnavailable = _error("KeyUnavailable", 409, "key_unavailable", "The key is not available")
CompartmentOccupied = _error(
    "CompartmentOccupied", 409, "compartment_occupied", "The compartment is not free"
)
NotAKeyCompartment = _error(
    "NotAKeyCompartment", 409, "not_a_key_compartment", "Keys go in key compartments only"
)
EmergencyNotPermitted = _error(
    "EmergencyNotPermitted", 403, "emergency_not_permitted", "No emergency access permission"
)
ApprovalRequired = _error(
    "ApprovalRequired", 409, "approval_required", "A second staff member must approve first"
)
# Parcels (issue 4)
NoCompartmentFits = _error(
    "NoCompartmentFits", 409, "no_compartment_fits", "No free compartment of that size"
)
UnknownUnit = _error("UnknownUnit", 404, "unknown_unit", "No unit with that label here")
ParcelStateConflict = _error(
    "ParcelStateConflict", 409, "parcel_state_conflict", "The parcel is not in a state for that"
)
# Push notifications (issue 6)
PreferenceLocked = _error(
    "PreferenceLocked", 409, "preference_locked", "Security alerts cannot be turned off for staff"
)
# Credentials and revocation (issue 3)
AccessRevoked = _error("AccessRevoked", 403, "access_revoked", "Access was revoked")
KioskOffline = _error(
    "KioskOffline", 409, "kiosk_offline", "The kiosk is not connected or did not acknowledge"
)

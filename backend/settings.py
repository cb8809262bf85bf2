"""Typed settings read once from ``CONCIERGE_*`` environment variables.

Every field has a default that runs embedded (SQLite under ``./var/``, in-process channels,
push to a local log) and a description; the README's configuration table is checked against
these descriptions by a test. Unknown ``CONCIERGE_*`` variables are an error: a typo must not
silently fall back to a default.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Annotated, Any

import msgspec

PREFIX = "CONCIERGE_"


def _doc(description: str) -> msgspec.Meta:
    return msgspec.Meta(description=description)


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    """All configuration of a Concierge process."""

    database_url: Annotated[
        str, _doc("SQLAlchemy async URL; PostgreSQL: postgresql+asyncpg://...")
    ] = "sqlite+aiosqlite:///./var/concierge.db"
    database_pool_size: Annotated[
        int,
        msgspec.Meta(
            ge=1,
            le=1000,
            description="PostgreSQL connections each process keeps; requests beyond it wait"
            " for one (none are opened and closed per burst)",
        ),
    ] = 10
    redis_url: Annotated[
        str | None, _doc("Redis URL for cross-process realtime fan-out; unset: in-process")
    ] = None
    key_encryption_key: Annotated[
        str | None,
        _doc("Base64url 32-byte key that encrypts signing keys at rest and derives token keys"),
    ] = None
    key_encryption_key_file: Annotated[
        str | None,
        _doc("File holding the key-encryption key; created under ./var/ when neither is set"),
    ] = None
    var_dir: Annotated[
        str, _doc("Directory for embedded state (SQLite file, generated key file, push log)")
    ] = "var"
    issuer: Annotated[str, _doc("Issuer (iss) of access tokens and credentials")] = "concierge"
    access_token_ttl_seconds: Annotated[int, _doc("Lifetime of an access token")] = 900
    refresh_token_ttl_seconds: Annotated[int, _doc("Lifetime of a refresh token family member")] = (
        30 * 86400
    )
    invitation_ttl_seconds: Annotated[int, _doc("How long an invitation code can be accepted")] = (
        7 * 86400
    )
    enrollment_code_ttl_seconds: Annotated[
        int, _doc("How long a kiosk enrollment code is valid")
    ] = 900
    kiosk_assertion_max_seconds: Annotated[
        int, _doc("Maximum lifetime (exp - iat) of a kiosk assertion")
    ] = 60
    clock_skew_seconds: Annotated[int, _doc("Clock skew tolerated on token timestamps")] = 30
    login_max_failures: Annotated[
        int, _doc("Failed logins per account or per client address before 429")
    ] = 5
    login_window_seconds: Annotated[
        int, _doc("Window over which failed logins are counted, and the lockout")
    ] = 900
    max_body_bytes: Annotated[int, _doc("Largest accepted request body")] = 256 * 1024
    password_hash_time_cost: Annotated[int, _doc("argon2id time cost")] = 2
    password_hash_memory_kib: Annotated[int, _doc("argon2id memory cost in KiB")] = 19456
    credential_ttl_seconds: Annotated[int, _doc("Validity of an on-site credential")] = 300
    offline_credential_ttl_seconds: Annotated[
        int, _doc("Validity of credentials in an offline batch")
    ] = 86400
    max_offline_credentials: Annotated[
        int, _doc("Largest `count` of an offline credential batch")
    ] = 10
    signing_key_rotation_days: Annotated[
        int, _doc("Age after which the credential signing key rotates")
    ] = 30
    kb_freshness_seconds: Annotated[
        int, _doc("How old a key-binding proof (kb-jwt) a kiosk accepts")
    ] = 30
    ws_max_message_bytes: Annotated[int, _doc("Largest websocket frame the server reads")] = (
        64 * 1024
    )
    ws_auth_timeout_seconds: Annotated[
        float, _doc("Time a websocket client has to send its auth frame")
    ] = 10.0
    ws_idle_timeout_seconds: Annotated[
        float, _doc("Websocket closed after this long without a client frame")
    ] = 120.0
    ws_ping_interval_seconds: Annotated[float, _doc("Interval of server pings on websockets")] = (
        20.0
    )
    ws_max_lifetime_seconds: Annotated[float, _doc("Longest a websocket connection may live")] = (
        6 * 3600.0
    )
    ws_send_queue: Annotated[
        int, _doc("Events buffered per websocket before it is closed as slow")
    ] = 256
    ws_resume_max_events: Annotated[
        int, _doc("Largest replay on resume before the client must refetch")
    ] = 1000
    ws_recheck_seconds: Annotated[
        float, _doc("How often an open websocket re-checks its user's access in the database")
    ] = 60.0
    realtime_poll_seconds: Annotated[
        float, _doc("How often the realtime relay polls the Event table for missed events")
    ] = 0.5
    redis_channel_prefix: Annotated[
        str, _doc("Prefix of the Redis channels and keys used by realtime fan-out")
    ] = "concierge"
    kiosk_offline_grace_seconds: Annotated[
        float, _doc("Grace before a disconnected kiosk is reported offline")
    ] = 30.0
    kiosk_presence_lease_seconds: Annotated[
        float,
        _doc(
            "Lease a server process holds on each connected kiosk, renewed every third of it; "
            "lapsed longer than the offline grace: the kiosk is reported offline"
        ),
    ] = 30.0
    firebase_credentials: Annotated[
        str | None,
        _doc("Path to the Firebase service-account JSON; unset: pushes go to the log sender"),
    ] = None
    fcm_endpoint: Annotated[str, _doc("Base URL of the FCM HTTP v1 API (tests and emulators)")] = (
        "https://fcm.googleapis.com"
    )
    fcm_timeout_seconds: Annotated[float, _doc("HTTP timeout of one FCM call")] = 10.0
    push_log_path: Annotated[
        str | None, _doc("File the log sender appends to; unset: var/push.log")
    ] = None
    outbox_poll_seconds: Annotated[
        float, _doc("How often the outbox dispatcher looks for work")
    ] = 0.5
    outbox_retention_days: Annotated[
        int,
        _doc("Days finished notifications and their deliveries are kept (0: kept for ever)"),
    ] = 30
    outbox_max_age_seconds: Annotated[
        int, _doc("Age after which a retrying notification is marked failed")
    ] = 86400
    outbox_lease_seconds: Annotated[
        float, _doc("How long a push worker owns claimed notifications before others may retry")
    ] = 120.0
    outbox_batch_size: Annotated[
        int, _doc("Notifications a push worker claims and sends per round (at most 500)")
    ] = 100
    outbox_retry_base_seconds: Annotated[
        float, _doc("First retry delay of a failed push; doubles per attempt, with jitter")
    ] = 5.0
    background_jobs: Annotated[
        bool,
        _doc(
            "Run the outbox dispatcher, policy jobs and PIN hasher inside the server"
            " (set `false` where `concierge worker` processes run them)"
        ),
    ] = True
    policy_interval_seconds: Annotated[
        float, _doc("How often the policy engine runs inside the server")
    ] = 60.0
    key_overdue_repeat_seconds: Annotated[
        int, _doc("How often a key.overdue alert repeats until the key is back")
    ] = 3600
    door_held_open_repeat_seconds: Annotated[
        int, _doc("How often a door.held_open alert repeats while the door stays open")
    ] = 300
    emergency_credential_ttl_seconds: Annotated[
        int, _doc("Validity of a break-glass emergency credential")
    ] = 900
    override_ack_timeout_seconds: Annotated[
        float, _doc("How long a manual override waits for the kiosk's acknowledgement")
    ] = 10.0
    json_logs: Annotated[bool, _doc("Log as JSON lines with a request id")] = False
    log_level: Annotated[str, _doc("Log level")] = "INFO"

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Build settings from ``CONCIERGE_*`` variables; unknown names raise ``ValueError``."""
        environ = os.environ if environ is None else environ
        known = set(cls.__struct_fields__)
        values: dict[str, Any] = {}
        unknown = []
        for name, raw in environ.items():
            if not name.startswith(PREFIX):
                continue
            field = name[len(PREFIX) :].lower()
            if field not in known:
                unknown.append(name)
                continue
            values[field] = raw
        if unknown:
            raise ValueError(f"unknown setting(s): {', '.join(sorted(unknown))}")
        values.update(overrides)
        try:
            return msgspec.convert(values, cls, strict=False)
        except msgspec.ValidationError as exc:
            raise ValueError(f"invalid setting: {exc}") from None


def describe() -> list[tuple[str, str, str]]:
    """(variable, default, description) for every setting: the README table is built from this."""
    rows = []
    info = msgspec.inspect.type_info(Settings)
    assert isinstance(info, msgspec.inspect.StructType)
    for field in info.fields:
        meta = field.type
        description = ""
        if isinstance(meta, msgspec.inspect.Metadata):
            description = (meta.extra_json_schema or {}).get("description", "")
        default = "" if field.default is msgspec.NODEFAULT else field.default
        rows.append(
            (PREFIX + field.name.upper(), "" if default is None else str(default), description)
        )
    return rows

"""``POST /v1/kiosk/journal``: the kiosk uploads its hash-chained journal (idempotent)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import msgspec
from litestar import post
from litestar.params import JSONBody

from backend import errors
from backend.dependencies import KioskDep, SessionDep
from backend.models.base import utcnow
from backend.problems import responses
from backend.services import journal

Hash = Annotated[str, msgspec.Meta(max_length=128, pattern=r"^[0-9a-fA-F]*$")]


class JournalEntryUpload(msgspec.Struct, forbid_unknown_fields=True):
    seq: Annotated[int, msgspec.Meta(ge=1, le=2**31 - 1)]
    type: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    occurred_at: Annotated[
        str,
        msgspec.Meta(
            min_length=10,
            max_length=64,
            description="ISO 8601 with a UTC offset",
            extra_json_schema={"format": "date-time"},
        ),
    ]
    data: dict[str, Any] = msgspec.field(default_factory=dict)
    prev_hash: Hash = ""
    hash: Hash = ""


class JournalUpload(msgspec.Struct, forbid_unknown_fields=True):
    entries: Annotated[list[JournalEntryUpload], msgspec.Meta(max_length=1000)]


class JournalAck(msgspec.Struct):
    accepted_through: Annotated[
        int, msgspec.Meta(description="Every seq up to this one is stored; the kiosk may drop them")
    ]
    gaps: Annotated[
        list[list[int]],
        msgspec.Meta(description="Missing [from, to] ranges the kiosk should resend"),
    ]
    stored: int
    duplicates: int
    forked: Annotated[list[int], msgspec.Meta(description="Seqs that differ from what is stored")]


def _moment(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        raise errors.ValidationFailed("occurred_at must be ISO 8601 with a UTC offset")
    return moment


@post(
    "/journal",
    status_code=200,
    summary="Upload journal entries; resending is safe (idempotent by kiosk and seq)",
    responses=responses(errors.InvalidKioskAssertion, errors.KioskAssertionReplayed, auth=False),
)
async def upload_journal(
    data: JSONBody[JournalUpload], kiosk: KioskDep, session: SessionDep
) -> JournalAck:
    items = [
        journal.IncomingEntry(e.seq, e.type, _moment(e.occurred_at), e.prev_hash, e.hash, e.data)
        for e in data.entries
    ]
    result = await journal.ingest(session, kiosk, items, utcnow())
    return JournalAck(
        result.accepted_through, result.gaps, result.stored, result.duplicates, result.forks
    )


handlers = [upload_journal]

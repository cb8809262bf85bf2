"""Kiosk journal ingest: idempotent by ``(kiosk, seq)``, forks and double spends detected.

Invariants:
- ``(kiosk_id, epoch, seq)`` is unique (database constraint): a batch resent any number of
  times, even concurrently, is stored once; only a newly stored entry has effects (events,
  hooks). The epoch is the kiosk's enrollment (``Kiosk.journal_epoch``): a replaced kiosk
  computer, re-enrolled, starts a new journal at seq 1, which is not a fork of the old one.
- The same ``seq`` with different content is a fork (a cloned or rolled-back kiosk): the
  variant is kept in ``journal_fork`` and ``kiosk.journal_forked`` (critical) is recorded once
  per distinct variant. So is an entry whose ``prev_hash`` does not link to the stored entry
  before it. A forked ``decision`` still counts as a redemption, because a rolled-back kiosk
  has also forgotten which credentials it spent: that is how double spends surface.
- A granted ``decision`` with a ``jti`` redeems the credential (``credential.redeemed``); a
  second redemption of one jti keeps both and records ``credential.double_spent`` (critical)
  (an emergency credential is good once at each kiosk of its property, so there only a second
  redemption at the same kiosk is a double spend);
  a redemption after the credential was revoked is flagged (``revoked: true``, warning).
- Feature handlers run in a savepoint each: a failing handler marks its entry ``failed`` and
  never blocks the journal (the kiosk would otherwise resend the batch forever).

Registries (features register at import of their service module):
``REDEMPTION_HOOKS``: async (session, kiosk, credential, entry, now), after a first redemption
(for an emergency credential: the first at each kiosk).
``JOURNAL_HANDLERS[type]``: async (session, kiosk, entry, now), for every other entry type.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import pkgutil
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from backend.models import (
    Credential,
    CredentialRedemption,
    JournalCursor,
    JournalEntry,
    JournalFork,
    Kiosk,
)
from backend.services.events import record_event

log = logging.getLogger("concierge.journal")

RedemptionHook = Callable[
    [AsyncSession, Kiosk, Credential, JournalEntry, datetime], Awaitable[None]
]
JournalHandler = Callable[[AsyncSession, Kiosk, JournalEntry, datetime], Awaitable[None]]
REDEMPTION_HOOKS: list[RedemptionHook] = []
JOURNAL_HANDLERS: dict[str, JournalHandler] = {}
MAX_GAPS = 100
SCAN_LIMIT = 10_000  # seqs above the cursor read per upload when looking for gaps


@dataclass(frozen=True)
class IncomingEntry:
    seq: int
    type: str
    occurred_at: datetime
    prev_hash: str
    hash: str
    data: dict[str, Any]

    def content_hash(self) -> str:
        body = {
            "seq": self.seq,
            "type": self.type,
            "occurred_at": self.occurred_at.astimezone(UTC).isoformat(),
            "prev_hash": self.prev_hash,
            "hash": self.hash,
            "data": self.data,
        }
        canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass
class IngestResult:
    accepted_through: int
    gaps: list[list[int]]
    stored: int = 0
    duplicates: int = 0
    forks: list[int] = field(default_factory=list)


@dataclass
class _PendingEvent:
    kwargs: dict[str, Any]


_features_loaded = False


def _load_features() -> None:
    """Import every service module once so their handlers are registered."""
    global _features_loaded
    if _features_loaded:
        return
    _features_loaded = True
    import backend.services as package

    for info in pkgutil.iter_modules(package.__path__):
        name = f"{package.__name__}.{info.name}"
        try:
            importlib.import_module(name)
        except Exception:
            log.exception("service module failed to import", extra={"service_module": name})


async def _existing(
    session: AsyncSession, kiosk: Kiosk, seqs: Sequence[int]
) -> dict[int, JournalEntry]:
    if not seqs:
        return {}
    rows = await session.exec(
        select(JournalEntry).where(
            JournalEntry.kiosk_id == kiosk.id,
            JournalEntry.epoch == kiosk.journal_epoch,
            col(JournalEntry.seq).in_(list(seqs)),
        )
    )
    return {row.seq: row for row in rows.all()}


async def _hash_of(session: AsyncSession, kiosk: Kiosk, seq: int) -> str | None:
    return (
        await session.exec(
            select(JournalEntry.hash).where(
                JournalEntry.kiosk_id == kiosk.id,
                JournalEntry.epoch == kiosk.journal_epoch,
                JournalEntry.seq == seq,
            )
        )
    ).first()


async def _store(
    session: AsyncSession, kiosk: Kiosk, item: IncomingEntry, now: datetime
) -> JournalEntry | None:
    """Insert one entry in a savepoint; None when that seq is already stored (raced)."""
    row = JournalEntry(
        kiosk_id=kiosk.id,
        epoch=kiosk.journal_epoch,
        seq=item.seq,
        type=item.type,
        occurred_at=item.occurred_at,
        data=item.data,
        prev_hash=item.prev_hash,
        hash=item.hash,
        content_hash=item.content_hash(),
        received_at=now,
    )
    try:
        async with session.begin_nested():
            session.add(row)
        return row
    except IntegrityError:
        return None


async def _store_fork(
    session: AsyncSession, kiosk: Kiosk, item: IncomingEntry, now: datetime
) -> bool:
    """Keep a forked variant; True when this variant is new."""
    fork = JournalFork(
        kiosk_id=kiosk.id,
        epoch=kiosk.journal_epoch,
        seq=item.seq,
        type=item.type,
        occurred_at=item.occurred_at,
        data=item.data,
        prev_hash=item.prev_hash,
        hash=item.hash,
        content_hash=item.content_hash(),
        received_at=now,
    )
    try:
        async with session.begin_nested():
            session.add(fork)
        return True
    except IntegrityError:
        return False


def _fork_event(
    kiosk: Kiosk, item: IncomingEntry, reason: str, stored_hash: str | None
) -> _PendingEvent:
    return _PendingEvent(
        {
            "property_id": kiosk.property_id,
            "type": "kiosk.journal_forked",
            "actor": f"kiosk:{kiosk.id}",
            "subject": f"kiosk:{kiosk.id}",
            "payload": {
                "kiosk_id": kiosk.id,
                "seq": item.seq,
                "reason": reason,
                "entry_type": item.type,
                "stored_hash": stored_hash,
                "received_hash": item.hash,
            },
            "occurred_at": item.occurred_at,
        }
    )


async def _redeem(
    session: AsyncSession,
    kiosk: Kiosk,
    item: IncomingEntry,
    entry: JournalEntry | None,
    events: list[_PendingEvent],
    now: datetime,
    *,
    forked: bool,
) -> None:
    """A granted decision with a jti: mark the credential redeemed, or catch a double spend."""
    data = item.data
    jti = data.get("jti")
    if item.type != "decision" or data.get("granted") is not True or not isinstance(jti, str):
        return
    credential = (
        await session.exec(select(Credential).where(Credential.jti == jti[:64]).with_for_update())
    ).first()
    if credential is None or credential.property_id != kiosk.property_id:
        log.warning(
            "redemption of an unknown credential", extra={"kiosk_id": kiosk.id, "seq": item.seq}
        )
        return
    if credential.kind == "standard" and credential.kiosk_id != kiosk.id:
        log.warning("redemption at the wrong kiosk", extra={"kiosk_id": kiosk.id, "seq": item.seq})
        return
    base_payload = {
        "credential_id": credential.id,
        "kiosk_id": kiosk.id,
        "target": data.get("target") or credential.target,
        "channel": data.get("channel"),
        "seq": item.seq,
        "emergency": credential.kind == "emergency",
    }
    for name in ("parcel_id", "work_order_id", "key_id"):
        value = getattr(credential, name)
        if value is not None:
            base_payload[name] = value
    target = base_payload["target"]
    if isinstance(target, str) and ":" in target:
        kind, _, target_id = target.partition(":")
        if kind in ("door", "compartment") and target_id:
            base_payload[f"{kind}_id"] = target_id
    common = {
        "property_id": kiosk.property_id,
        "actor": f"kiosk:{kiosk.id}",
        "subject": f"credential:{credential.id}",
        "user_id": credential.user_id,
        "occurred_at": item.occurred_at,
    }
    # One use per credential; an emergency credential is good once at each kiosk of its property.
    previous_statement = select(CredentialRedemption).where(
        CredentialRedemption.credential_id == credential.id
    )
    if credential.kind == "emergency":
        previous_statement = previous_statement.where(CredentialRedemption.kiosk_id == kiosk.id)
    previous = (
        await session.exec(previous_statement.order_by(col(CredentialRedemption.id)).limit(1))
    ).first()
    revoked = credential.revoked_at is not None and credential.revoked_at <= item.occurred_at
    session.add(
        CredentialRedemption(
            credential_id=credential.id,
            kiosk_id=kiosk.id,
            seq=item.seq,
            occurred_at=item.occurred_at,
            forked=forked,
            revoked=revoked,
        )
    )
    credential.redemptions += 1
    if credential.redeemed_at is None:
        credential.redeemed_at = item.occurred_at
        credential.redeemed_kiosk_id = kiosk.id
    session.add(credential)
    if previous is not None:
        events.append(
            _PendingEvent(
                {
                    **common,
                    "type": "credential.double_spent",
                    "payload": {
                        **base_payload,
                        "first_kiosk_id": previous.kiosk_id,
                        "first_seq": previous.seq,
                        "first_redeemed_at": previous.occurred_at.isoformat(),
                        "redemptions": credential.redemptions,
                        "forked": forked,
                    },
                }
            )
        )
        return
    payload = {**base_payload, "revoked": revoked}
    extra: dict[str, Any] = {"severity": "warning"} if revoked else {}
    events.append(
        _PendingEvent({**common, "type": "credential.redeemed", "payload": payload, **extra})
    )
    if entry is not None:
        for hook in REDEMPTION_HOOKS:
            await _run_safely(session, entry, hook(session, kiosk, credential, entry, now))


async def _run_safely(session: AsyncSession, entry: JournalEntry, call: Awaitable[None]) -> None:
    try:
        async with session.begin_nested():
            await call
        if entry.status != "failed":
            entry.status = "handled"
    except Exception:
        log.exception(
            "journal handler failed",
            extra={"kiosk_id": entry.kiosk_id, "seq": entry.seq, "type": entry.type},
        )
        entry.status = "failed"
    session.add(entry)


async def accepted_through(session: AsyncSession, kiosk: Kiosk) -> int:
    """The highest seq of the kiosk's current journal epoch with every seq before it stored
    (what sync reports)."""
    cursor = await session.get(JournalCursor, kiosk.id)
    if cursor is None or cursor.epoch != kiosk.journal_epoch:
        return 0
    return cursor.accepted_through


async def _advance(
    session: AsyncSession, kiosk: Kiosk, now: datetime
) -> tuple[int, list[list[int]]]:
    """Move the kiosk's cursor over newly contiguous seqs; the gaps above it (bounded).

    Only seqs above the cursor are read, so the cost does not grow with the journal's length.
    A cursor left from an earlier enrollment starts over at 0.
    """
    statement = select(JournalCursor).where(JournalCursor.kiosk_id == kiosk.id).with_for_update()
    cursor = (await session.exec(statement.execution_options(populate_existing=True))).first()
    if cursor is None:
        try:
            async with session.begin_nested():
                session.add(
                    JournalCursor(
                        kiosk_id=kiosk.id,
                        epoch=kiosk.journal_epoch,
                        accepted_through=0,
                        updated_at=now,
                    )
                )
        except IntegrityError:
            pass
        cursor = (await session.exec(statement.execution_options(populate_existing=True))).one()
    if cursor.epoch != kiosk.journal_epoch:
        cursor.epoch, cursor.accepted_through, cursor.updated_at = kiosk.journal_epoch, 0, now
        session.add(cursor)
    through = cursor.accepted_through
    seqs = (
        await session.exec(
            select(JournalEntry.seq)
            .where(
                JournalEntry.kiosk_id == kiosk.id,
                JournalEntry.epoch == kiosk.journal_epoch,
                col(JournalEntry.seq) > through,
            )
            .order_by(col(JournalEntry.seq))
            .limit(SCAN_LIMIT)
        )
    ).all()
    gaps: list[list[int]] = []
    expected = through + 1
    for seq in seqs:
        if seq != expected:
            gaps.append([expected, seq - 1])
            if len(gaps) >= MAX_GAPS:
                break
        elif not gaps:
            through = seq
        expected = seq + 1
    if through != cursor.accepted_through:
        cursor.accepted_through = through
        cursor.updated_at = now
        session.add(cursor)
    return through, gaps


async def ingest(
    session: AsyncSession, kiosk: Kiosk, items: Sequence[IncomingEntry], now: datetime
) -> IngestResult:
    """Store a batch from ``kiosk``; effects only for entries stored for the first time."""
    _load_features()
    ordered = sorted({item.seq: item for item in items}.values(), key=lambda i: i.seq)
    existing = await _existing(session, kiosk, [i.seq for i in ordered])
    events: list[_PendingEvent] = []
    result = IngestResult(0, [])
    batch_hashes: dict[int, str] = {}
    for item in ordered:
        stored = existing.get(item.seq)
        entry: JournalEntry | None = None
        if stored is None:
            entry = await _store(session, kiosk, item, now)
            if entry is None:  # another request stored it a moment ago
                stored = (await _existing(session, kiosk, [item.seq]))[item.seq]
        if stored is not None:
            batch_hashes[item.seq] = stored.hash
            if stored.content_hash == item.content_hash():
                result.duplicates += 1
                continue
            result.forks.append(item.seq)
            if await _store_fork(session, kiosk, item, now):
                events.append(_fork_event(kiosk, item, "different_content", stored.hash))
                await _redeem(session, kiosk, item, None, events, now, forked=True)
            continue
        assert entry is not None
        result.stored += 1
        batch_hashes[item.seq] = item.hash
        if item.seq > 1:
            previous = batch_hashes.get(item.seq - 1) or await _hash_of(
                session, kiosk, item.seq - 1
            )
            if previous is not None and item.prev_hash and previous != item.prev_hash:
                result.forks.append(item.seq)
                events.append(_fork_event(kiosk, item, "chain_broken", previous))
        if item.type == "decision":
            await _redeem(session, kiosk, item, entry, events, now, forked=False)
        else:
            handler = JOURNAL_HANDLERS.get(item.type)
            if handler is not None:
                await _run_safely(session, entry, handler(session, kiosk, entry, now))
    await session.flush()
    for pending in events:
        await record_event(session, **pending.kwargs)
    result.accepted_through, result.gaps = await _advance(session, kiosk, now)
    if result.forks:
        log.warning("kiosk journal forked", extra={"kiosk_id": kiosk.id, "seqs": result.forks[:20]})
    return result

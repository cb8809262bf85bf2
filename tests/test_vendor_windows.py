"""Weekly visit windows across daylight-saving changes (the service's window expansion)."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from backend.models import WorkOrder
from backend.services.work_orders import current_window, next_window, windows

NY = ZoneInfo("America/New_York")


def weekly(weekdays: list[str], start: str, end: str, starts_on: str, until: str) -> WorkOrder:
    return WorkOrder(
        property_id="p",
        vendor_user_id="v",
        kind="weekly",
        starts_at=datetime(2026, 1, 1, tzinfo=UTC),
        ends_at=datetime(2026, 1, 1, tzinfo=UTC),
        recurrence={
            "weekdays": weekdays,
            "start_time": start,
            "end_time": end,
            "starts_on": starts_on,
            "until": until,
        },
    )


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def test_local_wall_time_is_kept_across_spring_forward_and_fall_back() -> None:
    wo = weekly(["sun"], "09:00", "12:00", "2027-03-01", "2027-11-14")
    got = [(w.starts_at, w.ends_at) for w in windows(wo, NY)]
    assert got[0] == (utc(2027, 3, 7, 14), utc(2027, 3, 7, 17))  # EST
    assert got[1] == (utc(2027, 3, 14, 13), utc(2027, 3, 14, 16))  # DST began at 02:00
    assert got[-2] == (utc(2027, 11, 7, 14), utc(2027, 11, 7, 17))  # DST ended at 02:00
    assert got[-1] == (utc(2027, 11, 14, 14), utc(2027, 11, 14, 17))
    assert all(w.starts_at.astimezone(NY).hour == 9 for w in windows(wo, NY))


def test_gap_overnight_and_ambiguous_times() -> None:
    # 02:30 does not exist on 14 March 2027 in New York: the window starts at 03:30 EDT (07:30Z).
    gap = weekly(["sun"], "02:30", "04:00", "2027-03-14", "2027-03-14")
    (only,) = list(windows(gap, NY))
    assert (only.starts_at, only.ends_at) == (utc(2027, 3, 14, 7, 30), utc(2027, 3, 14, 8))
    # 01:30 happens twice on 7 November 2027: the first one (EDT) is used.
    twice = weekly(["sun"], "01:30", "03:00", "2027-11-07", "2027-11-07")
    (first,) = list(windows(twice, NY))
    assert first.starts_at == utc(2027, 11, 7, 5, 30)
    assert first.ends_at == utc(2027, 11, 7, 8)  # 03:00 EST
    # An end before the start crosses midnight (night shift, Friday 22:00 to Saturday 06:00).
    night = weekly(["fri"], "22:00", "06:00", "2027-01-01", "2027-01-08")
    assert [(w.starts_at, w.ends_at) for w in windows(night, NY)] == [
        (utc(2027, 1, 2, 3), utc(2027, 1, 2, 11)),
        (utc(2027, 1, 9, 3), utc(2027, 1, 9, 11)),
    ]


def test_current_and_next_window_with_grace_and_a_shortened_end() -> None:
    from datetime import timedelta

    wo = weekly(["tue", "thu"], "09:00", "12:00", "2027-01-04", "2027-01-31")
    grace = timedelta(minutes=10)
    before = utc(2027, 1, 5, 13, 55)  # 08:55 local, inside the grace
    assert current_window(wo, NY, before, grace) is not None
    assert current_window(wo, NY, utc(2027, 1, 5, 13, 45), grace) is None
    after = utc(2027, 1, 5, 17, 1)  # 12:01 local: closed; next is Thursday
    assert current_window(wo, NY, after, grace) is None
    upcoming = next_window(wo, NY, after)
    assert upcoming is not None
    assert upcoming.starts_at == utc(2027, 1, 7, 14)
    wo.ends_early_at = utc(2027, 1, 7, 15)
    clipped = list(windows(wo, NY, after=after))
    assert [(w.starts_at, w.ends_at) for w in clipped] == [
        (utc(2027, 1, 7, 14), utc(2027, 1, 7, 15))
    ]
    wo.state = "cancelled"
    assert next_window(wo, NY, after) is None

"""The next occurrence of a recurring message: cron rules read in the owner's timezone, across
daylight-saving changes, never in the past."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from whatsched.dispatcher.recurrence import is_valid, next_occurrence

SANTIAGO = "America/Santiago"  # Chile: UTC-3 in summer, UTC-4 in winter


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def test_daily_at_nine_stays_at_nine_local_across_daylight_saving_changes() -> None:
    # Clocks go back on 2026-04-05 (00:00 -03 -> 23:00 -04): 09:00 is 12:00 UTC, then 13:00 UTC.
    before = utc(2026, 4, 4, 12)
    assert next_occurrence("0 9 * * *", before, SANTIAGO, now=before) == utc(2026, 4, 5, 13)
    # Clocks go forward on 2026-09-06 (00:00 -04 -> 01:00 -03).
    before = utc(2026, 9, 5, 13)
    assert next_occurrence("0 9 * * *", before, SANTIAGO, now=before) == utc(2026, 9, 6, 12)


def test_a_local_time_skipped_by_daylight_saving_moves_to_just_after_the_gap() -> None:
    before = utc(2026, 9, 5, 5)  # 01:00 local on the 5th
    assert next_occurrence("30 0 * * *", before, SANTIAGO, now=before) == utc(2026, 9, 6, 4)  # 01:00 -03


def test_the_next_occurrence_is_after_now_when_the_previous_one_finished_late() -> None:
    previous = utc(2026, 3, 2, 12)  # Monday 09:00 in Santiago
    now = previous + timedelta(days=3, hours=1)  # finished (or the worker was down) until Thursday
    assert next_occurrence("0 9 * * *", previous, SANTIAGO, now=now) == utc(2026, 3, 6, 12)
    assert next_occurrence("0 9 * * 1", previous, SANTIAGO, now=now) == utc(2026, 3, 9, 12)


def test_shortcuts_and_validation() -> None:
    saturday = utc(2026, 9, 5, 13)
    assert next_occurrence("@weekly", saturday, "Europe/Madrid", now=saturday) == utc(2026, 9, 5, 22)  # Sunday 00:00
    assert next_occurrence("@daily", saturday, "UTC", now=saturday) == utc(2026, 9, 6)
    assert is_valid("0 9 * * 1-5") and is_valid("@monthly")
    assert not is_valid("every day") and not is_valid("") and not is_valid("61 * * * *")
    with pytest.raises(ValueError):
        next_occurrence("every day", saturday, "UTC")
    # An unknown timezone reads as UTC rather than losing the series.
    assert next_occurrence("0 9 * * *", saturday, "Mars/Olympus", now=saturday) == utc(2026, 9, 6, 9)

"""Careful sending: random spacing between sends per WhatsApp number, hourly and daily caps,
an optional warm-up ramp, and quiet hours in each owner's timezone.

The rules are enforced in SQL (private.claim_deliveries) under a lock on the number's pacing row,
so any number of workers share one budget per WhatsApp number. This module turns the settings into the
claim's arguments. Spacing and caps of 0 are off; an empty QUIET_HOURS is off.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from whatsched.config import DispatchSettings, Settings
from whatsched.errors import ConfigError

_WINDOW = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*$")


@dataclass(frozen=True)
class QuietHours:
    """[start, end) in local time; a start after the end spans midnight (21:00-08:00)."""

    start: time
    end: time

    def contains(self, local: time) -> bool:
        if self.start < self.end:
            return self.start <= local < self.end
        return local >= self.start or local < self.end

    def until(self, now: datetime, tz: str) -> datetime | None:
        """The end of the window `now` is in, for an owner in `tz`; None when outside it.
        (The same rule as private.quiet_until, for callers without a database.)"""
        local = now.astimezone(ZoneInfo(tz))
        if self.start == self.end or not self.contains(local.time().replace(tzinfo=None)):
            return None
        end = datetime.combine(local.date(), self.end)
        if end <= local.replace(tzinfo=None):
            end += timedelta(days=1)
        return end.replace(tzinfo=ZoneInfo(tz))


def parse_quiet_hours(text: str) -> QuietHours | None:
    """ "21:00-08:00" -> QuietHours; "" -> None (off)."""
    if not text.strip():
        return None
    match = _WINDOW.match(text)
    if match is None:
        raise ConfigError(f'QUIET_HOURS must look like "21:00-08:00" (or be empty to turn it off), got "{text}".')
    h1, m1, h2, m2 = (int(g) for g in match.groups())
    if h1 > 23 or h2 > 23 or m1 > 59 or m2 > 59:
        raise ConfigError(f'QUIET_HOURS has an impossible time: "{text}".')
    return QuietHours(time(h1, m1), time(h2, m2))


@dataclass(frozen=True)
class Pacing:
    spacing_min_s: float
    spacing_max_s: float
    hourly_cap: int
    daily_cap: int
    warmup_days: int
    quiet: QuietHours | None

    @classmethod
    def from_settings(cls, settings: Settings, dispatch: DispatchSettings) -> Pacing:
        low, high = settings.send_spacing_min_s, settings.send_spacing_max_s
        if high < low:
            raise ConfigError("SEND_SPACING_MAX_S must be at least SEND_SPACING_MIN_S.")
        return cls(
            spacing_min_s=low,
            spacing_max_s=high,
            hourly_cap=settings.send_hourly_cap,
            daily_cap=settings.send_daily_cap,
            warmup_days=dispatch.warmup_days,
            quiet=parse_quiet_hours(settings.quiet_hours),
        )

    @property
    def spaced(self) -> bool:
        return self.spacing_max_s > 0

    @property
    def active(self) -> bool:
        """Whether the sender's budget (spacing or caps) limits claims at all."""
        return self.spaced or self.hourly_cap > 0 or self.daily_cap > 0

    def batch_limit(self, batch_size: int) -> int:
        # With spacing, sends go one at a time; the claim enforces it too.
        return 1 if self.spaced else batch_size

    def claim_request(self) -> dict[str, Any]:
        """The pacing fields of private.claim_deliveries' request, by name (each number is paced
        on its own: the claim's pacing key is its number)."""
        return {
            "spacing_min_s": self.spacing_min_s,
            "spacing_max_s": self.spacing_max_s,
            "hourly_cap": self.hourly_cap,
            "daily_cap": self.daily_cap,
            "warmup_days": self.warmup_days,
            "quiet_start": self.quiet.start.isoformat() if self.quiet else None,
            "quiet_end": self.quiet.end.isoformat() if self.quiet else None,
        }

"""Calendar days in the quota's time zone, for requests-per-day limits.

Gemini resets requests-per-day at midnight America/Los_Angeles, so a quota
"day" is a local calendar day: 23 or 25 hours long when daylight saving
time starts or ends, never a fixed 86 400 s. Callers deal in wall-clock
epoch seconds and day numbers (proleptic Gregorian ordinals of the local
date) only, so no datetime arithmetic leaks into the quota logic. (The quota
policy keeps its deadlines on a steady clock and converts to and from wall
time with the wall offset it is given; this module sees only wall time.)
"""

from __future__ import annotations

import math
from datetime import date, datetime, time
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from tierbatch.policies.errors import TierbatchError

__all__ = ["LocalCalendar", "UnknownTimeZoneError"]


class UnknownTimeZoneError(TierbatchError, ValueError):
    """The configured time zone is not an IANA name zoneinfo knows."""

    def __init__(self, name: str) -> None:
        super().__init__(f"unknown time zone {name!r}")
        self.name = name


class LocalCalendar:
    """Maps epoch seconds to local days and back, caching the current day.

    The quota policy asks for the day of ``now`` on every grant, so the
    bounds of the last day looked up are kept: a lookup inside them costs
    two comparisons instead of a time-zone conversion.
    """

    __slots__ = ("_day", "_end", "_start", "_tz")

    def __init__(self, timezone: str) -> None:
        try:
            self._tz = ZoneInfo(timezone)
        except (ZoneInfoNotFoundError, ValueError, OSError) as exc:
            raise UnknownTimeZoneError(timezone) from exc
        self._start = math.inf
        self._end = -math.inf
        self._day = 0

    @property
    def timezone(self) -> str:
        return self._tz.key

    def day(self, now: float) -> int:
        """The local calendar day ``now`` falls in, as a date ordinal."""
        if self._start <= now < self._end:
            return self._day
        day = self._local_day(now)
        start, end = self.day_start(day), self.day_start(day + 1)
        if start <= now < end:
            self._start, self._end, self._day = start, end, day
        return day

    def next_midnight(self, now: float) -> float:
        """The first instant after ``now`` that lies in a later local day:
        when a requests-per-day count taken at ``now`` resets."""
        day = self.day(now)
        midnight = self.day_start(day + 1)
        if midnight > now:
            return midnight
        # Only where clocks fall back across midnight (no US zone does) can
        # the next day's first instant already lie behind us; its second
        # midnight, or the day after, is then the reset.
        later = self._naive_midnight(day + 1).replace(tzinfo=self._tz, fold=1).timestamp()
        return later if later > now else self.day_start(day + 2)

    def day_start(self, day: int) -> float:
        """The first instant of local day ``day`` (epoch seconds).

        Midnight exists in almost every zone (US zones change at 02:00), so
        this is local midnight; where a daylight-saving gap swallows
        midnight, it is the moment the gap ends, found by bisecting whole
        seconds (offsets and transitions are whole seconds).
        """
        start = self._naive_midnight(day).replace(tzinfo=self._tz).timestamp()
        if self._local_day(start) >= day > self._local_day(start - 1):
            return start
        low, high = math.floor(start) - 86_400, math.floor(start)
        while high - low > 1:  # invariant: day(low) < day <= day(high)
            mid = (low + high) // 2
            if self._local_day(mid) >= day:
                high = mid
            else:
                low = mid
        return float(high)

    def _local_day(self, now: float) -> int:
        # fromtimestamp rounds to the microsecond, which would put the last
        # fraction of a second before midnight into the next day; days change
        # on whole seconds, so flooring first is exact.
        return datetime.fromtimestamp(math.floor(now), self._tz).date().toordinal()

    @staticmethod
    def _naive_midnight(day: int) -> datetime:
        return datetime.combine(date.fromordinal(day), time())

# -*- test-case-name: tests.test_schedule -*-
"""
The run time of a C{SUBMIT_JOB_SCHED} job. Pure: no I/O.

The packet carries cron-like fields (minute, hour, day of month, month, day
of week); the job runs once, at the first minute at or after the submission
that matches every field given. An empty field (or C{*}) matches anything.
Days of the week count from 0 = Sunday, as in cron (7 is Sunday too). Unlike
cron, a restricted day of month and day of week must both match. Times are in
the server's local time zone (at its UTC offset at submission).
"""
from __future__ import annotations

from datetime import datetime, timedelta, tzinfo
from typing import Optional, Sequence

#: How far ahead a match is looked for, in months (29 February on a given
#: weekday comes back within 28 years, except across a century's skipped leap day).
_HORIZON_MONTHS = 12 * 40

_DAYS_IN_MONTH = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)

_RANGES = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 7))


class ScheduleError(ValueError):
    """A field is not a number in its range, or no date ever matches."""


def _field(value: bytes, index: int) -> Optional[int]:
    text = value.strip()
    if text in (b"", b"*"):
        return None
    try:
        number = int(text)
    except ValueError:
        raise ScheduleError(f"field {index + 1} is not a number: {text!r}")
    low, high = _RANGES[index]
    if not low <= number <= high:
        raise ScheduleError(f"field {index + 1} is {number}, outside {low}-{high}")
    return number


def nextRunTime(fields: Sequence[bytes], now: float, tz: Optional[tzinfo] = None) -> int:
    """
    The Unix time of the first minute at or after C{now} that matches
    C{fields} (minute, hour, day of month, month, day of week).

    @param tz: the time zone the fields are in; the server's local time
        zone by default.
    @raise ScheduleError: for a malformed field or a date that never comes
        (e.g. 31 February).
    """
    minute, hour, mday, month, wday = (_field(v, i) for i, v in enumerate(fields))
    if wday == 7:
        wday = 0
    start = datetime.fromtimestamp(now, tz) if tz is not None else datetime.fromtimestamp(now).astimezone()
    if start.second or start.microsecond:
        start = start.replace(second=0, microsecond=0) + timedelta(minutes=1)
    if mday is not None and month is not None and mday > _DAYS_IN_MONTH[month - 1]:
        raise ScheduleError(f"month {month} has no day {mday}")
    year, mon = start.year, start.month
    for _ in range(_HORIZON_MONTHS):
        if month is None or mon == month:
            days = [mday] if mday is not None else range(1, 32)
            for d in days:
                try:
                    date = start.replace(year=year, month=mon, day=d, hour=0, minute=0)
                except ValueError:  # no such day in this month
                    continue
                if date.date() < start.date():
                    continue
                if wday is not None and (date.weekday() + 1) % 7 != wday:
                    continue
                for h in ([hour] if hour is not None else range(24)):
                    for m in ([minute] if minute is not None else range(60)):
                        candidate = date.replace(hour=h, minute=m)
                        if candidate >= start:
                            return int(candidate.timestamp())
        mon += 1
        if mon > 12:
            year, mon = year + 1, 1
    raise ScheduleError("no date matches these fields")

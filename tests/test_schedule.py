"""Tests for txgear._schedule: the run time of SUBMIT_JOB_SCHED jobs."""
from __future__ import annotations

from datetime import datetime, timezone

import pytest

from txgear._schedule import ScheduleError, nextRunTime

UTC = timezone.utc


def at(*fields: int) -> float:
    return datetime(*fields, tzinfo=UTC).timestamp()


def fields(minute="", hour="", mday="", month="", wday=""):
    return [v.encode() for v in (minute, hour, mday, month, wday)]


def test_allEmptyMeansTheNextMinute():
    assert nextRunTime(fields(), at(2027, 1, 15, 8, 0, 0), UTC) == at(2027, 1, 15, 8, 0)
    assert nextRunTime(fields(), at(2027, 1, 15, 8, 0, 1), UTC) == at(2027, 1, 15, 8, 1)


def test_minuteAndHour():
    now = at(2027, 1, 15, 8, 40)
    assert nextRunTime(fields("30"), now, UTC) == at(2027, 1, 15, 9, 30)
    assert nextRunTime(fields("30", "7"), now, UTC) == at(2027, 1, 16, 7, 30)
    assert nextRunTime(fields("", "9"), now, UTC) == at(2027, 1, 15, 9, 0)


def test_dayMonthAndWeekday():
    now = at(2027, 1, 15, 8, 0)  # a Friday
    assert nextRunTime(fields("0", "0", "1"), now, UTC) == at(2027, 2, 1)
    assert nextRunTime(fields("0", "12", "", "3"), now, UTC) == at(2027, 3, 1, 12)
    assert nextRunTime(fields("0", "0", "", "", "0"), now, UTC) == at(2027, 1, 17)  # Sunday
    assert nextRunTime(fields("0", "0", "", "", "7"), now, UTC) == at(2027, 1, 17)
    assert nextRunTime(fields("0", "0", "29", "2"), now, UTC) == at(2028, 2, 29)
    # Both a day of month and a weekday: both must match (Friday the 13th).
    assert nextRunTime(fields("0", "0", "13", "", "5"), now, UTC) == at(2027, 8, 13)


@pytest.mark.parametrize("bad", [fields("60"), fields("", "24"), fields("", "", "0"),
                                 fields("", "", "", "13"), fields("", "", "", "", "8"),
                                 fields("x"), fields("", "", "31", "2"), fields("", "", "30", "2")])
def test_errors(bad):
    with pytest.raises(ScheduleError):
        nextRunTime(bad, at(2027, 1, 15), UTC)

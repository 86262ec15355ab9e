"""The retry policy parser, its canonical text and its delays (txgear.server._policy; pure)."""
from __future__ import annotations

import pytest

from txgear.server._policy import (MAX_POLICIES, PolicyError, PolicyTable, RetryPolicy,
                                   formatDuration, parseDuration, parsePolicy)

BASE = RetryPolicy.fromJobRetries(0)


def parse(spec: str, base: RetryPolicy = BASE) -> RetryPolicy:
    return parsePolicy(spec, base)


@pytest.mark.parametrize("text, seconds", [
    ("0", 0.0), ("500ms", 0.5), ("2s", 2.0), ("10m", 600.0), ("1h", 3600.0), ("1500ms", 1.5)])
def test_durations(text: str, seconds: float) -> None:
    assert parseDuration(text) == seconds


@pytest.mark.parametrize("seconds, text", [
    (0, "0"), (0.5, "500ms"), (1.5, "1500ms"), (2, "2s"), (600, "10m"), (7200, "2h"), (90, "90s")])
def test_formatDuration(seconds: float, text: str) -> None:
    assert formatDuration(seconds) == text and parseDuration(text) == seconds


@pytest.mark.parametrize("text", ["", "2", "2 s", "-1s", "1.5s", "2d", "s", "ms", "1e3ms",
                                  "721h", "99999999999999h"])
def test_badDurations(text: str) -> None:
    with pytest.raises(PolicyError):
        parseDuration(text)


def test_fullSpecAndCanonicalText() -> None:
    policy = parse("attempts:5,backoff:2s..10m,on:lost+timeout+fail")
    assert (policy.attempts, policy.backoffMin, policy.backoffMax) == (5, 2.0, 600.0)
    assert policy.on == {"lost", "timeout", "fail"}
    assert policy.text() == "attempts:5,backoff:2s..10m,on:lost+timeout+fail"
    # Canonical: fields in one order, outcomes in one order, any case and spacing read.
    again = parse(" ON:exception+lost , backoff:500ms , attempts:3")
    assert again.text() == "attempts:3,backoff:500ms,on:lost+exception"
    assert parse(again.text()) == again


def test_fieldsLeftOutKeepTheBase() -> None:
    base = parse("attempts:4,backoff:1s..1m,on:lost+fail")
    assert parse("backoff:3s", base).text() == "attempts:4,backoff:3s,on:lost+fail"
    assert parse("attempts:0", base).text() == "attempts:0,backoff:1s..1m,on:lost+fail"


def test_jobRetriesMapping() -> None:
    """--job-retries keeps its meaning: N runs on lost/timeout, 0 = lost forever, timeout fails."""
    assert RetryPolicy.fromJobRetries(0).text() == "attempts:0,backoff:0,on:lost"
    assert RetryPolicy.fromJobRetries(3).text() == "attempts:3,backoff:0,on:lost+timeout"
    unlimited = RetryPolicy.fromJobRetries(0)
    assert not unlimited.exhausted(10 ** 6) and not unlimited.retries("timeout")
    three = RetryPolicy.fromJobRetries(3)
    assert not three.exhausted(2) and three.exhausted(3)


@pytest.mark.parametrize("spec, message", [
    ("", "empty policy"),
    ("attempts", "bad field 'attempts'"),
    ("attempts:", "bad field"),
    ("attempts:-1", "attempts must be a whole number"),
    ("attempts:x", "attempts must be a whole number"),
    ("attempts:1000001", "attempts must be a whole number"),
    ("attempts:3,attempts:4", "attempts given twice"),
    ("backoff:2s..1s", "maximum is below the minimum"),
    ("backoff:0..5s", "needs a minimum above 0"),
    ("backoff:2x", "bad duration '2x'"),
    ("backoff:1s..", "bad duration ''"),
    ("on:lost+crash", "unknown outcome 'crash'"),
    ("on:", "bad field"),
    ("keep:1x", "bad duration '1x'"),
    ("keep:31d", "bad duration"),
    ("idempotent:maybe", "idempotent must be yes or no"),
    ("idempotent:yes", "idempotent:yes needs keep:TTL"),
    ("keep:0,idempotent:yes", "idempotent:yes needs keep:TTL"),
    ("retries:3", "unknown field 'retries'"),
])
def test_malformedSpecs(spec: str, message: str) -> None:
    with pytest.raises(PolicyError, match=message):
        parse(spec)


class Sequence:
    """A deterministic stand-in for random.random."""

    def __init__(self, *values: float) -> None:
        self.values = list(values)

    def __call__(self) -> float:
        return self.values.pop(0)


def test_fixedBackoffHasNoJitter() -> None:
    policy = parse("backoff:2s")
    assert [policy.delay(n, Sequence()) for n in (1, 2, 10)] == [2.0, 2.0, 2.0]
    assert parse("backoff:0").delay(3, Sequence()) == 0.0


def test_exponentialBackoffWithEqualJitterFlooredAtMin() -> None:
    policy = parse("backoff:1s..10s")
    # Nominal delays 1, 2, 4, 8, 10, 10: drawn in [d/2, d], never below MIN.
    assert policy.delay(1, Sequence(0.0)) == 1.0
    assert policy.delay(2, Sequence(0.0)) == 1.0
    assert policy.delay(2, Sequence(0.5)) == 1.5
    assert policy.delay(3, Sequence(0.0)) == 2.0
    assert policy.delay(3, Sequence(0.999)) == pytest.approx(3.998)
    assert policy.delay(4, Sequence(1.0)) == 8.0
    assert policy.delay(5, Sequence(1.0)) == 10.0
    assert policy.delay(5, Sequence(0.0)) == 5.0
    assert policy.delay(10 ** 6, Sequence(0.5)) == 7.5  # no overflow, capped


def test_tableDefaultAndFunctions() -> None:
    table = PolicyTable(RetryPolicy.fromJobRetries(2))
    assert table.forFunction(b"f") is table.default
    table.set(b"f", "backoff:1s")
    assert table.forFunction(b"f").text() == "attempts:2,backoff:1s,on:lost+timeout"
    table.set(b"*", "attempts:7")
    assert table.forFunction(b"g").attempts == 7 and table.forFunction(b"f").attempts == 2
    table.set(b"f", "on:fail")  # over f's own policy
    assert table.forFunction(b"f").text() == "attempts:2,backoff:1s,on:fail"
    with pytest.raises(PolicyError):
        table.set(b"f", "attempts:x")
    assert table.forFunction(b"f").text() == "attempts:2,backoff:1s,on:fail"
    assert list(table.rows()) == [(b"*", "attempts:7,backoff:0,on:lost+timeout"),
                                  (b"f", "attempts:2,backoff:1s,on:fail")]


def test_tableIsBounded() -> None:
    table = PolicyTable()
    for n in range(MAX_POLICIES):
        table.set(b"f%d" % n, "attempts:2")
    with pytest.raises(PolicyError, match="too many policies"):
        table.set(b"one-more", "attempts:2")
    table.set(b"f1", "attempts:3")  # changing an existing one is fine
    table.set(b"*", "attempts:3")


def test_keepAndIdempotent() -> None:
    """keep:TTL and idempotent:yes|no parse, print back in the canonical spec, and inherit."""
    policy = parse("keep:1h,idempotent:yes")
    assert (policy.keep, policy.idempotent) == (3600.0, True)
    assert policy.text().endswith(",keep:1h,idempotent:yes")
    assert parse("attempts:2").text() == "attempts:2,backoff:0,on:lost"
    assert parsePolicy("attempts:3", policy).keep == 3600.0
    assert parsePolicy("idempotent:no", policy).idempotent is False
    with pytest.raises(PolicyError, match="needs keep"):
        parsePolicy("keep:0", policy)
    assert parsePolicy("keep:0,idempotent:no", policy).keep == 0.0

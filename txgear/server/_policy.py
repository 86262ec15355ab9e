# -*- test-case-name: tests.test_policy -*-
"""
Retry policies: how many attempts a job gets, which outcomes of an attempt
retry it, and how long it waits before the next one. Pure: no I/O, no clock
(the state passes the time and a random source in).

A policy is written as a SPEC of comma-separated fields, for C{--policy
FUNCTION=SPEC} and the admin command C{policy FUNCTION SPEC}::

    attempts:N              runs allowed in all (1 = never retried; 0 = no limit)
    backoff:MIN..MAX        exponential from MIN, doubling up to MAX, with jitter
    backoff:MIN             fixed (0 = requeued at once)
    on:lost+timeout+fail+exception   the outcomes that retry (any non-empty subset)
    keep:TTL                how long a background job's result is kept (0 = not kept)
    idempotent:yes|no       a background submission whose unique names a kept
                            result answers that job's handle instead of running
                            again (needs keep)

Durations are a whole number with a unit: C{500ms}, C{2s}, C{10m}, C{1h} (or
C{0}). A field left out keeps the value of the policy the spec is applied
over (the server-wide default C{*} for a function). Kept results: see
L{txgear.server._kept}.

Jitter: I{equal jitter, floored at MIN}. The n-th retry's nominal delay is
C{d = min(MAX, MIN * 2**(n-1))}; the delay is drawn uniformly from
C{[d/2, d]} and raised to MIN if below. Retries of jobs that failed together
spread out, and no delay is ever shorter than MIN nor longer than MAX. A
fixed backoff has no jitter.
"""
from __future__ import annotations

import re
from typing import Callable, Dict, FrozenSet, Iterable, Optional, Tuple

#: The outcomes of an attempt, in their canonical order.
LOST, TIMEOUT, FAIL, EXCEPTION = "lost", "timeout", "fail", "exception"
OUTCOMES: Tuple[str, ...] = (LOST, TIMEOUT, FAIL, EXCEPTION)

#: The name that stands for the server-wide default policy.
DEFAULT_NAME = b"*"

#: Largest C{attempts:N} accepted.
MAX_ATTEMPTS = 1000000

#: Most functions with a policy of their own.
MAX_POLICIES = 10000

#: Longest backoff accepted, in seconds (30 days).
MAX_BACKOFF = 30 * 24 * 3600.0

_UNITS = (("h", 3600000), ("m", 60000), ("s", 1000), ("ms", 1))
_DURATION = re.compile(r"^([0-9]{1,12})(ms|s|m|h)$")


class PolicyError(ValueError):
    """A SPEC that does not parse; the message says why, in one line."""


class RetryPolicy:
    """
    One retry policy (immutable).

    @ivar attempts: runs a job gets in all; 0 = no limit.
    @ivar backoffMin: the first retry's delay, in seconds (0 = at once).
    @ivar backoffMax: the longest delay, in seconds (C{== backoffMin}: fixed).
    @ivar on: the outcomes (of L{OUTCOMES}) that retry a job.
    @ivar keep: seconds a background job's result is kept (0: not kept).
    @ivar idempotent: a background submission whose function and unique
        name a kept result does not run again (only with C{keep}).
    """

    __slots__ = ("attempts", "backoffMin", "backoffMax", "on", "keep", "idempotent")

    def __init__(self, attempts: int = 1, backoffMin: float = 0.0,
                 backoffMax: Optional[float] = None,
                 on: Iterable[str] = (LOST,), keep: float = 0.0,
                 idempotent: bool = False) -> None:
        self.attempts = attempts
        self.backoffMin = backoffMin
        self.backoffMax = backoffMin if backoffMax is None else backoffMax
        self.on: FrozenSet[str] = frozenset(on)
        self.keep = keep
        self.idempotent = idempotent

    @classmethod
    def fromJobRetries(cls, jobRetries: int) -> "RetryPolicy":
        """
        The default policy C{--job-retries N} stands for, which keeps its
        old meaning: N > 0 allows N runs in all, retrying after a lost worker
        or a CAN_DO_TIMEOUT; 0 retries a lost worker's job without limit and
        fails a timed-out job at once. No backoff either way.
        """
        if jobRetries > 0:
            return cls(attempts=jobRetries, on=(LOST, TIMEOUT))
        return cls(attempts=0, on=(LOST,))

    def retries(self, outcome: str) -> bool:
        """Whether an attempt that ended with C{outcome} is retried (attempts allowing)."""
        return outcome in self.on

    def exhausted(self, attemptsMade: int) -> bool:
        """Whether a job that has run C{attemptsMade} times may not run again."""
        return self.attempts != 0 and attemptsMade >= self.attempts

    def delay(self, attempt: int, random: Callable[[], float]) -> float:
        """
        Seconds to wait before the retry that follows run number C{attempt}
        (1 for the first run), drawing jitter from C{random()} (a float in
        [0, 1)); see the module docstring.
        """
        low, high = self.backoffMin, self.backoffMax
        if high <= low:
            return low
        # min() before the power would overflow for a large attempt number.
        nominal = high if attempt > 64 else min(high, low * 2.0 ** (attempt - 1))
        return max(low, nominal / 2.0 + random() * nominal / 2.0)

    def text(self) -> str:
        """The canonical SPEC (what C{show policies} prints)."""
        if self.backoffMax > self.backoffMin:
            backoff = formatDuration(self.backoffMin) + ".." + formatDuration(self.backoffMax)
        else:
            backoff = formatDuration(self.backoffMin)
        on = "+".join(o for o in OUTCOMES if o in self.on)
        spec = f"attempts:{self.attempts},backoff:{backoff},on:{on}"
        if self.keep:
            spec += f",keep:{formatDuration(self.keep)}"
        if self.idempotent:
            spec += ",idempotent:yes"
        return spec

    def _key(self) -> Tuple[int, float, float, FrozenSet[str], float, bool]:
        return (self.attempts, self.backoffMin, self.backoffMax, self.on, self.keep,
                self.idempotent)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RetryPolicy):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return f"RetryPolicy({self.text()!r})"


def parseDuration(text: str) -> float:
    """
    C{500ms}, C{2s}, C{10m}, C{1h} or C{0}, in seconds.

    @raise PolicyError: for anything else, or beyond L{MAX_BACKOFF}.
    """
    if text == "0":
        return 0.0
    match = _DURATION.match(text)
    if match is None:
        raise PolicyError(f"bad duration {text!r}: use a whole number and a unit, "
                          f"e.g. 500ms, 2s, 10m, 1h (or 0)")
    number, unit = int(match.group(1)), match.group(2)
    seconds = number * dict(_UNITS)[unit] / 1000.0
    if seconds > MAX_BACKOFF:
        raise PolicyError(f"duration {text!r} is longer than 30 days")
    return seconds


def formatDuration(seconds: float) -> str:
    """The shortest text L{parseDuration} reads back as C{seconds}."""
    millis = int(round(seconds * 1000))
    if millis == 0:
        return "0"
    for unit, size in _UNITS:
        if millis % size == 0:
            return f"{millis // size}{unit}"
    return f"{millis}ms"  # not reached: the last unit divides everything


def parsePolicy(spec: str, base: RetryPolicy) -> RetryPolicy:
    """
    Read a SPEC (see the module docstring); fields it leaves out keep
    C{base}'s values.

    @raise PolicyError: if C{spec} is malformed, with the reason.
    """
    if not spec.strip():
        raise PolicyError("empty policy: give attempts:N, backoff:MIN[..MAX] and/or "
                          "on:lost+timeout+fail+exception")
    attempts, low, high, on = base.attempts, base.backoffMin, base.backoffMax, base.on
    keep, idempotent = base.keep, base.idempotent
    seen: Dict[str, None] = {}
    for field in spec.split(","):
        name, colon, value = field.strip().partition(":")
        name = name.lower()
        if not colon or not value:
            raise PolicyError(f"bad field {field!r}: write name:value, e.g. attempts:5")
        if name in seen:
            raise PolicyError(f"{name} given twice")
        seen[name] = None
        if name == "attempts":
            if not value.isdigit() or len(value) > 7 or int(value) > MAX_ATTEMPTS:
                raise PolicyError(f"attempts must be a whole number from 0 (no limit) to "
                                  f"{MAX_ATTEMPTS}, not {value!r}")
            attempts = int(value)
        elif name == "backoff":
            first, dots, second = value.partition("..")
            low = parseDuration(first)
            high = parseDuration(second) if dots else low
            if high < low:
                raise PolicyError(f"backoff {value!r}: the maximum is below the minimum")
            if dots and low == 0 and high > 0:
                raise PolicyError(f"backoff {value!r}: an exponential backoff needs a "
                                  f"minimum above 0")
        elif name == "on":
            outcomes = value.lower().split("+")
            unknown = [o for o in outcomes if o not in OUTCOMES]
            if unknown:
                raise PolicyError(f"unknown outcome {unknown[0]!r}: choose among "
                                  f"{'+'.join(OUTCOMES)}")
            on = frozenset(outcomes)
        elif name == "keep":
            keep = parseDuration(value)
        elif name == "idempotent":
            if value.lower() not in ("yes", "no"):
                raise PolicyError(f"idempotent must be yes or no, not {value!r}")
            idempotent = value.lower() == "yes"
        else:
            raise PolicyError(f"unknown field {name!r}: use attempts, backoff, on, keep or "
                              f"idempotent")
    if idempotent and not keep:
        raise PolicyError("idempotent:yes needs keep:TTL (the kept result is what a repeated "
                          "submission finds)")
    return RetryPolicy(attempts, low, high, on, keep, idempotent)


class PolicyTable:
    """
    The server's policies: a default (C{*}) and per-function overrides.

    @ivar default: the policy of every function without its own.
    @ivar functions: per-function policies, by function name.
    """

    def __init__(self, default: Optional[RetryPolicy] = None) -> None:
        self.default = default if default is not None else RetryPolicy.fromJobRetries(0)
        self.functions: Dict[bytes, RetryPolicy] = {}

    def forFunction(self, name: bytes) -> RetryPolicy:
        """The policy that applies to jobs of C{name}."""
        functions = self.functions
        if functions:
            policy = functions.get(name)
            if policy is not None:
                return policy
        return self.default

    def set(self, name: bytes, spec: str) -> RetryPolicy:
        """
        Apply C{spec} to C{name} (L{DEFAULT_NAME} for the default), over the
        default policy; returns the policy now in force.

        @raise PolicyError: if C{spec} is malformed (nothing changes).
        """
        if name == DEFAULT_NAME:
            self.default = parsePolicy(spec, self.default)
            return self.default
        current = self.functions.get(name)
        if current is None and len(self.functions) >= MAX_POLICIES:
            raise PolicyError(f"too many policies ({MAX_POLICIES}); change the default (*) instead")
        policy = self.functions[name] = parsePolicy(spec, current or self.default)
        return policy

    def rows(self) -> Iterable[Tuple[bytes, str]]:
        """C{(name, canonical spec)}: the default first, then by name."""
        yield DEFAULT_NAME, self.default.text()
        for name in sorted(self.functions):
            yield name, self.functions[name].text()


__all__ = ["DEFAULT_NAME", "EXCEPTION", "FAIL", "LOST", "OUTCOMES", "PolicyError", "PolicyTable",
           "RetryPolicy", "TIMEOUT", "formatDuration", "parseDuration", "parsePolicy"]

# -*- test-case-name: tests.test_peerlog -*-
"""
Log lines caused by what a peer sends, kept from amplifying its input.

A peer can make the server log once per packet it sends (a refused or
malformed request) and choose what the line holds (a handle, a name). So
each such message goes through L{PeerLog}: per peer and kind of message,
the first L{PeerLog.burst} lines of an interval are written, the rest are
only counted, and the count is written as one summary line with the first
message of the next interval. Peer-sent values are cut (L{cut}).

Used only off the hot path: nothing here runs for a request that is served.
"""
from __future__ import annotations

from typing import Any, Dict, List
from weakref import WeakKeyDictionary

from twisted.logger import Logger, LogLevel

#: Peer-sent values are cut to this many bytes in log lines.
MAX_LOGGED_VALUE = 64

#: Lines of one kind written per peer and interval, by default.
DEFAULT_BURST = 5

#: The interval, in seconds, by default.
DEFAULT_INTERVAL = 60.0


def cut(value: Any, limit: int = MAX_LOGGED_VALUE) -> Any:
    """
    C{value} fit for a log line: bytes longer than C{limit} become the repr
    of their first C{limit} bytes, an ellipsis and the full length; other
    values are returned as they are.
    """
    if isinstance(value, (bytes, bytearray, memoryview)):
        if len(value) <= limit:
            return repr(bytes(value))
        return f"{bytes(value[:limit])!r}... ({len(value)} bytes)"
    return value


class _Window:
    __slots__ = ("start", "written", "suppressed")

    def __init__(self, start: float) -> None:
        self.start = start
        self.written = 0
        self.suppressed = 0


class PeerLog:
    """
    Writes peer-caused messages to C{log}, at most C{burst} per peer, kind
    and C{interval} seconds (see the module docstring). Its memory of a peer
    goes with the peer object.

    @param log: the logger to write to.
    @param clock: an C{IReactorTime}, for the intervals.
    @param burst: lines of one kind written per peer and interval.
    @param interval: the length of an interval, in seconds.
    """

    def __init__(self, log: Logger, clock: Any, burst: int = DEFAULT_BURST,
                 interval: float = DEFAULT_INTERVAL) -> None:
        self._log = log
        self._clock = clock
        self.burst = burst
        self.interval = interval
        self._windows: "WeakKeyDictionary[Any, Dict[str, _Window]]" = WeakKeyDictionary()

    def warn(self, source: Any, kind: str, format: str, /, **fields: Any) -> None:
        """A warning about C{source}: see L{emit}."""
        self.emit(LogLevel.warn, source, kind, format, **fields)

    def info(self, source: Any, kind: str, format: str, /, **fields: Any) -> None:
        """An informational message about C{source}: see L{emit}."""
        self.emit(LogLevel.info, source, kind, format, **fields)

    def emit(self, level: LogLevel, source: Any, kind: str, format: str, /,
             **fields: Any) -> None:
        """
        Write C{format} with C{fields} (bytes values cut by L{cut}) unless
        C{source} already had C{burst} messages of C{kind} this interval.

        @param source: the connection the message is about (weakly referenced).
        @param kind: what the message is about; each kind is counted apart.
        """
        now = self._clock.seconds()
        try:
            windows = self._windows.get(source)
            if windows is None:
                windows = self._windows[source] = {}
        except TypeError:  # a peer object that cannot be weakly referenced
            windows = {}
        window = windows.get(kind)
        if window is None:
            window = windows[kind] = _Window(now)
        elif now - window.start >= self.interval:
            if window.suppressed:
                about = fields.get("peer", fields.get("id", "?"))
                self._log.emit(level, "{suppressed} more {kind} messages about {about} "
                               "suppressed in {seconds:.0f} s", suppressed=window.suppressed,
                               kind=kind, about=about, seconds=now - window.start)
            window.start, window.written, window.suppressed = now, 0, 0
        if window.written >= self.burst:
            window.suppressed += 1
            return
        window.written += 1
        self._log.emit(level, format, **{name: cut(value) for name, value in fields.items()})

    def suppressed(self, source: Any) -> List[str]:
        """The kinds of message currently held back for C{source} (for tests)."""
        return [kind for kind, window in self._windows.get(source, {}).items()
                if window.suppressed]


__all__ = ["PeerLog", "cut", "MAX_LOGGED_VALUE"]

"""
Logging for txgear: C{twisted.logger} events, filtered by one level setting.

Classes use C{_log = logger()}; the server's C{--log-level} option calls
L{setLogLevel}. Events go to the global log publisher, so twistd's log file or
any observer an application installs receives them.
"""
from __future__ import annotations

from twisted.logger import (
    FilteringLogObserver,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogPublisher,
)

_levels = LogLevelFilterPredicate(defaultLogLevel=LogLevel.debug)
_levels.setLogLevelForNamespace("txgear", LogLevel.info)
def _toGlobal(event: dict) -> None:
    # Looked up on every event: an application may replace the publisher's observers.
    globalLogPublisher(event)


_observer = FilteringLogObserver(_toGlobal, [_levels])  # type: ignore[arg-type]


def logger() -> Logger:
    """A L{Logger} for a txgear class attribute (namespace set on access)."""
    return Logger(namespace="txgear", observer=_observer)


def setLogLevel(level: LogLevel) -> None:
    """Emit txgear events at C{level} and above."""
    _levels.setLogLevelForNamespace("txgear", level)


def logLevel() -> LogLevel:
    """The level txgear events are filtered at."""
    return _levels.logLevelForNamespace("txgear")

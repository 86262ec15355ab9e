"""
The HTTP port's limits' defaults (imported by C{twistd gearman}'s options
without loading twisted.web).
"""
from __future__ import annotations

#: Default and longest wait of a foreground HTTP submission, in seconds.
DEFAULT_MAX_WAIT = 60.0
#: Default number of HTTP requests that may wait on jobs at once
#: (foreground and background submissions, event streams).
DEFAULT_MAX_WAITING = 10000
#: Seconds an HTTP connection may stay idle (no request under way) before
#: it is closed; twisted.web's own default is 12 hours.
DEFAULT_IDLE_TIMEOUT = 60.0
#: Default number of open HTTP connections; past it, a new one gets 503
#: and is closed.
DEFAULT_MAX_CONNECTIONS = 1024

__all__ = ["DEFAULT_IDLE_TIMEOUT", "DEFAULT_MAX_CONNECTIONS", "DEFAULT_MAX_WAIT",
           "DEFAULT_MAX_WAITING"]

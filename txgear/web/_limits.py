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

__all__ = ["DEFAULT_MAX_WAIT", "DEFAULT_MAX_WAITING"]

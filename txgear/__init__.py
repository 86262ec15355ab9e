"""
txgear: a Gearman job server, client and worker for Twisted.
"""
from __future__ import annotations

from txgear._version import __version__
from txgear.errors import (
    ConnectionLost,
    GearmanError,
    JobException,
    JobFailed,
    NoServers,
    ProtocolError,
    ServerError,
)
from txgear.jobs import Priority

__all__ = [
    "__version__",
    "ConnectionLost",
    "GearmanError",
    "JobException",
    "JobFailed",
    "NoServers",
    "Priority",
    "ProtocolError",
    "ServerError",
]

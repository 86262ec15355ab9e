"""
txgear: a Gearman job server, client and worker for Twisted.

The public names are importable from here::

    from txgear import GearmanClient, GearmanWorker, GearmanServerService

The client, the worker and the server load on first use, so importing
C{txgear} for its errors stays cheap.
"""
from __future__ import annotations

from typing import Any

from txgear._version import __version__
from txgear.errors import (
    ConnectionLost,
    GearmanError,
    JobException,
    JobFailed,
    NoServers,
    ProtocolError,
    ServerError,
    StoreError,
    StoreSchemaError,
    SubmitTimeout,
    TLSConnectError,
)
from txgear.jobs import BackgroundJob, JobStatus, Priority

#: Public names defined in submodules loaded on first access.
_LAZY = {
    "GearmanClient": "txgear.client",
    "GearmanWorker": "txgear.worker",
    "Job": "txgear.worker",
    "GearmanServerService": "txgear.server",
    "JobServerState": "txgear.server",
    "GearmanServerFactory": "txgear.server",
    "TLSOptions": "txgear._tlsclient",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'txgear' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "__version__",
    "BackgroundJob",
    "ConnectionLost",
    "GearmanClient",
    "GearmanError",
    "GearmanServerFactory",
    "GearmanServerService",
    "GearmanWorker",
    "Job",
    "JobException",
    "JobFailed",
    "JobServerState",
    "JobStatus",
    "NoServers",
    "Priority",
    "ProtocolError",
    "ServerError",
    "StoreError",
    "StoreSchemaError",
    "SubmitTimeout",
    "TLSConnectError",
    "TLSOptions",
]

"""
The txgear job server: a drop-in replacement for gearmand.

  - L{JobServerState}: queues, jobs, workers (no I/O);
  - L{GearmanServerFactory}: connections speaking the binary and admin protocols;
  - L{GearmanServerService}: listening on endpoints, with an optional store;
  - L{AccessControl}: who may register, invoke, administer and grant what.
"""
from __future__ import annotations

from txgear.server._access import AccessControl, AccessFileError
from txgear.server._protocol import GearmanServerFactory, GearmanServerProtocol
from txgear.server._state import JobServerState
from txgear.server.service import GearmanServerService

__all__ = ["AccessControl", "AccessFileError", "GearmanServerFactory", "GearmanServerProtocol", "GearmanServerService", "JobServerState"]

"""
Several txgear servers sharing one durable queue in PostgreSQL (issue 13;
see docs/cluster.md). Part 1: the membership (L{Membership}: leases with
fencing by generation). Nothing here is wired into C{twistd gearman} yet.
"""
from __future__ import annotations

from txgear.cluster._membership import (DEFAULT_LEASE, DEFAULT_RENEW_INTERVAL, Fence,
                                        LeaseLost, Membership, ServerIdInUse, ServerInfo,
                                        fenceCondition, formatShowServers)

__all__ = ["DEFAULT_LEASE", "DEFAULT_RENEW_INTERVAL", "Fence", "LeaseLost", "Membership",
           "ServerIdInUse", "ServerInfo", "fenceCondition", "formatShowServers"]

# -*- test-case-name: tests.test_cluster_setup -*-
"""
What C{twistd gearman --cluster NAME} builds: the membership, the shared
store and, once the server state exists, the coordinator joining them.
"""
from __future__ import annotations

import platform
import re
from typing import Any, Optional, Tuple

from txgear.cluster._coordinator import DEFAULT_POLL, ClusterCoordinator
from txgear.cluster._membership import DEFAULT_LEASE, Membership
from txgear.cluster._store import ClusterJobStore

#: What a cluster name may be: it goes into every job handle.
CLUSTER_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def clusterProblem(name: str, queue: Optional[str], lease: float, poll: float) -> Optional[str]:
    """Why these cluster options cannot work, or C{None}."""
    if not CLUSTER_NAME.match(name):
        return (f"--cluster {name!r}: a name of 1 to 64 letters, digits, '_', '.' or '-' "
                f"(it is part of every job handle)")
    kind = (queue or "").partition(":")[0].strip().lower()
    if kind not in ("postgresql", "postgres"):
        return "--cluster needs --queue postgresql:<dsn> (the database the servers share)"
    if lease < 1.5:
        return "--cluster-lease must be at least 1.5 seconds"
    if poll <= 0 or poll > lease:
        return "--cluster-poll must be positive and at most the lease"
    return None


def defaultServerId(ports: Any) -> str:
    """C{<hostname>:<port>}, the port of the first --port description."""
    port = "4730"
    for description in ports or ():
        found = re.search(r"(?:^|:)(\d+)(?::|$)", description)
        if found:
            port = found.group(1)
            break
    return f"{platform.node() or 'localhost'}:{port}"


def makeClusterStore(queue: str, cluster: str, serverId: str, reactor: Any = None,
                     lease: float = DEFAULT_LEASE, address: Optional[str] = None
                     ) -> Tuple[ClusterJobStore, Membership]:
    """
    The store of a cluster member and its membership, from a
    C{postgresql:} queue description (its C{schema} and C{prefix} name the
    tables every member of the cluster shares).

    @param address: where clients reach this server (C{show servers}; a
        server restarting at the same address takes its own lease over at
        once, one at another address must wait for it to expire); its id by
        default.
    """
    from txgear.store._postgres import splitPostgresOptions
    kind, _, rest = queue.partition(":")
    dsn = queue if rest.startswith("//") else rest
    conninfo, options = splitPostgresOptions(dsn)
    schema = options.get("schema", "public")
    prefix = options.get("prefix", "txgear_")
    membership = Membership(conninfo, cluster, serverId, address or serverId, reactor=reactor,
                            schema=schema, prefix=prefix, lease=lease,
                            renewInterval=lease / 3.0)
    store = ClusterJobStore(conninfo, membership, reactor=reactor, schema=schema, prefix=prefix)
    return store, membership


def joinCluster(state: Any, store: ClusterJobStore, clock: Any = None,
                poll: float = DEFAULT_POLL) -> ClusterCoordinator:
    """Join the server C{state} to its cluster's store (before the service starts)."""
    return ClusterCoordinator(state, store, clock=clock, poll=poll)


__all__ = ["clusterProblem", "defaultServerId", "joinCluster", "makeClusterStore"]

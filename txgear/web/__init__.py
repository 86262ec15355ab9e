# -*- test-case-name: tests.test_web -*-
"""
The job server's HTTP port (C{twistd gearman --http ENDPOINT}): Prometheus
metrics, a JSON API and a live dashboard, served by twisted.web from the
server's own process, on the reactor thread.

Each part is a resource of its own module, mounted on one root by
L{makeSite}; nothing on this port may block the job traffic.
"""
from __future__ import annotations

from typing import Any

from twisted.web.resource import Resource
from twisted.web.server import Site

from txgear.web._metrics import MetricsResource, metricsRegistry


class WebRoot(Resource):
    """
    The root of the HTTP port; the parts are its children.

    @ivar state: the server's L{txgear.server.JobServerState}.
    @ivar factory: the server's L{txgear.server.GearmanServerFactory}.
    @ivar clock: the reactor (time and timers).
    """

    def __init__(self, state: Any, factory: Any, clock: Any) -> None:
        Resource.__init__(self)
        self.state = state
        self.factory = factory
        self.clock = clock


def makeSite(state: Any, factory: Any, clock: Any) -> Site:
    """
    The HTTP site of a job server: give it to
    L{txgear.server.GearmanServerService} as C{httpFactory}.
    """
    root = WebRoot(state, factory, clock)
    root.putChild(b"metrics", MetricsResource(metricsRegistry(state, factory, clock)))
    site = Site(root)
    site.displayTracebacks = False  # no internals to peers
    return site


__all__ = ["WebRoot", "makeSite"]

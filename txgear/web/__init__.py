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

from twisted.web.pages import notFound
from twisted.web.resource import Resource

from txgear._packet import DEFAULT_MAX_PACKET
from txgear.web._api import DEFAULT_MAX_WAIT, DEFAULT_MAX_WAITING, ApiResource, JobAPI
from txgear.web._limits import DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_CONNECTIONS
from txgear.web._csrf import SAFE_METHODS, crossSiteProblem
from txgear.web._dashboard import dashboardResources
from txgear.web._gearmand import GearmandResource
from txgear.web._http import error
from txgear.web._site import WebSite


class WebRoot(Resource):
    """
    The root of the HTTP port; the parts are its children (C{/v1}: the JSON
    API, C{/metrics}). C{GET /} and C{/static/...} are the dashboard. A
    C{POST} or C{PUT} to any other path is gearmand's HTTP plugin form
    (C{POST /FUNCTION}).

    Every request that changes state is first checked for cross-site
    forgery (L{txgear.web._csrf}): refused with 403 before it reaches any
    part.

    @ivar state: the server's L{txgear.server.JobServerState}.
    @ivar factory: the server's L{txgear.server.GearmanServerFactory}.
    @ivar clock: the reactor (time and timers).
    @ivar api: the L{JobAPI} (requests in flight, limits).
    """

    def __init__(self, state: Any, factory: Any, clock: Any, api: JobAPI) -> None:
        Resource.__init__(self)
        self.state = state
        self.factory = factory
        self.clock = clock
        self.api = api
        self.apiResource = ApiResource(api)
        self.putChild(b"v1", self.apiResource)
        self._gearmand = GearmandResource(api, self.apiResource)
        # Not children: a POST to /static is gearmand's form for a function "static".
        self._pages = dashboardResources()

    def getChildWithDefault(self, path: bytes, request: Any) -> Any:
        if request.method not in SAFE_METHODS:
            problem = crossSiteProblem(request)
            if problem is not None:
                return _Refused(problem)
        elif path in self._pages:
            return self._pages[path]
        return Resource.getChildWithDefault(self, path, request)

    def getChild(self, path: bytes, request: Any) -> Any:
        if request.method in (b"POST", b"PUT"):
            return self._gearmand
        return notFound()


class _Refused(Resource):
    """A request refused as a possible cross-site forgery: 403."""

    isLeaf = True

    def __init__(self, message: str) -> None:
        Resource.__init__(self)
        self.message = message

    def render(self, request: Any) -> bytes:
        return error(request, 403, self.message)


def makeSite(state: Any, factory: Any, clock: Any, maxWait: float = DEFAULT_MAX_WAIT,
             maxWaiting: int = DEFAULT_MAX_WAITING, idleTimeout: float = DEFAULT_IDLE_TIMEOUT,
             maxConnections: int = DEFAULT_MAX_CONNECTIONS) -> WebSite:
    """
    The HTTP site of a job server: give it to
    L{txgear.server.GearmanServerService} as C{httpFactory}. Request bodies
    are bounded by the factory's C{maxPacket}.

    @param maxWait: the default and longest wait of a foreground submission.
    @param maxWaiting: how many requests may wait on jobs at once.
    @param idleTimeout: seconds a connection with no request under way stays open.
    @param maxConnections: open HTTP connections at most (past it: 503, closed).
    """
    maxBody = getattr(factory, "maxPacket", DEFAULT_MAX_PACKET)
    api = JobAPI(state, factory, clock, maxBody=maxBody, maxWait=maxWait,
                 maxWaiting=maxWaiting)
    root = WebRoot(state, factory, clock, api)
    root.putChild(b"metrics", _metricsResource(state, factory, clock))
    site = WebSite(root, clock, maxBody=maxBody, idleTimeout=idleTimeout,
                   maxConnections=maxConnections)
    site.onStop(api.stop)
    return site


def _metricsResource(state: Any, factory: Any, clock: Any) -> Resource:
    """C{/metrics}, or, without prometheus_client, a 503 saying what to install."""
    try:
        from txgear.web._metrics import MetricsResource, metricsRegistry
    except ImportError:
        from twisted.logger import Logger
        from twisted.web.pages import errorPage

        Logger().warn("/metrics is off: it needs prometheus_client "
                      "(pip install 'txgear[http]')")
        return errorPage(503, "Metrics unavailable",
                         "The server needs prometheus_client: pip install 'txgear[http]'.")
    return MetricsResource(metricsRegistry(state, factory, clock))


__all__ = ["WebRoot", "makeSite"]

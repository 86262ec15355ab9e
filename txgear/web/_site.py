# -*- test-case-name: tests.test_web_api -*-
"""
The HTTP port's twisted.web C{Site}: request bodies bounded and kept in
memory, and its open connections known, so that the server's stop can
close them (a C{Site} alone leaves a keep-alive connection or an event
stream open after its port stopped listening).
"""
from __future__ import annotations

from io import BytesIO
from typing import Any, Callable, Dict, List, Optional

from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.web.http import HTTPChannel
from twisted.web.server import Request, Site

from txgear._packet import DEFAULT_MAX_PACKET
from txgear.web._limits import DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_CONNECTIONS

#: The answer to a connection past the site's C{maxConnections}.
_TOO_MANY = (b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\n"
             b"Content-Type: text/plain\r\nContent-Length: 25\r\n\r\n"
             b"Too many HTTP connections")

#: Seconds open HTTP connections get to take what was written to them once
#: the server stops, before they are aborted.
DEFAULT_CLOSE_GRACE = 2.0


class WebRequest(Request):
    """
    A request whose body is held in memory up to the site's C{maxBody}
    bytes (twisted.web would spill a large one to a temporary file, a
    blocking write on the reactor thread); past it, the body is dropped as
    it arrives and L{bodyTooLarge} is set, for the resource to answer 413.
    """

    bodyTooLarge = False
    _bodySize = 0

    def _maxBody(self) -> int:
        site = getattr(self.channel, "site", None)
        return getattr(site, "maxBody", DEFAULT_MAX_PACKET)

    def gotLength(self, length: Optional[int]) -> None:
        self.content: Any = BytesIO()
        if length is not None and length > self._maxBody():
            self.bodyTooLarge = True

    def handleContentChunk(self, data: bytes) -> None:
        if self.bodyTooLarge:
            return
        self._bodySize += len(data)
        if self._bodySize > self._maxBody():
            self.bodyTooLarge = True
            self.content = BytesIO()  # let go of what came so far
            return
        self.content.write(data)


class WebChannel(HTTPChannel):
    """An HTTP connection that its site knows while it is open."""

    site: "WebSite"

    def connectionMade(self) -> None:
        self._closedWaiters: List[Deferred[None]] = []
        HTTPChannel.connectionMade(self)
        site = self.site
        if len(site.channels) >= site.maxConnections:
            # One peer opening connections must not exhaust the server.
            site.refused += 1
            self.transport.write(_TOO_MANY)  # type: ignore[union-attr]
            self.transport.loseConnection()  # type: ignore[union-attr]
            return
        site.channels[self] = None

    def connectionLost(self, reason: Any = None) -> None:
        self.site.channels.pop(self, None)
        waiters, self._closedWaiters = self._closedWaiters, []
        HTTPChannel.connectionLost(self, reason)
        for waiter in waiters:
            waiter.callback(None)

    def whenClosed(self) -> "Deferred[None]":
        """Fires once this connection is closed."""
        d: Deferred[None] = Deferred()
        self._closedWaiters.append(d)
        return d


class WebSite(Site):
    """
    The site of the HTTP port.

    @ivar maxBody: the largest request body accepted, in bytes.
    @ivar maxConnections: open connections at most; past it a new one is
        answered 503 and closed (counted in C{refused}).
    @ivar channels: the open connections.
    @ivar clock: time and timers (the reactor).
    """

    requestFactory = WebRequest
    protocol = WebChannel  # type: ignore[assignment]

    def __init__(self, resource: Any, clock: Any, maxBody: int = DEFAULT_MAX_PACKET,
                 idleTimeout: float = DEFAULT_IDLE_TIMEOUT,
                 maxConnections: int = DEFAULT_MAX_CONNECTIONS) -> None:
        # The idle timeout closes a connection with no request under way
        # (twisted.web suspends it while one is answered: event streams last).
        Site.__init__(self, resource, timeout=idleTimeout, reactor=clock)
        self.clock = clock
        self.maxBody = maxBody
        self.maxConnections = maxConnections
        self.refused = 0
        self.channels: Dict[WebChannel, None] = {}
        self.displayTracebacks = False  # no internals to peers
        self._stopHooks: List[Callable[[], None]] = []

    def onStop(self, hook: Callable[[], None]) -> None:
        """Call C{hook} when the server stops, before connections are closed."""
        self._stopHooks.append(hook)

    def stopServing(self, grace: float = DEFAULT_CLOSE_GRACE) -> "Deferred[None]":
        """
        The server stops (its ports stopped listening): end what is still
        waiting (the stop hooks: event streams, waiting submissions), close
        every connection once its output is written, abort those still open
        after C{grace} seconds.

        @return: fires once every connection is closed.
        """
        for hook in self._stopHooks:
            hook()
        channels = list(self.channels)
        if not channels:
            return succeed(None)
        waiting = [channel.whenClosed() for channel in channels]
        for channel in channels:
            channel.transport.loseConnection()  # type: ignore[union-attr]

        def abortStragglers() -> None:
            for channel in channels:
                if channel in self.channels:
                    channel.transport.abortConnection()  # type: ignore[union-attr]

        timer = self.clock.callLater(grace, abortStragglers)

        def finished(_: object) -> None:
            if timer.active():
                timer.cancel()

        return DeferredList(waiting).addCallback(finished)


__all__ = ["DEFAULT_CLOSE_GRACE", "WebChannel", "WebRequest", "WebSite"]

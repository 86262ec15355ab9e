# -*- test-case-name: tests.test_pool -*-
"""
A set of job servers, one L{ClientService} each, with the bookkeeping the
client and the worker need: which servers are connected right now, which
server a unique id hashes to, round-robin choice, and waiting (bounded by
connection attempts, never forever) for a server to become usable.

The pool does not know what its protocols do. Every server shares one
protocol factory; each protocol it builds for a server gets a C{poolServer}
attribute, and calls C{poolServer.protocolConnected(self)} from
C{connectionMade} and C{poolServer.protocolLost(self)} from
C{connectionLost}.
"""
from __future__ import annotations

import zlib
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence

from twisted.application.internet import ClientService, backoffPolicy
from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, fail, succeed
from twisted.internet.interfaces import IProtocolFactory, IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from txgear._address import ServerAddress, parseAddress
from txgear.errors import NoServers

#: States of a L{PoolServer}.
NEW = "new"
CONNECTING = "connecting"
CONNECTED = "connected"
DOWN = "down"
LOST = "lost"


def defaultRetryPolicy() -> Callable[[int], float]:
    """Reconnect after 0.5 s, doubling up to 30 s, with up to 0.5 s of jitter."""
    import random

    return backoffPolicy(initialDelay=0.5, maxDelay=30.0, factor=2.0,
                         jitter=lambda: random.random() * 0.5)


def uniqueHash(unique: bytes) -> int:
    """
    The hash the Perl client (C{Gearman::Client}) uses to pick a server for a
    unique id, so that mixed Perl and txgear clients given the same server
    list send the same unique to the same server.
    """
    return (zlib.crc32(unique) >> 16) & 0x7FFF


@implementer(IStreamClientEndpoint)
class _TrackingEndpoint:
    """Wraps a server's endpoint to tell the pool when attempts start and fail."""

    def __init__(self, endpoint: IStreamClientEndpoint, server: "PoolServer") -> None:
        self._endpoint = endpoint
        self._server = server

    def connect(self, factory: IProtocolFactory) -> Deferred:
        self._server._attemptStarted()
        d = self._endpoint.connect(factory)
        d.addErrback(self._failed)
        return d

    def _failed(self, reason: Failure) -> Failure:
        self._server._attemptFailed(reason)
        return reason


class _PoolFactory(Factory):
    """Builds the shared factory's protocols for one server, tagged with it."""

    noisy = False

    def __init__(self, inner: IProtocolFactory, server: "PoolServer") -> None:
        self._inner = inner
        self._server = server

    def buildProtocol(self, addr: Any) -> Any:
        proto: Any = self._inner.buildProtocol(addr)
        if proto is not None:
            proto.poolServer = self._server
        return proto


class PoolServer:
    """
    One job server of a L{ServerPool}.

    @ivar address: its L{ServerAddress}.
    @ivar index: its position in the pool's server list.
    @ivar state: C{"new"}, C{"connecting"}, C{"connected"}, C{"down"} (the
        last attempt failed; a retry is scheduled) or C{"lost"} (the
        connection was lost; a retry is scheduled).
    @ivar protocol: the connected protocol, or C{None}.
    @ivar service: the L{ClientService} keeping it connected.
    @ivar lastError: the L{Failure} of the last failed attempt, or C{None}.
    """

    _log = Logger()

    def __init__(self, pool: "ServerPool", index: int, address: ServerAddress) -> None:
        self.pool = pool
        self.index = index
        self.address = address
        self.state = NEW
        self.protocol: Any = None
        self.lastError: Optional[Failure] = None
        self.service: Optional[ClientService] = None

    def __repr__(self) -> str:
        return f"<PoolServer {self.address.text} {self.state}>"

    @property
    def name(self) -> str:
        """The server's address as the user wrote it."""
        return self.address.text

    def _attemptStarted(self) -> None:
        if self.state != CONNECTED:
            self.state = CONNECTING
            self.pool._changed(self)

    def _attemptFailed(self, reason: Failure) -> None:
        self.lastError = reason
        if self.state != CONNECTED:
            self.state = DOWN
            self._log.info("Cannot connect to Gearman server {server}: {error}",
                           server=self.name, error=reason.getErrorMessage())
            self.pool._changed(self)

    def protocolConnected(self, protocol: Any) -> None:
        """A protocol built for this server has connected."""
        self.protocol = protocol
        self.state = CONNECTED
        self.lastError = None
        self._log.info("Connected to Gearman server {server}", server=self.name)
        self.pool._connected.append(self)
        self.pool._changed(self)

    def protocolLost(self, protocol: Any) -> None:
        """A protocol built for this server has lost its connection."""
        if protocol is not self.protocol:
            return
        self.protocol = None
        self.state = LOST
        self._log.info("Lost connection to Gearman server {server}", server=self.name)
        self.pool._connected.remove(self)
        self.pool._changed(self)


class _Waiter:
    """Someone waiting for a usable server (see L{ServerPool.whenReady})."""

    __slots__ = ("deferred", "preferred", "exclude")

    def __init__(self, preferred: Optional[Sequence[PoolServer]], exclude: Iterable[PoolServer]) -> None:
        self.preferred = preferred
        self.exclude = exclude
        self.deferred: Deferred[PoolServer] = Deferred()


class ServerPool:
    """
    The servers a client or worker talks to.

    @ivar servers: the L{PoolServer}s, in the order given.
    """

    _log = Logger()

    def __init__(
        self,
        addresses: Sequence[Any],
        factory: IProtocolFactory,
        reactor: Any = None,
        clock: Any = None,
        retryPolicy: Optional[Callable[[int], float]] = None,
        connectTimeout: float = 30.0,
        endpointFor: Optional[Callable[[PoolServer], IStreamClientEndpoint]] = None,
    ) -> None:
        """
        @param addresses: server addresses (see L{txgear._address.parseAddress}).
        @param factory: builds the protocols of every server.
        @param reactor: the reactor to connect with (default: the global one).
        @param clock: the clock for reconnection delays (default: C{reactor}).
        @param retryPolicy: see L{ClientService}; default L{defaultRetryPolicy}.
        @param connectTimeout: connect timeout of plain C{host:port} addresses.
        @param endpointFor: makes a server's endpoint (tests use fakes);
            default: from its address.
        """
        if not addresses:
            raise ValueError("at least one server address is needed")
        if reactor is None:
            from twisted.internet import reactor as globalReactor

            reactor = globalReactor
        self._reactor = reactor
        self._clock = clock if clock is not None else reactor
        self._retryPolicy = retryPolicy or defaultRetryPolicy()
        self.servers: List[PoolServer] = []
        self._connected: List[PoolServer] = []
        self._waiters: List[_Waiter] = []
        self._rr = 0
        self._running = False
        self._stopped = False
        seen: Dict[ServerAddress, int] = {}
        for text in addresses:
            address = parseAddress(text)
            if address in seen:
                raise ValueError(f"server {address.text!r} is listed twice")
            seen[address] = len(self.servers)
            server = PoolServer(self, len(self.servers), address)
            if endpointFor is not None:
                endpoint = endpointFor(server)
            else:
                endpoint = address.endpoint(reactor, timeout=connectTimeout)
            server.service = ClientService(_TrackingEndpoint(endpoint, server),
                                           _PoolFactory(factory, server),
                                           retryPolicy=self._retryPolicy, clock=self._clock)
            self.servers.append(server)

    @property
    def running(self) -> bool:
        """Whether L{start} was called and L{stop} was not."""
        return self._running

    def start(self) -> None:
        """Start connecting to every server (and keep reconnecting)."""
        if self._running:
            return
        self._running = True
        self._stopped = False
        for server in self.servers:
            assert server.service is not None
            server.service.startService()

    def stop(self) -> Deferred[None]:
        """
        Stop reconnecting and close every connection. Everyone waiting in
        L{whenReady} fails with L{NoServers}.

        @return: fires when every connection is closed.
        """
        self._running = False
        self._stopped = True
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.deferred.errback(NoServers("the client was stopped"))
        ds = []
        for server in self.servers:
            assert server.service is not None
            if server.service.running:
                ds.append(server.service.stopService())
        return DeferredList(ds).addCallback(lambda _: None)

    def connectedServers(self) -> List[PoolServer]:
        """The servers connected right now, in connection order."""
        return list(self._connected)

    def ringFor(self, unique: bytes) -> List[PoolServer]:
        """
        Every server, starting with the one C{unique} hashes to and going on
        in list order: the order in which a job with that unique tries them.
        """
        servers = self.servers
        start = uniqueHash(unique) % len(servers)
        return servers[start:] + servers[:start]

    def pickConnected(self, exclude: Iterable[PoolServer] = ()) -> Optional[PoolServer]:
        """The next connected server in round-robin order, or C{None}."""
        connected = self._connected
        if exclude:
            connected = [s for s in connected if s not in exclude]
        if not connected:
            return None
        self._rr += 1
        return connected[self._rr % len(connected)]

    def whenReady(self, preferred: Optional[Sequence[PoolServer]] = None,
                  exclude: Iterable[PoolServer] = ()) -> Deferred[PoolServer]:
        """
        A connected server to use.

        With C{preferred}, the first of those servers that is connected,
        waiting for one still connecting before passing over it (servers that
        are down are passed over at once). Without, any connected server in
        round-robin order. Servers in C{exclude} are never chosen.

        When none is connected the wait lasts while some candidate server is
        connecting, has not tried yet, or lost its connection and has not
        retried yet; it fails with L{NoServers} when every candidate's latest
        connection attempt failed (at once if that is already so, or if the
        pool is stopped).
        Cancelling the result stops waiting.
        """
        if self._stopped:
            return fail(NoServers("the client is stopped"))
        if preferred is None and not exclude:
            server = self.pickConnected()
            if server is not None:
                return succeed(server)
        waiter = _Waiter(preferred, exclude)
        outcome = self._evaluate(waiter)
        if outcome is not None:
            if isinstance(outcome, PoolServer):
                return succeed(outcome)
            return fail(outcome)

        def cancel(d: Deferred) -> None:
            try:
                self._waiters.remove(waiter)
            except ValueError:
                pass

        waiter.deferred = Deferred(cancel)
        self._waiters.append(waiter)
        return waiter.deferred

    def _evaluate(self, waiter: _Waiter) -> Any:
        """A server, a L{NoServers} error, or C{None} to keep waiting."""
        exclude = waiter.exclude
        if waiter.preferred is not None:
            for candidate in waiter.preferred:
                if candidate in exclude:
                    continue
                if candidate.state == CONNECTED:
                    return candidate
                if candidate.state in (NEW, CONNECTING):
                    return None
        chosen = self.pickConnected(exclude)
        if chosen is not None:
            return chosen
        for server in self.servers:
            if server in exclude or server.state == DOWN:
                continue
            # Connecting, not tried yet, or lost and about to retry: wait.
            return None
        detail = "; ".join(f"{s.name}: {s.lastError.getErrorMessage()}" for s in self.servers
                           if s not in exclude and s.lastError is not None)
        return NoServers("no Gearman server is reachable" + (f" ({detail})" if detail else ""))

    def _changed(self, server: PoolServer) -> None:
        if not self._waiters:
            return
        waiters = self._waiters
        self._waiters = []
        keep = []
        fire = []
        for waiter in waiters:
            outcome = self._evaluate(waiter)
            if outcome is None:
                keep.append(waiter)
            else:
                fire.append((waiter, outcome))
        self._waiters.extend(keep)
        for waiter, outcome in fire:
            if isinstance(outcome, PoolServer):
                waiter.deferred.callback(outcome)
            else:
                waiter.deferred.errback(outcome)


__all__ = ["PoolServer", "ServerPool", "defaultRetryPolicy", "uniqueHash"]


class PoolService(Service):
    """
    Base of the client and the worker: an C{IService} over a L{ServerPool},
    also usable without a service parent through L{connect} and L{close}.
    """

    _pool: ServerPool

    def connect(self) -> Deferred[Any]:
        """
        Start without a service parent.

        @return: fires with this object once at least one server is connected,
            or fails with L{NoServers} when every server failed its first
            attempt (it keeps retrying until L{close}).
        """
        if not self.running:
            self.startService()
        return self._pool.whenReady().addCallback(lambda _: self)

    def close(self) -> Deferred[None]:
        """Stop (as C{stopService}): the counterpart of L{connect}."""
        if self.running:
            return self.stopService()  # type: ignore[no-any-return]
        return succeed(None)

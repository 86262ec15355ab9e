# -*- test-case-name: tests.test_pool -*-
"""
A set of job servers, each kept connected by a L{ClientService} of its own,
with the bookkeeping the client and the worker need: which servers are
connected right now, which server a unique id hashes to, round-robin choice,
and waiting (bounded by connection attempts, never forever) for a server to
become usable.

The pool does not know what its protocols do. Every server shares one
protocol factory; each protocol it builds for a server gets a C{poolServer}
attribute. A server counts as connected when its endpoint's Deferred fires
with the protocol (and its L{ClientService} has been told); the protocol
calls C{poolServer.protocolLost(self)} from C{connectionLost}. That is the
whole interface.
"""
from __future__ import annotations

import hashlib
import re
from collections import deque
from typing import Any, Callable, Deque, Dict, Iterable, List, Optional, Sequence, Tuple

from twisted.application.internet import ClientService, backoffPolicy
from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, fail, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IProtocolFactory, IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from txgear._address import ServerAddress, parseAddress
from txgear._log import logger
from txgear.errors import NoServers

#: States of a L{PoolServer}.
NEW = "new"
CONNECTING = "connecting"
CONNECTED = "connected"
DOWN = "down"
LOST = "lost"
STOPPED = "stopped"

#: The key of L{uniqueHash}: fixed, so every txgear client agrees.
_HASH_KEY = b"txgear unique"
_DIGITS = re.compile(rb"[0-9]+")
_MASK64 = (1 << 64) - 1
#: 2**64 divided by the golden ratio: consecutive multiples are spread evenly.
_GOLDEN = 0x9E3779B97F4A7C15


def defaultRetryPolicy() -> Callable[[int], float]:
    """Reconnect after 0.5 s, doubling up to 30 s, with up to 0.5 s of jitter."""
    import random

    return backoffPolicy(initialDelay=0.5, maxDelay=30.0, factor=2.0,
                         jitter=lambda: random.random() * 0.5)


def uniqueHash(unique: bytes) -> int:
    """
    A 64-bit hash of a unique id, the same in every process (see
    L{serverIndex}, which turns it into a server).

    The unique is split into its text and its runs of decimal digits. The
    text (with each run replaced by C{#}) is hashed with keyed BLAKE2b, so
    different names scatter well; the number the digits make is multiplied
    by the golden ratio (as a 64-bit fraction) and added, so ids that differ
    only by a counter (C{photo-000.jpg}, C{photo-001.jpg}, ...) fall evenly
    over the range, whatever the counter's step.
    """
    text = _DIGITS.sub(b"#", unique)
    mixed = int.from_bytes(hashlib.blake2b(text, digest_size=8, key=_HASH_KEY).digest(), "big")
    number = 0
    for run in _DIGITS.findall(unique):
        number = (number * 1000003 + int(run)) & _MASK64
    return (mixed + number * _GOLDEN) & _MASK64


def serverIndex(unique: bytes, count: int) -> int:
    """
    Which of C{count} servers a job with this unique id goes to: the same
    unique always goes to the same server for the same server list.

    The hash is scaled to the range (not reduced modulo C{count}), so the
    golden-ratio spacing of sequential and evenly stepped ids carries over:
    1,000 of them land within a few percent of even on any number of servers.
    """
    return (uniqueHash(unique) * count) >> 64


def roundedPolicy(policy: Callable[[int], float]) -> Callable[[int], float]:
    """
    A retry policy whose delays are rounded to hundredths of a second, so
    that L{ClientService}'s C{Scheduling retry 2 to connect gear1:4730 in
    2.07 seconds.} reads well.
    """
    def rounded(attempt: int) -> float:
        return round(policy(attempt), 2)

    return rounded


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


class _Attempt:
    """
    One connection attempt of a server's L{ClientService}.

    @ivar factory: the factory L{ClientService} passed to its endpoint; it
        builds the protocol L{ClientService} is given for this connection.
    @ivar result: the L{Deferred} L{ClientService} waits on.
    @ivar connecting: the real endpoint's L{Deferred}.
    @ivar protocol: the protocol built for the connection, once there is one.
    @ivar address: the address C{protocol} was built for.
    @ivar cancelled: whether L{ClientService} cancelled the attempt.
    @ivar lost: whether C{protocol} lost its connection before the endpoint's
        L{Deferred} fired.
    """

    __slots__ = ("factory", "result", "connecting", "protocol", "address", "cancelled", "lost")

    def __init__(self, factory: IProtocolFactory, canceller: Callable[[Deferred[Any]], None]) -> None:
        self.factory = factory
        self.result: Deferred[Any] = Deferred(canceller)
        self.connecting: Optional[Deferred[Any]] = None
        self.protocol: Any = None
        self.address: Any = None
        self.cancelled = False
        self.lost = False


class _AttemptFactory(Factory):
    """Builds one attempt's protocol with the server's factory, and notes it."""

    noisy = False

    def __init__(self, attempt: _Attempt, server: "PoolServer") -> None:
        self._attempt = attempt
        self._server = server

    def buildProtocol(self, addr: Any) -> Any:
        proto = self._server._factory.buildProtocol(addr)
        self._attempt.protocol = proto
        self._attempt.address = addr
        return proto


class _Connection(Protocol):
    """
    What a server's L{ClientService} is given for a connection: the transport
    (which L{ClientService} closes when it stops) and the end of the
    connection (L{PoolServer} calls C{connectionLost} once the real protocol
    has lost it). The bytes go to the real protocol, never through here.
    """


@implementer(IStreamClientEndpoint)
class _ServerEndpoint:
    """
    The endpoint a server's L{ClientService} connects with: the server's own
    endpoint, through L{PoolServer}. Shown as the address the user wrote.
    """

    def __init__(self, server: "PoolServer") -> None:
        self._server = server

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[Any]:
        return self._server._connect(protocolFactory)

    def __str__(self) -> str:
        return self._server.name

    __repr__ = __str__


@implementer(IReactorTime)
class _ServerClock:
    """
    The pool's clock, as a server's L{ClientService} sees it: its timers
    (reconnection) run through L{PoolServer._serially}.
    """

    def __init__(self, server: "PoolServer", clock: Any) -> None:
        self._server = server
        self._clock = clock

    def callLater(self, delay: float, callable: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        return self._clock.callLater(delay, self._server._serially, callable, *args, **kw)

    def seconds(self) -> float:
        return self._clock.seconds()  # type: ignore[no-any-return]

    def getDelayedCalls(self) -> Any:
        return self._clock.getDelayedCalls()


class _ServerService(ClientService):
    """
    A L{ClientService} that logs through txgear's logger, so that its
    C{Scheduling retry ...} line obeys C{--log-level} as txgear's own lines
    do. (L{ClientService} hands its class's C{_log} to its state machine.)
    """

    _log = logger()


class PoolServer:
    """
    One job server of a L{ServerPool}, kept connected by a L{ClientService}
    (C{service}): it connects, retries with the pool's retry policy on the
    pool's clock, and stops.

    Around it, this class keeps the pool's view of the server (C{state},
    C{protocol}) and makes stopping safe at any moment. L{ClientService}
    connects through a L{_ServerEndpoint} that hands each attempt to
    L{_connect}; the real protocol sits directly on the transport, and
    L{ClientService} is given a stand-in protocol (L{_Connection}) only once
    the real endpoint's L{Deferred} has fired, and told of its end only
    after the real protocol's C{connectionLost}. That is needed because:

      - C{ClientService.stopService()} while connecting cancels the
        endpoint's L{Deferred}. When the connection has already been made
        but the endpoint has not said so yet (TCP endpoints fire after the
        protocol's C{connectionMade}), the cancel raises
        C{NotConnectingError} from the connector, and the connection's later
        loss reaches a stopped L{ClientService} (automat C{NoTransition} for
        C{_clientDisconnected} in state C{Stopped}). Here the cancel closes
        such a connection itself, and L{ClientService} never hears of it.
      - L{ClientService}'s state machine (Twisted 24.10 and later) refuses to
        be stopped from code it is running (a C{RuntimeError}: "attempting
        to reentrantly run stop"), e.g. from a callback of its stop
        L{Deferred}, or from user code called because an attempt failed.
        So every call into it, and everything it calls (endpoint, timers),
        runs through L{_serially}: one thing at a time, what they trigger
        (the pool's waiters, user code) after they return.

    @ivar address: its L{ServerAddress}.
    @ivar index: its position in the pool's server list.
    @ivar state: C{"new"}, C{"connecting"}, C{"connected"}, C{"down"} (the
        last attempt failed; a retry is scheduled), C{"lost"} (the
        connection was lost; a retry is scheduled) or C{"stopped"}.
    @ivar protocol: the connected protocol, or C{None}.
    @ivar lastError: the L{Failure} of the last failed attempt, or C{None}.
    @ivar service: the L{ClientService} keeping it connected.
    """

    _log = logger()

    _endpoint: IStreamClientEndpoint

    def __init__(self, pool: "ServerPool", index: int, address: ServerAddress,
                 factory: IProtocolFactory) -> None:
        self.pool = pool
        self.index = index
        self.address = address
        self.state = NEW
        self.protocol: Any = None
        self.lastError: Optional[Failure] = None
        self._factory = _PoolFactory(factory, self)
        self.service = _ServerService(_ServerEndpoint(self), Factory.forProtocol(_Connection),
                                      retryPolicy=pool._retryPolicy,
                                      clock=_ServerClock(self, pool._clock))
        self._running = False
        self._attempt: Optional[_Attempt] = None
        # The connection ClientService knows of: (real protocol, its stand-in).
        self._current: Optional[Tuple[Any, Any]] = None
        self._closing: List[Any] = []      # protocols closed outside ClientService, not yet lost
        self._serviceStops = 0             # ClientService stops not finished yet
        self._stopWaiters: List[Deferred[None]] = []
        self._queue: Deque[Tuple[Callable[..., Any], Tuple[Any, ...], Dict[str, Any]]] = deque()
        self._busy = False

    def __repr__(self) -> str:
        return f"<PoolServer {self.address.text} {self.state}>"

    @property
    def name(self) -> str:
        """The server's address as the user wrote it."""
        return self.address.text

    def connectAside(self, factory: IProtocolFactory) -> Deferred[Any]:
        """
        Open one more connection to this server, outside the pool (e.g. an
        admin query); the caller closes it.
        """
        return self._endpoint.connect(factory)

    def _serially(self, call: Callable[..., Any], *args: Any, **kw: Any) -> None:
        """
        Run C{call} now if nothing of this server is running, else once
        what runs (and what was queued before) has returned.
        """
        self._queue.append((call, args, kw))
        if self._busy:
            return
        self._busy = True
        try:
            while self._queue:
                call, args, kw = self._queue.popleft()
                try:
                    call(*args, **kw)
                except Exception:
                    self._log.failure("Gearman server {server}: {call!r} failed",
                                      server=self.name, call=call)
        finally:
            self._busy = False

    # Starting and stopping

    def start(self) -> None:
        """Keep a connection to this server (idempotent)."""
        self._serially(self._start)

    def _start(self) -> None:
        if self._running:
            return
        self._running = True
        if self.state == STOPPED:
            # Reconnecting, once a connection still closing is gone.
            self.state = CONNECTING
        if not self.service.running:
            self.service.startService()

    def stop(self) -> Deferred[None]:
        """
        Stop reconnecting and close the connection, whatever state it is in.

        @return: fires once no attempt runs and no connection is open.
        """
        d: Deferred[None] = Deferred()
        self._stopWaiters.append(d)
        self._serially(self._stop)
        return d

    def _stop(self) -> None:
        self._running = False
        if self.state != NEW:
            self.state = STOPPED
        if self.protocol is not None:
            self._disconnected()
        if self.service.running:
            self._serviceStops += 1
            self.service.stopService().addCallback(
                lambda _: self._serially(self._serviceStopped))
        self._settled()

    def _serviceStopped(self) -> None:
        self._serviceStops -= 1
        self._settled()

    def _settled(self) -> None:
        """Fire L{stop}'s Deferreds once nothing of an earlier stop is left."""
        if self._serviceStops or self._closing or not self._stopWaiters:
            return
        waiters, self._stopWaiters = self._stopWaiters, []
        for d in waiters:
            d.callback(None)

    def _closeAside(self, protocol: Any) -> None:
        self._closing.append(protocol)
        transport = protocol.transport
        if transport is not None:
            transport.loseConnection()

    # Attempts (ClientService calls _connect; the rest runs serially)

    def _connect(self, factory: IProtocolFactory) -> Deferred[Any]:
        attempt = _Attempt(factory, self._cancel)
        self._attempt = attempt
        self.state = CONNECTING
        try:
            connecting = self._endpoint.connect(_AttemptFactory(attempt, self))
        except Exception:
            connecting = fail()
        attempt.connecting = connecting
        connecting.addCallbacks(lambda proto: self._serially(self._attemptSucceeded, attempt, proto),
                                lambda reason: self._serially(self._attemptFailed, attempt, reason))
        self._serially(self.pool._changed, self)
        return attempt.result

    def _cancel(self, result: Deferred[Any]) -> None:
        """L{ClientService} stops while the attempt whose C{result} this is runs."""
        attempt = self._attempt
        if attempt is None or attempt.result is not result:
            return
        attempt.cancelled = True
        self._attempt = None
        connecting = attempt.connecting
        if attempt.protocol is not None:
            # Connected, but the endpoint has not said so yet: cancelling the
            # endpoint now would raise NotConnectingError. Close it here.
            if not attempt.lost:
                self._closeAside(attempt.protocol)
        elif connecting is not None:
            try:
                connecting.cancel()
            except Exception:
                # Nothing may escape into ClientService's stop.
                self._log.failure("Cancelling the connection to {server} failed", server=self.name)
        # Deferred.cancel now fails attempt.result: ClientService stops.

    def _attemptSucceeded(self, attempt: _Attempt, protocol: Any) -> None:
        if attempt.cancelled:
            if protocol not in self._closing and not attempt.lost:
                self._closeAside(protocol)
            return
        self._attempt = None
        if attempt.lost:
            self._failed(attempt, Failure(ConnectionDone("the connection closed at once")))
            return
        connection: Any = attempt.factory.buildProtocol(attempt.address)
        connection.makeConnection(protocol.transport)
        self._current = (protocol, connection)
        attempt.result.callback(connection)
        self.protocol = protocol
        self.state = CONNECTED
        self.lastError = None
        self._log.info("Connected to Gearman server {server}", server=self.name)
        self.pool._connected.append(self)
        self.pool._changed(self)

    def _attemptFailed(self, attempt: _Attempt, reason: Failure) -> None:
        if attempt.cancelled:
            return
        self._attempt = None
        self._failed(attempt, reason)

    def _failed(self, attempt: _Attempt, reason: Failure) -> None:
        error = reason.getErrorMessage()
        # The same failure again (a server down, a certificate refused): once
        # at info is enough; retries are logged at debug until it changes.
        repeated = self.lastError is not None and self.lastError.getErrorMessage() == error
        self.lastError = reason
        self.state = DOWN
        log = self._log.debug if repeated else self._log.info
        log("Cannot connect to Gearman server {server}: {error}", server=self.name, error=error)
        attempt.result.errback(reason)    # ClientService schedules the retry, and logs it
        self.pool._changed(self)

    # What protocols tell it

    def protocolLost(self, protocol: Any, reason: Optional[Failure] = None) -> None:
        """A protocol built for this server has lost its connection."""
        self._serially(self._protocolLost, protocol, reason)

    def _protocolLost(self, protocol: Any, reason: Optional[Failure]) -> None:
        if protocol in self._closing:
            self._closing.remove(protocol)
            self._settled()
            return
        current = self._current
        if current is None or current[0] is not protocol:
            attempt = self._attempt
            if attempt is not None and attempt.protocol is protocol:
                attempt.lost = True
            return
        self._current = None
        unexpected = protocol is self.protocol
        if unexpected:
            self._disconnected()
            self.state = LOST
            self._log.info("Lost connection to Gearman server {server}", server=self.name)
        # ClientService retries, finishes its stop, or reconnects if restarted.
        current[1].connectionLost(reason or Failure(ConnectionDone("connection closed")))
        if unexpected:
            self.pool._changed(self)

    def _disconnected(self) -> None:
        self.protocol = None
        try:
            self.pool._connected.remove(self)
        except ValueError:
            pass


class _Waiter:
    """
    Someone waiting for a usable server (see L{ServerPool.whenReady}), or
    for every server to settle (see L{ServerPool.whenSettled}).
    """

    __slots__ = ("deferred", "preferred", "exclude", "patient", "settle")

    def __init__(self, preferred: Optional[Sequence[PoolServer]], exclude: Iterable[PoolServer],
                 patient: bool = False, settle: bool = False) -> None:
        self.preferred = preferred
        self.exclude = exclude
        self.patient = patient
        self.settle = settle
        self.deferred: Deferred[Any] = Deferred()


class ServerPool:
    """
    The servers a client or worker talks to.

    @ivar servers: the L{PoolServer}s, in the order given.
    """

    _log = logger()

    def __init__(
        self,
        addresses: Sequence[Any],
        factory: IProtocolFactory,
        reactor: Any = None,
        clock: Any = None,
        retryPolicy: Optional[Callable[[int], float]] = None,
        connectTimeout: float = 30.0,
        endpointFor: Optional[Callable[[PoolServer], IStreamClientEndpoint]] = None,
        tls: Any = None,
    ) -> None:
        """
        @param addresses: server addresses (see L{txgear._address.parseAddress}).
        @param factory: builds the protocols of every server.
        @param reactor: the reactor to connect with (default: the global one).
        @param clock: the clock for reconnection delays (default: C{reactor}).
        @param retryPolicy: maps the number of consecutive failures to the
            delay before the next attempt, as
            C{twisted.application.internet.backoffPolicy()} returns; default
            L{defaultRetryPolicy}. Each server's L{ClientService} uses it,
            rounded to 0.01 s (see L{roundedPolicy}).
        @param connectTimeout: connect timeout of plain C{host:port} addresses.
        @param endpointFor: makes a server's endpoint (tests use fakes);
            default: from its address.
        @param tls: a L{txgear._tlsclient.TLSOptions}: C{host:port}
            addresses connect with TLS (see
            L{txgear._address.ServerAddress.endpoint}).
        @raise ValueError: no address, one listed twice, or (with C{tls}) an
            endpoint string that would not encrypt or a TLS file that
            cannot be used.
        @raise ImportError: C{tls} is given and pyOpenSSL is missing.
        """
        if not addresses:
            raise ValueError("at least one server address is needed")
        if reactor is None:
            from twisted.internet import reactor as globalReactor

            reactor = globalReactor
        self._reactor = reactor
        self._clock = clock if clock is not None else reactor
        self._retryPolicy = roundedPolicy(retryPolicy or defaultRetryPolicy())
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
            server = PoolServer(self, len(self.servers), address, factory)
            if endpointFor is not None:
                server._endpoint = endpointFor(server)
            else:
                server._endpoint = address.endpoint(reactor, timeout=connectTimeout, tls=tls,
                                                    clock=self._clock)
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
            server.start()

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
        ds = [server.stop() for server in self.servers]
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
        start = serverIndex(unique, len(servers))
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
                  exclude: Iterable[PoolServer] = (), patient: bool = False) -> Deferred[PoolServer]:
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
        pool is stopped). A C{patient} wait never fails that way: it lasts
        until a server connects or the caller cancels it.
        Cancelling the result stops waiting.
        """
        if self._stopped:
            return fail(NoServers("the client is stopped"))
        if preferred is None and not exclude:
            server = self.pickConnected()
            if server is not None:
                return succeed(server)
        return self._wait(_Waiter(preferred, exclude, patient))

    def whenSettled(self) -> Deferred[List[PoolServer]]:
        """
        Wait until every server is connected or has failed its latest
        attempt.

        @return: fires with the connected servers, or fails with
            L{NoServers} if none is.
        """
        if self._stopped:
            return fail(NoServers("the client is stopped"))
        return self._wait(_Waiter(None, (), settle=True))

    def _wait(self, waiter: _Waiter) -> Deferred[Any]:
        outcome = self._evaluate(waiter)
        if outcome is not None:
            if isinstance(outcome, Exception):
                return fail(outcome)
            return succeed(outcome)

        def cancel(d: Deferred) -> None:
            try:
                self._waiters.remove(waiter)
            except ValueError:
                pass

        waiter.deferred = Deferred(cancel)
        self._waiters.append(waiter)
        return waiter.deferred

    def _evaluate(self, waiter: _Waiter) -> Any:
        """A server (or servers), a L{NoServers} error, or C{None} to keep waiting."""
        if waiter.settle:
            if any(s.state in (NEW, CONNECTING, LOST) for s in self.servers):
                return None
            if self._connected:
                return list(self._connected)
            return self._noServers(())
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
        if waiter.patient:
            return None
        for server in self.servers:
            if server in exclude or server.state == DOWN:
                continue
            # Connecting, not tried yet, or lost and about to retry: wait.
            return None
        return self._noServers(exclude)

    def _noServers(self, exclude: Iterable[PoolServer]) -> NoServers:
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
            if isinstance(outcome, Exception):
                waiter.deferred.errback(outcome)
            else:
                waiter.deferred.callback(outcome)


__all__ = ["PoolServer", "PoolService", "ServerPool", "defaultRetryPolicy", "roundedPolicy", "serverIndex",
           "uniqueHash"]


class PoolService(Service):
    """
    Base of the client and the worker: an C{IService} over a L{ServerPool},
    also usable without a service parent through L{connect} and L{close}.
    """

    _pool: ServerPool

    def connect(self, waitForAll: bool = False) -> Deferred[Any]:
        """
        Start without a service parent.

        @param waitForAll: wait until every server is connected or has
            failed its first attempt, instead of firing at the first server
            that answers; then work submitted at once spreads over all the
            servers that are up.
        @return: fires with this object once a server is connected (every
            server has settled, with C{waitForAll}), or fails with
            L{NoServers} when every server failed its first attempt (it
            keeps retrying until L{close}). A L{close} before then fails it
            with L{NoServers}.
        """
        if not self.running:
            self.startService()
        if waitForAll:
            return self._pool.whenSettled().addCallback(lambda _: self)
        return self._pool.whenReady().addCallback(lambda _: self)

    def whenAllConnected(self) -> Deferred[Any]:
        """
        Wait until every server is connected or has failed its latest
        attempt (see C{connect(waitForAll=True)}).

        @return: fires with this object, or fails with L{NoServers} if no
            server is connected.
        """
        return self._pool.whenSettled().addCallback(lambda _: self)

    def close(self) -> Deferred[None]:
        """
        Stop (as C{stopService}): the counterpart of L{connect}. Safe at any
        moment: before L{connect}, while connecting, twice.

        @return: fires once every connection is closed and every
            reconnection timer cancelled.
        """
        if self.running:
            return self.stopService()  # type: ignore[no-any-return]
        return self._pool.stop()

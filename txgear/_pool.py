# -*- test-case-name: tests.test_pool -*-
"""
A set of job servers, one reconnecting connection each, with the bookkeeping the
client and the worker need: which servers are connected right now, which
server a unique id hashes to, round-robin choice, and waiting (bounded by
connection attempts, never forever) for a server to become usable.

The pool does not know what its protocols do. Every server shares one
protocol factory; each protocol it builds for a server gets a C{poolServer}
attribute. A server counts as connected when its endpoint's Deferred fires
with the protocol; the protocol calls C{poolServer.protocolLost(self)} from
C{connectionLost}. That is the whole interface.
"""
from __future__ import annotations

import hashlib
import re
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence

from twisted.application.internet import backoffPolicy
from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, DeferredList, fail, succeed
from twisted.internet.interfaces import IProtocolFactory, IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.python.failure import Failure

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


def _seconds(delay: float) -> str:
    """A delay as a person reads it: C{2.07}, C{0.5}, C{30}."""
    return f"{delay:.3g}"


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
            self._server._built = proto
        return proto


class PoolServer:
    """
    One job server of a L{ServerPool}, and the connection kept to it: one
    attempt at a time, a retry after every failure or loss (delays from the
    pool's retry policy), and a stop that can come at any moment.

    A server counts as connected once its endpoint's L{Deferred} has fired
    with the protocol (never from inside C{connectionMade}); protocols tell
    it they lost their connection by calling L{protocolLost}.

    @ivar address: its L{ServerAddress}.
    @ivar index: its position in the pool's server list.
    @ivar state: C{"new"}, C{"connecting"}, C{"connected"}, C{"down"} (the
        last attempt failed; a retry is scheduled), C{"lost"} (the
        connection was lost; a retry is scheduled) or C{"stopped"}.
    @ivar protocol: the connected protocol, or C{None}.
    @ivar lastError: the L{Failure} of the last failed attempt, or C{None}.
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
        self._running = False
        self._attempt: Optional[Deferred] = None
        self._built: Any = None            # the protocol the current attempt built
        self._retry: Any = None
        self._failures = 0
        self._closing: List[Any] = []      # protocols closed by stop(), not yet lost
        self._lostEarly: List[Any] = []    # lost before their attempt fired
        self._stopWaiters: List[Deferred] = []

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

    # Starting and stopping

    def start(self) -> None:
        """Keep a connection to this server (idempotent)."""
        if self._running:
            return
        self._running = True
        if self._attempt is None and self.protocol is None and not self._closing:
            self._connect()
        # Otherwise: an attempt still runs, or a closing connection will
        # reconnect when it is gone.

    def stop(self) -> Deferred[None]:
        """
        Stop reconnecting and close the connection, whatever state it is in.

        @return: fires once no attempt runs and no connection is open.
        """
        self._running = False
        if self._retry is not None:
            if self._retry.active():
                self._retry.cancel()
            self._retry = None
        if self._attempt is not None:
            built = self._built
            if built is None:
                self._attempt.cancel()
            elif built.transport is not None:
                # Connected, but the endpoint has not said so yet: cancelling
                # now would fail (NotConnectingError) or fire its Deferred
                # twice. Close the connection; the attempt ends on its own.
                built.transport.loseConnection()
        if self.state != NEW:
            self.state = STOPPED
        protocol = self.protocol
        if protocol is not None:
            self._disconnected(protocol)
            self._close(protocol)
        if self._attempt is None and not self._closing:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._stopWaiters.append(d)
        return d

    def _close(self, protocol: Any) -> None:
        self._closing.append(protocol)
        transport = protocol.transport
        if transport is not None:
            transport.loseConnection()

    def _settled(self) -> None:
        """Nothing runs any more: fire L{stop}'s Deferreds, or reconnect if restarted."""
        if self._attempt is not None or self._closing:
            return
        waiters, self._stopWaiters = self._stopWaiters, []
        if self._running:
            # Restarted while closing: the old connection is gone, connect.
            if self.protocol is None and self._retry is None:
                self._connect()
        else:
            self.state = STOPPED
        for d in waiters:
            d.callback(None)

    # Attempts

    def _connect(self) -> None:
        self._retry = None
        self._built = None
        self.state = CONNECTING
        try:
            attempt = self._endpoint.connect(self._factory)
        except Exception:
            attempt = fail()
        self._attempt = attempt
        self.pool._changed(self)
        attempt.addCallbacks(self._attemptSucceeded, self._attemptFailed)

    def _attemptSucceeded(self, protocol: Any) -> None:
        self._attempt = None
        self._built = None
        if protocol in self._lostEarly:
            self._lostEarly.remove(protocol)
            if not self._running:
                self._settled()
            else:
                self._failed(Failure(ConnectionError("the connection closed at once")))
            return
        if not self._running:
            self._close(protocol)
            return
        self.protocol = protocol
        self.state = CONNECTED
        self.lastError = None
        self._failures = 0
        self._log.info("Connected to Gearman server {server}", server=self.name)
        self.pool._connected.append(self)
        self.pool._changed(self)

    def _attemptFailed(self, reason: Failure) -> None:
        self._attempt = None
        self._built = None
        self._lostEarly.clear()
        if not self._running:
            # Cancelled by stop(); some endpoints report it as another error.
            self._settled()
            return
        self._failed(reason)

    def _failed(self, reason: Failure) -> None:
        self.lastError = reason
        self.state = DOWN
        self._log.info("Cannot connect to Gearman server {server}: {error}",
                       server=self.name, error=reason.getErrorMessage())
        if self._running:
            self._scheduleRetry()
        self.pool._changed(self)
        self._settled()

    def _scheduleRetry(self) -> None:
        self._failures += 1
        delay = self.pool._retryPolicy(self._failures)
        self._log.info("Retrying Gearman server {server} in {delay} s (attempt {attempt})",
                       server=self.name, delay=_seconds(delay), attempt=self._failures)
        self._retry = self.pool._clock.callLater(delay, self._connect)

    # What protocols tell it

    def protocolLost(self, protocol: Any) -> None:
        """A protocol built for this server has lost its connection."""
        if protocol in self._closing:
            self._closing.remove(protocol)
            self._settled()
            return
        if protocol is not self.protocol:
            if self._attempt is not None:
                self._lostEarly.append(protocol)
            return
        self._disconnected(protocol)
        self.state = LOST
        self._log.info("Lost connection to Gearman server {server}", server=self.name)
        if self._running:
            self._scheduleRetry()
        self.pool._changed(self)

    def _disconnected(self, protocol: Any) -> None:
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
    ) -> None:
        """
        @param addresses: server addresses (see L{txgear._address.parseAddress}).
        @param factory: builds the protocols of every server.
        @param reactor: the reactor to connect with (default: the global one).
        @param clock: the clock for reconnection delays (default: C{reactor}).
        @param retryPolicy: maps the number of consecutive failures to the
            delay before the next attempt, as
            C{twisted.application.internet.backoffPolicy()} returns; default L{defaultRetryPolicy}.
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
            server = PoolServer(self, len(self.servers), address, factory)
            if endpointFor is not None:
                server._endpoint = endpointFor(server)
            else:
                server._endpoint = address.endpoint(reactor, timeout=connectTimeout)
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


__all__ = ["PoolServer", "PoolService", "ServerPool", "defaultRetryPolicy", "serverIndex", "uniqueHash"]


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

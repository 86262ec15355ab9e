# -*- test-case-name: tests.test_server_service -*-
"""
L{GearmanServerService}: the job server as an C{IService}, listening on any
number of Twisted server endpoints, with an optional persistent store.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, List, Optional, Sequence, Tuple

from twisted.application.service import Service
from twisted.internet.defer import (CancelledError, Deferred, DeferredList, TimeoutError,
                                    gatherResults, maybeDeferred)
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError
from twisted.python.failure import Failure

from txgear._log import logger
from txgear.errors import StoreError
from txgear.server._protocol import GearmanServerFactory
from txgear.server._state import JobServerState

if TYPE_CHECKING:  # TLS needs the tls extra (pyOpenSSL): imported only when used
    from txgear._tls import ServerTLS

#: Seconds a stop waits for the jobs workers hold to finish, by default.
DEFAULT_SHUTDOWN_GRACE = 5.0


class GearmanServerService(Service):
    """
    A Gearman job server.

    On start it opens the store (if any), loads the background jobs it holds,
    and only then listens, so no client sees a half-loaded queue. The service
    alone orders the stop (L{stopService}): stop listening and refuse new
    jobs; let the workers finish the jobs they hold, for at most the shutdown
    grace; close every connection once its output is written; cancel the
    timers; and only then close the store, so that every result that arrived
    meanwhile is written to it. A stop while the store is still opening ends
    with nothing listening and the store closed.

    @param endpoints: server endpoint descriptions (C{"tcp:4730"},
        C{"unix:/run/gearman.sock"}, C{"ssl:4730:privateKey=key.pem"}, ...)
        or L{IStreamServerEndpoint}s.
    @param state: the L{JobServerState}; its C{store} is opened on start.
    @param factory: the L{GearmanServerFactory}; made from C{state} if omitted.
    @param reactor: the reactor to listen with; the global one by default.
    @param shutdownGrace: at most this many seconds, a stop lets workers
        finish the jobs they hold and peers read their replies.
    @param tlsEndpoints: more endpoint descriptions or endpoints, whose
        connections carry TLS with C{tls} from their first byte.
    @param tls: the server's certificates (a L{txgear._tls.ServerTLS}),
        needed with C{tlsEndpoints}; L{reload} reads them again.
    @param httpEndpoints: endpoint descriptions or endpoints where
        C{httpFactory} (a twisted.web C{Site}: metrics, API, dashboard, see
        L{txgear.web.makeSite}) listens, once the Gearman ports do. A
        C{httpFactory} with a C{stopServing(grace)} method (the site of
        L{txgear.web.makeSite}) is told to end its requests and close its
        connections when the Gearman connections are closed.
    @param httpsEndpoints: the same, whose connections carry TLS with
        C{tls} (so that a request's identity is its client certificate's).
    @ivar ports: the listening ports, once started.
    @ivar started: fires when the service listens; fails if it cannot start,
        or with L{CancelledError} if it is stopped before it listens.
    """

    _log = logger()

    def __init__(self, endpoints: Sequence[Any], state: JobServerState,
                 factory: Optional[GearmanServerFactory] = None, reactor: Any = None,
                 shutdownGrace: float = DEFAULT_SHUTDOWN_GRACE,
                 tlsEndpoints: Sequence[Any] = (), tls: Optional["ServerTLS"] = None,
                 httpEndpoints: Sequence[Any] = (), httpFactory: Any = None,
                 httpsEndpoints: Sequence[Any] = ()) -> None:
        if (tlsEndpoints or httpsEndpoints) and tls is None:
            raise ValueError("TLS endpoints need the server's certificates (tls=)")
        if reactor is None:
            from twisted.internet import reactor  # type: ignore[no-redef]
        self._reactor = reactor
        self.endpoints = list(endpoints)
        self.tlsEndpoints = list(tlsEndpoints)
        if (httpEndpoints or httpsEndpoints) and httpFactory is None:
            raise ValueError("httpEndpoints need an httpFactory (see txgear.web.makeSite)")
        self.httpEndpoints = list(httpEndpoints)
        self.httpsEndpoints = list(httpsEndpoints)
        self.httpFactory = httpFactory
        self.tls = tls
        self.state = state
        self.factory = factory if factory is not None else GearmanServerFactory(state)
        self.factory._shutdown = self.shutdown
        self.shutdownGrace = shutdownGrace
        self.ports: List[Any] = []
        self.started: Deferred[None] = Deferred()
        self._startSettled: Optional[Deferred[None]] = None
        self._stopWaiters: List[Deferred[None]] = []
        self._stopOutcome: Optional[Tuple[Any]] = None  # (None or a Failure,) once stopped
        self._stopping: Optional[Deferred[None]] = None

    def startService(self) -> None:
        Service.startService(self)
        settled: Deferred[None] = Deferred()
        self._startSettled = settled
        d = self._start()
        d.addCallbacks(self._startSucceeded, self._startFailed)
        d.addBoth(lambda _: settled.callback(None))

    def _start(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._startAsync())

    async def _startAsync(self) -> None:
        store = self.state.store
        if store is not None:
            stored = await store.open()
            if not self.running:
                raise CancelledError("stopped while the job store was opening")
            count = self.state.loadStored(stored)
            self._log.info("Loaded {count} background jobs from {store}", count=count,
                           store=getattr(store, "description", store))
            dead = await store.listDead()
            if not self.running:
                raise CancelledError("stopped while the dead set was loading")
            if dead:
                self._log.info("Loaded the index of {count} dead jobs",
                               count=self.state.loadDead(dead))
            kept = await store.listKept()
            if not self.running:
                raise CancelledError("stopped while the kept results were loading")
            if kept:
                self._log.info("Loaded the index of {count} kept results",
                               count=self.state.loadKept(kept))
        listeners = [(d, False) for d in self.endpoints] + [(d, True) for d in self.tlsEndpoints]
        for description, secure in listeners:
            endpoint = self._endpoint(description)
            if secure:
                assert self.tls is not None
                endpoint = self.tls.wrapEndpoint(endpoint, self._reactor)
            port = await endpoint.listen(self.factory)
            self.ports.append(port)  # a stop that came meanwhile closes it
            if not self.running:
                raise CancelledError("stopped while starting to listen")
            if secure:
                assert self.tls is not None
                self._log.info("Gearman job server listening with TLS on {address} ({clients})",
                               address=_describeAddress(port, str(description)),
                               clients="client certificates required"
                               if self.tls.requiresClientCertificate
                               else "no client certificate asked")
            else:
                self._log.info("Gearman job server listening on {address}",
                               address=_describeAddress(port, str(description)))
        webListeners = ([(d, False) for d in self.httpEndpoints]
                        + [(d, True) for d in self.httpsEndpoints])
        for description, secure in webListeners:
            endpoint = self._endpoint(description)
            if secure:
                assert self.tls is not None
                endpoint = self.tls.wrapEndpoint(endpoint, self._reactor)
            port = await endpoint.listen(self.httpFactory)
            self.ports.append(port)
            if not self.running:
                raise CancelledError("stopped while starting to listen")
            self._log.info("HTTP{s} (metrics, API, dashboard) listening on {address}",
                           s="S" if secure else "",
                           address=_describeAddress(port, str(description)))

    def _endpoint(self, description: Any) -> Any:
        if isinstance(description, str):
            return serverFromString(self._reactor, description)
        return description

    def _startSucceeded(self, _: object) -> None:
        self.started.callback(None)

    def _startFailed(self, failure: Failure) -> None:
        if failure.check(CancelledError):
            self._log.info("The Gearman job server was stopped before it listened")
        elif failure.check(CannotListenError, StoreError):
            # The environment, not a bug: the message says it all.
            self._log.error("The Gearman job server could not start: {error}",
                            error=failure.getErrorMessage())
        else:
            self._log.failure("The Gearman job server could not start", failure)
        self.started.errback(failure)

    def stopService(self) -> Deferred[None]:
        """
        Stop in order (see the class docstring); calling it again while a
        stop is under way waits for the same stop.

        @return: fires once the store is closed.
        """
        Service.stopService(self)
        waiter: Deferred[None] = Deferred()
        if self._stopOutcome is not None:
            _fire(waiter, self._stopOutcome[0])
            return waiter
        self._stopWaiters.append(waiter)
        if len(self._stopWaiters) == 1:
            Deferred.fromCoroutine(self._stop()).addBoth(self._stopFinished)
        return waiter

    def _stopFinished(self, outcome: Any) -> None:
        if isinstance(outcome, Failure):
            self._log.failure("Stopping the Gearman job server failed", outcome)
        self._stopOutcome = (outcome,)
        waiters, self._stopWaiters = self._stopWaiters, []
        for waiter in waiters:
            _fire(waiter, outcome)

    async def _stop(self) -> None:
        deadline = self._reactor.seconds() + self.shutdownGrace
        if self._startSettled is not None:
            # A start under way sees the stop at its next step and gives up.
            await self._startSettled
        ports, self.ports = self.ports, []
        await DeferredList([maybeDeferred(port.stopListening) for port in ports])
        self.state.stopAccepting()
        await self._drain(deadline)
        grace = max(1.0, deadline - self._reactor.seconds())
        closing = [self.factory.disconnectAll(grace=grace)]
        stopServing = getattr(self.httpFactory, "stopServing", None)
        if stopServing is not None:
            # HTTP connections are not the factory's: waiting requests and
            # event streams are answered and closed here.
            closing.append(stopServing(grace))
        await gatherResults(closing, consumeErrors=True)
        self.state.cancelTimers()
        store = self.state.store
        if store is not None:
            await store.close()

    def _drain(self, deadline: float) -> Deferred[None]:
        """Fires once no worker holds a job, or at C{deadline}."""
        done = self.state.whenNoneRunning()
        if not done.called:
            done.addTimeout(max(0.0, deadline - self._reactor.seconds()), self._reactor)
            done.addErrback(lambda failure: failure.trap(TimeoutError))
        return done

    def reload(self) -> Optional[Deferred[None]]:
        """
        Read the TLS certificates again (new TLS connections use them, open
        ones keep theirs) and reload the factory's access list, if it has
        one (C{factory.access.reload()}); C{twistd gearman} calls it on SIGHUP.

        Certificates that cannot be read or used are logged, naming the file,
        and the old ones stay in use.

        @return: C{None}, or a Deferred that fires once the access list is
            reloaded (it never fails: a failure is logged).
        """
        if self.tls is not None:
            from txgear._tls import TLSFileError

            try:
                self.tls.reload()
            except TLSFileError as e:
                self._log.error("Reloading the TLS certificates failed, the old ones stay "
                                "in use: {path}: {problem}", path=e.path, problem=e.problem)
            else:
                self._log.info("Reloaded the TLS certificates from {path}",
                               path=self.tls.certificatePath)
        access = getattr(self.factory, "access", None)
        if access is None:
            return None
        d: Deferred[None] = maybeDeferred(access.reload)
        d.addErrback(self._accessReloadFailed)  # success is logged by the access list
        return d

    def _accessReloadFailed(self, failure: Failure) -> None:
        from txgear.server._access import AccessFileError

        if failure.check(AccessFileError):
            # A mistake in the file, not a bug: the message names file and line.
            self._log.error("Reloading the access list failed, the rules in force stay: "
                            "{problem}", problem=failure.getErrorMessage())
        else:
            self._log.failure("Reloading the access list failed", failure)

    def shutdown(self, graceful: bool = False) -> Deferred[None]:
        """
        Stop the process: at once (L{stopService}'s order, with its grace),
        or gracefully (stop listening, refuse new jobs, let the queued and
        running ones finish however long they take, then stop).
        """
        if self._stopping is not None:
            return self._stopping
        self._stopping = Deferred.fromCoroutine(self._shutdown(graceful))
        return self._stopping

    async def _shutdown(self, graceful: bool) -> None:
        if graceful:
            self._log.info("Graceful stop: no longer listening or accepting new jobs")
            ports, self.ports = self.ports, []
            await DeferredList([maybeDeferred(port.stopListening) for port in ports])
            self.state.stopAccepting()
            await self.state.whenIdle()
            self._log.info("Graceful stop: all jobs done")
        await self.stopService()
        if self._reactor.running:
            self._reactor.stop()


def _fire(waiter: Deferred[None], outcome: Any) -> None:
    if isinstance(outcome, Failure):
        waiter.errback(outcome)
    else:
        waiter.callback(None)


def _describeAddress(port: Any, description: str) -> str:
    try:
        host = port.getHost()
    except Exception:
        return description
    if hasattr(host, "port"):
        return f"{host.host}:{host.port}"
    name = getattr(host, "name", None)
    if isinstance(name, bytes):  # a UNIX socket's path
        return "unix:" + os.fsdecode(name)
    return str(name) if name is not None else description


__all__ = ["DEFAULT_SHUTDOWN_GRACE", "GearmanServerService"]

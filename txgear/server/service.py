# -*- test-case-name: tests.test_server_service -*-
"""
L{GearmanServerService}: the job server as an C{IService}, listening on any
number of Twisted server endpoints, with an optional persistent store.
"""
from __future__ import annotations

import os
from typing import Any, List, Optional, Sequence

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError
from twisted.python.failure import Failure

from txgear._log import logger
from txgear.errors import StoreError
from txgear.server._protocol import GearmanServerFactory
from txgear.server._state import JobServerState


class GearmanServerService(Service):
    """
    A Gearman job server.

    On start it opens the store (if any), loads the background jobs it holds,
    and only then listens, so no client sees a half-loaded queue. On stop it
    stops listening, closes every connection, and closes the store (flushing
    pending writes).

    @param endpoints: server endpoint descriptions (C{"tcp:4730"},
        C{"unix:/run/gearman.sock"}, C{"ssl:4730:privateKey=key.pem"}, ...).
    @param state: the L{JobServerState}; its C{store} is opened on start.
    @param factory: the L{GearmanServerFactory}; made from C{state} if omitted.
    @param reactor: the reactor to listen with; the global one by default.
    @ivar ports: the listening ports, once started.
    @ivar started: fires when the service listens (or fails if it cannot start).
    """

    _log = logger()

    def __init__(self, endpoints: Sequence[str], state: JobServerState,
                 factory: Optional[GearmanServerFactory] = None, reactor: Any = None) -> None:
        if reactor is None:
            from twisted.internet import reactor  # type: ignore[no-redef]
        self._reactor = reactor
        self.endpoints = list(endpoints)
        self.state = state
        self.factory = factory if factory is not None else GearmanServerFactory(state)
        self.factory._shutdown = self.shutdown
        self.ports: List[Any] = []
        self.started: Deferred[None] = Deferred()
        self._stopping: Optional[Deferred[None]] = None

    def startService(self) -> None:
        Service.startService(self)
        d = self._start()
        d.addCallbacks(self.started.callback, self._startFailed)

    def _start(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._startAsync())

    async def _startAsync(self) -> None:
        store = self.state.store
        if store is not None:
            stored = await store.open()
            count = self.state.loadStored(stored)
            self._log.info("Loaded {count} background jobs from {store}", count=count,
                           store=getattr(store, "description", store))
        for description in self.endpoints:
            endpoint = serverFromString(self._reactor, description)
            port = await endpoint.listen(self.factory)
            self.ports.append(port)
            self._log.info("Gearman job server listening on {address}",
                           address=_describeAddress(port, description))

    def _startFailed(self, failure: Failure) -> None:
        if failure.check(CannotListenError, StoreError):
            # The environment, not a bug: the message says it all.
            self._log.error("The Gearman job server could not start: {error}",
                            error=failure.getErrorMessage())
        else:
            self._log.failure("The Gearman job server could not start", failure)
        self.started.errback(failure)

    def stopService(self) -> Deferred[None]:
        Service.stopService(self)
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        ports, self.ports = self.ports, []
        await DeferredList([maybeDeferred(port.stopListening) for port in ports])
        self.state.cancelTimers()
        await self.factory.disconnectAll()
        store = self.state.store
        if store is not None:
            await store.close()

    def shutdown(self, graceful: bool = False) -> Deferred[None]:
        """
        Stop the process: at once, or gracefully (stop listening, refuse new
        jobs, let the queued and running ones finish, then stop).
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
            await self.factory.disconnectAll()
        if self._reactor.running:
            self._reactor.stop()


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


__all__ = ["GearmanServerService"]

"""
Tests for L{GearmanServerService}'s start and stop order (issue 8, items 18
and 19), with a store whose C{open()} the test fires, endpoints whose
C{listen()} it controls, and a memory reactor.
"""
from __future__ import annotations

from typing import Any, List

import pytest
import pytest_twisted
from twisted.internet.address import IPv4Address
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.internet.testing import MemoryReactorClock, StringTransport
from zope.interface import implementer

from txgear._packet import PacketType, encodeRequest
from txgear.errors import StoreError
from txgear.jobs import StoredJob
from txgear.server import GearmanServerService, JobServerState

P = PacketType


class Port:
    """A listening port that knows whether it still listens."""

    def __init__(self) -> None:
        self.listening = True

    def stopListening(self) -> None:
        self.listening = False

    def getHost(self) -> IPv4Address:
        return IPv4Address("TCP", "127.0.0.1", 4730)


@implementer(IStreamServerEndpoint)
class Endpoint:
    """An endpoint whose C{listen} fires at once, or when the test says."""

    def __init__(self, immediate: bool = True) -> None:
        self.immediate = immediate
        self.ports: List[Port] = []
        self.pending: List[Deferred] = []
        self.factory: Any = None

    def listen(self, factory: Any) -> Deferred:
        self.factory = factory
        port = Port()
        self.ports.append(port)
        if self.immediate:
            return succeed(port)
        d: Deferred = Deferred()
        self.pending.append(d)
        return d

    def finish(self) -> None:
        self.pending.pop(0).callback(self.ports[-1])

    def listening(self) -> bool:
        return any(port.listening for port in self.ports)


class Store:
    """A store whose C{open()} the test fires; records the order of calls."""

    description = "test store"

    def __init__(self, events: List[str]) -> None:
        self.events = events
        self.opening: Deferred = Deferred()
        self.closed = False

    def open(self) -> Deferred:
        self.events.append("open")
        return self.opening

    def addMany(self, jobs: Any) -> Deferred:
        return succeed(None)

    def remove(self, job: Any) -> Deferred:
        self.events.append("remove %s" % job.unique.decode())
        return succeed(None)

    def listDead(self, function: Any = None, limit: Any = None) -> Deferred:
        return succeed([])

    def listKept(self, limit: Any = None) -> Deferred:
        return succeed([])

    def close(self) -> Deferred:
        self.events.append("close")
        self.closed = True
        return succeed(None)


def makeService(events: List[str], endpoint: Endpoint) -> Any:
    reactor = MemoryReactorClock()
    store = Store(events)
    state = JobServerState(clock=reactor, handlePrefix=b"H:t", store=store)
    service = GearmanServerService([endpoint], state, reactor=reactor, shutdownGrace=5.0)
    return service, store, reactor


def outcome(d: Deferred) -> List[Any]:
    results: List[Any] = []
    d.addBoth(results.append)
    return results


# -- item 19: a stop during the start -------------------------------------


def test_stopWhileTheStoreOpensEndsNotListening():
    events: List[str] = []
    endpoint = Endpoint()
    service, store, reactor = makeService(events, endpoint)
    service.startService()
    started = outcome(service.started)
    stopped = outcome(service.stopService())
    assert stopped == [] and not store.closed  # waits for the open to end
    store.opening.callback([StoredJob(1, b"f", b"u", b"x", 1)])
    assert stopped == [None]
    assert endpoint.ports == [] and not endpoint.listening()
    assert store.closed and events == ["open", "close"]
    assert started[0].check(CancelledError)


def test_stopWhileTheStoreFailsToOpen():
    events: List[str] = []
    endpoint = Endpoint()
    service, store, reactor = makeService(events, endpoint)
    service.startService()
    started = outcome(service.started)
    stopped = outcome(service.stopService())
    store.opening.errback(StoreError("cannot connect"))
    assert stopped == [None] and endpoint.ports == []
    assert started[0].check(StoreError)


def test_stopWhileListeningIsUnderWay():
    events: List[str] = []
    endpoint = Endpoint(immediate=False)
    service, store, reactor = makeService(events, endpoint)
    service.startService()
    started = outcome(service.started)
    store.opening.callback([])
    stopped = outcome(service.stopService())
    assert stopped == [] and endpoint.listening()  # the port being opened
    endpoint.finish()
    assert stopped == [None] and not endpoint.listening() and service.ports == []
    assert store.closed and started[0].check(CancelledError)


def test_stopBeforeStart():
    events: List[str] = []
    endpoint = Endpoint()
    service, store, reactor = makeService(events, endpoint)
    assert outcome(service.stopService()) == [None]
    assert endpoint.ports == []


def test_stopAfterStartAndTwiceAtOnce():
    events: List[str] = []
    endpoint = Endpoint()
    service, store, reactor = makeService(events, endpoint)
    service.startService()
    store.opening.callback([])
    assert outcome(service.started) == [None] and endpoint.listening()
    first, second = outcome(service.stopService()), outcome(service.stopService())
    assert first == second == [None]
    assert not endpoint.listening() and events == ["open", "close"]
    assert outcome(service.stopService()) == [None]


# -- item 18: the stop's order -------------------------------------------------


def connect(service: Any) -> Any:
    protocol = service.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5000))
    transport = StringTransport()
    protocol.makeConnection(transport)
    return protocol, transport


def test_aJobCompletedDuringTheStopIsRemovedBeforeTheStoreCloses():
    events: List[str] = []
    endpoint = Endpoint()
    service, store, reactor = makeService(events, endpoint)
    service.startService()
    store.opening.callback([])
    client, _ = connect(service)
    worker, workerTransport = connect(service)
    client.dataReceived(encodeRequest(P.SUBMIT_JOB_BG, b"f", b"job", b"x"))
    reactor.advance(0)  # stored
    worker.dataReceived(encodeRequest(P.CAN_DO, b"f") + encodeRequest(P.GRAB_JOB))
    stopped = outcome(service.stopService())
    assert not endpoint.listening()
    reactor.advance(1)
    # The worker still holds the job: its connection stays, the store stays open.
    assert stopped == [] and not store.closed and not workerTransport.disconnecting
    handle = service.state.jobs and next(iter(service.state.jobs))
    worker.dataReceived(encodeRequest(P.WORK_COMPLETE, handle, b"done"))
    reactor.advance(0.1)
    assert workerTransport.disconnecting
    for protocol in (client, worker):
        protocol.connectionLost(None)
    reactor.advance(0)
    assert stopped == [None]
    assert events == ["open", "remove job", "close"]


def test_theStopWaitsForHeldJobsOnlyForTheGrace():
    events: List[str] = []
    endpoint = Endpoint()
    service, store, reactor = makeService(events, endpoint)
    service.startService()
    store.opening.callback([])
    client, _ = connect(service)
    worker, workerTransport = connect(service)
    client.dataReceived(encodeRequest(P.SUBMIT_JOB_BG, b"f", b"job", b"x"))
    reactor.advance(0)
    worker.dataReceived(encodeRequest(P.CAN_DO, b"f") + encodeRequest(P.GRAB_JOB))
    stopped = outcome(service.stopService())
    reactor.advance(4.9)
    assert not workerTransport.disconnecting
    reactor.advance(0.2)
    assert workerTransport.disconnecting and not store.closed
    for protocol in (client, worker):
        protocol.connectionLost(None)
    reactor.advance(0)
    assert stopped == [None] and events == ["open", "close"]
    assert reactor.getDelayedCalls() == []


def test_storeLeavesTheOrderToItsOwner(tmp_path):
    """
    The SQLite store no longer closes itself when the reactor begins to stop
    (concurrently with the service); only a thread left running is stopped
    once the reactor has stopped.
    """
    from txgear.store import SQLiteJobStore

    reactor = MemoryReactorClock()
    store = SQLiteJobStore(str(tmp_path / "q.sqlite"), reactor=reactor)
    store.open()
    try:
        assert reactor.triggers.get("before", {}).get("shutdown", []) == []
        assert len(reactor.triggers["during"]["shutdown"]) == 1
    finally:
        trigger, args, kwargs = reactor.triggers["during"]["shutdown"][0]
        trigger(*args, **kwargs)
        assert store._pool is None


@pytest_twisted.ensureDeferred
async def test_stopWhileTheStoreOpensOnRealLoopback() -> None:
    """The same race on the real reactor and a real TCP port: nothing listens after."""
    import socket

    from twisted.internet import reactor

    from tests._peers import freePort

    events: List[str] = []
    store = Store(events)
    port = freePort()
    service = GearmanServerService([f"tcp:{port}:interface=127.0.0.1"],
                                   JobServerState(clock=reactor, store=store), reactor=reactor)
    service.startService()
    started = outcome(service.started)
    stopping = service.stopService()
    store.opening.callback([])
    await stopping
    assert started[0].check(CancelledError) and events == ["open", "close"]
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()

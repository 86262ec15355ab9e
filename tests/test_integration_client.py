"""
Loopback integration tests: txgear's client and worker against a real job
server (gearmand 1.1.x, and txgear's own server in-process).
"""
from __future__ import annotations

import time
from typing import Any, Callable, List

import pytest
import pytest_twisted
from twisted.internet.defer import CancelledError, Deferred, TimeoutError

from tests._peers import gearmandProcess, requirePeer
from txgear.client import BackgroundJob, GearmanClient
from txgear.errors import JobException, JobFailed
from txgear.worker import GearmanWorker

#: Bound on any one wait in these tests.
WAIT = 15.0


def _ourServerAvailable() -> bool:
    try:
        import txgear.server  # noqa: F401
    except ImportError:
        return False
    return True


SERVER_KINDS = ["gearmand", "txgear"]


class InProcessServer:
    """txgear's job server listening on a free loopback port in this process."""

    def __init__(self) -> None:
        from twisted.internet import reactor
        from txgear.server import GearmanServerFactory, JobServerState

        self.factory = GearmanServerFactory(JobServerState(clock=reactor))
        self._port = reactor.listenTCP(0, self.factory, interface="127.0.0.1")
        self.port = self._port.getHost().port
        self.name = "txgear"

    def stop(self) -> None:
        pytest_twisted.blockon(self._port.stopListening())


def startServer(kind: str) -> Any:
    """A running server of the given kind, with C{.port} and C{.stop()}."""
    if kind == "gearmand":
        return gearmandProcess().start()
    requirePeer(_ourServerAvailable(), "txgear.server")
    return InProcessServer()


@pytest.fixture(params=SERVER_KINDS)
def server(request):
    srv = startServer(request.param)
    yield srv
    srv.stop()


def within(d: Deferred, seconds: float = WAIT) -> Deferred:
    """C{d}, failing with C{TimeoutError} after C{seconds}: no test hangs."""
    from twisted.internet import reactor

    return d.addTimeout(seconds, reactor)


async def started(*services: Any) -> None:
    for service in services:
        await within(service.connect())


async def closeAll(*services: Any) -> None:
    for service in services:
        await within(service.close())


def address(srv: Any) -> str:
    return f"127.0.0.1:{srv.port}"


def reverseWorker(addresses: List[str], concurrency: int = 4, **kwargs: Any) -> GearmanWorker:
    worker = GearmanWorker(addresses, concurrency=concurrency, **kwargs)

    def reverse(job):
        return job.payload[::-1]

    worker.register("reverse", reverse)
    return worker


async def waitFor(predicate: Callable[[], Any], poll: Callable[[], Deferred], attempts: int = 200) -> None:
    """Repeat a round trip to the server until C{predicate()} holds."""
    for _ in range(attempts):
        if predicate():
            return
        await within(poll())
    raise AssertionError("condition never became true")


@pytest_twisted.ensureDeferred
async def test_foregroundRoundTrip(server):
    worker = GearmanWorker([address(server)])
    client = GearmanClient([address(server)])

    async def chatty(job):
        job.sendStatus(1, 3)
        job.sendData(b"part\0one")
        job.sendWarning("careful")
        job.sendStatus(3, 3)
        return b"unique=" + job.unique + b" payload=" + job.payload

    worker.register("chatty", chatty)
    events: List[Any] = []
    await started(worker, client)
    try:
        result = await within(client.submit(
            "chatty", b"x\0y", unique="u-1",
            onStatus=lambda n, d: events.append(("status", n, d)),
            onData=lambda d: events.append(("data", d)),
            onWarning=lambda d: events.append(("warning", d))))
        assert result == b"unique=u-1 payload=x\0y"
        assert events == [("status", 1, 3), ("data", b"part\0one"), ("warning", b"careful"),
                          ("status", 3, 3)]
        assert await within(client.echo(b"ping\0pong")) == b"ping\0pong"
    finally:
        await closeAll(client, worker)


@pytest_twisted.ensureDeferred
async def test_failuresAreTyped(server):
    worker = GearmanWorker([address(server)])

    def fails(job):
        raise JobFailed("no")

    def raises(job):
        raise ValueError("boom " + job.payload.decode())

    worker.register("fails", fails)
    worker.register("raises", raises)
    client = GearmanClient([address(server)])
    await started(worker, client)
    try:
        with pytest.raises(JobFailed):
            await within(client.submit("fails", b""))
        with pytest.raises(JobException) as info:
            await within(client.submit("raises", b"now"))
        assert info.value.data == b"ValueError: boom now"
    finally:
        await closeAll(client, worker)


@pytest_twisted.ensureDeferred
async def test_pipelinedMany(server):
    worker = reverseWorker([address(server)], concurrency=16)
    client = GearmanClient([address(server)])
    await started(worker, client)
    try:
        payloads = [b"job-%05d" % i for i in range(500)]
        from twisted.internet.defer import gatherResults

        results = await within(gatherResults([client.submit("reverse", p) for p in payloads]), 60)
        assert results == [p[::-1] for p in payloads]
    finally:
        await closeAll(client, worker)


@pytest_twisted.ensureDeferred
async def test_backgroundStatus(server):
    gate: Deferred = Deferred()
    startedJobs: List[Any] = []
    worker = GearmanWorker([address(server)])

    def slow(job):
        job.sendStatus(2, 7)
        startedJobs.append(job)
        return gate

    worker.register("slow", slow)
    client = GearmanClient([address(server)])
    await started(client)
    try:
        job = await within(client.submitBackground("slow", b"p", unique="bg-1"))
        assert isinstance(job, BackgroundJob) and job.server == address(server)
        status = await within(client.getStatus(job))
        assert (status.known, status.running) == (True, False)
        byUnique = await within(client.getStatusUnique("bg-1"))
        assert byUnique.known and byUnique.waiting == 0
        await started(worker)
        statuses: List[Any] = []

        async def poll():
            statuses.append(await client.getStatus(job))

        await waitFor(lambda: statuses and statuses[-1].numerator == 2,
                      lambda: Deferred.fromCoroutine(poll()))
        assert statuses[-1].running and statuses[-1].denominator == 7
        gate.callback(b"done")
        statuses.clear()
        await waitFor(lambda: statuses and not statuses[-1].known,
                      lambda: Deferred.fromCoroutine(poll()))
    finally:
        if not gate.called:
            gate.callback(b"")
        await closeAll(client, worker)


@pytest_twisted.ensureDeferred
async def test_runAtEpoch(server):
    client = GearmanClient([address(server)])
    await started(client)
    try:
        job = await within(client.submitBackground("later", b"x", when=time.time() + 3600))
        status = await within(client.getStatus(job))
        assert status.known and not status.running
    finally:
        await closeAll(client)


@pytest_twisted.ensureDeferred
async def test_coalescing(server):
    gate: Deferred = Deferred()
    runs: List[bytes] = []
    worker = GearmanWorker([address(server)], concurrency=4)

    def once(job):
        runs.append(job.handle)
        return gate

    worker.register("once", once)
    client = GearmanClient([address(server)])
    await started(client)
    try:
        d1 = client.submit("once", b"a", unique="same")
        d2 = client.submit("once", b"a", unique="same")
        await within(client.echo(b"sync"))
        await started(worker)
        await waitFor(lambda: runs, lambda: client.echo(b"poll"))
        gate.callback(b"shared")
        assert await within(d1) == b"shared"
        assert await within(d2) == b"shared"
        assert len(runs) == 1
    finally:
        if not gate.called:
            gate.callback(b"")
        await closeAll(client, worker)


@pytest_twisted.ensureDeferred
async def test_cancelAndTimeoutLeaveConnectionUsable(server):
    worker = reverseWorker([address(server)])
    client = GearmanClient([address(server)])
    await started(client, worker)
    try:
        d = client.submit("nobody-does-this", b"x")
        await within(client.echo(b"created"))
        d.cancel()
        with pytest.raises(CancelledError):
            await d
        with pytest.raises(TimeoutError) as raised:
            await client.submit("nobody-does-this", b"y", timeout=0.3)
        # Issue 9 item 9: the server's status says why.
        assert str(raised.value).startswith("no worker is registered for 'nobody-does-this' on ")
        assert await within(client.submit("reverse", b"abc")) == b"cba"
        proto = client.pool.servers[0].protocol
        assert proto.pendingCount() == 0
    finally:
        await closeAll(client, worker)


@pytest_twisted.ensureDeferred
async def test_gracefulStopDeliversAResultSentFromATimer(server):
    # The job ends in a timer callback, which also ends the graceful stop and
    # closes the connection: the WORK_COMPLETE must still go out first.
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    worker = GearmanWorker([address(server)])
    client = GearmanClient([address(server)])
    started_ = Deferred()

    def slow(job):
        started_.callback(None)
        return deferLater(reactor, 0.2, lambda: b"finished")

    worker.register("slow-stop", slow)
    await started(worker, client)
    try:
        result = client.submit("slow-stop", b"x")
        await within(started_)
        stopping = worker.stopService()
        assert await within(result) == b"finished"
        await within(stopping)
    finally:
        await closeAll(client, worker)


@pytest.mark.parametrize("form", ["127.0.0.1:{port}", "tcp:host=127.0.0.1:port={port}"])
@pytest.mark.parametrize("kind", [GearmanClient, GearmanWorker])
@pytest_twisted.ensureDeferred
async def test_startAndStopAtAnyMomentOnTheRealReactor(kind, form):
    # Issue 9 item 1 on real sockets, with each server on a ClientService:
    # close() right after connect(), inside the protocol's connectionMade
    # (connected, but the endpoint has not said so: NotConnectingError and
    # NoTransition before), inside connect()'s callback, and after it; all
    # silent.
    from twisted.logger import LogLevel, capturedLogs

    from txgear.errors import NoServers

    srv = InProcessServer()

    def make() -> Any:
        service = kind([form.format(port=srv.port)])
        if kind is GearmanWorker:
            service.register("f", lambda job: b"")
        return service

    def closeInsideConnectionMade(service: Any) -> Deferred:
        factory = service.pool.servers[0]._factory
        real = factory.buildProtocol
        closing: Deferred = Deferred()
        closed: List[bool] = []

        def build(addr: Any) -> Any:
            proto = real(addr)
            made = proto.connectionMade

            def connectionMade() -> None:
                made()
                if not closed:
                    closed.append(True)
                    service.close().chainDeferred(closing)
            proto.connectionMade = connectionMade
            return proto
        factory.buildProtocol = build
        return closing

    try:
        with capturedLogs() as events:
            for moment in ("whileConnecting", "insideConnectionMade", "insideConnectCallback",
                           "afterConnect"):
                service = make()
                closing: List[Any] = []
                if moment == "insideConnectionMade":
                    # Waited for first (it fires once that close() is done):
                    # connect() fails inside that close().
                    closedInside = closeInsideConnectionMade(service)
                    connected = service.connect()
                    closing.append(closedInside)
                else:
                    connected = service.connect()
                if moment == "whileConnecting":
                    closing.append(service.close())
                elif moment == "insideConnectCallback":
                    connected.addCallback(lambda s: closing.append(s.close()))
                outcome = await within(connected.addErrback(lambda f: f.trap(NoServers)))
                if moment == "afterConnect":
                    assert outcome is service
                    closing.append(service.close())
                await within(closing[0])
                assert service.connectedServers() == []
                assert not service.pool.servers[0].service.running
        noisy = [e for e in events if e["log_level"] > LogLevel.info]
        assert noisy == []
    finally:
        await srv._port.stopListening()

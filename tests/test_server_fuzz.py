"""
Property tests of the job server: any mix of packets, valid or not, from
several connections, that come and go, never raises out of the protocol,
never breaks the state's bookkeeping, and leaves the server able to run a
job for a new client.
"""
from __future__ import annotations

import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from txgear._packet import ARGUMENT_COUNTS, MAX_TYPE, PacketDecoder, PacketType, encodeRequest
from txgear.server import GearmanServerFactory, JobServerState
from txgear.server._state import DONE, PENDING, QUEUED, RUNNING, SCHEDULED

P = PacketType
NAMES = [b"f", b"g", b""]
UNIQUES = [b"", b"u1", b"u2", b"-"]


def _argument(kind: int, index: int, count: int) -> st.SearchStrategy:
    if index == 0 and kind in (P.CAN_DO, P.CANT_DO, P.CAN_DO_TIMEOUT, P.SUBMIT_JOB, P.SUBMIT_JOB_BG,
                               P.SUBMIT_JOB_HIGH, P.SUBMIT_JOB_HIGH_BG, P.SUBMIT_JOB_LOW,
                               P.SUBMIT_JOB_LOW_BG, P.SUBMIT_JOB_EPOCH, P.SUBMIT_JOB_SCHED,
                               P.SUBMIT_REDUCE_JOB, P.SUBMIT_REDUCE_JOB_BACKGROUND):
        return st.sampled_from(NAMES)
    if index == 1 and kind in (P.SUBMIT_JOB, P.SUBMIT_JOB_BG, P.SUBMIT_JOB_HIGH,
                               P.SUBMIT_JOB_HIGH_BG, P.SUBMIT_JOB_LOW, P.SUBMIT_JOB_LOW_BG,
                               P.SUBMIT_JOB_EPOCH, P.SUBMIT_JOB_SCHED):
        return st.sampled_from(UNIQUES)
    if index == 0 and kind in (P.WORK_STATUS, P.WORK_COMPLETE, P.WORK_FAIL, P.WORK_EXCEPTION,
                               P.WORK_DATA, P.WORK_WARNING, P.GET_STATUS):
        return st.sampled_from([b"H:t:1", b"H:t:2", b"H:t:3", b"H:nope"])
    if index == 1 and kind == P.CAN_DO_TIMEOUT:
        return st.sampled_from([b"0", b"1000", b"x", b"99999999999999999999999999"])
    if kind == P.SUBMIT_JOB_EPOCH and index == 2:
        return st.sampled_from([b"0", b"1000005", b"junk"])
    return st.binary(max_size=8)


@st.composite
def packet(draw) -> bytes:
    choice = draw(st.integers(0, 19))
    if choice == 0:  # garbage, or an admin line
        return draw(st.sampled_from([b"status\n", b"workers\n", b"show jobs\n", b"cancel job H:t:1\n",
                                     b"maxqueue f 1\n", b"drop function g\n", b"create function g\n", b"\0XYZ" + bytes(8),
                                     b"\0REQ" + struct.pack(">II", 7, 3) + b"f",
                                     encodeRequest(P.SUBMIT_JOB, b"f")]))
    kind = draw(st.integers(1, MAX_TYPE))
    count = ARGUMENT_COUNTS[kind]
    args = [draw(_argument(kind, i, count)) for i in range(count)]
    return encodeRequest(kind, *args) if args else encodeRequest(kind)


def _checkBookkeeping(state: JobServerState) -> None:
    for function in state.functions.values():
        entries = [job for queue in function.queues or () for job in queue]
        live = [job for job in entries if job.state == QUEUED and job.worker is None]
        assert function.queued == len(live), function.name
        assert function.dead == len(entries) - len(live), function.name
        assert function.pending == sum(1 for j in state.jobs.values()
                                       if j.func is function and j.state == PENDING)
        # An unused function is forgotten.
        assert function.workers or function.total() or function.kept, function.name
        assert function.workers == sum(1 for s in state.sessions.values() if function in s.functions)
        assert list(function.priorityCounts) == [sum(1 for j in live if j.priority == p) for p in range(3)]
        assert function.running == sum(1 for j in state.jobs.values()
                                       if j.func is function and j.state == RUNNING)
        assert function.scheduled == sum(1 for j in state.jobs.values()
                                         if j.func is function and j.state == SCHEDULED)
        assert function.workers >= 0
    assert state.runningCount == sum(1 for j in state.jobs.values() if j.state == RUNNING)
    for job in state.jobs.values():
        assert job.state != DONE
        assert job.handle == b"H:t:%d" % job.key
        assert state.functions.get(job.function) is job.func
        if job.state == RUNNING:
            assert job.worker is not None and job.worker.held.get(job.handle) is job


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, 3), packet(), st.booleans(), st.integers(0, 2)),
                max_size=40))
def test_anyPacketsFromAnyConnections(steps):
    _run(steps, store=None)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, 3), packet(), st.booleans(), st.integers(0, 2)),
                max_size=40))
def test_anyPacketsWithAStore(steps):
    """The same with a store: background jobs go through PENDING."""
    from txgear.store import MemoryJobStore

    store = MemoryJobStore()
    _run(steps, store=store)
    assert sorted(store.jobs) == sorted(job.key for job in _lastState[0].jobs.values()
                                        if job.storeState == 2)


_lastState: list = [None]


def _run(steps, store):
    clock = Clock()
    clock.advance(1_000_000)
    factory = GearmanServerFactory(JobServerState(clock=clock, handlePrefix=b"H:t", store=store))
    _lastState[0] = factory.state
    connections = {}

    def connection(n):
        if n not in connections:
            transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 1000 + n))
            protocol = factory.buildProtocol(None)
            protocol.makeConnection(transport)
            connections[n] = (protocol, transport)
        return connections[n]

    for n, data, close, advance in steps:
        protocol, transport = connection(n)
        protocol.dataReceived(data)
        factory.flush()
        if close or transport.disconnecting:
            protocol.connectionLost(None)
            del connections[n]
        clock.advance(advance)
        _checkBookkeeping(factory.state)

    # A new client and worker still get a job done.
    client, ctransport = connection(10)
    worker, wtransport = connection(11)
    worker.dataReceived(encodeRequest(P.CAN_DO, b"fresh"))
    client.dataReceived(encodeRequest(P.SUBMIT_JOB, b"fresh", b"", b"ping"))
    worker.dataReceived(encodeRequest(P.GRAB_JOB_UNIQ))
    factory.flush()
    (kind, body), = PacketDecoder(expectRequests=False).feed(wtransport.value())
    assert kind == P.JOB_ASSIGN_UNIQ
    handle = body.split(b"\0", 1)[0]
    worker.dataReceived(encodeRequest(P.WORK_COMPLETE, handle, b"pong"))
    factory.flush()
    replies = PacketDecoder(expectRequests=False).feed(ctransport.value())
    assert replies[-1] == (P.WORK_COMPLETE, handle + b"\0pong")
    _checkBookkeeping(factory.state)

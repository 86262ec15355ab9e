"""Tests for the job server's connections, txgear.server._protocol, over StringTransport."""
from __future__ import annotations

import os
import platform
import struct

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel, capturedLogs

from txgear._packet import PacketDecoder, PacketType, encodeRequest, encodeResponse, splitArguments
from txgear.server import GearmanServerFactory, JobServerState

P = PacketType


class Conn:
    """One fake connection to a server factory."""

    def __init__(self, factory, port=5000):
        self.factory = factory
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", port))
        self.protocol = factory.buildProtocol(self.transport.getPeer())
        self.protocol.makeConnection(self.transport)
        self.decoder = PacketDecoder(expectRequests=False)

    def send(self, kind, *args, bytewise=False):
        self.sendBytes(encodeRequest(kind, *args), bytewise)

    def sendBytes(self, data, bytewise=False):
        if bytewise:
            for i in range(len(data)):
                self.protocol.dataReceived(data[i:i + 1])
        else:
            self.protocol.dataReceived(data)

    def packets(self):
        self.factory.flush()
        data = self.transport.value()
        self.transport.clear()
        return [(kind, splitArguments(kind, body)) for kind, body in self.decoder.feed(data)]

    def text(self):
        self.factory.flush()
        data = self.transport.value()
        self.transport.clear()
        return data

    def close(self):
        self.protocol.connectionLost(None)


@pytest.fixture
def factory():
    return GearmanServerFactory(JobServerState(clock=Clock(), handlePrefix=b"H:t"))


def test_roundTripByteByByte(factory):
    client, worker = Conn(factory), Conn(factory, 5001)
    worker.send(P.CAN_DO, b"rev", bytewise=True)
    worker.send(P.PRE_SLEEP, bytewise=True)
    client.send(P.SUBMIT_JOB, b"rev", b"", b"he\0llo", bytewise=True)
    assert client.packets() == [(P.JOB_CREATED, [b"H:t:1"])]
    assert worker.packets() == [(P.NOOP, [])]
    worker.send(P.GRAB_JOB_UNIQ, bytewise=True)
    assert worker.packets() == [(P.JOB_ASSIGN_UNIQ, [b"H:t:1", b"rev", b"", b"he\0llo"])]
    for kind, args in [(P.WORK_STATUS, [b"H:t:1", b"1", b"2"]), (P.WORK_DATA, [b"H:t:1", b"d"]),
                       (P.WORK_WARNING, [b"H:t:1", b"w"]), (P.WORK_COMPLETE, [b"H:t:1", b"ol\0leh"])]:
        worker.send(kind, *args, bytewise=True)
        assert client.packets() == [(kind, args)]


def test_textAndBinaryOnOneConnection(factory):
    conn = Conn(factory)
    conn.send(P.ECHO_REQ, b"a\0b")
    assert conn.packets() == [(P.ECHO_RES, [b"a\0b"])]
    conn.sendBytes(b"version\r\n")
    assert conn.text().startswith(b"OK ")
    conn.send(P.ECHO_REQ, b"again")
    assert conn.packets() == [(P.ECHO_RES, [b"again"])]


def test_adminStatusAndWorkers(factory):
    worker, client, admin = Conn(factory, 1), Conn(factory, 2), Conn(factory, 3)
    worker.send(P.SET_CLIENT_ID, b"img-worker-1")
    worker.send(P.CAN_DO, b"thumb")
    worker.send(P.CAN_DO, b"resize")
    client.send(P.SUBMIT_JOB_HIGH_BG, b"resize", b"r1", b"x")
    client.send(P.SUBMIT_JOB_BG, b"resize", b"r2", b"x")
    client.send(P.SUBMIT_JOB_LOW_BG, b"resize", b"r3", b"x")
    admin.sendBytes(b"status\n")
    assert admin.text() == b"thumb\t0\t0\t1\nresize\t3\t0\t1\n.\n"
    admin.sendBytes(b"prioritystatus\n")
    assert admin.text() == b"thumb\t0\t0\t0\t1\nresize\t1\t1\t1\t1\n.\n"
    admin.sendBytes(b"workers\n")
    assert admin.text() == (b"- 127.0.0.1 img-worker-1 : resize thumb\n"
                            b"- 127.0.0.1 - :\n- 127.0.0.1 - :\n.\n")
    admin.sendBytes(b"show jobs\n")
    assert admin.text() == b"H:t:1\t0\t0\t1\nH:t:2\t0\t0\t1\nH:t:3\t0\t0\t1\n.\n"
    admin.sendBytes(b"show unique jobs\n")
    assert admin.text() == b"r1\nr2\nr3\n.\n"


@pytest.mark.parametrize("line, reply", [
    (b"", b"ERR UNKNOWN_COMMAND Unknown+server+command\r\n"),
    (b"FOO bar", b"ERR UNKNOWN_COMMAND Unknown+server+commandFOO\r\n"),
    (b"shutdown", b"ERR UNKNOWN_COMMAND Unknown+server+commandshutdown\r\n"),
    (b"show", b"ERR UNKNOWN_COMMAND Unknown+server+commandshow\r\n"),
    (b"show foo", b"ERR UNKNOWN_SHOW_ARGUMENTS\r\n"),
    (b"show jobs extra", b"ERR UNKNOWN_SHOW_ARGUMENTS\r\n"),
    (b"cancel job", b"ERR UNKNOWN_COMMAND Unknown+server+commandcancel\r\n"),
    (b"cancel job a b", b"ERR UNKNOWN_ERROR\r\n"),
    (b"cancel job H:t:99", b"ERR UNKNOWN_JOB\r\n"),
    (b"create function", b"ERR INVALID_ARGUMENTS An+incomplete+set+of+arguments+was+sent+to+this+command+create\r\n"),
    (b"drop function", b"ERR INVALID_ARGUMENTS An+incomplete+set+of+arguments+was+sent+to+this+command+drop\r\n"),
    (b"drop function nosuch", b"ERR function not found\r\n"),
    (b"maxqueue", b"ERR INVALID_ARGUMENTS An+incomplete+set+of+arguments+was+sent+to+this+command+maxqueue\r\n"),
    (b"maxqueue f 10", b"OK\r\n"),
    (b"STATUS", b".\n"),
    (b"verbose", b"OK INFO\n"),
    (b"getpid", b"OK %d\n" % os.getpid()),
])
def test_adminReplies(factory, line, reply):
    admin = Conn(factory)
    admin.sendBytes(line + b"\r\n")
    assert admin.text() == reply
    assert not admin.transport.disconnecting


def test_createFunctionKeepsTheWholeName(factory):
    # gearmand 1.1.20 drops the last character; txgear does not.
    admin = Conn(factory)
    admin.sendBytes(b"create function foo\n")
    assert admin.text() == b"OK\r\n"
    admin.sendBytes(b"status\n")
    assert admin.text() == b"foo\t0\t0\t0\n.\n"
    admin.sendBytes(b"drop function FOO\n")
    assert admin.text() == b"OK\r\n"


def test_cancelJobByAdmin(factory):
    client, admin = Conn(factory), Conn(factory)
    client.send(P.SUBMIT_JOB, b"f", b"", b"x")
    client.packets()
    admin.sendBytes(b"cancel job H:t:1\n")
    assert admin.text() == b"OK\r\n"
    assert client.packets() == [(P.WORK_FAIL, [b"H:t:1"])]


def test_tooManyTokensClosesTheConnection(factory):
    admin = Conn(factory)
    admin.sendBytes(b"a b c d e f g h i\n")
    assert admin.transport.disconnecting and admin.text() == b""


def test_shutdownCommandWhenEnabled():
    calls = []
    factory = GearmanServerFactory(JobServerState(clock=Clock()), allowShutdown=True,
                                   shutdown=lambda graceful: calls.append(graceful))
    admin = Conn(factory)
    admin.sendBytes(b"shutdown graceful\nshutdown\nshutdown now\n")
    assert admin.text() == b"OK\nOK\nERR unknown_args Unknown+arguments+to+server+command\r\n"
    assert calls == [True, False]


@pytest.mark.parametrize("data", [
    b"\0XYZ" + struct.pack(">II", 1, 0),          # bad magic
    b"\0REQ" + struct.pack(">II", 0, 0),          # type 0
    b"\0REQ" + struct.pack(">II", 43, 0),         # unknown type
    b"\0REQ" + struct.pack(">II", 1000, 0),
    b"x" * 9000,                                  # over-long text line
])
def test_framingErrorsAbortOnlyThatConnection(factory, data):
    bad, good, worker = Conn(factory), Conn(factory), Conn(factory)
    worker.send(P.CAN_DO, b"f")
    with capturedLogs() as events:
        bad.sendBytes(data)
    assert bad.transport.disconnecting
    assert any(e["log_level"] == LogLevel.warn for e in events)
    bad.close()
    good.send(P.SUBMIT_JOB, b"f", b"", b"x")
    assert good.packets() == [(P.JOB_CREATED, [b"H:t:1"])]


def test_oversizedPacketGetsAnErrorThenClose():
    factory = GearmanServerFactory(JobServerState(clock=Clock()), maxPacket=1024)
    conn = Conn(factory)
    conn.sendBytes(b"\0REQ" + struct.pack(">II", 7, 0xFFFFFFF0))
    assert conn.packets() == [(P.ERROR, [b"ARGUMENT_TOO_LARGE", b"Packet size exceeds the server's maximum"])]
    assert conn.transport.disconnecting


@pytest.mark.parametrize("kind", [5, 6, 8, 10, 11, 17, 19, 20, 24, 27, 31, 40, 42])
def test_responseOnlyAndUnimplementedTypesGetInvalidCommand(factory, kind):
    conn = Conn(factory)
    conn.sendBytes(encodeRequest(kind))
    conn.send(P.ECHO_REQ, b"still here")
    assert conn.packets() == [(P.ERROR, [b"INVALID_COMMAND", b"Command not expected"]),
                              (P.ECHO_RES, [b"still here"])]


def test_responseMagicGetsInvalidMagic(factory):
    conn = Conn(factory)
    conn.sendBytes(encodeResponse(P.ECHO_REQ, b"x"))
    conn.send(P.ECHO_REQ, b"ok")
    assert conn.packets() == [(P.ERROR, [b"INVALID_MAGIC", b"Request magic expected"]),
                              (P.ECHO_RES, [b"ok"])]


def test_tooFewArgumentsGetsAnErrorInPlaceOfJobCreated(factory):
    conn = Conn(factory)
    conn.sendBytes(encodeRequest(P.SUBMIT_JOB, b"only-function") + encodeRequest(P.SUBMIT_JOB, b"f", b"", b"x"))
    (kind, args), created = conn.packets()
    assert kind == P.ERROR and args[0] == b"INVALID_PACKET"
    assert created == (P.JOB_CREATED, [b"H:t:1"])
    assert not conn.transport.disconnecting


def test_optionReq(factory):
    conn = Conn(factory)
    conn.send(P.OPTION_REQ, b"EXCEPTIONS")
    conn.send(P.OPTION_REQ, b"bogus")
    assert conn.packets() == [(P.OPTION_RES, [b"EXCEPTIONS"]),
                              (P.ERROR, [b"UNKNOWN_OPTION", b"Server does not recognize given option"])]
    assert conn.protocol.session.exceptions


def test_canDoTimeoutIsInMilliseconds():
    clock = Clock()
    factory = GearmanServerFactory(JobServerState(clock=clock, jobRetries=2))  # a timeout requeues
    worker, client = Conn(factory), Conn(factory)
    worker.send(P.CAN_DO_TIMEOUT, b"f", b"1500")
    client.send(P.SUBMIT_JOB, b"f", b"", b"x")
    worker.send(P.GRAB_JOB)
    clock.advance(1.49)
    assert factory.state.functions[b"f"].running == 1
    clock.advance(0.02)
    assert factory.state.functions[b"f"].running == 0 and factory.state.functions[b"f"].queued == 1


def test_submitEpochAndReduce(factory):
    client, worker = Conn(factory), Conn(factory)
    factory.state.clock.advance(100)
    client.send(P.SUBMIT_JOB_EPOCH, b"f", b"e", b"1", b"epoch-payload")
    client.send(P.SUBMIT_REDUCE_JOB, b"f", b"r", b"reducer", b"", b"map-payload")
    client.send(P.SUBMIT_REDUCE_JOB_BACKGROUND, b"f", b"rb", b"reducer", b"", b"bg-payload")
    assert [k for k, _ in client.packets()] == [P.JOB_CREATED] * 3
    worker.send(P.CAN_DO, b"f")
    worker.send(P.GRAB_JOB_ALL)
    worker.send(P.GRAB_JOB_ALL)
    worker.send(P.GRAB_JOB_ALL)
    assert worker.packets() == [
        (P.JOB_ASSIGN_UNIQ, [b"H:t:1", b"f", b"e", b"epoch-payload"]),
        (P.JOB_ASSIGN_ALL, [b"H:t:2", b"f", b"r", b"reducer", b"map-payload"]),
        (P.JOB_ASSIGN_ALL, [b"H:t:3", b"f", b"rb", b"reducer", b"bg-payload"]),
    ]


def test_workerConnectionLostRequeues(factory):
    client, w1, w2 = Conn(factory), Conn(factory), Conn(factory)
    w1.send(P.CAN_DO, b"f")
    w2.send(P.CAN_DO, b"f")
    client.send(P.SUBMIT_JOB, b"f", b"", b"x")
    w1.send(P.GRAB_JOB)
    w1.close()
    w2.send(P.GRAB_JOB)
    assert w2.packets() == [(P.JOB_ASSIGN, [b"H:t:1", b"f", b"x"])]


def test_largePayloadIsForwardedIntact(factory):
    client, worker = Conn(factory), Conn(factory)
    payload = os.urandom(1 << 20) + b"\0" * 10
    worker.send(P.CAN_DO, b"f")
    client.send(P.SUBMIT_JOB, b"f", b"", payload)
    worker.send(P.GRAB_JOB_UNIQ)
    (kind, args), = worker.packets()
    assert args[3] == payload
    worker.send(P.WORK_COMPLETE, args[0], payload[::-1])
    assert client.packets()[-1] == (P.WORK_COMPLETE, [args[0], payload[::-1]])


def test_largeBodiesWholeInOneReadAreHandledAsViewsOfIt(factory):
    """
    A SUBMIT_JOB, WORK_COMPLETE, WORK_DATA or ECHO_REQ of 64 KiB or more that
    arrives whole in one read is handled as a view of that read: the job
    holds its workload without a copy, and every reply is the same bytes.
    """
    client, worker = Conn(factory), Conn(factory)
    payload = os.urandom(70000) + b"\0tail"
    worker.send(P.CAN_DO, b"f")
    read = encodeRequest(P.SUBMIT_JOB, b"f", b"u1", payload)
    client.sendBytes(read)
    [job] = factory.state.jobs.values()
    assert type(job.payload) is memoryview and job.payload.obj is read
    assert bytes(job.payload) == payload
    worker.send(P.GRAB_JOB_UNIQ)
    [(kind, args)] = worker.packets()
    assert (kind, args[1:]) == (P.JOB_ASSIGN_UNIQ, [b"f", b"u1", payload])
    handle = args[0]
    worker.send(P.WORK_DATA, handle, payload[:66000])
    worker.send(P.WORK_COMPLETE, handle, payload[::-1])
    assert client.packets() == [(P.JOB_CREATED, [handle]), (P.WORK_DATA, [handle, payload[:66000]]),
                                (P.WORK_COMPLETE, [handle, payload[::-1]])]
    client.send(P.ECHO_REQ, payload)
    assert client.packets() == [(P.ECHO_RES, [payload])]
    # The unique "-" names the workload itself: a copy, as the unique is kept.
    client.send(P.SUBMIT_JOB_BG, b"f", b"-", payload)
    [job] = [j for j in factory.state.jobs.values() if j.background]
    assert type(job.payload) is bytes and job.payload == payload
    # A view without its separators, or with a name too long, is answered as
    # its bytes would be.
    client.sendBytes(struct.pack(">4sII", b"\0REQ", P.SUBMIT_JOB, 70000) + b"f" * 70000)
    client.send(P.SUBMIT_JOB, b"g" * 2000, b"", payload)
    worker.sendBytes(struct.pack(">4sII", b"\0REQ", P.WORK_COMPLETE, 70000) + b"h" * 70000)
    worker.send(P.WORK_COMPLETE, b"H:t:" + b"9" * 2000, payload)
    [(_, created), (malformed, why), (tooLong, what)] = client.packets()
    assert (malformed, why[0]) == (P.ERROR, b"INVALID_PACKET")
    assert (tooLong, what[0]) == (P.ERROR, b"ARGUMENT_TOO_LARGE")
    [(malformed, why), (unknown, what)] = worker.packets()
    assert (malformed, why[0]) == (P.ERROR, b"INVALID_PACKET")
    assert (unknown, what[0]) == (P.ERROR, b"JOB_NOT_FOUND")


def test_submitJobSchedRunsAtTheNextMatchingMinute():
    import time as _time

    clock = Clock()
    factory = GearmanServerFactory(JobServerState(clock=clock, handlePrefix=b"H:t"))
    now = 1_800_000_000  # a Friday, 2027-01-15 08:00:00 UTC
    clock.advance(now)
    local = _time.localtime(now)
    client, worker = Conn(factory), Conn(factory)
    # The next minute :30 of the current local hour (or the next hour's).
    client.send(P.SUBMIT_JOB_SCHED, b"f", b"s", b"30", b"", b"", b"", b"", b"sched-payload")
    client.send(P.SUBMIT_JOB_SCHED, b"f", b"", b"61", b"", b"", b"", b"", b"x")
    client.send(P.SUBMIT_JOB_SCHED, b"f", b"", b"", b"", b"31", b"2", b"", b"x")
    created, bad, never = client.packets()
    assert created == (P.JOB_CREATED, [b"H:t:1"])
    assert bad[0] == P.ERROR and bad[1][0] == b"INVALID_ARGUMENT"
    assert never == (P.ERROR, [b"INVALID_ARGUMENT", b"month 2 has no day 31"])
    worker.send(P.CAN_DO, b"f")
    worker.send(P.PRE_SLEEP)
    due = now - local.tm_sec + ((30 - local.tm_min) % 60) * 60
    clock.advance(due - now - 1)
    assert worker.packets() == []
    clock.advance(1)
    assert worker.packets() == [(P.NOOP, [])]
    worker.send(P.GRAB_JOB_UNIQ)
    assert worker.packets() == [(P.JOB_ASSIGN_UNIQ, [b"H:t:1", b"f", b"s", b"sched-payload"])]


def test_workersListingParsesBack(factory):
    from txgear._admintext import WorkerInfo, parseWorkers

    worker, admin = Conn(factory, 7), Conn(factory, 8)
    worker.send(P.SET_CLIENT_ID, b"w1")
    worker.send(P.CAN_DO, b"a")
    worker.send(P.CAN_DO, b"b")
    admin.sendBytes(b"workers\n")
    lines = admin.text().split(b"\n")[:-2]
    assert parseWorkers(lines) == [WorkerInfo("-", "127.0.0.1", "w1", ("b", "a")),
                                   WorkerInfo("-", "127.0.0.1", "-", ())]


# -- issue 8, items 7, 8 and 10: sizes, control characters and escaping ------


def test_clientIdIsCappedAndLosesControlCharacters(factory):
    worker, client, admin = Conn(factory), Conn(factory), Conn(factory)
    worker.send(P.SET_CLIENT_ID, b"w\x01x\x7fy" + b"z" * 5000)
    admin.sendBytes(b"workers\n")
    assert admin.text().split(b"\n")[0] == b"- 127.0.0.1 wxy" + b"z" * 125 + b" :"
    # What is stored with a background job is the capped value.
    client.send(P.SET_CLIENT_ID, b"c" * 1000)
    client.send(P.SUBMIT_JOB_BG, b"f", b"u", b"x")
    (job,) = factory.state.jobs.values()
    assert job.clientId == b"c" * 128


def test_forgedWorkersLineIsEscaped(factory):
    forger, admin = Conn(factory), Conn(factory)
    forger.send(P.SET_CLIENT_ID, b"a : f\n99 10.0.0.1 fake")
    forger.send(P.CAN_DO, b"real")
    admin.sendBytes(b"workers\n")
    assert admin.text() == (b"- 127.0.0.1 a\\x20:\\x20f99\\x2010.0.0.1\\x20fake : real\n"
                            b"- 127.0.0.1 - :\n.\n")


@pytest.mark.parametrize("kind, args", [
    (P.CAN_DO, (b"f\nx",)),
    (P.CAN_DO_TIMEOUT, (b"f\tx", b"10")),
    (P.SUBMIT_JOB, (b"f\nx", b"", b"p")),
    (P.SUBMIT_JOB_BG, (b"f\nx", b"", b"p")),
    (P.SUBMIT_JOB_HIGH, (b"f\nx", b"", b"p")),
    (P.SUBMIT_JOB_HIGH_BG, (b"f\nx", b"", b"p")),
    (P.SUBMIT_JOB_LOW, (b"f\nx", b"", b"p")),
    (P.SUBMIT_JOB_LOW_BG, (b"f\x1bx", b"", b"p")),
    (P.SUBMIT_JOB_EPOCH, (b"f\nx", b"", b"0", b"p")),
    (P.SUBMIT_JOB_SCHED, (b"f\nx", b"", b"", b"", b"", b"", b"", b"p")),
    (P.SUBMIT_REDUCE_JOB, (b"f\nx", b"", b"r", b"", b"p")),
    (P.SUBMIT_REDUCE_JOB_BACKGROUND, (b"f\nx", b"", b"r", b"", b"p")),
])
def test_functionNameWithControlCharactersIsRefused(factory, kind, args):
    conn = Conn(factory)
    conn.send(kind, *args)
    conn.send(P.ECHO_REQ, b"still here")
    assert conn.packets() == [
        (P.ERROR, [b"INVALID_ARGUMENT", b"Function name contains control characters"]),
        (P.ECHO_RES, [b"still here"])]
    assert factory.state.functions == {} and factory.state.jobs == {}


@pytest.mark.parametrize("kind, tail", [
    (P.CAN_DO, ()), (P.CAN_DO_TIMEOUT, (b"10",)), (P.CANT_DO, ()),
    (P.SUBMIT_JOB, (b"", b"p")), (P.SUBMIT_JOB_BG, (b"", b"p")),
    (P.SUBMIT_JOB_HIGH, (b"", b"p")), (P.SUBMIT_JOB_HIGH_BG, (b"", b"p")),
    (P.SUBMIT_JOB_LOW, (b"", b"p")), (P.SUBMIT_JOB_LOW_BG, (b"", b"p")),
    (P.SUBMIT_JOB_EPOCH, (b"", b"0", b"p")),
    (P.SUBMIT_JOB_SCHED, (b"", b"", b"", b"", b"", b"", b"p")),
    (P.SUBMIT_REDUCE_JOB, (b"", b"r", b"", b"p")),
    (P.SUBMIT_REDUCE_JOB_BACKGROUND, (b"", b"r", b"", b"p")),
])
def test_functionNameLengthIsLimited(kind, tail):
    factory = GearmanServerFactory(JobServerState(clock=Clock(), handlePrefix=b"H:t"),
                                   maxFunctionName=10)
    conn = Conn(factory)
    conn.send(kind, b"f" * 11, *tail)
    conn.send(kind, b"g" * 10, *tail)
    packets = conn.packets()
    assert packets[0] == (P.ERROR, [b"ARGUMENT_TOO_LARGE", b"Function name too large"])
    assert P.ERROR not in [k for k, _ in packets[1:]]
    assert b"f" * 11 not in factory.state.functions


def test_functionNameLimitDefaultsTo512(factory):
    conn = Conn(factory)
    conn.send(P.CAN_DO, b"f" * 513)
    conn.send(P.CAN_DO, b"f" * 512)
    assert conn.packets() == [(P.ERROR, [b"ARGUMENT_TOO_LARGE", b"Function name too large"])]
    assert list(factory.state.functions) == [b"f" * 512]


def test_functionNamesWithSpacesAreAcceptedAndEscapedInWorkers(factory):
    worker, admin = Conn(factory), Conn(factory)
    worker.send(P.CAN_DO, b"two words")
    worker.send(P.SUBMIT_JOB_BG, b"two words", b"u", b"p")
    assert worker.packets()[0][0] == P.JOB_CREATED
    admin.sendBytes(b"status\n")
    assert admin.text() == b"two words\t1\t0\t1\n.\n"
    admin.sendBytes(b"workers\n")
    assert admin.text().startswith(b"- 127.0.0.1 - : two\\x20words\n")


@pytest.mark.parametrize("line", [b"create function " + b"f" * 11, b"maxqueue " + b"f" * 11 + b" 3",
                                  b"drop function " + b"f" * 11])
def test_adminCommandsLimitFunctionNames(line):
    factory = GearmanServerFactory(JobServerState(clock=Clock()), maxFunctionName=10)
    admin = Conn(factory)
    admin.sendBytes(line + b"\n")
    assert admin.text() == b"ERR ARGUMENT_TOO_LARGE Function+name+too+large\r\n"
    assert factory.state.functions == {}
    admin.sendBytes(b"create function ok\x01\n")
    assert admin.text() == b"ERR INVALID_ARGUMENT Function+name+contains+control+characters\r\n"
    admin.sendBytes(b"create function " + b"f" * 10 + b"\n")
    assert admin.text() == b"OK\r\n"


def test_controlCharactersInUniquesAreEscapedInListings(factory):
    client, admin = Conn(factory), Conn(factory)
    client.send(P.SUBMIT_JOB_BG, b"f", b"a\nfake\tline\\", b"p")
    admin.sendBytes(b"show unique jobs\n")
    assert admin.text() == b"a\\x0afake\\x09line\\x5c\n.\n"


@pytest.mark.parametrize("epoch", [b"%d" % 2 ** 63, b"-1", b"253402300800", b"soon", b"1" * 5000,
                                   b"1e9"])
def test_submitEpochOutOfRangeIsRefused(factory, epoch):
    conn = Conn(factory)
    conn.send(P.SUBMIT_JOB_EPOCH, b"f", b"u", epoch, b"p")
    conn.send(P.SUBMIT_JOB_EPOCH, b"f", b"v", b"253402300799", b"p")
    conn.send(P.SUBMIT_JOB_EPOCH, b"f", b"w", b"", b"p")  # empty: now, as before
    assert conn.packets() == [
        (P.ERROR, [b"INVALID_ARGUMENT", b"Epoch must be a number of seconds from 0 to 253402300799"]),
        (P.JOB_CREATED, [b"H:t:1"]), (P.JOB_CREATED, [b"H:t:2"])]
    assert [job.when for job in factory.state.jobs.values()] == [253402300799, 0]


# -- issue 8, item 12: peer-caused log lines ------------------------------------


def _loggedBytes(events):
    from twisted.logger import formatEvent

    return sum(len(formatEvent(e)) for e in events)


@pytest.mark.parametrize("packet", [
    encodeRequest(P.NOOP),  # response-only: INVALID_COMMAND
    encodeResponse(P.ECHO_REQ, b"x"),  # response magic
    encodeRequest(P.WORK_COMPLETE, b"no-nul"),  # malformed
    encodeRequest(P.WORK_FAIL, b"H:unknown:" + b"9" * 2000),  # an unknown, long handle
    encodeRequest(P.CAN_DO, b"f" * 600),  # a refused name
    encodeRequest(P.SUBMIT_JOB_EPOCH, b"f", b"", b"-5", b""),
    encodeRequest(P.SUBMIT_JOB, b"f", b"u" * 65, b""),
])
def test_refusalsDoNotAmplifyInputInTheLog(factory, packet):
    conn = Conn(factory)
    with capturedLogs() as events:
        conn.sendBytes(packet * 1000)
    sent = len(packet) * 1000
    assert 0 < _loggedBytes(events) < sent / 20
    assert all(len(str(e.get("log_format", ""))) < 200 for e in events)
    assert max(_loggedBytes([e]) for e in events) < 300


# -- connection I/O policy (issue 8, items 1-6) --------------------------------


def _ioFactory(**kwargs):
    return GearmanServerFactory(JobServerState(clock=Clock(), handlePrefix=b"H:t"), **kwargs)


def test_outputOverTheSoftLimitStopsDispatchingInput():
    # `status` lines from a connection that does not read, many functions
    # (the issue: 64 KiB of them with 2,000 functions; scaled down).
    factory = _ioFactory(outputSoftLimit=16 * 1024)
    for i in range(500):
        factory.state.function(b"function-%04d" % i)
    admin = Conn(factory)
    admin.protocol._output.pauseProducing()  # its transport's buffer is full
    admin.sendBytes(b"status\n" * 2000)
    factory.flush()
    output = admin.protocol._output
    # Replies stop a little past the limit, and the connection is not read.
    assert output.queued < 16 * 1024 + 64 * 1024
    assert admin.transport.producerState == "paused"
    # A bystander is served meanwhile.
    bystander = Conn(factory)
    bystander.send(P.ECHO_REQ, b"hi")
    assert bystander.packets() == [(P.ECHO_RES, [b"hi"])]
    # The peer reads: every status is answered, in order, and reading resumes.
    answered = 0
    for _ in range(100000):
        output.resumeProducing()
        factory.flush()
        answered += admin.transport.value().count(b"\n.\n")
        admin.transport.clear()
        if answered == 2000:
            break
    assert answered == 2000
    assert admin.transport.producerState == "producing"


def test_adminRepliesTakeABoundedShareOfEachReactorTurn():
    """
    A peer asking for long listings over and over (status with many
    functions) gets at most about ADMIN_TURN_BYTES of replies a reactor turn,
    the rest in later turns, in order; a bystander is served in between.
    """
    from txgear.server._protocol import ADMIN_TURN_BYTES

    class TurnClock(Clock):
        """Runs, per turn, the calls due when the turn starts (as a reactor does)."""

        def turn(self):
            for call in [c for c in self.calls if c.getTime() <= self.seconds()]:
                if call in self.calls:
                    self.calls.remove(call)
                    call.called = 1
                    call.func(*call.args, **call.kw)

    clock = TurnClock()
    # The default soft limit (1 MiB) is far above a turn's share.
    factory = GearmanServerFactory(JobServerState(clock=clock, handlePrefix=b"H:t"))
    for i in range(1000):
        factory.state.function(b"function-%04d" % i)
    one = len(b"".join(b"function-%04d\t0\t0\t0\n" % i for i in range(1000))) + 2
    admin = Conn(factory)
    admin.sendBytes(b"status\n" * 200)
    first = admin.text()
    assert ADMIN_TURN_BYTES < len(first) <= ADMIN_TURN_BYTES + one
    assert admin.transport.producerState == "paused"  # not read until its next turn
    bystander = Conn(factory)
    bystander.send(P.ECHO_REQ, b"hi")
    assert bystander.packets() == [(P.ECHO_RES, [b"hi"])]
    got, turns = first, 1
    while got.count(b"\n.\n") < 200 and turns < 1000:
        clock.turn()
        turn = admin.text()
        assert len(turn) <= ADMIN_TURN_BYTES + one
        got += turn
        turns += 1
    assert got.count(b"\n.\n") == 200 and got.endswith(b"\n.\n")
    assert turns > 1
    assert admin.transport.producerState == "producing"


def test_longListingLeavesInPiecesAsThePeerReads():
    factory = _ioFactory(outputSoftLimit=8 * 1024)
    for i in range(3000):
        factory.state.function(b"f%05d" % i)
    admin = Conn(factory)
    admin.protocol._output.pauseProducing()
    admin.sendBytes(b"status\nversion\n")
    output = admin.protocol._output
    full = sum(len(b"f%05d\t0\t0\t0\n" % i) for i in range(3000)) + 2
    assert output.queued < full // 2
    got = b""
    for _ in range(1000):
        output.resumeProducing()
        factory.flush()
        got += admin.transport.value()
        admin.transport.clear()
        if got.endswith(b"\n") and b"OK " in got:
            break
    listing, version = got.split(b"\n.\n")
    assert listing.split(b"\n") == [b"f%05d\t0\t0\t0" % i for i in range(3000)]
    assert version.startswith(b"OK ")


def test_aSlowClientNeverPausesTheWorkerAndIsClosedPastTheHardLimit():
    factory = _ioFactory(outputSoftLimit=4096, outputHardLimit=64 * 1024)
    slow, other, worker = Conn(factory), Conn(factory), Conn(factory)
    worker.send(P.CAN_DO, b"f")
    slow.send(P.SUBMIT_JOB, b"f", b"u", b"x")
    other.send(P.SUBMIT_JOB, b"f", b"u", b"x")  # attached to the same job
    other.send(P.SUBMIT_JOB, b"f", b"v", b"y")
    worker.send(P.GRAB_JOB)
    slow.protocol._output.pauseProducing()  # slow stops reading
    for _ in range(8):
        worker.send(P.WORK_DATA, b"H:t:1", b"d" * 10000)
        factory.flush()  # the end of the reactor turn
        assert worker.transport.producerState == "producing"
    assert slow.transport.disconnecting  # aborted past 64 KiB
    slow.close()
    worker.send(P.WORK_COMPLETE, b"H:t:1", b"done")
    assert other.packets()[-1] == (P.WORK_COMPLETE, [b"H:t:1", b"done"])
    # The worker goes on serving the others.
    worker.send(P.GRAB_JOB)
    assert worker.packets()[-1][0] == P.JOB_ASSIGN


def test_pausesAndResumesInAnyOrderNeverLeaveTheConnectionUnread():
    # Twisted calls pauseProducing on every write over the high-water mark
    # and resumeProducing once; only the reasons matter.
    factory = _ioFactory(outputSoftLimit=100)
    conn = Conn(factory)
    output = conn.protocol._output
    for _ in range(55):
        output.pauseProducing()
        conn.send(P.ECHO_REQ, b"x" * 200)
    assert conn.transport.producerState == "paused"
    for _ in range(9):
        output.resumeProducing()
    for _ in range(60):
        factory.flush()  # reactor turns: each drains, then dispatches one more
    assert conn.transport.producerState == "producing"
    assert len(conn.packets()) == 55
    conn.send(P.ECHO_REQ, b"after")
    assert conn.packets() == [(P.ECHO_RES, [b"after"])]
    # Full output and the partial-packet budget: reading waits for both.
    conn.protocol.outputFull()
    conn.protocol.outputFull()
    conn.protocol._pause("budget")
    conn.protocol.outputDrained()
    assert conn.transport.producerState == "paused"
    conn.protocol._resume("budget")
    assert conn.transport.producerState == "producing"


def _header(size):
    return b"\0REQ" + struct.pack(">II", P.ECHO_REQ, size)


def test_unfinishedLargeMessagesShareOneBudget():
    factory = _ioFactory(partialBudget=1024 * 1024)
    first, second, small = Conn(factory), Conn(factory), Conn(factory)
    first.sendBytes(_header(700 * 1024) + b"a" * 1000)
    assert factory.partialReserved == 700 * 1024 + 12
    second.sendBytes(_header(700 * 1024) + b"b" * 1000)
    assert second.transport.producerState == "paused"  # waits for room
    assert first.transport.producerState == "producing"
    # Small messages are never held back.
    small.sendBytes(_header(1000) + b"c" * 10)
    assert small.transport.producerState == "producing"
    first.sendBytes(b"a" * (700 * 1024 - 1000))
    assert first.packets() == [(P.ECHO_RES, [b"a" * 700 * 1024])]
    assert second.transport.producerState == "producing"
    assert factory.partialReserved == 700 * 1024 + 12
    second.close()
    assert factory.partialReserved == 0


def test_aMessageNotFinishedWithinTheDeadlineClosesTheConnection():
    factory = _ioFactory(packetDeadline=30)
    clock = factory.state.clock
    slow, steady = Conn(factory), Conn(factory)
    for byte in _header(100) + b"x" * 50:
        slow.sendBytes(bytes([byte]))  # one byte at a time
        clock.advance(0.1)
    assert len(clock.getDelayedCalls()) == 1  # one timer, not one per read
    clock.advance(10)
    # Each message of the steady connection completes in time.
    for _ in range(30):
        steady.sendBytes(_header(4) + b"ab")
        clock.advance(1)
        steady.sendBytes(b"cd")
    assert slow.transport.disconnecting and not steady.transport.disconnecting
    assert len(steady.packets()) == 30
    steady.close()
    slow.close()
    clock.advance(0)
    assert clock.getDelayedCalls() == []

def test_oneDeadlineTimerForAllConnectionsOnlyWhileAMessageIsUnfinished():
    # Per-connection timers would sit in the reactor's heap, which every
    # turn's callLater(0) flush is compared against.
    factory = _ioFactory(packetDeadline=30)
    clock = factory.state.clock
    conns = [Conn(factory) for _ in range(5)]
    for conn in conns:
        conn.sendBytes(_header(100) + b"x" * 50)
        clock.advance(1)
    assert len(clock.getDelayedCalls()) == 1
    for conn in conns:
        conn.sendBytes(b"x" * 50)
    clock.advance(30)
    assert clock.getDelayedCalls() == []  # nothing unfinished: not re-armed
    assert all(len(conn.packets()) == 1 and not conn.transport.disconnecting for conn in conns)
    # A late one still closes, on time.
    conns[0].sendBytes(_header(100))
    clock.advance(29.5)
    assert not conns[0].transport.disconnecting
    clock.advance(0.5)
    assert conns[0].transport.disconnecting
    for conn in conns:
        conn.close()
    clock.advance(0)
    assert clock.getDelayedCalls() == []


@pytest.mark.skipif(platform.python_implementation() == "PyPy",
                    reason="PyPy frees only by its collector, whatever the references")
def test_closedConnectionsAreFreedWithoutTheCycleCollector():
    import gc
    import weakref

    factory = _ioFactory()
    worker = Conn(factory)
    worker.send(P.CAN_DO, b"f")
    refs = []
    gc.collect()
    gc.disable()
    try:
        for i in range(50):
            conn = Conn(factory, 6000 + i)
            conn.send(P.SUBMIT_JOB, b"f", b"", b"x")
            conn.send(P.ECHO_REQ, b"y")
            conn.sendBytes(_header(1 << 20) + b"z" * 100000)  # part of a large packet
            factory.flush()
            refs.append((weakref.ref(conn.protocol), weakref.ref(conn.protocol.session)))
            conn.close()
            del conn
        alive = [r for pair in refs for r in pair if r() is not None]
        assert alive == []
    finally:
        gc.enable()


@pytest.mark.skipif(platform.python_implementation() != "CPython",
                    reason="tracemalloc and the tuple free list are CPython's")
def test_manySmallPacketsDecodeIntoNoTuples(factory):
    """
    A read of thousands of small packets leaves nothing behind but what
    the requests keep (here the function names): no per-message tuples,
    which, freed together, would fill CPython's tuple free list and pin the
    memory the attack used after it leaves (docs/reliability.md).
    """
    import tracemalloc

    import txgear._packet

    names = 3000
    data = b"".join(encodeRequest(P.CAN_DO, b"fn-%06d" % i) for i in range(names))
    conn = Conn(factory)
    tracemalloc.start()
    try:
        conn.sendBytes(data)
        snapshot = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    assert len(factory.state.functions) == names
    decoded = snapshot.filter_traces([tracemalloc.Filter(True, txgear._packet.__file__)])
    blocks = sum(stat.count for stat in decoded.statistics("filename"))
    assert names <= blocks <= names + 50


def test_idleConnectionsCostAJobNothing(monkeypatch):
    """
    Issue 14: 1,000 registered, sleeping workers of another function cost a
    job nothing: its turns flush only the outputs they wrote to (the client's
    and the worker's), write nothing to the idle ones, and arm no timer.
    Counted, not timed (the same count with 10 idle connections or 1,000).
    """
    from txgear._turnwriter import ConnectionOutput

    def jobTurnFlushes(idleCount):
        factory = GearmanServerFactory(JobServerState(clock=Clock(), handlePrefix=b"H:t"))
        idle = [Conn(factory, 6000 + i) for i in range(idleCount)]
        for conn in idle:
            conn.send(P.CAN_DO, b"other")
            conn.send(P.PRE_SLEEP)
        client, worker = Conn(factory), Conn(factory, 5001)
        worker.send(P.CAN_DO, b"f")
        factory.flush()
        for conn in idle:
            conn.transport.clear()
        flushed = []
        original = ConnectionOutput.flush
        monkeypatch.setattr(ConnectionOutput, "flush", lambda self: (flushed.append(self), original(self)))
        for i in range(10):
            client.send(P.SUBMIT_JOB, b"f", b"", b"x")
            factory.state.clock.advance(0)
            worker.send(P.GRAB_JOB_UNIQ)
            factory.state.clock.advance(0)
            handle = b"H:t:%d" % (i + 1)
            worker.send(P.WORK_COMPLETE, handle, b"y")
            factory.state.clock.advance(0)
        monkeypatch.setattr(ConnectionOutput, "flush", original)
        assert [kind for kind, _ in client.packets()] == [P.JOB_CREATED, P.WORK_COMPLETE] * 10
        assert all(conn.transport.value() == b"" for conn in idle)
        assert factory.state.clock.getDelayedCalls() == []
        return len(flushed)

    few, many = jobTurnFlushes(10), jobTurnFlushes(1000)
    assert few == many == 30  # one flush per turn, of the one output written to


def test_readsGrowWhileLargeMessagesArriveAndShrinkBackAfter():
    """
    On a plain TCP connection, a message of 64 KiB or more split across
    reads makes the next reads LARGE_READ bytes, so that the next such
    message arrives in one read (not two); after LARGE_READS_KEPT smaller
    reads, the read size goes back. (A full read of small packets does not
    count: test_adaptiveReadSizeOnTheServer.)
    """
    import socket

    from twisted.internet import tcp
    from twisted.internet.testing import MemoryReactorClock

    from txgear.server._protocol import LARGE_READ, LARGE_READS_KEPT

    factory = _ioFactory()
    ours, theirs = socket.socketpair()
    for sock in (ours, theirs):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
    ours.setblocking(False)
    protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5000))
    protocol.adaptiveReads = False  # Twisted's 64 KiB reads, on PyPy too
    conn = tcp.Connection(ours, protocol, MemoryReactorClock())
    conn.connected = 1
    protocol.makeConnection(conn)
    echoes = factory.state.stats.packetsIn
    try:
        before = conn.bufferSize
        message = encodeRequest(P.ECHO_REQ, b"e" * 70000)
        theirs.sendall(message)
        conn.doRead()  # Twisted's 64 KiB read: most of it
        assert echoes[P.ECHO_REQ] == 0 and conn.bufferSize == before
        conn.doRead()  # the rest: the message was split, so reads grow
        assert echoes[P.ECHO_REQ] == 1 and conn.bufferSize == LARGE_READ
        theirs.sendall(message)
        conn.doRead()  # whole, in one read
        assert echoes[P.ECHO_REQ] == 2
        for _ in range(LARGE_READS_KEPT):
            assert conn.bufferSize == LARGE_READ
            theirs.sendall(encodeRequest(P.ECHO_REQ, b"s"))
            conn.doRead()
        assert conn.bufferSize == before
        assert echoes[P.ECHO_REQ] == 2 + LARGE_READS_KEPT
    finally:
        protocol.connectionLost(None)
        ours.close()
        theirs.close()


def _summary(factory):
    """What a state holds of its background jobs, in queue order."""
    state = factory.state
    functions = {}
    for name, function in sorted(state.functions.items()):
        queues = [[(job.handle, job.unique, bytes(job.payload), job.clientId, job.since)
                   for job in queue if job.state == 1] for queue in (function.queues or ())]
        submitted = list(function.stats.submitted) if function.stats else None
        functions[name] = (queues, function.queued, list(function.priorityCounts), submitted)
    return functions, sorted(state.jobs), list(state.stats.packetsIn)


def _runBothWays(packets, setup=lambda factory, conns: None, factoryArgs=None):
    """
    C{packets} sent by the first of two connections in one read, then (on
    a fresh server) one byte at a time, which dispatches each message
    alone: what each connection got, and the states, as C{(oneRead,
    bytewise, runs, alone)}: C{runs} the calls of the fast path, C{alone}
    how many submissions of the one read took the usual one.
    """
    results = []
    runs = []
    alone = []
    for bytewise in (False, True):
        factory = _ioFactory(**(factoryArgs or {}))
        state = factory.state
        original = state.submitBackgroundMany
        state.submitBackgroundMany = lambda session, name, payloads: (
            runs.append((bytewise, name, len(payloads))), original(session, name, payloads))
        submit = state.submit
        state.submit = lambda *args: (alone.append(bytewise), submit(*args))
        conns = [Conn(factory), Conn(factory, 5001)]
        setup(factory, conns)
        for conn in conns:
            conn.packets()
        conns[0].sendBytes(b"".join(encodeRequest(kind, *args) for kind, args in packets), bytewise)
        results.append(([conn.packets() for conn in conns], _summary(factory)))
    assert not [run for run in runs if run[0]], "one message per read never takes the fast path"
    return results[0], results[1], runs, alone.count(False)


def _bg(name, unique, payload):
    return (P.SUBMIT_JOB_BG, (name, unique, payload))


@pytest.mark.parametrize("known", [False, True])
def test_aRunOfBackgroundSubmissionsIsTheSameAsEachAlone(known):
    """
    A read of many SUBMIT_JOB_BG packets (a pipelining client) is made in
    runs of one function without uniques: the same replies, in the same
    order, and the same jobs, queues and counts as one packet at a time.
    Whatever does not fit a run (a new function, a unique, another
    function, a malformed packet, a foreground job) takes the usual path.
    With the function known, the read starts with a run, taken straight
    from the read.
    """
    packets = ([_bg(b"f", b"", b"first")]  # a new function: made by the usual path
               + [_bg(b"f", b"", b"p%d\0with nul" % i) for i in range(20)]
               + [_bg(b"g", b"", b"new")]
               + [_bg(b"f", b"", b"")] * 3
               + [_bg(b"f", b"u1", b"unique"), _bg(b"f", b"", b"after unique"),
                  _bg(b"f", b"u1", b"coalesced")]
               + [(P.SUBMIT_JOB_BG, (b"f\0only-two",)), _bg(b"f", b"", b"after malformed")]
               # A body cut short, whose next bytes (the next header) would
               # complete the run's "f\0\0".
               + [_bg(b"f", b"", b"before short"), (P.SUBMIT_JOB_BG, (b"f\0",)),
                  _bg(b"f", b"", b"after short")]
               + [(P.SUBMIT_JOB, (b"f", b"", b"fg")), _bg(b"f", b"", b"x"), _bg(b"f", b"", b"y")]
               + [_bg(b"g", b"", b"g%d" % i) for i in range(5)])
    oneRead, bytewise, runs, alone = _runBothWays(
        packets, lambda factory, conns: [factory.state.function(name) for name in (b"f", b"g")]
        if known else None)
    assert oneRead == bytewise
    replies = oneRead[0][0]
    assert [kind for kind, _ in replies].count(P.JOB_CREATED) == len(packets) - 2
    assert replies.count((P.ERROR, [b"INVALID_PACKET", b"SUBMIT_JOB_BG needs 3 arguments, got 2"])) == 2
    assert runs == ([(False, b"f", 21), (False, b"g", 1)] if known else [(False, b"f", 20)]) + [
        (False, b"f", 3), (False, b"f", 1), (False, b"f", 2), (False, b"f", 2), (False, b"g", 5)]
    # The first of each function (unless known), those with a unique, the
    # one after a malformed packet and the foreground one.
    assert alone == (4 if known else 6)


@pytest.mark.parametrize("short", [b"f", b"f\0", b"f\0\0"])
def test_aRunTakenFromTheReadStopsAtABodyCutShort(short):
    """
    A run taken straight from a read checks each body's own bytes: one too
    short to hold the function's name and an empty unique (whatever bytes
    follow it in the read) is malformed, or an empty workload, as alone.
    """
    packets = [_bg(b"f", b"", b"1"), _bg(b"f", b"", b"2"), (P.SUBMIT_JOB_BG, (short,)),
               _bg(b"f", b"", b"3"), _bg(b"f", b"", b"4")]
    oneRead, bytewise, runs, alone = _runBothWays(
        packets, lambda factory, conns: factory.state.function(b"f"))
    assert oneRead == bytewise
    kinds = [kind for kind, _ in oneRead[0][0]]
    if short == b"f\0\0":
        assert kinds == [P.JOB_CREATED] * 5
    else:
        assert kinds == [P.JOB_CREATED] * 2 + [P.ERROR] + [P.JOB_CREATED] * 2
    assert runs[0] == (False, b"f", 5 if short == b"f\0\0" else 2)


def test_aRunWakesSleepersInOrder():
    """
    Sleeping workers of the function are woken one per job, as alone; when
    the submitter is one of them, its NOOP follows the JOB_CREATED of the
    job that woke it (the second: the other worker slept first).
    """
    def sleepers(factory, conns):
        conns[1].send(P.CAN_DO, b"f")
        conns[1].send(P.PRE_SLEEP)
        conns[0].send(P.CAN_DO, b"f")
        conns[0].send(P.PRE_SLEEP)
        factory.state.function(b"f")  # known: the first packet starts a run

    packets = [_bg(b"f", b"", b"%d" % i) for i in range(6)]
    oneRead, bytewise, runs, alone = _runBothWays(packets, sleepers)
    assert oneRead == bytewise
    assert runs == [(False, b"f", 6)] and alone == 0
    submitter, other = oneRead[0]
    assert [kind for kind, _ in other] == [P.NOOP]
    assert [kind for kind, _ in submitter] == [P.JOB_CREATED] * 2 + [P.NOOP] + [P.JOB_CREATED] * 4


def test_aRunIsNotAShortcutPastLimitsOrAccessControl():
    """
    A queue limit, a server that stopped accepting and access control each
    give every submission of a run the usual answer.
    """
    packets = [_bg(b"f", b"", b"%d" % i) for i in range(5)]

    def limited(factory, conns):
        factory.state.function(b"f")
        factory.state.setMaxQueue(b"f", [3, 3, 3])

    oneRead, bytewise, runs, alone = _runBothWays(packets, limited)
    assert oneRead == bytewise
    assert [kind for kind, _ in oneRead[0][0]] == [P.JOB_CREATED] * 3 + [P.ERROR] * 2

    def stopped(factory, conns):
        factory.state.function(b"f").kept = True
        factory.state.stopAccepting()

    oneRead, bytewise, runs, alone = _runBothWays(packets, stopped)
    assert oneRead == bytewise
    assert [kind for kind, _ in oneRead[0][0]] == [P.ERROR] * 5

    from txgear.server._access import AccessControl, parseRules
    access = AccessControl(parseRules("[anonymous]\ninvoke = g\n").values())
    oneRead, bytewise, runs, alone = _runBothWays(
        packets, lambda factory, conns: factory.state.function(b"f"), {"access": access})
    assert oneRead == bytewise
    assert [kind for kind, _ in oneRead[0][0]] == [P.ERROR] * 5
    assert runs == []  # guarded connections always take the usual path


def test_aRunStopsAtTheSoftLimitOfTheOutput():
    """
    The replies of a run are written together, so a run is cut where they
    would pass the output's soft limit: the rest waits, unread, as with
    one packet at a time, and all are answered once the peer reads.
    """
    factory = _ioFactory(outputSoftLimit=4096)
    factory.state.function(b"f")
    client = Conn(factory)
    output = client.protocol._output
    output.pauseProducing()  # its transport's buffer is full
    client.sendBytes(b"".join(encodeRequest(P.SUBMIT_JOB_BG, b"f", b"", b"%d" % i)
                              for i in range(1000)))
    factory.flush()
    assert 4096 - 64 < output.queued <= 4096 + 64
    assert client.protocol._held is not None
    assert len(factory.state.jobs) < 1000
    answered = []
    for _ in range(1000):
        output.resumeProducing()
        factory.flush()
        answered += client.packets()
        if len(answered) == 1000:
            break
    assert answered == [(P.JOB_CREATED, [b"H:t:%d" % (i + 1)]) for i in range(1000)]
    assert client.transport.producerState == "producing"


def test_adaptiveReadSizeOnTheServer():
    """
    With adaptive reads (PyPy's default), a server connection on a TCP
    socket reads 1 KiB at first and sizes its reads as the client library's
    do; without them, Twisted's 64 KiB.
    """
    import socket

    from twisted.internet import tcp
    from twisted.internet.protocol import Protocol
    from twisted.internet.testing import MemoryReactorClock

    from txgear._protocol import LARGE_READ, SMALL_READ
    from txgear.server._protocol import GearmanServerProtocol

    for adaptive in (True, False):
        factory = _ioFactory()
        ours, theirs = socket.socketpair()
        theirs.setblocking(False)
        conn = tcp.Connection(ours, Protocol(), MemoryReactorClock())
        conn.connected = 1
        protocol = factory.buildProtocol(None)
        assert isinstance(protocol, GearmanServerProtocol)
        protocol.adaptiveReads = adaptive
        conn.protocol = protocol
        protocol.makeConnection(conn)
        try:
            sizes = [conn.bufferSize]
            packet = encodeRequest(P.SUBMIT_JOB_BG, b"f", b"", b"x" * 200)
            stream = packet * 4000
            sent = 0
            # Reads that fill the buffer, then small ones.
            for small in [False] * 7 + [True] * 3:
                size = 30 if small else conn.bufferSize
                theirs.sendall(stream[sent:sent + size])
                sent += size
                conn.doRead()
                sizes.append(conn.bufferSize)
            if adaptive:
                assert sizes == [SMALL_READ * 2 ** i for i in range(7)] + [LARGE_READ,
                                 LARGE_READ // 2, LARGE_READ // 4, LARGE_READ // 8]
            else:
                assert sizes == [LARGE_READ] * 11
            assert len(factory.state.jobs) == sent // len(packet)
        finally:
            protocol._output.stopProducing()
            theirs.close()
            ours.close()

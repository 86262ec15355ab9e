"""
Unit tests of L{txgear._tlsclient}'s connection gate: what happens between
the TCP connection and the application's protocol (no network, a fake TLS
transport, a L{Clock}).
"""
from __future__ import annotations

from typing import Any, List

import pytest
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.error import ConnectionAborted
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from zope.interface import implementer

from txgear import TLSConnectError, TLSOptions, _tlsclient
from txgear._packet import PacketType, encodeRequest, encodeResponse


class _Handle:
    def __init__(self, version: str) -> None:
        self.version = version

    def get_protocol_version_name(self) -> str:
        return self.version


class _TLSTransport(StringTransport):
    def __init__(self, version: str) -> None:
        StringTransport.__init__(self)
        self.handle = _Handle(version)
        self.aborted = False

    def getHandle(self) -> Any:
        return self.handle

    def abortConnection(self) -> None:
        self.aborted = True


@implementer(IStreamClientEndpoint)
class _ConnectedEndpoint:
    """Connects at once over a L{_TLSTransport}; the test plays the TLS layer."""

    def __init__(self, transport: _TLSTransport) -> None:
        self.transport = transport
        self.protocol: Any = None

    def connect(self, factory: Any) -> Deferred:
        self.protocol = factory.buildProtocol(None)
        self.protocol.makeConnection(self.transport)
        return succeed(self.protocol)


class _App(Protocol):
    def __init__(self) -> None:
        self.received: List[bytes] = []
        self.lost: List[Failure] = []

    def dataReceived(self, data: bytes) -> None:
        self.received.append(data)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.lost.append(reason)


class _AppFactory(Factory):
    def __init__(self) -> None:
        self.built: List[_App] = []

    def buildProtocol(self, addr: Any) -> _App:
        app = _App()
        self.built.append(app)
        return app


def _connect(monkeypatch: Any, version: str = "TLSv1.3", problem: Any = None) -> Any:
    monkeypatch.setattr(_tlsclient, "_identityProblem", lambda transport, host: problem)
    clock = Clock()
    transport = _TLSTransport(version)
    endpoint = _ConnectedEndpoint(transport)
    factory = _AppFactory()
    ready = _tlsclient._VerifiedEndpoint(endpoint, "gear1", TLSOptions(ca="ca.pem"),
                                         clock).connect(factory)
    results: List[Any] = []
    ready.addBoth(results.append)
    return clock, transport, endpoint.protocol, factory, ready, results


_REPLY = encodeResponse(PacketType.STATUS_RES, b"txgear-tls-check", b"0", b"0", b"0", b"0")


def test_tls13WaitsForTheServersAnswer(monkeypatch):
    clock, transport, gate, factory, ready, results = _connect(monkeypatch)
    gate.handshakeCompleted()
    assert transport.value() == encodeRequest(PacketType.GET_STATUS, b"txgear-tls-check")
    for byte in _REPLY[:-1]:
        gate.dataReceived(bytes([byte]))
        assert results == [] and factory.built == []
    gate.dataReceived(_REPLY[-1:] + b"\0RES")
    [app] = factory.built
    assert results == [app] and app.transport is transport
    assert b"".join(app.received) == b"\0RES"  # what followed the answer is the application's
    gate.dataReceived(b"more")
    assert app.received[-1] == b"more"
    gate.connectionLost(Failure(ConnectionAborted()))
    assert len(app.lost) == 1 and clock.getDelayedCalls() == []


def test_tls12IsReadyAfterTheHandshake(monkeypatch):
    clock, transport, gate, factory, ready, results = _connect(monkeypatch, "TLSv1.2")
    assert factory.built == []
    gate.handshakeCompleted()
    assert transport.value() == b"" and results == factory.built and len(results) == 1
    assert clock.getDelayedCalls() == []


def test_identityProblemRefuses(monkeypatch):
    clock, transport, gate, factory, ready, results = _connect(
        monkeypatch, problem="the server's certificate is not valid for 'gear1'")
    gate.handshakeCompleted()
    assert transport.aborted and transport.value() == b""
    gate.connectionLost(Failure(ConnectionAborted()))
    [failure] = results
    assert failure.check(TLSConnectError)
    assert str(failure.value) == "TLS: the server's certificate is not valid for 'gear1'"
    assert factory.built == [] and clock.getDelayedCalls() == []


def test_notGearmanRefuses(monkeypatch):
    clock, transport, gate, factory, ready, results = _connect(monkeypatch)
    gate.handshakeCompleted()
    gate.dataReceived(b"HTTP/1.1 400")
    assert transport.aborted
    gate.connectionLost(Failure(ConnectionAborted()))
    assert "not Gearman's" in str(results[0].value) and factory.built == []


def test_oversizedAnswerRefuses(monkeypatch):
    clock, transport, gate, factory, ready, results = _connect(monkeypatch)
    gate.handshakeCompleted()
    gate.dataReceived(b"\0RES" + (20).to_bytes(4, "big") + (1 << 20).to_bytes(4, "big"))
    assert transport.aborted


def test_handshakeTimeout(monkeypatch):
    clock, transport, gate, factory, ready, results = _connect(monkeypatch)
    clock.advance(29.9)
    assert not transport.aborted
    clock.advance(0.1)
    assert transport.aborted
    gate.connectionLost(Failure(ConnectionAborted()))
    assert str(results[0].value) == "TLS: no TLS handshake and answer within 30 s"
    assert clock.getDelayedCalls() == []


def test_cancelDuringHandshake(monkeypatch):
    clock, transport, gate, factory, ready, results = _connect(monkeypatch)
    ready.cancel()
    assert transport.aborted and results[0].check(CancelledError)
    gate.connectionLost(Failure(ConnectionAborted()))
    assert len(results) == 1 and factory.built == [] and clock.getDelayedCalls() == []


def test_optionsValues():
    assert TLSOptions(ca="a") == TLSOptions(ca="a") != TLSOptions(ca="b")
    assert repr(TLSOptions(ca="a")) == "TLSOptions(ca='a', certificate=None, key=None)"
    with pytest.raises(ValueError):
        TLSOptions(handshakeTimeout=0)

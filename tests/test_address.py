"""Tests of L{txgear._address}."""
from __future__ import annotations

import pytest
from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, UNIXClientEndpoint
from twisted.internet.testing import MemoryReactorClock

from txgear._address import DEFAULT_PORT, parseAddress


@pytest.mark.parametrize("text, host, port", [
    ("gear1", "gear1", DEFAULT_PORT),
    ("gear1:4731", "gear1", 4731),
    ("127.0.0.1", "127.0.0.1", DEFAULT_PORT),
    ("127.0.0.1:9", "127.0.0.1", 9),
    ("[::1]", "::1", DEFAULT_PORT),
    ("[::1]:4740", "::1", 4740),
    ("::1", "::1", DEFAULT_PORT),
    ("fe80::1:2", "fe80::1:2", DEFAULT_PORT),
    (" gear1 ", "gear1", DEFAULT_PORT),
])
def test_plainForms(text, host, port):
    address = parseAddress(text)
    assert (address.host, address.port, address.description) == (host, port, None)
    assert address.text == text
    assert isinstance(address.endpoint(MemoryReactorClock()), HostnameEndpoint)


def test_defaultPort():
    assert parseAddress("a", defaultPort=7003).port == 7003


@pytest.mark.parametrize("text, kind", [
    ("tcp:host=a:port=4730", TCP4ClientEndpoint),
    ("tcp:a:4730", TCP4ClientEndpoint),
    ("unix:/run/gearman.sock", UNIXClientEndpoint),
    ("unix:path=/tmp/x:timeout=3", UNIXClientEndpoint),
])
def test_endpointStrings(text, kind):
    address = parseAddress(text)
    assert address.host is None and address.description == text
    assert isinstance(address.endpoint(MemoryReactorClock()), kind)


def test_tlsString():
    address = parseAddress("tls:gear1:4730")
    assert address.description == "tls:gear1:4730"


def test_connectsToRightPlace():
    reactor = MemoryReactorClock()
    from twisted.internet.protocol import Factory, Protocol

    parseAddress("tcp:host=10.0.0.1:port=4799").endpoint(reactor).connect(Factory.forProtocol(Protocol))
    assert reactor.tcpClients[0][:2] == ("10.0.0.1", 4799)


@pytest.mark.parametrize("text", ["", "  ", "host:0", "host:70000", "[::1]:99999", "-x-:a:b"])
def test_invalid(text):
    with pytest.raises(ValueError):
        parseAddress(text)


def test_equality():
    assert parseAddress("a") == parseAddress("a:4730")
    assert parseAddress("a") != parseAddress("a:4731")
    assert len({parseAddress("a"), parseAddress("a:4730")}) == 1

"""
TLS on the job server: L{txgear._tls} and L{txgear._tlsprotocol} in memory,
the server in-process over loopback TLS, and C{twistd gearman --tls-port} as
a process driven by Python's C{ssl} clients (handshakes, refusals, TLS
versions, a job, the handshake deadline, SIGHUP).
"""
from __future__ import annotations

import os
import shutil
import signal
import ssl
from typing import Any, Iterator, List

import pytest
import pytest_twisted
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel, capturedLogs

from tests._certs import Authority
from tests._rawclient import RawClient
from tests._tlskit import (
    Pki, clientContext, refused, serverCertificateOf, serving, startTLS, tlsClient, tlsServer,
    waitForLog,
)
from txgear._packet import PacketType as P, encodeRequest, encodeResponse
from txgear._tls import ServerTLS, TLSFileError
from txgear._tlsprotocol import ServerTLSFactory
from txgear._turnwriter import directSocket
from txgear.server import GearmanServerFactory, GearmanServerService, JobServerState
from txgear.server._identity import peerNames


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    return Pki(str(tmp_path_factory.mktemp("pki")))


# -- certificates and keys from files ------------------------------------------


def test_keyInTheCertificateFile(pki):
    tls = ServerTLS(pki.server.pemPath)
    assert tls.files.certificate == pki.server.certificate
    assert not tls.requiresClientCertificate
    assert ServerTLS(pki.server.certPath, pki.server.keyPath, pki.ca.certPath).requiresClientCertificate


def test_chainAfterTheCertificate(pki, tmp_path):
    chained = tmp_path / "chained.pem"
    chained.write_bytes(pki.server.certPEM + pki.ca.certPEM + pki.server.keyPEM)
    tls = ServerTLS(str(chained))
    assert tls.files.certificate == pki.server.certificate
    assert tls.files.chain == [pki.ca.certificate]


@pytest.mark.parametrize("case", ["missing", "not-pem", "wrong-key", "no-key", "ca-not-pem"])
def test_badFilesNameTheFile(pki, tmp_path, case):
    garbage = tmp_path / "garbage.pem"
    garbage.write_bytes(b"not a certificate\n")
    missing = str(tmp_path / "missing.pem")
    arguments, culprit = {
        "missing": ((missing, pki.server.keyPath), missing),
        "not-pem": ((str(garbage), pki.server.keyPath), str(garbage)),
        "wrong-key": ((pki.server.certPath, pki.client.keyPath), pki.client.keyPath),
        "no-key": ((pki.server.certPath,), pki.server.certPath),
        "ca-not-pem": ((pki.server.certPath, pki.server.keyPath, str(garbage)), str(garbage)),
    }[case]
    with pytest.raises(TLSFileError) as caught:
        ServerTLS(*arguments)
    assert caught.value.path == culprit
    assert culprit in str(caught.value)


def _rewrite(issued, certPath: str, keyPath: str) -> None:
    with open(certPath, "wb") as f:
        f.write(issued.certPEM)
    with open(keyPath, "wb") as f:
        f.write(issued.keyPEM)


def _localCertificate(connection: Any) -> Any:
    return connection.get_certificate().to_cryptography()


def test_reloadServesNewConnectionsOnly(pki, tmp_path):
    certPath, keyPath = str(tmp_path / "s.crt"), str(tmp_path / "s.key")
    _rewrite(pki.server, certPath, keyPath)
    tls = ServerTLS(certPath, keyPath, pki.ca.certPath)
    before = tls.serverConnectionForTLS(None)
    renewed = pki.ca.issue("localhost", dnsNames=["localhost"], fileName="renewed")
    _rewrite(renewed, certPath, keyPath)
    tls.reload()
    after = tls.serverConnectionForTLS(None)
    assert _localCertificate(after) == renewed.certificate
    assert _localCertificate(before) == pki.server.certificate


def test_brokenReloadKeepsTheOld(pki, tmp_path):
    certPath, keyPath = str(tmp_path / "s.crt"), str(tmp_path / "s.key")
    _rewrite(pki.server, certPath, keyPath)
    tls = ServerTLS(certPath, keyPath)
    with open(keyPath, "wb") as f:
        f.write(pki.client.keyPEM)  # half-way through a renewal: the key of another
    with pytest.raises(TLSFileError):
        tls.reload()
    assert tls.files.certificate == pki.server.certificate
    assert _localCertificate(tls.serverConnectionForTLS(None)) == pki.server.certificate


def test_serviceReload(pki, tmp_path):
    from txgear.server._access import AccessControl

    certPath, keyPath = str(tmp_path / "s.crt"), str(tmp_path / "s.key")
    _rewrite(pki.server, certPath, keyPath)
    tls = ServerTLS(certPath, keyPath)
    clock = Clock()
    state = JobServerState(clock=clock)
    service = GearmanServerService([], state, reactor=clock, tls=tls,
                                   tlsEndpoints=["tcp:0:interface=127.0.0.1"])
    assert service.reload() is None  # no access list: nothing to wait for
    aclPath = tmp_path / "acl.ini"
    aclPath.write_text("[client-app]\ninvoke = resize\n")
    service.factory.access = access = AccessControl.fromFile(str(aclPath))
    aclPath.write_text("[client-app]\ninvoke = thumbnail\n")
    renewed = pki.ca.issue("localhost", dnsNames=["localhost"], fileName="renewed2")
    _rewrite(renewed, certPath, keyPath)
    with capturedLogs() as events:
        done = service.reload()
    assert isinstance(done, Deferred) and done.called
    assert access.allows(("client-app",), "invoke", b"thumbnail")
    assert not access.allows(("client-app",), "invoke", b"resize")
    assert tls.files.certificate == renewed.certificate
    assert not [e for e in events if e["log_level"] >= LogLevel.error]

    with open(certPath, "wb") as f:
        f.write(b"truncated")
    aclPath.write_text("[client-app]\ninvoke = (\n")
    with capturedLogs() as events:
        service.reload()
    errors = [e for e in events if e["log_level"] == LogLevel.error]
    assert len(errors) == 2 and errors[0]["path"] == certPath
    assert str(aclPath) in errors[1]["problem"] and "line 2" in errors[1]["problem"]
    assert not [e for e in events if e.get("log_failure") is not None]
    assert tls.files.certificate == renewed.certificate  # the old ones stay
    assert access.allows(("client-app",), "invoke", b"thumbnail")  # so do the old rules


def test_tlsEndpointsNeedCertificates():
    with pytest.raises(ValueError):
        GearmanServerService([], JobServerState(clock=Clock()), reactor=Clock(),
                             tlsEndpoints=["tcp:0"])


# -- the handshake deadline, in memory -------------------------------------------


class _Transport(StringTransport):
    aborted = False

    def abortConnection(self) -> None:
        self.aborted = True
        self.loseConnection()


def _tlsServerConnection(pki: Pki, clock: Clock, deadline: float = 10.0):
    tls = ServerTLS(pki.server.certPath, pki.server.keyPath, handshakeDeadline=deadline)
    factory = ServerTLSFactory(tls, GearmanServerFactory(JobServerState(clock=clock)), clock,
                               deadline)
    protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    transport = _Transport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
    protocol.makeConnection(transport)
    return protocol, transport


def _pumpHandshake(pki: Pki, protocol: Any, transport: StringTransport) -> None:
    """A client handshake over memory BIOs with the server protocol."""
    from OpenSSL import SSL

    context = SSL.Context(SSL.TLS_METHOD)
    context.load_verify_locations(pki.ca.certPath)
    client = SSL.Connection(context, None)
    client.set_connect_state()
    for _ in range(10):
        try:
            client.do_handshake()
        except SSL.WantReadError:
            pass
        try:
            protocol.dataReceived(client.bio_read(65536))
        except SSL.WantReadError:
            pass
        server = transport.value()
        transport.clear()
        if server:
            client.bio_write(server)
        if protocol.handshakeFinished():
            return
    raise AssertionError("the handshake did not finish")


def test_silentPeerClosedAtTheDeadline(pki):
    clock = Clock()
    protocol, transport = _tlsServerConnection(pki, clock, deadline=10.0)
    clock.advance(9.9)
    assert not transport.aborted
    with capturedLogs() as events:
        clock.advance(0.1)
    assert transport.aborted
    assert any("no handshake within" in e.get("log_format", "") for e in events)
    protocol.connectionLost(None)
    assert clock.getDelayedCalls() == [] or all(
        not c.active() for c in clock.getDelayedCalls())


def test_finishedHandshakeOutlivesTheDeadline(pki):
    clock = Clock()
    protocol, transport = _tlsServerConnection(pki, clock, deadline=10.0)
    _pumpHandshake(pki, protocol, transport)
    clock.advance(11)
    assert not transport.aborted and not transport.disconnecting


def test_deadlineTimerCancelledOnClose(pki):
    clock = Clock()
    protocol, transport = _tlsServerConnection(pki, clock)
    protocol.connectionLost(None)
    assert [c for c in clock.getDelayedCalls() if c.active()] == []


# -- in-process, over loopback ----------------------------------------------------


class _EchoClient(Protocol):
    def __init__(self) -> None:
        self.received = b""
        self.waiting: List[Any] = []
        self.lost: Deferred = Deferred()

    def echo(self, data: bytes) -> Deferred:
        d: Deferred = Deferred()
        self.waiting.append((encodeResponse(P.ECHO_RES, data), d))
        self.transport.write(encodeRequest(P.ECHO_REQ, data))
        return d

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if self.waiting and len(self.received) >= len(self.waiting[0][0]):
            expected, d = self.waiting.pop(0)
            got, self.received = self.received[:len(expected)], self.received[len(expected):]
            d.callback(got == expected)

    def connectionLost(self, reason: Any) -> None:
        self.lost.callback(reason.value)  # the exception: a Failure result would raise


@pytest_twisted.ensureDeferred
async def test_inProcessConnectionOverTLS(pki):
    """
    The server's side of a TLS connection: no raw socket sends, keepalive
    and peer address through the TLS layer, the client's names, and a stop
    that closes it cleanly (TLS close_notify, no abort after the grace).
    """
    from twisted.internet import reactor
    from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, wrapClientTLS
    from twisted.internet.error import ConnectionDone
    from twisted.internet.ssl import Certificate, PrivateCertificate, optionsForClientTLS

    tls = ServerTLS(pki.server.certPath, pki.server.keyPath, pki.ca.certPath)
    service = GearmanServerService([], JobServerState(clock=reactor), reactor=reactor,
                                   tlsEndpoints=["tcp:0:interface=127.0.0.1"], tls=tls,
                                   shutdownGrace=60.0)
    service.startService()
    await service.started
    try:
        port = service.ports[0].getHost().port
        options = optionsForClientTLS(
            "localhost", Certificate.loadPEM(pki.ca.certPEM),
            PrivateCertificate.loadPEM(pki.client.certPEM + pki.client.keyPEM))
        endpoint = wrapClientTLS(options, TCP4ClientEndpoint(reactor, "127.0.0.1", port))
        client = await connectProtocol(endpoint, _EchoClient())
        assert await client.echo(b"over tls") is True
        (server,) = service.factory.connections.values()
        assert directSocket(server.transport) is None
        assert server.transport.getTcpKeepAlive()
        fd, host = server.describe()
        assert fd.isdigit() and host == b"127.0.0.1"
        assert peerNames(server.transport) == ("client-app",)
    finally:
        await service.stopService()
    reason = await client.lost
    assert isinstance(reason, ConnectionDone), reason


# -- twistd gearman --tls-port as a process ---------------------------------------


@pytest.fixture(scope="module")
def server(pki) -> Iterator[Any]:
    """Client certificates of pki's CA required."""
    yield from serving(tlsServer(pki))


@pytest.fixture(scope="module")
def openServer(pki) -> Iterator[Any]:
    """No CA: no client certificate asked; key in the certificate file; 1 s handshakes."""
    process = startTLS(tlsServer(pki, "--tls-handshake-deadline", "1", ca=False,
                                 certificate=pki.server.pemPath))
    try:
        yield process
    finally:
        process.stop()


def test_goodCertificate(pki, server):
    with tlsClient(server.tlsPort, clientContext(pki, pki.client)) as client:
        assert client.sock.version() == "TLSv1.3"
        client.echo(b"hello over TLS")
        assert client.admin("version").startswith(b"OK ")


@pytest.mark.parametrize("who", ["none", "foreign", "expired"])
def test_refusedCertificates(pki, server, who):
    certificate = {"none": None, "foreign": pki.foreign, "expired": pki.expired}[who]
    assert refused(server.tlsPort, clientContext(pki, certificate))
    with tlsClient(server.tlsPort, clientContext(pki, pki.client)) as client:
        client.echo()  # still serving
    reason = {"none": "no client certificate", "foreign": "not signed by the CA",
              "expired": "it has expired"}[who]
    waitForLog(server, reason)


def test_noCertificateNeededWithoutCA(pki, openServer):
    with tlsClient(openServer.tlsPort, clientContext(pki)) as client:
        client.echo(b"anonymous")


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_tlsVersions(pki, server, version):
    with tlsClient(server.tlsPort, clientContext(pki, pki.client, version)) as client:
        assert client.sock.version() == version.name.replace("_", ".")
        client.echo(version.name.encode())


def test_tls11Refused(pki, openServer):
    context = clientContext(pki)
    try:
        context.minimum_version = ssl.TLSVersion.TLSv1
        context.maximum_version = ssl.TLSVersion.TLSv1_1
        context.set_ciphers("DEFAULT:@SECLEVEL=0")
    except (ValueError, ssl.SSLError):
        pytest.skip("this Python's OpenSSL cannot offer TLS 1.1")
    assert refused(openServer.tlsPort, context)


def test_jobRoundTripOverTLS(pki, server):
    payload = os.urandom(3 * 1024 * 1024)  # several TLS records and transport pieces
    with tlsClient(server.tlsPort, clientContext(pki, pki.worker)) as worker, \
            tlsClient(server.tlsPort, clientContext(pki, pki.client)) as client:
        worker.register(b"tls-reverse")
        handle = client.submit(b"tls-reverse", payload)
        kind, args = worker.grab(P.GRAB_JOB)
        assert kind == P.JOB_ASSIGN and args[0] == handle and args[2] == payload
        worker.send(P.WORK_COMPLETE, handle, payload[::-1])
        assert client.expect(P.WORK_COMPLETE, timeout=20) == [handle, payload[::-1]]


def test_plainPortStaysPlain(server):
    with RawClient(server.port) as client:
        client.echo(b"plain")


@pytest.mark.parametrize("data", [encodeRequest(P.ECHO_REQ, b"plain on tls"),
                                  b"\x16\x03\x01\x00\x05garbage" * 50])
def test_notTLSIsClosed(pki, server, data):
    with RawClient(server.tlsPort) as peer:
        peer.sendRaw(data)
        peer.waitClosed(timeout=10)
    with tlsClient(server.tlsPort, clientContext(pki, pki.client)) as client:
        client.echo()


def test_silentPeerClosedWhileOthersAreServed(pki, openServer):
    with RawClient(openServer.tlsPort, timeout=15) as silent:
        with tlsClient(openServer.tlsPort, clientContext(pki)) as client:
            client.echo(b"not stalled")
        silent.waitClosed(timeout=15)  # the 1 s deadline, bounded here at 15 s
    waitForLog(openServer, "no handshake within 1.0 seconds")


def test_oversizedPacketOverTLS(pki, server):
    """An ERROR, then a close: output written with loseConnection leaves first, over TLS too."""
    with tlsClient(server.tlsPort, clientContext(pki, pki.client)) as client:
        client.sendRaw(b"\0REQ" + (P.ECHO_REQ).to_bytes(4, "big") + (1 << 30).to_bytes(4, "big"))
        kind, args = client.recv(timeout=10)
        assert kind == P.ERROR and args[0] == b"ARGUMENT_TOO_LARGE"
        client.waitClosed(timeout=10)


def test_sighupReloadsCertificates(pki, tmp_path):
    """
    SIGHUP: new connections get the new certificate and the new client CA;
    an open connection keeps working; a broken file is logged and the
    certificates in use stay.
    """
    certPath, keyPath, caPath = (str(tmp_path / n) for n in ("s.crt", "s.key", "ca.crt"))
    _rewrite(pki.server, certPath, keyPath)
    shutil.copy(pki.ca.certPath, caPath)
    process = startTLS(tlsServer(pki, certificate=certPath, key=keyPath, caPath=caPath,
                                 cwd=str(tmp_path)))
    try:
        port = process.tlsPort
        with tlsClient(port, clientContext(pki, pki.client)) as kept:
            kept.echo(b"before")
            newCa = Authority(str(tmp_path / "newca"), "renewed CA")
            renewed = newCa.issue("localhost", dnsNames=["localhost"], ipAddresses=["127.0.0.1"])
            newClient = newCa.issue("client-app")
            _rewrite(renewed, certPath, keyPath)
            shutil.copy(newCa.certPath, caPath)
            # Rewritten, not reloaded: new connections still get the old one.
            assert serverCertificateOf(port, pki) == pki.server.certificate.public_bytes(
                _der())
            os.kill(process.pid, signal.SIGHUP)
            waitForLog(process, "Reloaded the TLS certificates")
            assert serverCertificateOf(port, pki) == renewed.certificate.public_bytes(_der())
            newContext = ssl.create_default_context(cafile=newCa.certPath)
            newContext.load_cert_chain(newClient.certPath, newClient.keyPath)
            with tlsClient(port, newContext) as fresh:
                fresh.echo(b"new CA")
            kept.echo(b"after")  # its handshake was with the old ones

            with open(certPath, "wb") as f:
                f.write(b"-----BEGIN CERTIFICATE-----\ntruncated")
            os.kill(process.pid, signal.SIGHUP)
            log = waitForLog(process, "Reloading the TLS certificates failed")
            assert certPath in log
            assert serverCertificateOf(port, pki) == renewed.certificate.public_bytes(_der())
            kept.echo(b"still")
            # Last: after a refused handshake, PyPy's ssl module reports the
            # verification error again on the next read of any connection.
            assert refused(port, clientContext(pki, pki.client))  # the old CA's client
    finally:
        process.stop()


def _der() -> Any:
    from cryptography.hazmat.primitives.serialization import Encoding

    return Encoding.DER


@pytest_twisted.ensureDeferred
async def test_tlsOverUnixSocket(pki, tmp_path):
    """TLS carried by a UNIX socket: no TCP options to set, the same service."""
    from twisted.internet import reactor
    from twisted.internet.endpoints import UNIXClientEndpoint, connectProtocol, wrapClientTLS
    from twisted.internet.ssl import Certificate, optionsForClientTLS

    path = str(tmp_path / "gearman.sock")
    tls = ServerTLS(pki.server.certPath, pki.server.keyPath)
    service = GearmanServerService([], JobServerState(clock=reactor), reactor=reactor,
                                   tlsEndpoints=[f"unix:{path}"], tls=tls)
    service.startService()
    await service.started
    try:
        options = optionsForClientTLS("localhost", Certificate.loadPEM(pki.ca.certPEM))
        client = await connectProtocol(
            wrapClientTLS(options, UNIXClientEndpoint(reactor, path)), _EchoClient())
        assert await client.echo(b"over a unix socket") is True
    finally:
        await service.stopService()
    await client.lost


@pytest_twisted.ensureDeferred
async def test_sslEndpointOnPortClosesCleanly(pki):
    """
    An C{ssl:} endpoint given to C{--port} (Twisted's own TLS, not
    C{--tls-port}): a stop closes its connections with a TLS close, within
    the grace, not by aborting them once it has run out.
    """
    from twisted.internet import reactor
    from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, wrapClientTLS
    from twisted.internet.error import ConnectionDone
    from twisted.internet.ssl import Certificate, optionsForClientTLS

    description = (f"ssl:0:interface=127.0.0.1:privateKey={pki.server.keyPath}"
                   f":certKey={pki.server.certPath}")
    service = GearmanServerService([description], JobServerState(clock=reactor),
                                   reactor=reactor, shutdownGrace=30.0)
    service.startService()
    await service.started
    port = service.ports[0].getHost().port
    options = optionsForClientTLS("localhost", Certificate.loadPEM(pki.ca.certPEM))
    endpoint = wrapClientTLS(options, TCP4ClientEndpoint(reactor, "127.0.0.1", port))
    client = await connectProtocol(endpoint, _EchoClient())
    try:
        assert await client.echo(b"over ssl:") is True
    finally:
        started = reactor.seconds()
        await service.stopService()
    reason = await client.lost
    assert isinstance(reason, ConnectionDone), reason
    assert reactor.seconds() - started < 10  # no wait for the grace, then an abort

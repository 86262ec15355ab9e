"""
Loopback integration tests of txgear's client and worker over TLS
(L{txgear.TLSOptions}, L{txgear._tlsclient}), against TLS servers made here
with Twisted around txgear's job server, and against gear's server.
"""
from __future__ import annotations

import os
from typing import Any, List, Optional

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred, gatherResults

from tests._certs import Authority, Issued
from tests.test_integration_client import closeAll, started, within
from txgear import GearmanClient, GearmanWorker, NoServers, TLSConnectError, TLSOptions

TLS_VERSIONS = ["TLSv1_2", "TLSv1_3"]


class TLSServer:
    """
    txgear's job server behind a Twisted TLS listener on 127.0.0.1: it
    requires and verifies a client certificate signed by C{clientCA} when
    one is given.
    """

    def __init__(self, certificate: Issued, clientCA: Optional[Authority] = None,
                 version: Optional[str] = None) -> None:
        from twisted.internet import reactor, ssl
        from txgear.server import GearmanServerFactory, JobServerState

        private = ssl.PrivateCertificate.loadPEM(certificate.certPEM + certificate.keyPEM)
        extra: dict = {}
        if clientCA is not None:
            extra = dict(verify=True, requireCertificate=True,
                         caCerts=[ssl.Certificate.loadPEM(clientCA.certPEM).original])
        options = ssl.CertificateOptions(privateKey=private.privateKey.original,
                                         certificate=private.original, **extra)
        if version is not None:
            # Pinned on the context itself: Twisted's raiseMinimumTo plus
            # lowerMaximumSecurityTo exclude every version with pyOpenSSL 25
            # (PyPy 3.9's newest cryptography), so they cannot be used here.
            from OpenSSL import SSL

            pinned = {"TLSv1_2": SSL.TLS1_2_VERSION, "TLSv1_3": SSL.TLS1_3_VERSION}[version]
            context = options.getContext()  # kept by the options, used by listenSSL
            context.set_min_proto_version(pinned)
            context.set_max_proto_version(pinned)
        self.factory = GearmanServerFactory(JobServerState(clock=reactor))
        self.versions: List[str] = []
        # What SSL4ServerEndpoint(reactor, 0, options, interface=...) does, synchronously.
        self._port = reactor.listenSSL(0, self.factory, options, interface="127.0.0.1")
        self.port = self._port.getHost().port

    def stop(self) -> Deferred:
        return self._port.stopListening()


@pytest.fixture
def ca(tmp_path):
    return Authority(str(tmp_path / "ca"))


@pytest.fixture
def client1(ca):
    return ca.issue("client-1")


def options(ca: Authority, client: Optional[Issued] = None, **kw: Any) -> TLSOptions:
    if client is None:
        return TLSOptions(ca=ca.certPath, **kw)
    return TLSOptions(ca=ca.certPath, certificate=client.certPath, key=client.keyPath, **kw)


def reverse(job: Any) -> bytes:
    return job.payload[::-1]


async def connectFails(tls: TLSOptions, address: str) -> str:
    """Connect a client that must fail; the text of its L{NoServers} error."""
    from twisted.application.internet import backoffPolicy

    client = GearmanClient([address], tls=tls, retryPolicy=backoffPolicy(initialDelay=60))
    try:
        with pytest.raises(NoServers) as caught:
            await within(client.connect())
        server = client.pool.servers[0]
        assert server.lastError is not None and server.lastError.check(TLSConnectError)
        return str(caught.value)
    finally:
        await closeAll(client)


# Working connections


@pytest.mark.parametrize("version", TLS_VERSIONS)
@pytest_twisted.ensureDeferred
async def test_roundTripMutualTLS(ca, client1, version):
    """Client and worker with a CA and client certificates, over TLS 1.2 and 1.3."""
    server = TLSServer(ca.serverCertificate(), clientCA=ca, version=version)
    try:
        workerCertificate = ca.issue("worker-1")
        for host in ("127.0.0.1", "localhost"):
            address = f"{host}:{server.port}"
            worker = GearmanWorker([address], tls=options(ca, workerCertificate))
            worker.register("reverse", reverse)
            client = GearmanClient([address], tls=options(ca, client1))
            await started(worker, client)
            try:
                assert await within(client.submit("reverse", b"over tls")) == b"slt revo"
                connection = client.pool.servers[0].protocol.transport
                assert connection.getHandle().get_protocol_version_name() == version.replace("_", ".")
                # An admin query on a connection of its own, through the same endpoint.
                from txgear.errors import SubmitTimeout

                with pytest.raises(SubmitTimeout, match="no worker is registered for 'nobody'"):
                    await within(client.submit("nobody", b"x", timeout=0.2))
            finally:
                await closeAll(client, worker)
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_certificateAndKeyInOneFile(ca, client1):
    server = TLSServer(ca.serverCertificate(), clientCA=ca)
    try:
        client = GearmanClient([f"127.0.0.1:{server.port}"],
                               tls=TLSOptions(ca=ca.certPath, certificate=client1.pemPath))
        await started(client)
        await closeAll(client)
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_endpointStringWithTrustRoots(ca, client1, tmp_path):
    """Twisted's own tls: client endpoint string, with a CA directory and a client certificate."""
    roots = tmp_path / "roots"
    roots.mkdir()
    (roots / "ca.pem").write_bytes(ca.certPEM)
    server = TLSServer(ca.serverCertificate(), clientCA=ca)
    try:
        address = (f"tls:127.0.0.1:{server.port}:trustRoots={roots}:"
                   f"certificate={client1.certPath}:privateKey={client1.keyPath}")
        worker = GearmanWorker([address])
        worker.register("reverse", reverse)
        client = GearmanClient([address])
        await started(worker, client)
        try:
            assert await within(client.submit("reverse", b"abc")) == b"cba"
        finally:
            await closeAll(client, worker)
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_ipAddressIsVerifiedAgainstTheIPSubjectAlternativeName(ca):
    """An IP address must be named by an IP SAN: a DNS name or a common name of it does not do."""
    for good in (ca.issue("ip-only", ipAddresses=["127.0.0.1"]),):
        server = TLSServer(good)
        try:
            client = GearmanClient([f"127.0.0.1:{server.port}"], tls=options(ca))
            await started(client)
            await closeAll(client)
        finally:
            await server.stop()
    for bad in (ca.issue("127.0.0.1", fileName="cn-is-ip"),
                ca.issue("dns", dnsNames=["127.0.0.1"], fileName="dns-is-ip"),
                ca.issue("other-ip", ipAddresses=["127.0.0.2"])):
        server = TLSServer(bad)
        try:
            text = await connectFails(options(ca), f"127.0.0.1:{server.port}")
            assert "TLS: the server's certificate is not valid for '127.0.0.1'" in text
        finally:
            await server.stop()


# Refused connections: the error says why


@pytest_twisted.ensureDeferred
async def test_hostNameMismatch(ca, client1):
    server = TLSServer(ca.issue("elsewhere", dnsNames=["elsewhere.example"]), clientCA=ca)
    try:
        address = f"127.0.0.1:{server.port}"
        text = await connectFails(options(ca, client1), address)
        assert text == (f"no Gearman server is reachable ({address}: TLS: the server's certificate "
                        f"is not valid for '127.0.0.1' (it is for elsewhere.example))")
        text = await connectFails(options(ca, client1), f"localhost:{server.port}")
        assert "not valid for 'localhost' (it is for elsewhere.example)" in text
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_wrongCA(ca, client1, tmp_path):
    other = Authority(str(tmp_path / "other"), name="another CA")
    server = TLSServer(ca.serverCertificate(), clientCA=ca)
    try:
        text = await connectFails(TLSOptions(ca=other.certPath), f"127.0.0.1:{server.port}")
        assert "TLS: the server's certificate was not verified: " in text
        assert f"(not signed by the CA in {other.certPath!r}); certificate CN=localhost" in text
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_expiredServerCertificate(ca, client1):
    server = TLSServer(ca.serverCertificate(expired=True), clientCA=ca)
    try:
        text = await connectFails(options(ca, client1), f"127.0.0.1:{server.port}")
        assert "TLS: the server's certificate was not verified: certificate has expired (it " \
               "expired on " in text
    finally:
        await server.stop()


@pytest.mark.parametrize("version", TLS_VERSIONS)
@pytest_twisted.ensureDeferred
async def test_missingClientCertificate(ca, version):
    """
    A server that requires a client certificate refuses a client without
    one; with TLS 1.3 it says so after the client's handshake is over, and
    the connection still fails before anyone uses it.
    """
    server = TLSServer(ca.serverCertificate(), clientCA=ca, version=version)
    try:
        text = await connectFails(options(ca), f"127.0.0.1:{server.port}")
        assert "TLS: the server refused the connection: " in text
        assert text.endswith("(no client certificate was given))")
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_clientCertificateFromAnotherCA(ca, tmp_path):
    other = Authority(str(tmp_path / "other"), name="another CA")
    server = TLSServer(ca.serverCertificate(), clientCA=ca)
    try:
        text = await connectFails(options(ca, other.issue("intruder")), f"127.0.0.1:{server.port}")
        assert "TLS: the server refused the connection: " in text
        assert "no client certificate" not in text
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_plainServerOnTheTLSAddress(ca):
    """A plain Gearman server where TLS was expected: a clear failure, not a hang."""
    from twisted.internet import reactor
    from txgear.server import GearmanServerFactory, JobServerState

    port = reactor.listenTCP(0, GearmanServerFactory(JobServerState(clock=reactor)),
                             interface="127.0.0.1")
    try:
        text = await connectFails(options(ca), f"127.0.0.1:{port.getHost().port}")
        assert "TLS: " in text
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_poolRetriesQuietlyWithBackoff(ca, tmp_path):
    """
    A certificate failure is a connection failure like any other: the pool
    retries with its backoff, says why once (again only when the reason
    changes), and logs no traceback.
    """
    from twisted.logger import LogLevel, globalLogPublisher

    other = Authority(str(tmp_path / "other"), name="another CA")
    server = TLSServer(ca.serverCertificate(), clientCA=ca)
    delays: List[int] = []

    def policy(attempt: int) -> float:
        delays.append(attempt)
        return 0.01

    events: List[dict] = []
    globalLogPublisher.addObserver(events.append)
    client = GearmanClient([f"127.0.0.1:{server.port}"], tls=TLSOptions(ca=other.certPath),
                           retryPolicy=policy)
    try:
        client.startService()
        while len(delays) < 4:
            await within(_sleep(0.01))
    finally:
        await closeAll(client)
        globalLogPublisher.removeObserver(events.append)
        await server.stop()
    assert delays[:4] == [1, 2, 3, 4]
    ours = [e for e in events if e.get("log_namespace", "").startswith("txgear")]
    assert not [e for e in ours + events if e.get("log_failure") is not None]
    cannot = [e for e in ours if "Cannot connect" in e.get("log_format", "")]
    assert cannot[0]["log_level"] == LogLevel.info
    assert "not signed by the CA" in cannot[0]["error"]
    # The same failure again is logged at debug, which txgear's default level filters out.
    assert len(cannot) == 1


def _sleep(seconds: float) -> Deferred:
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    return deferLater(reactor, seconds, lambda: None)


# Options


def test_keyWithoutCertificate():
    with pytest.raises(ValueError, match="a TLS key needs its certificate"):
        TLSOptions(key="k.pem")


def test_unreadableFilesAreNamed(ca, tmp_path):
    missing = str(tmp_path / "missing.pem")
    with pytest.raises(ValueError, match=f"cannot read {missing!r} \\(--tls-ca\\)"):
        GearmanClient(["127.0.0.1:1"], tls=TLSOptions(ca=missing))
    with pytest.raises(ValueError, match="no PEM certificate in"):
        GearmanClient(["127.0.0.1:1"], tls=TLSOptions(ca=ca.keyPath))
    other = ca.issue("other")
    client = ca.issue("client")
    with pytest.raises(ValueError, match="does not match the certificate"):
        GearmanClient(["127.0.0.1:1"], tls=TLSOptions(ca=ca.certPath, certificate=client.certPath,
                                                      key=other.keyPath))


@pytest.mark.parametrize("address", ["tcp:host=127.0.0.1:port=4730", "unix:/run/gearman.sock"])
def test_unencryptedEndpointStringRefused(ca, address):
    with pytest.raises(ValueError, match="this endpoint would not be encrypted"):
        GearmanWorker([address], tls=options(ca))


def test_tlsEndpointStringKeptAsIs(ca):
    from txgear._tlsclient import _VerifiedEndpoint

    client = GearmanClient(["tls:127.0.0.1:4730", "127.0.0.1:4731"], tls=options(ca))
    first, second = (s._endpoint for s in client.pool.servers)
    assert not isinstance(first, _VerifiedEndpoint) and isinstance(second, _VerifiedEndpoint)


def test_withoutPyOpenSSL(ca):
    """
    Without pyOpenSSL (the tls extra), plain clients, workers and tools
    work, and TLS options say what to install.
    """
    import subprocess
    import sys

    code = f"""
import sys
sys.modules["OpenSSL"] = None  # import OpenSSL now raises ImportError
sys.modules["service_identity"] = None
from txgear import GearmanClient, GearmanWorker, TLSOptions
from txgear import _cli, worker_tap
GearmanClient(["127.0.0.1:1"]).close()
GearmanWorker(["127.0.0.1:1"]).close()
try:
    GearmanClient(["127.0.0.1:1"], tls=TLSOptions(ca={ca.certPath!r}))
except ImportError as e:
    print(e)
"""
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, timeout=60)
    assert out.stdout.decode().startswith(
        "TLS needs pyOpenSSL and service_identity: pip install txgear[tls]"), out.stderr.decode()


# Console scripts and twistd gearman-worker


def _tlsArgs(ca: Authority, client: Optional[Issued] = None) -> List[str]:
    argv = ["--tls-ca", ca.certPath]
    if client is not None:
        argv += ["--tls-cert", client.certPath, "--tls-key", client.keyPath]
    return argv


@pytest_twisted.ensureDeferred
async def test_submitAndAdminScriptsOverTLS(ca, client1, tmp_path):
    from twisted.internet import reactor
    from tests.test_cli import Deferred_, _Text
    from txgear import _cli

    server = TLSServer(ca.serverCertificate(), clientCA=ca)
    address = f"127.0.0.1:{server.port}"
    worker = GearmanWorker([address], tls=options(ca, ca.issue("worker-1")))
    worker.register("reverse", reverse)
    await started(worker)
    try:
        out, err = _Text(), _Text()
        code = await within(Deferred_(_cli.runSubmit(
            reactor, ["-s", address] + _tlsArgs(ca, client1) + ["reverse", "abc"],
            stdout=out, stderr=err)))
        assert (code, out.output(), err.getvalue()) == (0, b"cba\n", "")
        out = _Text()
        code = await within(Deferred_(_cli.runAdmin(
            reactor, ["-s", f"localhost:{server.port}"] + _tlsArgs(ca, client1) + ["status"],
            stdout=out)))
        assert code == 0 and ["reverse", "0", "0", "1"] in [l.split() for l in out.getvalue().splitlines()]

        other = Authority(str(tmp_path / "other"), name="another CA")
        for run in (_cli.runSubmit, _cli.runAdmin):
            err = _Text()
            argv = ["-s", address] + _tlsArgs(other, client1) + (
                ["reverse", "x"] if run is _cli.runSubmit else ["status"])
            code = await within(Deferred_(run(reactor, argv, stdout=_Text(), stderr=err)))
            lines = err.getvalue().splitlines()
            assert code == _cli.UNREACHABLE and len(lines) == 1, lines
            assert "TLS: the server's certificate was not verified" in lines[0]
        err = _Text()
        code = await within(Deferred_(_cli.runSubmit(
            reactor, ["-s", address] + _tlsArgs(ca) + ["reverse", "x"], stderr=err)))
        assert code == _cli.UNREACHABLE
        assert err.getvalue().startswith("txgear-submit: no Gearman server is reachable "
                                         f"({address}: TLS: the server refused the connection: ")
    finally:
        await closeAll(worker)
        await server.stop()


@pytest.mark.parametrize("name", ["txgear-submit", "txgear-worker", "txgear-admin"])
def test_scriptTLSMistakes(name, ca, tmp_path):
    from tests.test_cli import runScript
    from txgear import _cli

    extra = {"txgear-submit": ["f", "x"], "txgear-worker": ["-f", "f"],
             "txgear-admin": ["status"]}[name]
    missing = str(tmp_path / "nope.pem")
    for argv, message in [
        (["--tls-key", ca.keyPath], "a TLS key needs its certificate (--tls-cert)"),
        (["--tls-ca", missing], f"cannot read {missing!r} (--tls-ca): No such file or directory"),
    ]:
        assert runScript(name, "-s", "127.0.0.1:1", *argv, *extra) == (
            _cli.USAGE, "", f"{name}: {message}\n")
    code, out, err = runScript(name, "-s", "unix:/run/x.sock", "--tls-ca", ca.certPath, *extra)
    assert (code, out) == (_cli.USAGE, "")
    assert err == (f"{name}: server 'unix:/run/x.sock': with TLS options give host:port, or a tls: "
                   "endpoint string; this endpoint would not be encrypted\n")


@pytest_twisted.ensureDeferred
async def test_workerScriptOverTLS(ca, client1, tmp_path):
    """txgear-worker with --tls-*: works; with a CA that does not fit, one line and exit 3."""
    from twisted.internet.utils import getProcessOutputAndValue
    from tests.test_cli import _env, consoleScript

    server = TLSServer(ca.serverCertificate(), clientCA=ca)
    address = f"127.0.0.1:{server.port}"
    script = consoleScript("txgear-worker")
    try:
        worker = getProcessOutputAndValue(script[0], script[1:] + [
            "-s", address, "-f", "echo", "-n", "1"] + _tlsArgs(ca, ca.issue("worker-2")), env=_env())
        client = GearmanClient([address], tls=options(ca, client1))
        await started(client)
        try:
            assert await within(client.submit("echo", b"hello", timeout=20), 30) == b"hello"
            out, err, code = await within(worker, 30)
            assert code == 0, err
        finally:
            await closeAll(client)
        other = Authority(str(tmp_path / "other"), name="another CA")
        out, err, code = await within(getProcessOutputAndValue(script[0], script[1:] + [
            "-s", address, "-f", "echo"] + _tlsArgs(other, client1), env=_env()), 30)
        ours = [line for line in err.decode().splitlines() if line.startswith("txgear-worker:")]
        assert code == 3 and len(ours) == 1, err
        assert ours[0].startswith(f"txgear-worker: no Gearman server is reachable ({address}: TLS: "
                                  "the server's certificate was not verified: "), err
    finally:
        await server.stop()


def test_workerTapTLSOptions(ca, client1):
    from twisted.internet.testing import MemoryReactorClock
    from twisted.python import usage
    from txgear import worker_tap
    from txgear._tlsclient import _VerifiedEndpoint

    tap = worker_tap.Options()
    tap.parseOptions(["-s", "127.0.0.1:4999", "-s", "tls:gear1:4730", "-f", "tests.test_cli:shout",
                      "--tls-ca", ca.certPath, "--tls-cert", client1.certPath,
                      "--tls-key", client1.keyPath])
    assert tap["tls"] == TLSOptions(ca=ca.certPath, certificate=client1.certPath, key=client1.keyPath)
    service = worker_tap.makeService(tap, reactor=MemoryReactorClock())
    first, second = (s._endpoint for s in service.pool.servers)
    assert isinstance(first, _VerifiedEndpoint) and not isinstance(second, _VerifiedEndpoint)
    plain = worker_tap.Options()
    plain.parseOptions(["-f", "tests.test_cli:shout"])
    assert plain["tls"] is None
    for argv in (["--tls-key", client1.keyPath], ["--tls-ca", ca.certPath + ".missing"],
                 ["--tls-ca", ca.certPath, "-s", "tcp:host=a:port=1"]):
        with pytest.raises(usage.UsageError):
            worker_tap.Options().parseOptions(["-f", "tests.test_cli:shout"] + argv)


@pytest_twisted.ensureDeferred
async def test_twistdWorkerOverTLS(ca, client1):
    import subprocess

    from tests import _peers
    from tests.test_cli import _env, _pluginRegistered

    if not _pluginRegistered():
        pytest.skip("the gearman-worker ServiceMaker is not in twisted/plugins/")
    server = TLSServer(ca.serverCertificate(), clientCA=ca)
    address = f"localhost:{server.port}"
    worker = ca.issue("twistd-worker")
    logPath = os.path.join(ca.directory, "twistd.log")
    with open(logPath, "wb") as logFile:
        process = subprocess.Popen(
            _peers.TWISTD + ["--nodaemon", "--pidfile=", "--logfile=-", "gearman-worker", "--server",
                             address, "--function", "loud=tests.test_cli:shout"] + _tlsArgs(ca, worker),
            env=_env(), cwd=_peers.SOURCE_ROOT, stdout=logFile, stderr=subprocess.STDOUT)
    client = GearmanClient([address], tls=options(ca, client1))
    try:
        await started(client)
        assert await within(client.submit("loud", b"tls plugin", timeout=20), 30) == b"TLS PLUGIN"
    finally:
        await closeAll(client)
        process.terminate()
        # The server runs in this reactor: wait without blocking it (bounded).
        for _ in range(300):
            if process.poll() is not None:
                break
            await _sleep(0.05)
        else:
            process.kill()
            process.wait(10)
        await server.stop()
    with open(logPath, "rb") as f:
        log = f.read()
    assert process.returncode in (0, -15), log
    assert b"Connected to Gearman server " + address.encode() in log


# gear's server as a real TLS peer


_GEAR_SERVER = """
import sys, time
import gear
server = gear.Server(int(sys.argv[1]), ssl_key=sys.argv[2], ssl_cert=sys.argv[3],
                     ssl_ca=sys.argv[4], host="127.0.0.1")
while True:
    time.sleep(3600)
"""


@pytest.fixture
def gearServer(ca, tmp_path):
    """gear.Server (mutual TLS: it requires a client certificate from C{ca}) in a child process."""
    import sys

    from tests._peers import ServerProcess, freePort, requirePeer

    try:
        import gear  # noqa: F401
    except ImportError:
        requirePeer(False, "gear (the Python Gearman library)")
    certificate = ca.serverCertificate()
    port = freePort()
    process = ServerProcess("gear", [sys.executable, "-c", _GEAR_SERVER, str(port),
                                     certificate.keyPath, certificate.certPath, ca.certPath],
                            port, str(tmp_path / "gear.log"))
    process.start()
    yield process
    process.stop()


@pytest_twisted.ensureDeferred
async def test_gearServerPeer(ca, client1, gearServer):
    """txgear's client and worker against gear's TLS server (TLS 1.2, client certificates)."""
    for host in ("127.0.0.1", "localhost"):
        address = f"{host}:{gearServer.port}"
        worker = GearmanWorker([address], tls=options(ca, ca.issue("worker-1")))
        worker.register("reverse", reverse)
        client = GearmanClient([address], tls=options(ca, client1))
        await started(worker, client)
        try:
            results = await within(gatherResults([
                client.submit("reverse", f"job {i}".encode()) for i in range(5)]))
            assert results == [f"{i} boj".encode() for i in range(5)]
            background = await within(client.submitBackground("reverse", b"later"))
            assert background.server == address
        finally:
            await closeAll(client, worker)
    text = await connectFails(options(ca), f"127.0.0.1:{gearServer.port}")
    assert "TLS: the server refused the connection: " in text


# gearmand --ssl


def _answersPlainText(port: int) -> bool:
    """Whether a server answers the plain admin C{version} command (no TLS)."""
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"version\n")
        try:
            return s.recv(100).startswith(b"OK ")
        except OSError:
            return False


@pytest_twisted.ensureDeferred
async def test_gearmandSSL(ca, client1):
    """
    txgear's client and worker against gearmand --ssl, where gearmand's
    build speaks TLS. Debian's gearmand 1.1.20 takes --ssl and says "SSL:
    true", but is built without SSL: the port speaks plain Gearman, so this
    test is skipped there.
    """
    from tests._peers import gearmandProcess

    certificate = ca.serverCertificate()
    gearmand = gearmandProcess(extra=["--ssl", f"--ssl-ca-file={ca.certPath}",
                                      f"--ssl-certificate={certificate.certPath}",
                                      f"--ssl-key={certificate.keyPath}"]).start()
    try:
        if _answersPlainText(gearmand.port):
            pytest.skip("this gearmand takes --ssl but speaks plain Gearman on the port "
                        "(built without SSL, as Debian's 1.1.20+ds)")
        address = f"127.0.0.1:{gearmand.port}"
        worker = GearmanWorker([address], tls=options(ca, ca.issue("worker-1")))
        worker.register("reverse", reverse)
        client = GearmanClient([address], tls=options(ca, client1))
        await started(worker, client)
        try:
            assert await within(client.submit("reverse", b"gearmand tls")) == b"slt dnamraeg"
        finally:
            await closeAll(client, worker)
    finally:
        gearmand.stop()

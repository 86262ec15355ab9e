"""
Real third-party TLS peers against C{twistd gearman --tls-port}: the
C{openssl s_client} tool, gear's TLS client and worker, and libgearman's
C{gearman -S} (skipped, with the reason, where libgearman has no TLS).
"""
from __future__ import annotations

import os
import socket
import subprocess
import threading
from typing import Any, Iterator, List

import pytest

from tests._peers import requirePeer, requireProgram
from tests._tlskit import Pki, gearJobOverTLS, serving, tlsServer, waitForLog

try:
    import gear
except ImportError:  # pragma: no cover
    gear = None


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    return Pki(str(tmp_path_factory.mktemp("pki")))


@pytest.fixture(scope="module")
def server(pki) -> Iterator[Any]:
    yield from serving(tlsServer(pki))


def _readUntil(stream: Any, marker: bytes, timeout: float) -> bytes:
    """Read C{stream} (a pipe) in a thread until C{marker} or C{timeout}."""
    box: List[bytes] = []

    def read() -> None:
        data = b""
        while marker not in data:
            chunk = stream.read1(4096) if hasattr(stream, "read1") else stream.read(1)
            if not chunk:
                break
            data += chunk
        box.append(data)

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    thread.join(timeout)
    return box[0] if box else b""


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.kill()  # by its PID: it is ours
    process.wait(10)


# -- openssl s_client ----------------------------------------------------------


def _sClientSendsVersion(server: Any, *arguments: str, stderr: Any = subprocess.STDOUT
                         ) -> subprocess.Popen:
    """C{openssl s_client} to the TLS port, the admin line C{version} sent."""
    openssl = requireProgram("openssl")
    process = subprocess.Popen(
        [openssl, "s_client", "-connect", f"127.0.0.1:{server.tlsPort}", "-quiet"]
        + list(arguments),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr)
    assert process.stdin is not None and process.stdout is not None
    process.stdin.write(b"version\n")
    process.stdin.flush()
    return process


@pytest.mark.parametrize("version", ["-tls1_2", "-tls1_3"])
def test_opensslClientAdminVersion(pki, server, version):
    process = _sClientSendsVersion(
        server, version, "-CAfile", pki.ca.certPath, "-verify_return_error",
        "-verify_hostname", "localhost", "-cert", pki.admin.certPath, "-key", pki.admin.keyPath,
        stderr=subprocess.PIPE)
    try:
        reply = _readUntil(process.stdout, b"\n", timeout=15)
        assert reply.startswith(b"OK "), (reply, process.stderr)
    finally:
        _stop(process)


def test_opensslClientWithoutCertificateRefused(pki, server):
    process = _sClientSendsVersion(server, "-CAfile", pki.ca.certPath)
    try:
        reply = _readUntil(process.stdout, b"\nOK ", timeout=15)
        assert b"OK " not in reply
        process.wait(15)  # the server closed: s_client ends
    finally:
        _stop(process)


# -- gear ----------------------------------------------------------------------


def _requireGear() -> None:
    requirePeer(gear is not None, "the gear library (pip install gear)")


def test_gearClientAndWorkerOverTLS(pki, server):
    """gear's TLS (it offers TLS 1.2 only) as client and as worker, one job."""
    _requireGear()
    assert gearJobOverTLS(server.tlsPort, pki, pki.worker, pki.client, "tls-gear-reverse",
                          "hello gear", lambda payload: payload[::-1]) == "raeg olleh"


# -- libgearman's gearman -S ---------------------------------------------------


def _libgearmanSpeaksTLS(gearman: str) -> bool:
    """
    What C{gearman -S} sends first, to a listener of ours: a TLS ClientHello
    (a build with TLS) or a plain Gearman packet (Debian's, built without).
    """
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        listener.settimeout(10)
        port = listener.getsockname()[1]
        process = subprocess.Popen([gearman, "-S", "-h", "127.0.0.1", "-p", str(port),
                                    "-f", "probe", "probe"],
                                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        try:
            connection, _ = listener.accept()
            with connection:
                connection.settimeout(10)
                first = connection.recv(5)
        finally:
            _stop(process)
    return first[:1] == b"\x16"  # a TLS handshake record


def _gearmanEnvironment(pki: Pki, who: Any) -> dict:
    env = dict(os.environ)
    env.update(GEARMAND_CA_CERTIFICATE=pki.ca.certPath, GEARMAN_CLIENT_PEM=who.certPath,
               GEARMAN_CLIENT_KEY=who.keyPath)
    return env


def test_libgearmanOverTLS(pki, server):
    gearman = requireProgram("gearman")
    if not _libgearmanSpeaksTLS(gearman):
        # What such a build does against a TLS port: plain Gearman, which the
        # server refuses as "not TLS".
        done = subprocess.run([gearman, "-S", "-h", "127.0.0.1", "-p", str(server.tlsPort),
                               "-f", "tls-probe", "x"], env=_gearmanEnvironment(pki, pki.client),
                              stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
        # (the tool exits with 0 all the same)
        assert b"lost connection" in done.stderr.lower() and not done.stdout, done
        waitForLog(server, "does not speak TLS")
        pytest.skip("this libgearman is built without TLS (Debian's is): gearman -S sends "
                    "plain Gearman, so its handshake with a TLS port fails")
    worker = subprocess.Popen([gearman, "-S", "-h", "127.0.0.1", "-p", str(server.tlsPort),
                               "-w", "-c", "1", "-f", "tls-libgearman-wc", "--", "wc", "-c"],
                              env=_gearmanEnvironment(pki, pki.worker),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        done = subprocess.run([gearman, "-S", "-h", "127.0.0.1", "-p", str(server.tlsPort),
                               "-f", "tls-libgearman-wc", "12345"],
                              env=_gearmanEnvironment(pki, pki.client),
                              stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
        assert done.returncode == 0 and done.stdout.strip() == b"5", done
    finally:
        _stop(worker)



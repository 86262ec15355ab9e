"""
What the TLS server tests share: a throwaway PKI (L{Pki}), blocking TLS
clients made with Python's C{ssl} module, and txgear's server as a process
listening with TLS.
"""
from __future__ import annotations

import os
import socket
import ssl
import threading
import time
from typing import Any, Callable, Iterator, List, Optional

from tests._certs import Authority, Issued
from tests._peers import ServerProcess, freePort, txgearProcess, waitForPort
from tests._rawclient import RawClient


class Pki:
    """
    A CA with a server certificate (localhost, 127.0.0.1, ::1) and client
    certificates C{client-app}, C{worker-app}, C{ops-admin}; an expired one;
    and one from another CA.
    """

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.ca = Authority(os.path.join(directory, "ca"))
        self.server = self.ca.serverCertificate()
        self.client = self.ca.issue("client-app")
        self.worker = self.ca.issue("worker-app")
        self.admin = self.ca.issue("ops-admin")
        self.expired = self.ca.issue("client-expired", expired=True)
        self.foreignCa = Authority(os.path.join(directory, "foreign"), "another CA")
        self.foreign = self.foreignCa.issue("client-app")


def clientContext(pki: Pki, certificate: Optional[Issued] = None,
                  version: Optional[ssl.TLSVersion] = None) -> ssl.SSLContext:
    """A client context that checks the server against C{pki}'s CA (and its name)."""
    context = ssl.create_default_context(cafile=pki.ca.certPath)
    if certificate is not None:
        context.load_cert_chain(certificate.certPath, certificate.keyPath)
    if version is not None:
        context.minimum_version = version
        context.maximum_version = version
    return context


def tlsClient(port: int, context: ssl.SSLContext, timeout: float = 5.0) -> RawClient:
    """A L{RawClient} whose socket speaks TLS (handshake done from the client's side)."""
    client = RawClient(port, timeout=timeout)
    client.sock = context.wrap_socket(client.sock, server_hostname="localhost")
    return client


def refused(port: int, context: ssl.SSLContext) -> bool:
    """
    Does the server refuse this client (during the handshake, or, with TLS
    1.3, when it reads the client's certificate, before any reply)?
    """
    try:
        client = tlsClient(port, context)
    except (ssl.SSLError, ConnectionError):
        return True
    try:
        client.sendRaw(b"version\n")
        reply = client.waitClosed(timeout=5.0)
    except (ssl.SSLError, ConnectionError):
        return True
    finally:
        client.close()
    return reply == b""


def waitForTLS(port: int, timeout: float = 15.0) -> None:
    """Block until something accepts TCP connections on loopback C{port}."""
    waitForPort(port, timeout=timeout)


def tlsServer(pki: Pki, *extra: str, ca: bool = True, tlsPort: Optional[int] = None,
              cwd: Optional[str] = None, certificate: Optional[str] = None,
              key: Optional[str] = None, caPath: Optional[str] = None) -> ServerProcess:
    """
    txgear as a process (not started) with a plain port and a TLS port
    (C{.tlsPort}); C{ca}: require client certificates of C{pki}'s CA.
    """
    tlsPort = tlsPort or freePort()
    argv: List[str] = ["--queue", "memory", "--tls-port", f"tcp:{tlsPort}:interface=127.0.0.1",
                       "--tls-cert", certificate or pki.server.certPath]
    if key is not None or certificate is None:
        argv += ["--tls-key", key or pki.server.keyPath]
    if ca:
        argv += ["--tls-ca", caPath or pki.ca.certPath]
    process = txgearProcess(extra=argv + list(extra), cwd=cwd)
    process.tlsPort = tlsPort  # type: ignore[attr-defined]
    return process


def startTLS(process: ServerProcess) -> ServerProcess:
    """Start C{process} and wait for its TLS port too."""
    process.start()
    try:
        waitForTLS(process.tlsPort)  # type: ignore[attr-defined]
    except Exception:
        process.stop()
        raise
    return process


def waitForLog(process: ServerProcess, text: str, timeout: float = 10.0) -> str:
    """Block until the process's log holds C{text}; return the log."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        log = process.log()
        if text in log:
            return log
        time.sleep(0.05)
    raise AssertionError(f"{text!r} not in the log after {timeout}s:\n{process.log()[-3000:]}")


def serverCertificateOf(port: int, pki: Pki) -> bytes:
    """The DER certificate the server presents to a new connection (any CA accepted)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.load_cert_chain(pki.client.certPath, pki.client.keyPath)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            certificate = tls.getpeercert(binary_form=True)
            assert certificate is not None
            return certificate


__all__ = ["Pki", "clientContext", "tlsClient", "refused", "tlsServer", "startTLS",
           "waitForLog", "serverCertificateOf"]


#: An access control list for the identities of L{Pki}.
EXAMPLE_ACL = """\
# who may do what
[client-app]
invoke = resize|thumbnail

[worker-app]
register = resize|thumbnail

[ops-admin]
admin = true
grant = true

[anonymous]
invoke = echo
"""


def serving(process: ServerProcess) -> Iterator[ServerProcess]:
    """A fixture's body: start C{process} with its TLS port, yield it, stop it."""
    startTLS(process)
    try:
        yield process
    finally:
        process.stop()


def gearJobOverTLS(port: int, pki: Pki, worker: Issued, client: Issued, function: str,
                   payload: str, answer: Callable[[bytes], bytes]) -> str:
    """
    One job through gear's TLS worker (certificate C{worker}) and client
    (C{client}): the worker answers C{answer(payload)}; returns what the
    client received.
    """
    import gear

    gearWorker = gear.Worker(f"{worker.certificate.serial_number}-worker")
    gearClient = gear.Client(f"{client.certificate.serial_number}-client")
    try:
        gearWorker.addServer("127.0.0.1", port, worker.keyPath, worker.certPath, pki.ca.certPath)
        gearWorker.waitForServer(timeout=10)
        gearWorker.registerFunction(function)
        gearClient.addServer("127.0.0.1", port, client.keyPath, client.certPath, pki.ca.certPath)
        gearClient.waitForServer(timeout=10)
        job = gear.TextJob(function, payload)
        gearClient.submitJob(job, timeout=10)
        box: List[Any] = []
        thread = threading.Thread(target=lambda: box.append(gearWorker.getJob()), daemon=True)
        thread.start()
        thread.join(15)
        assert box, "gear's worker got no job"
        assigned = box[0]
        assert assigned.arguments == payload.encode("utf-8")
        assigned.sendWorkComplete(answer(assigned.arguments))
        deadline = time.monotonic() + 15
        while not job.complete and time.monotonic() < deadline:
            time.sleep(0.02)
        assert job.complete, "gear's client got no result"
        return "".join(job.data)
    finally:
        gearClient.shutdown()
        gearWorker.shutdown()

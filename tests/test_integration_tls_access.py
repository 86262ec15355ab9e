"""
TLS and access control together, end to end: C{twistd gearman --tls-port
--tls-ca --acl} as a process; each peer's identity is its client
certificate's common name (C{client-app}, C{worker-app}, C{ops-admin}), or
C{anonymous} on the plain port. Peers: raw TLS sockets, gear's TLS client and
worker, and txgear's own client and worker over TLS.
"""
from __future__ import annotations

import os
import signal
from typing import Any, Iterator

import pytest
import pytest_twisted

from tests._rawclient import RawClient
from tests._tlskit import (EXAMPLE_ACL, Pki, clientContext, gearJobOverTLS, serving, tlsClient,
                           tlsServer, waitForLog)
from txgear._packet import PacketType as P

ACL = EXAMPLE_ACL

DENIED_SUBMIT = [b"0", b"Permission denied by ACL"]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: Any) -> Pki:
    return Pki(str(tmp_path_factory.mktemp("pki")))


@pytest.fixture()
def server(pki: Pki, tmp_path: Any) -> Iterator[Any]:
    path = tmp_path / "acl.ini"
    path.write_text(ACL)
    process = tlsServer(pki, "--acl", str(path), cwd=str(tmp_path))
    process.aclPath = path
    yield from serving(process)


def _as(server: Any, pki: Pki, who: Any) -> RawClient:
    return tlsClient(server.tlsPort, clientContext(pki, who))


def test_eachIdentityHasItsRights(server: Any, pki: Pki) -> None:
    with _as(server, pki, pki.client) as client, _as(server, pki, pki.worker) as worker, \
            _as(server, pki, pki.admin) as admin:
        # The worker may register resize, not other; the client may register nothing.
        worker.send(P.CAN_DO, b"other")
        assert worker.expect(P.ERROR) == [
            b"PERMISSION_DENIED", b"Permission denied by ACL: may not register other"]
        worker.register(b"resize")
        client.send(P.CAN_DO, b"resize")
        assert client.expect(P.ERROR)[0] == b"PERMISSION_DENIED"

        # The client may submit resize, not other; the worker may submit nothing.
        handle = client.submit(b"resize", b"payload")
        client.send(P.SUBMIT_JOB_BG, b"other", b"", b"x")
        assert client.expect(P.ERROR) == DENIED_SUBMIT
        worker.send(P.SUBMIT_JOB, b"resize", b"", b"x")
        assert worker.expect(P.ERROR) == DENIED_SUBMIT

        # Another identity's job looks unknown; the client's own is known.
        worker.send(P.GET_STATUS, handle)
        assert worker.expect(P.STATUS_RES) == [handle, b"0", b"0", b"0", b"0"]
        client.send(P.GET_STATUS, handle)
        assert client.expect(P.STATUS_RES)[:2] == [handle, b"1"]

        # The job reaches the worker that may register it, and its result the client.
        kind, args = worker.grab()
        assert kind == P.JOB_ASSIGN_UNIQ and args[0] == handle
        worker.send(P.WORK_COMPLETE, handle, b"done")
        assert client.expect(P.WORK_COMPLETE) == [handle, b"done"]

        # Listings: the admin identity only.
        assert admin.admin("status").startswith(b"resize\t")
        assert client.admin("status") == b"ERR PERMISSION_DENIED\n"
        assert worker.admin("workers") == b"ERR PERMISSION_DENIED\n"
        assert client.admin("acl grant invoke client-app other") == b"ERR PERMISSION_DENIED\n"


def test_plainPortIsAnonymous(server: Any) -> None:
    with RawClient(server.port) as anonymous:
        anonymous.submit(b"echo", b"x", kind=P.SUBMIT_JOB_BG)
        anonymous.send(P.SUBMIT_JOB_BG, b"resize", b"", b"x")
        assert anonymous.expect(P.ERROR) == DENIED_SUBMIT
        assert anonymous.admin("status") == b"ERR PERMISSION_DENIED\n"


def test_grantAndRevokeOnOpenConnections(server: Any, pki: Pki) -> None:
    with _as(server, pki, pki.client) as client, _as(server, pki, pki.worker) as worker, \
            _as(server, pki, pki.admin) as admin:
        client.send(P.SUBMIT_JOB_BG, b"other", b"", b"x")
        assert client.expect(P.ERROR) == DENIED_SUBMIT
        # As in gear, a grant sets the identity's pattern (it replaces the old one).
        assert admin.admin("acl grant invoke client-app resize|other") == b"OK\n"
        client.submit(b"other", b"x", kind=P.SUBMIT_JOB_BG)
        client.send(P.SUBMIT_JOB_BG, b"thumbnail", b"", b"x")
        assert client.expect(P.ERROR) == DENIED_SUBMIT

        worker.register(b"resize")
        assert admin.admin("acl revoke register worker-app") == b"OK\n"
        client.submit(b"resize", b"y", kind=P.SUBMIT_JOB_BG)
        # The revoked worker no longer has the function: it gets no job of it.
        assert worker.grab()[0] == P.NO_JOB
        assert b"worker-app" in admin.admin("acl list")


def test_sighupReloadsTheAccessList(server: Any, pki: Pki) -> None:
    with _as(server, pki, pki.client) as client:
        client.send(P.SUBMIT_JOB_BG, b"other", b"", b"x")
        assert client.expect(P.ERROR) == DENIED_SUBMIT
        server.aclPath.write_text(ACL.replace("resize|thumbnail", "resize|thumbnail|other", 1))
        os.kill(server.pid, signal.SIGHUP)
        waitForLog(server, "Access control list reloaded")
        # The open connection has the new rights at once.
        client.submit(b"other", b"x", kind=P.SUBMIT_JOB_BG)

        server.aclPath.write_text("[client-app]\ninvoke = (\n")
        os.kill(server.pid, signal.SIGHUP)
        log = waitForLog(server, "the rules in force stay")
        assert "line 2" in log
        client.submit(b"other", b"x", kind=P.SUBMIT_JOB_BG)  # still allowed


def test_gearPeersWithTheirIdentities(server: Any, pki: Pki) -> None:
    """gear's TLS worker (worker-app) and client (client-app) run a job through the ACL."""
    pytest.importorskip("gear")
    assert gearJobOverTLS(server.tlsPort, pki, pki.worker, pki.client, "thumbnail",
                          "big picture", lambda payload: b"small picture") == "small picture"


@pytest_twisted.ensureDeferred
async def test_txgearClientAndWorkerWithTheirIdentities(server: Any, pki: Pki) -> None:
    from txgear import GearmanClient, GearmanWorker, TLSOptions
    from txgear.errors import JobFailed

    from tests.test_integration_client import closeAll, started, within

    address = [f"localhost:{server.tlsPort}"]
    worker = GearmanWorker(address, tls=TLSOptions(ca=pki.ca.certPath,
                                                   certificate=pki.worker.certPath,
                                                   key=pki.worker.keyPath))
    worker.register("resize", lambda job: job.payload.upper())
    client = GearmanClient(address, tls=TLSOptions(ca=pki.ca.certPath,
                                                   certificate=pki.client.certPath,
                                                   key=pki.client.keyPath))
    try:
        await started(worker)
        await within(client.connect())
        assert await within(client.submit("resize", b"hello")) == b"HELLO"
        with pytest.raises(Exception) as refused:
            await within(client.submit("other", b"hello"))
        assert "Permission denied by ACL" in str(refused.value)
        assert not isinstance(refused.value, JobFailed)
    finally:
        await closeAll(client, worker)

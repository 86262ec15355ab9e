"""
Access control end to end: C{twistd gearman --acl FILE} on a plain loopback
port (every connection is C{anonymous}), driven by the real C{gearman} and
C{gearadmin} tools and by raw sockets.
"""
from __future__ import annotations

from typing import Any, Iterator

import pytest

from tests._peers import requireProgram, txgearProcess
from tests._rawclient import RawClient, ToolProcess, adminOnce, runTool, waitFor
from txgear._packet import PacketType as P

ACL = """\
[anonymous]
invoke = acl-ok|acl-queued
register = acl-ok
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: Any) -> Iterator[Any]:
    directory = tmp_path_factory.mktemp("acl")
    path = directory / "acl.ini"
    path.write_text(ACL)
    proc = txgearProcess(extra=["--queue", "memory", "--acl", str(path)], cwd=str(directory))
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


def test_gearadminWithoutAdminIsDenied(server: Any) -> None:
    gearadmin = requireProgram("gearadmin")
    for flag in ("--status", "--workers", "--server-version", "--getpid", "--show-jobs"):
        result = runTool([gearadmin, "-h", "127.0.0.1", "-p", str(server.port), flag])
        assert b"PERMISSION_DENIED" in result.stdout + result.stderr, (flag, result)
    assert adminOnce(server.port, "status") == b"ERR PERMISSION_DENIED\n"
    assert adminOnce(server.port, "acl list") == b"ERR PERMISSION_DENIED\n"
    assert adminOnce(server.port, "acl grant admin anonymous") == b"ERR PERMISSION_DENIED\n"
    assert adminOnce(server.port, "maxqueue acl-ok 1") == b"ERR PERMISSION_DENIED\n"


def test_gearmanToolsAsAllowedClientAndWorker(server: Any) -> None:
    gearman = requireProgram("gearman")
    port = str(server.port)
    with ToolProcess([gearman, "-h", "127.0.0.1", "-p", port, "-w", "-f", "acl-ok", "--",
                      "rev"]):
        result = runTool([gearman, "-h", "127.0.0.1", "-p", port, "-f", "acl-ok", "hello acl"])
        assert result.stdout == b"lca olleh"


def test_gearmanClientDenied(server: Any) -> None:
    gearman = requireProgram("gearman")
    result = runTool([gearman, "-h", "127.0.0.1", "-p", str(server.port), "-f", "acl-secret",
                      "payload"])
    assert b"Permission denied by ACL" in result.stderr
    assert result.stdout == b""


def test_gearmanWorkerDeniedGetsNoJobs(server: Any) -> None:
    """A worker refused `acl-queued` never receives its job, which stays queued."""
    gearman = requireProgram("gearman")
    port = str(server.port)
    with RawClient(server.port) as client:
        handle = client.submit(b"acl-queued", b"never run", b"", kind=P.SUBMIT_JOB_BG)
        with ToolProcess([gearman, "-h", "127.0.0.1", "-p", port, "-w", "-f", "acl-queued",
                          "--", "rev"]) as worker:
            waitFor(lambda: worker.process.poll() is not None or _attempted(server), timeout=5,
                    what="the worker's attempt")
            # Its CAN_DO was answered with an ERROR naming the function, as this one is.
            with RawClient(server.port) as probe:
                probe.send(P.CAN_DO, b"acl-queued")
                assert probe.expect(P.ERROR) == [
                    b"PERMISSION_DENIED", b"Permission denied by ACL: may not register acl-queued"]
        client.send(P.GET_STATUS, handle)
        assert client.expect(P.STATUS_RES) == [handle, b"1", b"0", b"0", b"0"]


def _attempted(server: Any) -> bool:
    return "no register right for acl-queued" in server.log()


def test_revokedRealWorkerLosesItsFunctionAtOnce(tmp_path: Any) -> None:
    """A connected `gearman -w` loses `acl-ok` when `acl revoke register` arrives."""
    gearman = requireProgram("gearman")
    path = tmp_path / "acl.ini"
    path.write_text("[anonymous]\ninvoke = acl-ok\nregister = acl-ok\nadmin = true\n"
                    "grant = true\n")
    with txgearProcess(extra=["--queue", "memory", "--acl", str(path)], cwd=str(tmp_path)) as proc:
        port = str(proc.port)
        with ToolProcess([gearman, "-h", "127.0.0.1", "-p", port, "-w", "-f", "acl-ok", "--",
                          "rev"]):
            waitFor(lambda: b"acl-ok\t0\t0\t1\n" in adminOnce(proc.port, "status"),
                    what="the worker's registration")
            assert adminOnce(proc.port, "acl revoke register anonymous") == b"OK\n"
            with RawClient(proc.port) as client:
                handle = client.submit(b"acl-ok", b"x", kind=P.SUBMIT_JOB_BG)
                client.send(P.GET_STATUS, handle)
                assert client.expect(P.STATUS_RES) == [handle, b"1", b"0", b"0", b"0"]
            assert b"acl-ok\t1\t0\t0\n" in adminOnce(proc.port, "status")


def test_txgearAdminSaysPermissionDenied(server: Any) -> None:
    """A refused listing is one ERR line (no "."): txgear-admin says so at once, exit status 1."""
    import sys

    for command, raw in (("status", []), ("workers", []), ("jobs", ["--raw"])):
        result = runTool([sys.executable, "-m", "txgear._cli", "admin", "-s",
                          f"127.0.0.1:{server.port}"] + raw + [command], timeout=8)
        assert result.returncode == 1, (command, result)
        if raw:
            assert result.stdout == b"ERR PERMISSION_DENIED\n"
        else:
            assert result.stderr.endswith(b": ERR PERMISSION_DENIED\n"), result
            assert result.stdout == b""

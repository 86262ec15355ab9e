"""
Hostile and unlucky input against the real server process (C{twistd
gearman}), for the limits of issue 8: a bad epoch amid a burst of background
submits, and a stop while a job completes.
"""
from __future__ import annotations

from typing import List

from tests._peers import txgearProcess
from tests._rawclient import RawClient
from txgear._packet import PacketType, encodeRequest

P = PacketType


def test_epochBeyondTheStoreFailsOnlyItsOwnSubmit() -> None:
    """
    500 background submits with an epoch of 2**63 among them, on the default
    SQLite store: the bad one gets ERROR INVALID_ARGUMENT, the 500 others
    JOB_CREATED (the bad record used to fail its whole store batch).
    """
    with txgearProcess() as server:
        with RawClient(server.port, timeout=30) as first, RawClient(server.port, timeout=30) as second:
            def burst(tag: bytes) -> List[bytes]:
                return [encodeRequest(P.SUBMIT_JOB_BG, b"f", b"", b"%s-%d" % (tag, i))
                        for i in range(250)]
            bad = encodeRequest(P.SUBMIT_JOB_EPOCH, b"f", b"", b"%d" % 2 ** 63, b"bad")
            one, two = burst(b"a"), burst(b"b")
            # One read each, so that everything lands in one store batch.
            first.sendRaw(b"".join(one[:125] + [bad] + one[125:]))
            second.sendRaw(b"".join(two))
            replies = [first.recv() for _ in range(251)]
            replies += [second.recv() for _ in range(250)]
            status = first.admin("status")
        errors = [args for kind, args in replies if kind == P.ERROR]
        assert errors == [[b"INVALID_ARGUMENT",
                           b"Epoch must be a number of seconds from 0 to 253402300799"]]
        assert [kind for kind, _ in replies].count(P.JOB_CREATED) == 500
        assert status == b"f\t500\t0\t0\n.\n"


def _waitNotListening(port: int, timeout: float = 10.0) -> None:
    """Wait (bounded) until nothing accepts connections on C{port} any more."""
    import socket
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        except OSError:
            return
        time.sleep(0.02)
    raise AssertionError(f"port {port} still listening after {timeout}s")


def _runsAfterRestart(cwd: str, port: int) -> List[bytes]:
    """Start the server again on C{cwd}'s store; run every queued job once."""
    runs: List[bytes] = []
    with txgearProcess(port=port, cwd=cwd) as server:
        with RawClient(server.port) as worker:
            worker.register(b"f")
            for _ in range(100):
                kind, args = worker.grab()
                if kind == P.NO_JOB:
                    break
                runs.append(args[3])
                worker.send(P.WORK_COMPLETE, args[0], b"")
    return runs


def test_jobCompletedDuringAStopDoesNotRunAgain(tmp_path) -> None:
    """
    SIGTERM while a worker holds a background job: the server stops
    listening, lets the worker complete the job (within --shutdown-grace),
    then closes the connections and only then the store, so the completed
    job is removed from it and does not run again after a restart; the job
    nobody held still does.
    """
    import os
    import signal

    from tests._peers import freePort

    cwd, port = str(tmp_path), freePort()
    server = txgearProcess(port=port, cwd=cwd).start()
    try:
        with RawClient(port) as client, RawClient(port) as worker:
            client.submit(b"f", b"done-during-stop", kind=P.SUBMIT_JOB_BG)
            worker.register(b"f")
            kind, args = worker.grab()
            assert (kind, args[3]) == (P.JOB_ASSIGN_UNIQ, b"done-during-stop")
            client.submit(b"f", b"still-queued", kind=P.SUBMIT_JOB_BG)
            os.kill(server.pid, signal.SIGTERM)
            _waitNotListening(port)
            worker.send(P.WORK_COMPLETE, args[0], b"ok")
            worker.waitClosed(10)
        assert server.process is not None
        server.process.wait(20)
    finally:
        server.stop()
    assert _runsAfterRestart(cwd, port) == [b"still-queued"]

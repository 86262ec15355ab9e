"""
The dead set on a real C{twistd gearman} with each store (SQLite,
PostgreSQL, Redis): a job that
fails until it is dead, the server killed with SIGKILL and restarted, the
job still in C{show dead}; C{retry dead} runs it again under its handle and
unique; the C{txgear-admin} verbs. Bounded waits only, no timed assertions.
"""
from __future__ import annotations

from tests._peers import freePort, txgearProcess
from tests._stores import queue  # noqa: F401 (a fixture)
from tests._rawclient import RawClient, adminOnce, listing, waitFor
from tests.test_cli import runScript
from tests.test_integration_retry import DEADLINE, grabWithin
from txgear._packet import PacketType as P


def deadLines(port: int) -> list:
    return [line.split(b"\t") for line in listing(adminOnce(port, "show dead"))]


def test_deadJobSurvivesKillAndIsRetried(tmp_path, queue) -> None:
    port = freePort()
    extra = ["--queue", queue,
             "--policy", "flaky=attempts:2,on:fail+exception"]
    proc = txgearProcess(port=port, extra=extra, cwd=str(tmp_path))
    proc.start(timeout=30)
    try:
        with RawClient(port) as client, RawClient(port) as worker:
            worker.register(b"flaky")
            handle = client.submit(b"flaky", b"the payload", unique=b"u-dead",
                                   kind=P.SUBMIT_JOB_BG)
            _, args = grabWithin(worker)
            worker.send(P.WORK_EXCEPTION, handle, b"Traceback:\nboom")
            _, args = grabWithin(worker)
            assert args[0] == handle
            worker.send(P.WORK_FAIL, handle)
            waitFor(lambda: deadLines(port), timeout=DEADLINE, what="the job in the dead set")
            # Store batches are written in order: once a later background job
            # is acknowledged, the move to the dead set is durable.
            client.submit(b"marker", b"", kind=P.SUBMIT_JOB_BG)
        proc.kill()
        proc.stop()
        proc = txgearProcess(port=port, extra=extra, cwd=str(tmp_path))
        proc.start(timeout=30)
        (line,) = deadLines(port)
        assert line[:4] == [handle, b"flaky", b"u-dead", b"2"]
        assert line[4].endswith(b"Z") and line[5] == b"WORK_FAIL"

        code, out, err = runScript("txgear-admin", "-s", f"127.0.0.1:{port}", "dead", "flaky")
        assert code == 0, err
        header, row = out.splitlines()
        assert header.split() == ["HANDLE", "FUNCTION", "UNIQUE", "ATTEMPTS", "DIED-AT",
                                  "LAST-ERROR"]
        assert row.split()[:4] == [handle.decode(), "flaky", "u-dead", "2"]

        code, out, err = runScript("txgear-admin", "-s", f"127.0.0.1:{port}", "retry-dead",
                                   handle.decode())
        assert (code, out, err) == (0, "retried 1 dead jobs\n", "")
        assert deadLines(port) == []
        with RawClient(port) as worker:
            worker.register(b"flaky")
            _, args = grabWithin(worker)
            assert args[:4] == [handle, b"flaky", b"u-dead", b"the payload"]
            worker.send(P.WORK_FAIL, handle)
            _, args = grabWithin(worker)  # fresh attempts: one more run
            assert args[0] == handle
            worker.send(P.WORK_FAIL, handle)
            waitFor(lambda: deadLines(port), timeout=DEADLINE, what="the job dead again")

        code, out, err = runScript("txgear-admin", "-s", f"127.0.0.1:{port}", "retry-dead",
                                   "H:nowhere:1")
        assert code == 1 and "ERR UNKNOWN_JOB" in err
        code, out, err = runScript("txgear-admin", "-s", f"127.0.0.1:{port}", "purge-dead",
                                   "flaky")
        assert (code, out) == (0, "purged 1 dead jobs\n"), err
        assert deadLines(port) == []
    finally:
        proc.stop()

"""
Kept results on a real C{twistd gearman} with each store (SQLite,
PostgreSQL, Redis): a background
job's binary result and another's exception are kept; the server is killed
with SIGKILL and restarted; C{show result} (by handle and by unique) still
answers them byte for byte, and an idempotent submission gets the kept
handle. Bounded waits only, no timed assertions.
"""
from __future__ import annotations

from tests._peers import freePort, txgearProcess
from tests._stores import queue  # noqa: F401 (a fixture)
from tests._rawclient import RawClient
from tests.test_integration_retry import grabWithin
from txgear._packet import PacketType as P

BINARY = b"\x00result\nOK complete 3\n\r\n\xff" * 100


def test_keptResultSurvivesKill(tmp_path, queue) -> None:
    port = freePort()
    extra = ["--queue", queue,
             "--policy", "keepme=keep:1h,idempotent:yes,attempts:1,on:exception"]
    proc = txgearProcess(port=port, extra=extra, cwd=str(tmp_path))
    proc.start(timeout=30)
    try:
        with RawClient(port) as client, RawClient(port) as worker:
            worker.register(b"keepme")
            done = client.submit(b"keepme", b"a", unique=b"order-1", kind=P.SUBMIT_JOB_BG)
            failed = client.submit(b"keepme", b"b", unique=b"order-2", kind=P.SUBMIT_JOB_BG)
            _, args = grabWithin(worker)
            assert args[0] == done
            assert client.showResult(done) == b"ERR RUNNING\r\n"
            assert client.showResult(failed) == b"ERR QUEUED\r\n"
            worker.send(P.WORK_COMPLETE, done, BINARY)
            _, args = grabWithin(worker)
            worker.send(P.WORK_EXCEPTION, failed, b"Traceback:\nboom")
            # Store batches are written in order: once a later background job
            # is acknowledged, both results are durable.
            client.submit(b"marker", b"", kind=P.SUBMIT_JOB_BG)
        proc.kill()
        proc.stop()
        proc = txgearProcess(port=port, extra=extra, cwd=str(tmp_path))
        proc.start(timeout=30)
        with RawClient(port) as client:
            framed = b"OK complete %d\n" % len(BINARY) + BINARY + b"\n"
            assert client.showResult(done) == framed
            # The next command on the same connection is answered after it, in order.
            assert client.admin("version").startswith(b"OK ")
            assert client.showResult(b"unique keepme order-1") == framed
            assert client.showResult(failed) == b"OK exception 15\nTraceback:\nboom\n"
            assert client.submit(b"keepme", b"a", unique=b"order-1",
                                 kind=P.SUBMIT_JOB_BG) == done
            assert client.showResult(b"H:nothing:1") == b"ERR UNKNOWN_JOB\r\n"
    finally:
        proc.stop()

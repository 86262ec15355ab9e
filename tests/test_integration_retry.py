"""
Retry policies on a real C{twistd gearman}: a worker that fails, the job
retried after its backoff under its handle; a SIGKILL and a restart during a
retry's wait keep its due time (the Redis store, read beside the server to
know the retry is stored before the kill); the admin commands over a socket.
Bounded waits only; the only time checks are lower bounds (a job never runs
before its due time).
"""
from __future__ import annotations

import time
import uuid
from typing import List, Tuple

import pytest

from tests._peers import freePort, requirePeer, txgearProcess
from tests._rawclient import RawClient, adminOnce, waitFor
from tests.test_store_contract import REDIS, redisAvailable
from txgear._packet import PacketType as P
from txgear.store._record import unpackRecord

DEADLINE = 20.0


def grabWithin(worker: RawClient, deadline: float = DEADLINE) -> Tuple[float, List[bytes]]:
    """Poll with GRAB_JOB_UNIQ until a job comes: (when it came, its arguments)."""
    stop = time.monotonic() + deadline
    while time.monotonic() < stop:
        kind, args = worker.grab()
        if kind == P.JOB_ASSIGN_UNIQ:
            return time.time(), args
        assert kind == P.NO_JOB
        time.sleep(0.05)
    pytest.fail("no job came in time")


def test_failingWorkerRetriedAfterBackoff(tmp_path) -> None:
    proc = txgearProcess(extra=["--queue", "memory",
                                "--policy", "flaky=attempts:3,backoff:300ms..1s,on:fail+exception"],
                         cwd=str(tmp_path))
    proc.start()
    try:
        with RawClient(proc.port) as client, RawClient(proc.port) as worker:
            worker.register(b"flaky")
            handle = client.submit(b"flaky", b"job", unique=b"u-1", kind=P.SUBMIT_JOB_BG)
            _, args = grabWithin(worker)
            assert args[:3] == [handle, b"flaky", b"u-1"]
            failedAt = time.time()
            worker.send(P.WORK_FAIL, handle)
            came, args = grabWithin(worker)
            assert came >= failedAt + 0.3 and args[:3] == [handle, b"flaky", b"u-1"]
            failedAt = time.time()
            worker.send(P.WORK_EXCEPTION, handle, b"boom")
            came, args = grabWithin(worker)
            # The second retry's delay is drawn in [0.3, 0.6] (equal jitter, floored at 300ms).
            assert came >= failedAt + 0.3 and args[0] == handle
            worker.send(P.WORK_COMPLETE, handle, b"done at last")
            waitFor(lambda: adminOnce(proc.port, "show jobs") == b".\n", timeout=DEADLINE,
                    what="the job to end")
            # A foreground client's WORK_FAIL comes at once (the issue retries only loss and
            # timeout for foreground jobs).
            handle = client.submit(b"flaky", b"fg", unique=b"u-2")
            grabWithin(worker)
            worker.send(P.WORK_FAIL, handle)
            assert client.expect(P.WORK_FAIL, timeout=DEADLINE) == [handle]
        assert adminOnce(proc.port, "show policies") == (
            b"*\tattempts:0,backoff:0,on:lost\n"
            b"flaky\tattempts:3,backoff:300ms..1s,on:fail+exception\n.\n")
        assert adminOnce(proc.port, "policy * attempts:2,backoff:1s") == b"OK\r\n"
        assert adminOnce(proc.port, "policy other on:lost+timeout") == b"OK\r\n"
        assert adminOnce(proc.port, "policy other idempotent:yes") == (
            b"ERR INVALID_POLICY idempotent:yes+needs+keep:TTL+(the+kept+result+is+what+a"
            b"+repeated+submission+finds)\r\n")
        assert adminOnce(proc.port, "show policies") == (
            b"*\tattempts:2,backoff:1s,on:lost\n"
            b"flaky\tattempts:3,backoff:300ms..1s,on:fail+exception\n"
            b"other\tattempts:2,backoff:1s,on:lost+timeout\n.\n")
    finally:
        proc.stop()


def _storedRetry(client, prefix: str, key: bytes):
    """The job's stored record once it holds its first retry, else C{None}."""
    data = client.hget(prefix + "jobs", key)
    record = None if data is None else unpackRecord(int(key), 1, data)
    return record if record is not None and record.attempts == 1 else None


def test_killDuringTheRetryWaitKeepsTheDueTime(tmp_path) -> None:
    requirePeer(redisAvailable(), f"Redis at {REDIS!r}")
    import redis
    prefix = "txgear-test-retry:" + uuid.uuid4().hex[:12] + ":"
    port = freePort()
    extra = ["--queue", f"redis:{REDIS}?prefix={prefix}",
             "--policy", "slow=attempts:3,backoff:6s,on:exception"]
    store = redis.Redis.from_url(REDIS)
    proc = txgearProcess(port=port, extra=extra, cwd=str(tmp_path))
    proc.start(timeout=30)
    try:
        with RawClient(port) as client, RawClient(port) as worker:
            worker.register(b"slow")
            handle = client.submit(b"slow", b"payload", unique=b"keep-me", kind=P.SUBMIT_JOB_BG)
            key = handle.rsplit(b":", 1)[1]
            _, args = grabWithin(worker)
            failedAt = time.time()
            worker.send(P.WORK_EXCEPTION, handle, b"Traceback: disk full")
            record = waitFor(lambda: _storedRetry(store, prefix, key), timeout=DEADLINE,
                             what="the retry in the store")
        assert record.lastError == b"Traceback: disk full" and record.unique == b"keep-me"
        assert record.retryAt >= int((failedAt + 6) * 1000) - 1
        proc.kill()
        proc.stop()
        proc = txgearProcess(port=port, extra=extra, cwd=str(tmp_path))
        proc.start(timeout=30)
        with RawClient(port) as worker:
            worker.register(b"slow")
            came, args = grabWithin(worker)
            assert args[:4] == [handle, b"slow", b"keep-me", b"payload"]
            assert came * 1000 >= record.retryAt
            worker.send(P.WORK_COMPLETE, handle, b"ok")
            waitFor(lambda: store.hget(prefix + "jobs", key) is None, timeout=DEADLINE,
                    what="the job leaves the store")
    finally:
        proc.stop()
        keys = list(store.scan_iter(match=prefix + "*"))
        if keys:
            store.delete(*keys)
        store.close()

"""
L{txgear.jobs.BackgroundJob.result} against a real C{twistd gearman}
process (each store: SQLite, PostgreSQL, Redis; a keep policy): a binary result, WORK_FAIL, an
exception with its data, a job read by handle and by unique from another
client object, a result above the size limit and a function with no keep
policy. Loopback only, every wait bounded.
"""
from __future__ import annotations

from typing import Any

import pytest_twisted
from twisted.internet.defer import Deferred

from tests._peers import freePort, txgearProcess
from tests._stores import queue  # noqa: F401 (a fixture)
from tests.test_integration_client import WAIT, closeAll, started, within
from txgear.client import GearmanClient
from txgear.errors import JobException, JobFailed, ResultNotKept, ResultUnknown
from txgear.worker import GearmanWorker

BINARY = b"\x00OK complete 9\n\r\n\xff" * 1000


async def failsWith(d: Deferred, kind: Any) -> Any:
    try:
        await within(d, WAIT)
    except kind as e:
        return e
    raise AssertionError(f"expected {kind.__name__}")


@pytest_twisted.ensureDeferred
async def test_resultsFromARealServer(tmp_path, queue) -> None:
    port = freePort()
    proc = txgearProcess(port=port, cwd=str(tmp_path), extra=[
        "--queue", queue, "--keep-max-size", "20000",
        "--policy", "kept=keep:1h,attempts:1"])
    proc.start(timeout=30)
    address = f"127.0.0.1:{port}"
    worker = GearmanWorker([address])

    def kept(job: Any) -> bytes:
        if job.payload == b"fail":
            raise JobFailed("no")
        if job.payload == b"raise":
            raise ValueError("bad\nthing")
        if job.payload == b"big":
            return b"b" * 30000
        return BINARY

    worker.register("kept", kept)
    worker.register("plain", lambda job: b"p")
    client = GearmanClient([address])
    other = GearmanClient([address])
    await started(worker, client, other)
    try:
        done = await within(client.submitBackground("kept", b"ok", unique="order-1"))
        assert await within(done.result(timeout=WAIT)) == BINARY
        failed = await within(client.submitBackground("kept", b"fail"))
        await failsWith(failed.result(), JobFailed)
        raised = await within(client.submitBackground("kept", b"raise"))
        error = await failsWith(raised.result(), JobException)
        assert b"bad\nthing" in error.data
        # Another client object, as another process would: by handle and by unique.
        assert await within(other.backgroundJob(done.handle).result()) == BINARY
        assert await within(other.backgroundJobByUnique("kept", "order-1").result()) == BINARY
        big = await within(client.submitBackground("kept", b"big"))
        notKept = await failsWith(big.result(), ResultNotKept)
        assert (notKept.status, notKept.size) == ("complete", 30000)
        plain = await within(client.submitBackground("plain", b"x"))
        await failsWith(plain.result(), ResultUnknown)
    finally:
        await closeAll(worker, client, other)
        proc.stop()

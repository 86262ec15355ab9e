"""
C{txgear-admin result}: a kept result read by its size (binary-safe, raw to
stdout), by handle and by unique; fail/exception outcomes and the C{ERR}
replies on stderr with exit 1; against txgear's server in this process.
"""
from __future__ import annotations

from typing import Any, Tuple

import pytest_twisted
from twisted.internet.defer import Deferred

from tests.test_cli import _Text
from tests.test_integration_client import closeAll, started, within
from txgear import _cli
from txgear.client import GearmanClient
from txgear.errors import JobFailed
from txgear.server import GearmanServerFactory, JobServerState
from txgear.server._policy import PolicyTable
from txgear.worker import GearmanWorker

BINARY = b"\x00OK complete 2\n\r\nERR UNKNOWN_JOB\n.\n\xff\xfe" * 100


async def admin(addr: str, *words: str) -> Tuple[int, bytes, str]:
    from twisted.internet import reactor

    out, err = _Text(), _Text()
    code = await within(Deferred.fromCoroutine(_cli.runAdmin(
        reactor, ["-s", addr, "result", *words], stdout=out, stderr=err)))
    return code, out.buffer.getvalue() + out.getvalue().encode(), err.getvalue()


@pytest_twisted.ensureDeferred
async def test_adminResult() -> None:
    from twisted.internet import reactor

    table = PolicyTable()
    table.set(b"f", "keep:1h,attempts:1")
    state = JobServerState(clock=reactor, policies=table, keepMaxSize=5000)
    port = reactor.listenTCP(0, GearmanServerFactory(state), interface="127.0.0.1")
    addr = f"127.0.0.1:{port.getHost().port}"

    def work(job: Any) -> bytes:
        if job.payload == b"fail":
            raise JobFailed("no")
        if job.payload == b"raise":
            raise ValueError("bad")
        if job.payload == b"big":
            return b"b" * 6000
        return BINARY

    worker = GearmanWorker([addr])
    worker.register("f", work)
    client = GearmanClient([addr])
    await started(worker, client)
    try:
        done = await within(client.submitBackground("f", b"ok", unique="order"))
        failed = await within(client.submitBackground("f", b"fail"))
        raised = await within(client.submitBackground("f", b"raise"))
        big = await within(client.submitBackground("f", b"big"))
        for job in (done, failed, raised, big):
            await within(job.result()).addErrback(lambda f: None)
        handle = done.handle.decode()
        assert await admin(addr, handle) == (0, BINARY, "")
        assert await admin(addr, "unique", "f", "order") == (0, BINARY, "")
        code, out, err = await admin(addr, failed.handle.decode())
        assert (code, out) == (1, b"") and "ended with fail" in err
        code, out, err = await admin(addr, raised.handle.decode())
        assert code == 1 and b"ValueError" in out and "ended with exception" in err
        code, out, err = await admin(addr, big.handle.decode())
        assert (code, out) == (1, b"") and err.endswith(": ERR NOT_KEPT complete+6000\n")
        code, out, err = await admin(addr, "H:nothing:1")
        assert (code, out) == (1, b"") and err.endswith(": ERR UNKNOWN_JOB\n")
        code, out, err = await admin(addr, "unique", "f")
        assert code == 2 and "result unique FUNCTION UNIQUE" in err
    finally:
        await closeAll(worker, client)
        await port.stopListening()

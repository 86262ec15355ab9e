"""
Two job servers, one killed (SIGKILL) in the middle of a run: every job the
client submitted must be accounted for, either completed or failed with a
typed txgear error. None may hang or vanish.
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict, List

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred, DeferredSemaphore, gatherResults
from twisted.internet.task import deferLater

from tests._peers import gearmandProcess, requirePeer, txgearProcess
from tests.test_integration_client import _ourServerAvailable, closeAll, started, within
from txgear.client import GearmanClient
from txgear.errors import GearmanError
from txgear.worker import GearmanWorker

TOTAL = 600
WINDOW = 40
KILL_AFTER = 150


def _process(kind: str) -> Any:
    if kind == "gearmand":
        return gearmandProcess()
    requirePeer(_ourServerAvailable(), "txgear.server")
    return txgearProcess()


@pytest.fixture(params=["gearmand", "txgear"])
def twoServers(request):
    servers = [_process(request.param).start(), _process(request.param).start()]
    yield servers
    for srv in servers:
        srv.stop()


@pytest.mark.parametrize("retries", [0, 1])
@pytest_twisted.ensureDeferred
async def test_twoServersOneKilled(twoServers, retries):
    from twisted.internet import reactor
    from twisted.application.internet import backoffPolicy

    a, b = twoServers
    addresses = [f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"]
    policy = backoffPolicy(initialDelay=0.2, maxDelay=1.0, factor=2.0, jitter=lambda: 0)

    def work(job):
        # A few milliseconds of "work", so that jobs are in flight at the kill.
        return deferLater(reactor, 0.002, lambda: job.payload.upper())

    workers = [GearmanWorker(addresses, concurrency=10, retryPolicy=policy, grace=5)
               for _ in range(2)]
    for worker in workers:
        worker.register("work", work)
    client = GearmanClient(addresses, retryPolicy=policy)
    await started(client, *workers)

    outcome: Dict[str, int] = {"submitted": 0, "completed": 0, "failed_typed": 0, "lost": 0,
                               "wrong_result": 0}
    errors: Dict[str, int] = {}
    killed: Deferred = Deferred()
    window = DeferredSemaphore(WINDOW)

    def kill() -> None:
        a.kill()
        killed.callback(None)

    async def one(i: int) -> None:
        payload = b"job-%d" % i
        # Half the jobs carry a unique id: those go to the server it hashes to,
        # and move to the survivor once that one is dead.
        unique = b"u-%d" % i if i % 2 else None
        outcome["submitted"] += 1
        try:
            result = await client.submit("work", payload, unique=unique, timeout=30,
                                         retries=retries)
        except GearmanError as e:
            outcome["failed_typed"] += 1
            errors[type(e).__name__] = errors.get(type(e).__name__, 0) + 1
        except BaseException as e:  # a timeout or anything untyped: counted as lost
            outcome["lost"] += 1
            errors[type(e).__name__] = errors.get(type(e).__name__, 0) + 1
        else:
            if result == payload.upper():
                outcome["completed"] += 1
            else:
                outcome["wrong_result"] += 1
            if outcome["completed"] == KILL_AFTER and not killed.called:
                reactor.callLater(0, kill)

    try:
        await within(gatherResults([window.run(lambda i=i: Deferred.fromCoroutine(one(i)))
                                    for i in range(TOTAL)]), 120)
        assert killed.called
        summary = dict(outcome, errors=errors, server=a.name, retries=retries)
        print("\ntwo-server kill test:", json.dumps(summary))
        path = os.environ.get("TXGEAR_KILL_REPORT")
        if path:
            with open(path, "a") as f:
                f.write(json.dumps(summary) + "\n")
        assert outcome["submitted"] == TOTAL
        assert outcome["lost"] == 0
        assert outcome["wrong_result"] == 0
        assert outcome["completed"] + outcome["failed_typed"] == TOTAL
        # Jobs kept completing on the surviving server after the kill.
        assert outcome["completed"] > KILL_AFTER + (TOTAL - KILL_AFTER) // 2
        assert set(errors) <= {"ConnectionLost"}
        if retries:
            # Opting into retries resubmits the jobs the dead server had accepted.
            assert outcome["failed_typed"] == 0
        assert client.connectedServers() == [addresses[1]]
    finally:
        await closeAll(client, *workers)


@pytest_twisted.ensureDeferred
async def test_jobsSpreadOverTwoServers(twoServers):
    """Issue 9 item 2: with connect(waitForAll=True), work spreads over both servers."""
    a, b = twoServers
    addresses = [f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"]
    seen: Dict[str, int] = {}

    def work(job):
        seen[job.server] = seen.get(job.server, 0) + 1
        return job.payload

    worker = GearmanWorker(addresses, concurrency=10)
    worker.register("spread", work)
    client = GearmanClient(addresses)
    try:
        await within(worker.connect(waitForAll=True))
        await within(client.connect(waitForAll=True))
        assert sorted(client.connectedServers()) == sorted(addresses)
        plain = [client.submit("spread", b"%d" % i, timeout=30) for i in range(200)]
        unique = [client.submit("spread", b"p", unique=b"photo-%03d.jpg" % i, timeout=30)
                  for i in range(200)]
        await within(gatherResults(plain + unique), 60)
        assert sum(seen.values()) == 400
        for address in addresses:
            assert 180 <= seen.get(address, 0) <= 220, seen
    finally:
        await closeAll(client, worker)

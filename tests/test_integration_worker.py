"""
Loopback interoperability tests: txgear's worker with other clients (the
C{gearman} tool, the C{gear} library) and txgear's client with the
C{gearman -w} worker, against gearmand and txgear's server.
"""
from __future__ import annotations

import os
import signal
import subprocess
import time
from typing import Any, List

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread
from twisted.internet.utils import getProcessOutputAndValue

from tests._peers import requireProgram
from tests.test_integration_client import (  # noqa: F401 (fixture)
    address,
    closeAll,
    reverseWorker,
    server,
    started,
    within,
)
from txgear.client import GearmanClient


def _stopProcess(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(10)


@pytest_twisted.ensureDeferred
async def test_ourClientWithGearmanCliWorker(server):
    gearman = requireProgram("gearman")
    cli = subprocess.Popen([gearman, "-h", "127.0.0.1", "-p", str(server.port), "-w",
                            "-f", "upper", "--", "tr", "a-z", "A-Z"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = GearmanClient([address(server)])
    try:
        await started(client)
        results = [await within(client.submit("upper", b"hello %d" % i)) for i in range(3)]
        assert results == [b"HELLO 0", b"HELLO 1", b"HELLO 2"]
    finally:
        await closeAll(client)
        _stopProcess(cli)


@pytest_twisted.ensureDeferred
async def test_ourWorkerWithGearmanCliClient(server):
    gearman = requireProgram("gearman")
    worker = reverseWorker([address(server)])
    await started(worker)
    try:
        out, err, code = await within(getProcessOutputAndValue(
            gearman, ["-h", "127.0.0.1", "-p", str(server.port), "-t", "10000",
                      "-f", "reverse", "hello gearman"]))
        assert code == 0, err
        assert out == b"namraeg olleh"
        # Background submission from the CLI, then our worker runs it.
        done: Deferred = Deferred()
        worker.register("note", lambda job: done.callback(job.payload))
        out, err, code = await within(getProcessOutputAndValue(
            gearman, ["-h", "127.0.0.1", "-p", str(server.port), "-b", "-f", "note", "bg-data"]))
        assert code == 0, err
        assert await within(done) == b"bg-data"
    finally:
        await closeAll(worker)


@pytest_twisted.ensureDeferred
async def test_ourWorkerWithGearClient(server):
    gear = pytest.importorskip("gear")
    worker = reverseWorker([address(server)])
    seen: List[Any] = []

    def unique(job):
        seen.append(job.unique)
        return job.payload.upper()

    worker.register("upper", unique)
    await started(worker)

    def useGear() -> List[bytes]:
        client = gear.Client("txgear-test")
        try:
            client.addServer("127.0.0.1", server.port)
            client.waitForServer(timeout=10)
            jobs = [gear.Job(b"reverse", b"gear job %d" % i) for i in range(5)]
            jobs.append(gear.Job(b"upper", b"mixed Case", unique=b"gear-uniq"))
            for job in jobs:
                client.submitJob(job, timeout=10)
            deadline = time.monotonic() + 15
            # gear completes jobs on its own thread; wait for that thread.
            while not all(job.complete for job in jobs) and time.monotonic() < deadline:
                time.sleep(0.01)
            return [b"".join(job.data) if job.complete else None for job in jobs]
        finally:
            client.shutdown()

    try:
        results = await within(deferToThread(useGear), 30)
        assert results == [b"%d boj raeg" % i for i in range(5)] + [b"MIXED CASE"]
        assert seen == [b"gear-uniq"]
    finally:
        await closeAll(worker)

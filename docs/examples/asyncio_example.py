"""
txgear from asyncio code: a worker whose functions are plain ``async def``
coroutines awaiting asyncio things, and a client that awaits results as
asyncio futures.

Run a job server first (``twistd -n gearman`` or ``gearmand``), then:

    python docs/examples/asyncio_example.py 127.0.0.1:4730
"""
from __future__ import annotations

import asyncio
import sys

# Twisted must run on top of the asyncio loop: install the asyncio reactor
# before anything imports twisted.internet.reactor.
from twisted.internet import asyncioreactor

loop = asyncio.new_event_loop()
asyncio.set_event_loop(loop)
asyncioreactor.install(loop)

from txgear.client import GearmanClient  # noqa: E402
from txgear.errors import JobException  # noqa: E402
from txgear.worker import GearmanWorker  # noqa: E402


async def slowUpper(job):
    """A worker function: any asyncio code may run here."""
    for step in range(3):
        job.sendStatus(step, 3)
        await asyncio.sleep(0.05)
    return job.payload.upper()


async def divide(job):
    a, b = map(int, job.payload.split(b"/"))
    return str(a // b)          # ZeroDivisionError -> WORK_EXCEPTION


async def main(server: str) -> None:
    # useAsyncio=True: coroutines run as asyncio tasks, so they can await
    # asyncio futures (asyncio.sleep, aiohttp, asyncpg, ...).
    worker = GearmanWorker([server], concurrency=10, useAsyncio=True)
    worker.register("slow-upper", slowUpper)
    worker.register("divide", divide)
    client = GearmanClient([server])

    # Twisted Deferreds become asyncio futures with .asFuture(loop).
    await worker.connect().asFuture(loop)
    await client.connect().asFuture(loop)
    try:
        results = await asyncio.gather(*[
            client.submit("slow-upper", f"job {i}",
                          onStatus=lambda n, d, i=i: print(f"job {i}: {n}/{d}")).asFuture(loop)
            for i in range(3)])
        print("results:", results)
        print("7/2 =", await client.submit("divide", b"7/2").asFuture(loop))
        try:
            await client.submit("divide", b"1/0").asFuture(loop)
        except JobException as e:
            print("the worker raised:", e.data.decode())
    finally:
        await client.close().asFuture(loop)
        await worker.close().asFuture(loop)


if __name__ == "__main__":
    from twisted.internet import reactor

    async def run() -> None:
        try:
            await main(sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:4730")
        finally:
            reactor.stop()

    loop.create_task(run())
    reactor.run()

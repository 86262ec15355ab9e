"""
The tutorial's client: submit resize jobs for a batch of images to two
servers, show progress, and report every job's outcome.

    python resize_client.py localhost:4730 localhost:4731
"""
from __future__ import annotations

import json
import sys

from twisted.internet.defer import DeferredList, ensureDeferred
from twisted.internet.task import react

from txgear.client import GearmanClient
from txgear.errors import ConnectionLost, JobException, JobFailed, NoServers


async def main(reactor, servers):
    client = GearmanClient(servers)
    try:
        await client.connect()
    except NoServers as e:
        sys.exit(f"resize_client: {e}")   # one line and exit status 1, not a traceback
    images = [{"name": f"photo-{i:03d}.jpg", "width": 4000 + i, "height": 3000, "target": 800}
              for i in range(20)]
    images.append({"name": "broken.jpg", "width": "?"})          # fails: JobFailed

    def submit(image):
        # The unique id makes duplicate requests for one image run once,
        # and sends them to the same server.
        return client.submit("resize", json.dumps(image), unique=image["name"], timeout=60)

    outcomes = await DeferredList([submit(image) for image in images], consumeErrors=True)
    for image, (ok, value) in zip(images, outcomes):
        if ok:
            print(image["name"], "->", json.loads(value))
        elif value.check(JobFailed):
            print(image["name"], "failed")
        elif value.check(JobException):
            print(image["name"], "worker raised:", value.value.data.decode())
        elif value.check(ConnectionLost, NoServers):
            print(image["name"], "not done, server trouble:", value.getErrorMessage())
        else:
            print(image["name"], "error:", value.getErrorMessage())
    await client.close()


if __name__ == "__main__":
    react(lambda reactor: ensureDeferred(main(reactor, sys.argv[1:] or ["localhost:4730"])))

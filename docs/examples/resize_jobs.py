"""
Worker functions for the tutorial: "resize" an image.

The resizing is simulated (the payload describes an image; the work is a few
timed steps) so the example runs anywhere. With Pillow installed, replace
``_scale`` by real work run in a thread (``deferToThread``), never on the
reactor thread.

Load it into a worker with:

    twistd -n --pidfile= gearman-worker -s localhost:4730 -s localhost:4731 \\
        --module resize_jobs --concurrency 4
"""
from __future__ import annotations

import json

from twisted.internet import task

from txgear.errors import JobFailed


def _scale(width: int, height: int, target: int) -> tuple:
    ratio = target / max(width, height)
    return round(width * ratio), round(height * ratio)


async def resize(job):
    """
    Payload: JSON ``{"name": ..., "width": ..., "height": ..., "target": ...}``.
    Result: JSON ``{"name": ..., "width": ..., "height": ..., "worker": ...}``.
    """
    from twisted.internet import reactor

    try:
        image = json.loads(job.payload)
        width, height, target = int(image["width"]), int(image["height"]), int(image["target"])
    except (ValueError, KeyError) as e:
        # A bad request will never succeed: fail it (WORK_FAIL) without a traceback.
        raise JobFailed(f"bad resize request: {e}")
    if target <= 0:
        raise ValueError("target size must be positive")   # -> WORK_EXCEPTION
    steps = 4
    for step in range(steps):
        job.sendStatus(step, steps)
        await task.deferLater(reactor, 0.01, lambda: None)   # "work"
    newWidth, newHeight = _scale(width, height, target)
    job.sendStatus(steps, steps)
    return json.dumps({"name": image.get("name"), "width": newWidth, "height": newHeight,
                       "server": job.server}).encode()


# What `--module resize_jobs` registers: name -> callable (or (callable, timeout)).
gearmanFunctions = {"resize": (resize, 60.0)}

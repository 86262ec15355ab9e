# -*- test-case-name: tests.test_web_gearmand -*-
"""
gearmand's experimental HTTP protocol plugin, for drop-in users: C{POST}
(or C{PUT}) to C{/FUNCTION} submits a job whose payload is the body.

As gearmand: the function is the whole path without its leading slashes
(percent-decoded here); headers C{X-Gearman-Unique} (default C{-}: jobs
with the same payload coalesce), C{X-Gearman-Background: true} and
C{X-Gearman-Priority: high|low}; the answer is C{200} with
C{X-Gearman-Job-Handle} and C{X-Gearman-Command} (C{WORK_COMPLETE} with the
result as the body, every WORK_DATA chunk first; C{WORK_FAIL} with an
empty body, also for an exception; C{JOB_CREATED} for a background job).

Where gearmand has no answer (it would hang or close), txgear gives the
JSON API's: 400, 403, 413, 429, 503 (queue full, stopping), and 504 once
C{--http-max-wait} has passed (gearmand waits for ever).
"""
from __future__ import annotations

from typing import Any
from urllib.parse import unquote_to_bytes

from twisted.web.resource import Resource

from txgear.web._api import BadRequest, JobAPI, priorityOf
from txgear.web._http import error
from txgear.web._submit import Outcome

_COMMANDS = {"complete": b"WORK_COMPLETE", "fail": b"WORK_FAIL", "exception": b"WORK_FAIL",
             "created": b"JOB_CREATED"}


class GearmandResource(Resource):
    """C{POST /FUNCTION} (and C{PUT}), as gearmand's HTTP plugin."""

    isLeaf = True

    def __init__(self, api: JobAPI, resourceForApi: Any) -> None:
        Resource.__init__(self)
        self.api = api
        self.resourceForApi = resourceForApi  # the JSON API: its error replies

    def render_POST(self, request: Any) -> Any:
        name = unquote_to_bytes(request.path.lstrip(b"/"))
        if not name:
            return error(request, 404, "give the function as the path: POST /FUNCTION")
        unique = request.getHeader(b"x-gearman-unique")
        background = (request.getHeader(b"x-gearman-background") or b"").strip().lower() == b"true"
        try:
            priority = priorityOf(request.getHeader(b"x-gearman-priority"))
        except BadRequest as e:
            return error(request, 400, str(e))

        def reply(outcome: Outcome) -> None:
            if request.finished:
                return
            kind, handle, data = outcome
            command = _COMMANDS.get(kind)
            if command is None:  # the JSON API's answer
                body = self.resourceForApi.outcomeBody(request, outcome)
            else:
                request.setResponseCode(200)
                request.setHeader(b"x-gearman-job-handle", handle)
                request.setHeader(b"x-gearman-command", command)
                request.setHeader(b"content-type", b"application/octet-stream")
                body = data if kind == "complete" else b""
            request.setHeader(b"content-length", b"%d" % len(body))
            request.write(body)
            request.finish()

        return self.api.submit(request, name, b"-" if unique is None else unique, priority,
                               background, self.api.maxWait, reply)

    render_PUT = render_POST


__all__ = ["GearmandResource"]

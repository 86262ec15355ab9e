# -*- test-case-name: tests.test_web_api,tests.test_web_dead -*-
"""
The JSON API (C{/v1/...}, reference in docs/api.md, OpenAPI document in
C{txgear/web/openapi.json}, served at C{/v1/openapi.json}).

Every route is in L{ROUTES}; an HTTP request acts on the server state as
a Gearman client connection would (see L{txgear.web._session}), under the
same access list: submitting, cancelling, reading a job or its events
need the C{invoke} right on its function (a job the requester may not
invoke is answered as unknown, as GET_STATUS does); the listings need
C{admin}, as the admin C{status} and C{workers} commands; retrying or
purging dead jobs needs C{grant}, as the admin C{retry dead} and C{purge
dead} commands.
"""
from __future__ import annotations

import base64
import binascii
import json
import os
import re
from typing import Any, Callable, Dict, List, Optional, Tuple
from urllib.parse import quote

from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from txgear._packet import DEFAULT_MAX_PACKET
from txgear.server._names import functionNameProblem
from txgear.server._state import HIGH, LOW, NORMAL
from txgear.server._stats import OUTCOMES
from txgear.web._limits import DEFAULT_MAX_WAIT, DEFAULT_MAX_WAITING
from txgear.web._http import ADMIN, GRANT, INVOKE, Requester, error, jsonBody, text
from txgear.web._session import SessionReaper, statusOf
from txgear.web._sse import DEFAULT_KEEPALIVE, JobEventStream
from txgear.web._submit import Outcome, Submission

#: Default and largest page of a listing.
DEFAULT_PAGE = 100
MAX_PAGE = 1000

PRIORITIES = {"high": HIGH, "normal": NORMAL, "low": LOW}
_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off", "")

_OPENAPI_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "openapi.json")


class BadRequest(Exception):
    """A parameter that cannot be used: answered 400 with its message."""


class JobAPI:
    """
    What the HTTP port's job resources share: the server's state, factory
    and clock, the limits, and the requests in flight (ended when the
    server stops).

    @param maxBody: the largest request body (payload), in bytes: the
        server's C{--max-packet-size}.
    @param maxWait: the default and longest wait of a foreground submission.
    @param maxWaiting: how many requests may wait on jobs at once; past it,
        429.
    @param keepAlive: seconds between keep-alive comments of an event stream.
    """

    def __init__(self, state: Any, factory: Any, clock: Any, maxBody: int = DEFAULT_MAX_PACKET,
                 maxWait: float = DEFAULT_MAX_WAIT, maxWaiting: int = DEFAULT_MAX_WAITING,
                 keepAlive: float = DEFAULT_KEEPALIVE) -> None:
        self.state = state
        self.factory = factory
        self.clock = clock
        self.maxBody = maxBody
        # A result may be as large as the largest packet a worker may send.
        self.maxResult = maxBody + 64 * 1024
        self.maxWait = maxWait
        self.maxWaiting = maxWaiting
        self.keepAlive = keepAlive
        self.reaper = SessionReaper(clock)
        self.waiting = 0
        self.calls: Dict[Submission, None] = {}
        self.streams: Dict[JobEventStream, None] = {}

    def stop(self) -> None:
        """The server stops: answer every waiting submission, end every event stream."""
        for call in list(self.calls):
            call.stop()
        for stream in list(self.streams):
            stream.end()

    def full(self) -> bool:
        """Are as many requests waiting as allowed?"""
        return self.waiting + len(self.streams) >= self.maxWaiting

    def submit(self, request: Any, name: bytes, unique: bytes, priority: int,
               background: bool, wait: float, reply: Callable[[Outcome], None]) -> Any:
        """
        Checks shared by both submission forms, then the submission;
        returns what C{render} returns.
        """
        if request.bodyTooLarge:
            return error(request, 413, f"the payload exceeds {self.maxBody} bytes")
        problem = functionNameProblem(name, self.factory.maxFunctionName)
        if problem is not None:
            return error(request, 400, text(problem[1]), code=text(problem[0]))
        if not Requester(request, self.factory).may(INVOKE, name):
            return error(request, 403, "permission denied by the access list")
        if self.full():
            return error(request, 429, "too many requests waiting on jobs")
        payload = request.content.getvalue()
        call = Submission(self, request, background, reply)
        call.start(name, unique, payload, priority, wait)
        return NOT_DONE_YET


# -- parameters ---------------------------------------------------------------


def _param(request: Any, name: str, header: Optional[bytes] = None) -> Optional[bytes]:
    """A query parameter, else the header, else C{None}."""
    values = request.args.get(name.encode("ascii"))
    if values:
        return values[0]
    if header is not None:
        value = request.getHeader(header)
        if value is not None:
            return value.encode("utf-8", "surrogateescape") if isinstance(value, str) else value
    return None


def priorityOf(value: Optional[bytes]) -> int:
    """C{high}, C{normal} (default) or C{low}."""
    if value is None:
        return NORMAL
    priority = PRIORITIES.get(value.decode("latin-1").strip().lower())
    if priority is None:
        raise BadRequest("priority must be high, normal or low")
    return priority


def flagOf(value: Optional[bytes], what: str) -> bool:
    """A boolean parameter: true/1/yes/on or false/0/no/off."""
    if value is None:
        return False
    word = value.decode("latin-1").strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise BadRequest(f"{what} must be true or false")


def _number(value: Optional[bytes], what: str, default: float) -> float:
    if value is None:
        return default
    try:
        number = float(value.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise BadRequest(f"{what} must be a number")
    if not number >= 0 or number == float("inf"):
        raise BadRequest(f"{what} must be a non-negative number")
    return number


def jobLocation(handle: bytes) -> bytes:
    """The path of a job's resource."""
    return b"/v1/jobs/" + quote(handle, safe=":").encode("ascii")


# -- routes -------------------------------------------------------------------

Handler = Callable[["ApiResource", Any, Dict[str, bytes]], Any]

#: Every route of the API: (method, path pattern, handler name). Each
#: C{{name}} matches one path segment (percent-decoded).
ROUTES: List[Tuple[str, str, str]] = [
    ("GET", "/v1/openapi.json", "openapi"),
    ("GET", "/v1/functions", "listFunctions"),
    ("POST", "/v1/functions/{name}/jobs", "submitJob"),
    ("GET", "/v1/workers", "listWorkers"),
    ("GET", "/v1/jobs", "findJob"),
    ("GET", "/v1/jobs/{handle}", "getJob"),
    ("DELETE", "/v1/jobs/{handle}", "cancelJob"),
    ("GET", "/v1/jobs/{handle}/events", "jobEvents"),
    ("GET", "/v1/jobs/{handle}/result", "jobResult"),
    ("GET", "/v1/stats", "stats"),
    ("GET", "/v1/failures", "listFailures"),
    ("GET", "/v1/dead", "listDead"),
    ("DELETE", "/v1/dead", "purgeDead"),
    ("POST", "/v1/dead/retry", "retryDead"),
]


def _compile(pattern: str) -> List[Optional[str]]:
    """A pattern's segments after C{/v1}: a literal, or C{None} for a parameter (named)."""
    return [segment for segment in pattern.split("/")[2:]]


_COMPILED = [(method, _compile(pattern), handler) for method, pattern, handler in ROUTES]
_PARAMETER = re.compile(r"^\{(\w+)\}$")


def _match(segments: List[bytes]) -> Tuple[Dict[str, str], Dict[str, bytes]]:
    """The handlers whose pattern matches, by method, and the parameters."""
    handlers: Dict[str, str] = {}
    parameters: Dict[str, bytes] = {}
    for method, pattern, handler in _COMPILED:
        if len(pattern) != len(segments):
            continue
        found: Dict[str, bytes] = {}
        for expected, segment in zip(pattern, segments):
            assert expected is not None
            name = _PARAMETER.match(expected)
            if name is not None:
                if not segment:
                    break
                found[name.group(1)] = segment
            elif expected.encode("ascii") != segment:
                break
        else:
            handlers[method] = handler
            parameters = found
    return handlers, parameters


class ApiResource(Resource):
    """C{/v1}: routes requests to the handlers of L{ROUTES}."""

    isLeaf = True

    def __init__(self, api: JobAPI) -> None:
        Resource.__init__(self)
        self.api = api
        with open(_OPENAPI_PATH, "rb") as f:  # read once, at start-up
            self.openapiDocument = f.read()

    def render(self, request: Any) -> Any:
        handlers, parameters = _match(list(request.postpath))
        if not handlers:
            return error(request, 404, "no such resource")
        method = request.method.decode("latin-1")
        if method == "HEAD" and "GET" in handlers:
            method = "GET"
        handler = handlers.get(method)
        if handler is None:
            request.setHeader(b"allow", ", ".join(sorted(handlers)).encode("ascii"))
            return error(request, 405, "method not allowed")
        try:
            return getattr(self, handler)(request, parameters)
        except BadRequest as e:
            return error(request, 400, str(e))

    # -- the document -------------------------------------------------------

    def openapi(self, request: Any, parameters: Dict[str, bytes]) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        return self.openapiDocument

    # -- submitting ---------------------------------------------------------

    def submitJob(self, request: Any, parameters: Dict[str, bytes]) -> Any:
        api = self.api
        unique = _param(request, "unique", b"x-gearman-unique") or b""
        priority = priorityOf(_param(request, "priority", b"x-gearman-priority"))
        background = flagOf(_param(request, "background", b"x-gearman-background"), "background")
        wait = min(_number(_param(request, "wait"), "wait", api.maxWait), api.maxWait)

        def reply(outcome: Outcome) -> None:
            if request.finished:
                return
            body = self.outcomeBody(request, outcome)
            request.setHeader(b"content-length", b"%d" % len(body))
            request.write(body)
            request.finish()

        return api.submit(request, parameters["name"], unique, priority, background, wait, reply)

    def outcomeBody(self, request: Any, outcome: Outcome) -> bytes:
        """Set the status and headers of an outcome's answer; return its body."""
        kind, handle, data = outcome
        if handle:
            request.setHeader(b"x-gearman-job-handle", handle)
        if kind in ("complete", "fail", "exception"):
            request.setHeader(b"x-gearman-outcome", kind.encode("ascii"))
        if kind == "complete":
            request.setResponseCode(200)
            request.setHeader(b"content-type", b"application/octet-stream")
            return data
        if kind == "exception":
            request.setResponseCode(500)
            request.setHeader(b"content-type", b"application/octet-stream")
            return data
        if kind == "created":
            request.setHeader(b"location", jobLocation(handle))
            return jsonBody(request, {"handle": text(handle)}, 202)
        if kind == "fail":
            return error(request, 502, "the job failed", handle=text(handle))
        if kind == "timeout":
            if handle:
                request.setHeader(b"location", jobLocation(handle))
            return error(request, 504, "the wait ran out; the job was left to run",
                         handle=text(handle) if handle else None)
        if kind == "toolarge":
            return error(request, 502, f"the result exceeds {self.api.maxResult} bytes",
                         handle=text(handle))
        if kind == "stopping":
            return error(request, 503, "the server is stopping")
        code, _, message = data.partition(b"\0")
        status = 503 if code == b"QUEUE_ERROR" else 400 if code in (
            b"ARGUMENT_TOO_LARGE", b"INVALID_ARGUMENT") else 500
        return error(request, status, text(message), code=text(code))

    # -- jobs ---------------------------------------------------------------

    def _visible(self, requester: Requester) -> Callable[[Any], bool]:
        def visible(job: Any) -> bool:
            return requester.may(INVOKE, job.func.name)
        return visible

    def getJob(self, request: Any, parameters: Dict[str, bytes]) -> bytes:
        handle = parameters["handle"]
        requester = Requester(request, self.api.factory)
        _, known, running, numerator, denominator = statusOf(
            self.api.state, handle=handle, visible=self._visible(requester))
        body: Dict[str, Any] = {"handle": text(handle), "known": known == b"1",
                                "running": running == b"1", "numerator": text(numerator),
                                "denominator": text(denominator)}
        job = self.api.state.jobs.get(handle) if known == b"1" else None
        if job is not None:
            body["function"] = text(job.func.name)
            body["background"] = bool(job.background)
            body["priority"] = ("high", "normal", "low")[job.priority]
        elif self._keptResult(requester, body, handle):
            return jsonBody(request, body, 200)
        return jsonBody(request, body, 200 if known == b"1" else 404)

    def _keptResult(self, requester: Requester, body: Dict[str, Any], handle: bytes) -> bool:
        """
        Add the kept result of a finished job C{handle} to C{body} (as
        C{function} and C{result}), if the requester may see it.
        """
        entry = self.api.state.kept.get(handle)
        if entry is None or not requester.may(INVOKE, entry.function):
            return False
        body["handle"] = text(handle)
        body["function"] = text(entry.function)
        body["result"] = {"status": entry.status, "size": entry.size, "kept": entry.kept,
                          "expiresAt": entry.expiresAt / 1000.0}
        return True

    def jobResult(self, request: Any, parameters: Dict[str, bytes]) -> Any:
        handle = parameters["handle"]
        state = self.api.state
        requester = Requester(request, self.api.factory)
        found = state.resultOf(handle, lambda function: requester.may(INVOKE, function))
        if found in (b"RUNNING", b"QUEUED"):
            return error(request, 409, "the job has not finished",
                         handle=text(handle), state=found.decode("ascii").lower())
        if type(found) is bytes:
            return error(request, 404, "no such job, or no result kept for it",
                         handle=text(handle))
        entry = found
        if not entry.kept:
            return error(request, 410, "the job finished but its result was not kept "
                         "(larger than --keep-max-size)", handle=text(handle),
                         outcome=entry.status, size=entry.size)

        def answer(record: Any) -> None:
            if request.finished or getattr(request, "_disconnected", False):
                return
            if record is None or record.expiresAt <= state.kept.now():
                body = error(request, 404, "no such job, or no result kept for it",
                             handle=text(handle))
            else:
                body = self.outcomeBody(request, (record.status, handle, record.result))
            request.setHeader(b"content-length", b"%d" % len(body))
            request.write(body)
            request.finish()

        def failed(failure: Any) -> None:
            state._log.failure("Reading the kept result of {handle!r}", failure, handle=handle)
            if request.finished or getattr(request, "_disconnected", False):
                return
            body = error(request, 500, "the store could not read the result",
                         handle=text(handle))
            request.setHeader(b"content-length", b"%d" % len(body))
            request.write(body)
            request.finish()

        state.kept.fetch(entry).addCallbacks(answer, failed)
        return NOT_DONE_YET

    def findJob(self, request: Any, parameters: Dict[str, bytes]) -> bytes:
        unique = _param(request, "unique")
        if unique is None:
            raise BadRequest("give ?unique=")
        requester = Requester(request, self.api.factory)
        _, known, running, numerator, denominator, waiting = statusOf(
            self.api.state, unique=unique, visible=self._visible(requester))
        body = {"unique": text(unique), "known": known == b"1", "running": running == b"1",
                "numerator": text(numerator), "denominator": text(denominator),
                "waiting": int(waiting)}
        function = _param(request, "function")
        if known != b"1" and function:
            # A kept result is named by function and unique.
            entry = self.api.state.kept.byUnique(function, unique)
            if entry is not None and self._keptResult(requester, body, entry.handle):
                return jsonBody(request, body, 200)
        return jsonBody(request, body, 200 if known == b"1" else 404)

    def cancelJob(self, request: Any, parameters: Dict[str, bytes]) -> bytes:
        handle = parameters["handle"]
        state = self.api.state
        job = state.jobs.get(handle)
        if job is not None and not Requester(request, self.api.factory).may(
                INVOKE, job.func.name):
            job = None  # as unknown, as admin "cancel job" under an access list
        if job is None or not state.cancel(handle):
            return error(request, 404, "no such job", handle=text(handle))
        return jsonBody(request, {"handle": text(handle), "cancelled": True})

    def jobEvents(self, request: Any, parameters: Dict[str, bytes]) -> Any:
        api = self.api
        handle = parameters["handle"]
        encoding = (_param(request, "encoding") or b"text").decode("latin-1")
        if encoding not in ("text", "base64"):
            raise BadRequest("encoding must be text or base64")
        requester = Requester(request, api.factory)
        _, known, running, numerator, denominator = statusOf(
            api.state, handle=handle, visible=self._visible(requester))
        if known != b"1":
            return error(request, 404, "no such job", handle=text(handle))
        if api.full():
            return error(request, 429, "too many requests waiting on jobs")
        stream = JobEventStream(api, request, handle, encoding, api.keepAlive)
        if not stream.start(numerator, denominator, running == b"1"):
            return error(request, 404, "no such job", handle=text(handle))
        return NOT_DONE_YET

    # -- listings -----------------------------------------------------------

    def _page(self, request: Any) -> Tuple[int, Optional[bytes]]:
        limit = int(_number(_param(request, "limit"), "limit", DEFAULT_PAGE))
        return max(1, min(limit, MAX_PAGE)), _param(request, "after")

    def listFunctions(self, request: Any, parameters: Dict[str, bytes]) -> bytes:
        if not Requester(request, self.api.factory).has(ADMIN):
            return error(request, 403, "permission denied by the access list")
        limit, after = self._page(request)
        start: Optional[bytes] = None
        if after:
            try:
                start = base64.b64decode(after, altchars=b"-_", validate=True)
            except (binascii.Error, ValueError):
                raise BadRequest("after must be the next cursor of a previous page")
        functions = self.api.state.functions
        names = sorted(name for name in functions if start is None or name > start)
        items = []
        for name in names[:limit]:
            function = functions[name]
            high, normal, low = function.priorityCounts
            items.append({"name": text(name), "queued": {"high": high, "normal": normal,
                                                          "low": low},
                          "running": function.running, "workers": function.workers,
                          "scheduled": function.scheduled, "total": function.total()})
        following = (base64.urlsafe_b64encode(names[limit - 1]).decode("ascii")
                     if len(names) > limit else None)
        return jsonBody(request, {"items": items, "next": following})

    def listWorkers(self, request: Any, parameters: Dict[str, bytes]) -> bytes:
        api = self.api
        if not Requester(request, api.factory).has(ADMIN):
            return error(request, 403, "permission denied by the access list")
        limit, after = self._page(request)
        try:
            start = int(after) if after else 0
        except ValueError:
            raise BadRequest("after must be the next cursor of a previous page")
        connections = api.factory.connections
        items: List[Dict[str, Any]] = []
        following = None
        # Sessions are kept in order of their ids.
        for session in list(api.state.sessions.values()):
            if session.id <= start or not session.functions:
                continue
            if len(items) == limit:
                following = str(items[-1]["id"])
                break
            protocol = connections.get(session)
            fd, ip = protocol.describe() if protocol is not None else (b"-", b"-")
            items.append({"id": session.id, "address": text(ip), "fd": text(fd),
                          "client_id": text(session.clientId),
                          "functions": [text(f.name) for f in session.functions]})
        return jsonBody(request, {"items": items, "next": following})


    # -- counters -----------------------------------------------------------

    def stats(self, request: Any, parameters: Dict[str, bytes]) -> bytes:
        """
        Every function's counts and counters, and the server's totals (live
        and forgotten functions): what the dashboard polls. O(functions).
        """
        api = self.api
        if not Requester(request, api.factory).has(ADMIN):
            return error(request, 403, "permission denied by the access list")
        state = api.state
        now = api.clock.seconds()
        items = []
        submitted = [0, 0]
        finished = [0] * len(OUTCOMES)
        for name in sorted(state.functions):
            function = state.functions[name]
            high, normal, low = function.priorityCounts
            oldest = state.oldestQueued(function)
            counters = function.stats
            item: Dict[str, Any] = {
                "name": text(name), "queued": {"high": high, "normal": normal, "low": low},
                "running": function.running, "workers": function.workers,
                "scheduled": function.scheduled,
                "oldest_age": None if oldest is None else max(0.0, now - oldest)}
            if counters is not None:
                item["submitted"] = {"foreground": counters.submitted[0],
                                     "background": counters.submitted[1]}
                item["finished"] = dict(zip(OUTCOMES, counters.finished))
                _add(submitted, counters.submitted)
                _add(finished, counters.finished)
            items.append(item)
        for counters in state.stats.retired.values():
            _add(submitted, counters.submitted)
            _add(finished, counters.finished)
        byFunction: Dict[str, int] = {}
        for name, count in sorted(state.dead.counts().items()):
            key = text(name)  # two names may decode alike: their counts add up
            byFunction[key] = byFunction.get(key, 0) + count
        return jsonBody(request, {
            "time": now, "functions": items,
            "totals": {"submitted": {"foreground": submitted[0], "background": submitted[1]},
                       "finished": dict(zip(OUTCOMES, finished))},
            "dead": {"count": len(state.dead), "by_function": byFunction}})

    def listFailures(self, request: Any, parameters: Dict[str, bytes]) -> bytes:
        """The most recent failed attempts, newest first."""
        api = self.api
        if not Requester(request, api.factory).has(ADMIN):
            return error(request, 403, "permission denied by the access list")
        limit = int(_number(_param(request, "limit"), "limit", DEFAULT_PAGE))
        items: List[Dict[str, Any]] = []
        for failure in reversed(api.state.stats.failures):
            if len(items) >= limit:
                break
            items.append({"time": failure.when, "function": text(failure.function),
                          "handle": text(failure.handle), "outcome": failure.outcome,
                          "final": failure.final, "error": text(failure.error)})
        return jsonBody(request, {"items": items})


    # -- the dead set -------------------------------------------------------

    def listDead(self, request: Any, parameters: Dict[str, bytes]) -> bytes:
        """The dead jobs (of C{?function=}, or all), newest first, in pages."""
        api = self.api
        if not Requester(request, api.factory).has(ADMIN):
            return error(request, 403, "permission denied by the access list")
        limit, after = self._page(request)
        before: Optional[Tuple[int, int]] = None
        if after:
            before = _deadCursorOf(after)
        items: List[Dict[str, Any]] = []
        following = None
        last: Any = None
        for entry in api.state.dead.newest(_param(request, "function")):
            # Newest first: in descending order of (time of death, key).
            if before is not None and (entry.diedAt, entry.key) >= before:
                continue
            if len(items) == limit:
                following = f"{last.diedAt}.{last.key}"
                break
            items.append({"handle": text(entry.handle), "function": text(entry.function),
                          "unique": text(entry.unique), "attempts": entry.attempts,
                          "error": text(entry.lastError), "died_at": entry.diedAt / 1000.0,
                          "payload_size": entry.payloadSize})
            last = entry
        return jsonBody(request, {"items": items, "next": following})

    def retryDead(self, request: Any, parameters: Dict[str, bytes]) -> bytes:
        """
        Dead jobs back in the queue: C{{"handles": [...]}}, C{{"function":
        NAME}}, or all (C{{}} or no body). Answers how many were retried,
        how many stay dead for their unique, how many handles are unknown.
        """
        api = self.api
        if request.bodyTooLarge:
            return error(request, 413, f"the body exceeds {api.maxBody} bytes")
        if not Requester(request, api.factory).has(GRANT):
            return error(request, 403, "permission denied by the access list")
        handles, function = _retryBody(request.content.getvalue())
        state = api.state
        retried = stayed = unknown = 0
        if handles is not None:
            for handle in handles:
                problem = state.retryDeadJob(handle)
                if problem is None:
                    retried += 1
                elif problem == b"UNIQUE_IN_USE":
                    stayed += 1
                else:
                    unknown += 1
        else:
            names = [function] if function is not None else sorted(state.dead.counts())
            for name in names:
                count, taken = state.retryDeadFunction(name)
                retried += count
                stayed += taken
        return jsonBody(request, {"retried": retried, "stayed": stayed, "unknown": unknown})

    def purgeDead(self, request: Any, parameters: Dict[str, bytes]) -> bytes:
        """Delete the dead jobs of C{?function=}, or all."""
        api = self.api
        if not Requester(request, api.factory).has(GRANT):
            return error(request, 403, "permission denied by the access list")
        return jsonBody(request, {"purged": api.state.purgeDead(_param(request, "function"))})


#: The most handles one retry request may name.
MAX_RETRY_HANDLES = MAX_PAGE


def _deadCursorOf(after: bytes) -> Tuple[int, int]:
    """The position a dead set listing's C{next} cursor (C{DIED_AT_MS.KEY}) names."""
    diedAt, dot, key = after.partition(b".")
    if not (dot and diedAt.isdigit() and key.isdigit()):
        raise BadRequest("after must be the next cursor of a previous page")
    return int(diedAt), int(key)


def _retryBody(body: bytes) -> Tuple[Optional[List[bytes]], Optional[bytes]]:
    """The handles, or else the function, a retry request names (neither: all)."""
    if not body.strip():
        return None, None
    try:
        value = json.loads(body)
    except ValueError:  # UnicodeDecodeError included
        raise BadRequest("the body must be a JSON object")
    if not isinstance(value, dict):
        raise BadRequest("the body must be a JSON object")
    unexpected = sorted(set(value) - {"handles", "function"})
    if unexpected:
        raise BadRequest(f"unknown member {unexpected[0]!r}: give handles or function")
    handles = value.get("handles")
    function = value.get("function")
    if handles is not None and function is not None:
        raise BadRequest("give handles or function, not both")
    if handles is not None:
        if not isinstance(handles, list) or not all(isinstance(h, str) for h in handles):
            raise BadRequest("handles must be a list of strings")
        if len(handles) > MAX_RETRY_HANDLES:
            raise BadRequest(f"at most {MAX_RETRY_HANDLES} handles at once")
        return [h.encode("utf-8", "surrogatepass") for h in handles], None
    if function is not None:
        if not isinstance(function, str):
            raise BadRequest("function must be a string")
        return None, function.encode("utf-8", "surrogatepass")
    return None, None


def _add(total: List[int], counts: List[int]) -> None:
    for index, count in enumerate(counts):
        total[index] += count


__all__ = ["ApiResource", "BadRequest", "DEFAULT_MAX_WAIT", "DEFAULT_MAX_WAITING", "JobAPI",
           "ROUTES", "flagOf", "jobLocation", "priorityOf"]

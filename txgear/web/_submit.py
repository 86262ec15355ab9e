# -*- test-case-name: tests.test_web_api -*-
"""
One job submitted over HTTP, from the submission to its outcome: the
L{HTTPSession} that carries it, the wait, and the outcome handed to a
reply function (the JSON API's and gearmand's form answer differently).

A foreground submission waits for the job's end or its wait, whichever
comes first; a background one for the JOB_CREATED (with a store: once the
job is stored). Outcomes, as C{(kind, handle, data)}:

  - C{created}: a background job was accepted;
  - C{complete}: WORK_COMPLETE, with every WORK_DATA chunk before it
    (in order) and the final data appended, as gearmand's HTTP plugin;
  - C{fail}, C{exception} (its data): the job failed;
  - C{error}: the server refused it: C{data} is C{code\\0text} of its ERROR;
  - C{timeout}: the wait ran out; C{toolarge}: the result outgrew the limit;
  - C{stopping}: the server stops.

Whenever the request ends without the job's end (a timeout, a client that
went away, a result too large), the session detaches as a Gearman client
connection that goes away: a running job runs on (its result goes
nowhere), a queued foreground job nobody else waits for is dropped.
"""
from __future__ import annotations

from typing import Any, Callable, List, Optional, Tuple

from txgear._packet import PacketType
from txgear.web._session import HTTPSession

Outcome = Tuple[str, bytes, bytes]

_JOB_CREATED = int(PacketType.JOB_CREATED)
_ERROR = int(PacketType.ERROR)
_WORK_DATA = int(PacketType.WORK_DATA)
_WORK_COMPLETE = int(PacketType.WORK_COMPLETE)
_WORK_FAIL = int(PacketType.WORK_FAIL)
_WORK_EXCEPTION = int(PacketType.WORK_EXCEPTION)


class Submission:
    """
    One HTTP submission in flight.

    @param api: the L{txgear.web._api.JobAPI} (state, clock, reaper, limits).
    @param reply: called once with the L{Outcome}.
    """

    __slots__ = ("api", "request", "background", "reply", "peer", "handle", "chunks", "size",
                 "timer", "done", "counted")

    def __init__(self, api: Any, request: Any, background: bool,
                 reply: Callable[[Outcome], None]) -> None:
        self.api = api
        self.request = request
        self.background = background
        self.reply = reply
        self.peer: Optional[HTTPSession] = None
        self.handle = b""
        self.chunks: List[bytes] = []
        self.size = 0
        self.timer: Any = None
        self.done = False
        self.counted = False

    def start(self, name: bytes, unique: bytes, payload: bytes, priority: int,
              wait: float) -> None:
        """Submit, and wait up to C{wait} seconds (foreground) for the outcome."""
        api = self.api
        api.calls[self] = None
        api.waiting += 1
        self.counted = True
        self.request.notifyFinish().addErrback(self._requestGone)
        self.timer = api.clock.callLater(wait, self._timedOut)
        self.peer = HTTPSession(api.state, self._packet)
        api.state.submit(self.peer.session, name, unique, payload, priority, self.background)

    def _packet(self, kind: int, body: bytes) -> None:
        if kind == _JOB_CREATED:
            self.handle = bytes(body)
            if self.background:
                self._end(("created", self.handle, b""))
        elif kind == _WORK_DATA:
            data = bytes(body).split(b"\0", 1)[1]
            self.size += len(data)
            if self.size > self.api.maxResult:
                self._end(("toolarge", self.handle, b""))
                return
            self.chunks.append(data)
        elif kind == _WORK_COMPLETE:
            data = bytes(body).split(b"\0", 1)[1]
            if self.size + len(data) > self.api.maxResult:
                self._end(("toolarge", self.handle, b""))
                return
            if self.chunks:
                self.chunks.append(data)
                data = b"".join(self.chunks)
            self._end(("complete", self.handle, data))
        elif kind == _WORK_FAIL:
            self._end(("fail", self.handle, b""))
        elif kind == _WORK_EXCEPTION:
            self._end(("exception", self.handle, bytes(body).split(b"\0", 1)[1]))
        elif kind == _ERROR:
            self._end(("error", self.handle, bytes(body)))
        # WORK_STATUS and WORK_WARNING: not part of a plain call's answer.

    def _timedOut(self) -> None:
        self.timer = None
        self._end(("timeout", self.handle, b""))

    def stop(self) -> None:
        """The server stops: answer now."""
        self._end(("stopping", self.handle, b""))

    def _release(self) -> None:
        self.done = True
        api = self.api
        api.calls.pop(self, None)
        if self.counted:
            self.counted = False
            api.waiting -= 1
        timer = self.timer
        if timer is not None:
            self.timer = None
            if timer.active():
                timer.cancel()
        self.chunks = []

    def _end(self, outcome: Outcome) -> None:
        if self.done:
            return
        self._release()
        # Maybe called from inside a state call: detached once it returned.
        self.api.reaper.close(self.peer)
        self.reply(outcome)

    def _requestGone(self, _: object) -> None:
        # The HTTP client went away (no outcome was sent).
        if not self.done:
            self._release()
            if self.peer is not None:
                self.peer.close()


__all__ = ["Outcome", "Submission"]

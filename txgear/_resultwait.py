# -*- test-case-name: tests.test_client_result -*-
"""
Waiting for a background job's kept result (L{txgear.jobs.BackgroundJob.result}).

While the server knows the job (queued or running) it is polled with
C{GET_STATUS} (or C{GET_STATUS_UNIQUE}) on the client's pooled connection,
with a growing delay; once it no longer knows it, C{show result} on an admin
connection of its own reads what the job ended with (see
L{txgear._resultquery}). Connection trouble on the way is waited out at the
same pace; only the caller's timeout or cancel() ends that.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectError, ConnectionDone, ConnectionLost as _TCPLost
from twisted.internet.defer import TimeoutError as _DeferredTimeout
from twisted.python.failure import Failure

from txgear._log import logger
from txgear._resultquery import ShowResultReply
from txgear.errors import (ConnectionLost, JobException, JobFailed, NoServers, ResultNotKept,
                           ResultUnknown)

#: The first delay between two polls, in seconds.
FIRST_POLL = 0.1
#: The longest delay between two polls, in seconds.
LONGEST_POLL = 5.0
#: Each delay is the previous one times this.
POLL_GROWTH = 1.5

#: Failures of one poll that are waited out rather than reported.
_TRANSIENT = (ConnectError, ConnectionDone, _TCPLost, ConnectionLost, NoServers,
              _DeferredTimeout)


class ResultWait:
    """
    One wait for one job's result; L{deferred} fires with the bytes.

    @param askStatus: returns a Deferred firing with a L{txgear.jobs.JobStatus}.
    @param askResult: returns a Deferred firing with a L{ShowResultReply}.
    @param describe: the job, for messages (C{H:host:12}, or C{resize/order-7}).
    """

    _log = logger()

    def __init__(self, askStatus: Callable[[], Deferred], askResult: Callable[[], Deferred],
                 clock: Any, describe: str, firstPoll: float = FIRST_POLL,
                 longestPoll: float = LONGEST_POLL) -> None:
        self._askStatus = askStatus
        self._askResult = askResult
        self._clock = clock
        self._describe = describe
        self._delay = firstPoll
        self._longest = longestPoll
        self._pending: Optional[Any] = None  # the delayed call or the Deferred in flight
        self.deferred: Deferred[bytes] = Deferred(self._cancel)

    def start(self, timeout: Optional[float] = None) -> Deferred[bytes]:
        """Begin polling; C{timeout} seconds bound the whole wait (C{TimeoutError})."""
        if timeout is not None:
            self.deferred.addTimeout(timeout, self._clock)
        self._poll()
        return self.deferred

    def _cancel(self, d: Deferred) -> None:
        pending, self._pending = self._pending, None
        if isinstance(pending, Deferred):
            pending.cancel()
        elif pending is not None and pending.active():
            pending.cancel()

    def _ask(self, call: Callable[[], Deferred], then: Callable[[Any], None]) -> None:
        d = call()
        self._pending = d
        d.addCallbacks(self._answered, self._troubled, callbackArgs=(then,))

    def _answered(self, value: Any, then: Callable[[Any], None]) -> None:
        self._pending = None
        if not self.deferred.called:
            then(value)

    def _troubled(self, reason: Failure) -> None:
        self._pending = None
        if self.deferred.called or reason.check(CancelledError):
            return
        if reason.check(*_TRANSIENT):
            self._log.debug("Waiting for the result of {job}: {why}; asking again",
                            job=self._describe, why=reason.getErrorMessage())
            self._later()
            return
        self.deferred.errback(reason)

    def _later(self) -> None:
        delay = self._delay
        self._delay = min(self._delay * POLL_GROWTH, self._longest)
        self._pending = self._clock.callLater(delay, self._poll)

    def _poll(self) -> None:
        self._pending = None
        self._ask(self._askStatus, self._status)

    def _status(self, status: Any) -> None:
        if status.known:
            self._later()
        else:
            self._ask(self._askResult, self._result)

    def _result(self, reply: ShowResultReply) -> None:
        if reply.error in (b"RUNNING", b"QUEUED"):
            self._later()  # it was resubmitted, or is finishing: ask again
            return
        if reply.error is None:
            self._ended(reply)
            return
        if reply.error == b"NOT_KEPT":
            status, _, size = reply.detail.decode("ascii", "replace").partition("+")
            self.deferred.errback(ResultNotKept(
                f"job {self._describe} ended ({status}) but its {size}-byte result was not "
                "kept (larger than the server's --keep-max-size)",
                status, int(size) if size.isdigit() else 0))
            return
        if reply.error == b"UNKNOWN_JOB":
            self.deferred.errback(ResultUnknown(
                f"job {self._describe} is not known and no result is kept for it (its function "
                "has no keep policy, the result expired, or it never existed there)"))
            return
        self.deferred.errback(ResultUnknown(f"job {self._describe}: the server answered "
                                            f"{reply.errorLine!r}"))

    def _ended(self, reply: ShowResultReply) -> None:
        if reply.status == "complete":
            self.deferred.callback(reply.data)
        elif reply.status == "exception":
            self.deferred.errback(JobException(reply.data))
        else:
            self.deferred.errback(JobFailed(f"job {self._describe} failed"))


__all__ = ["FIRST_POLL", "LONGEST_POLL", "POLL_GROWTH", "ResultWait"]

# -*- test-case-name: tests.test_client -*-
"""
Requests a client connection sends and the submission state machine.

A L{_Request} waits for one reply packet; a L{_Submission} is one job from
the caller's call to its final answer. A submission may visit several
connections (failover) but is on at most one at a time. It talks to the
connection carrying it and to the client that routes it only through two
small interfaces:

  - L{SubmissionCarrier} (the connection): C{sendSubmission},
    C{forgetSubmission};
  - L{SubmissionRouter} (the client over a pool): C{submissionLost}.
"""
from __future__ import annotations

from typing import Any, Callable, List, Optional, Protocol, Union

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from txgear._packet import PacketType, requestHeader
from txgear._protocol import _BIG_PAYLOAD, toBytes
from txgear.errors import ConnectionLost
from txgear.jobs import Priority

StatusCallback = Callable[[int, int], object]
DataCallback = Callable[[bytes], object]

_FOREGROUND = {
    Priority.HIGH: PacketType.SUBMIT_JOB_HIGH,
    Priority.NORMAL: PacketType.SUBMIT_JOB,
    Priority.LOW: PacketType.SUBMIT_JOB_LOW,
}
_BACKGROUND = {
    Priority.HIGH: PacketType.SUBMIT_JOB_HIGH_BG,
    Priority.NORMAL: PacketType.SUBMIT_JOB_BG,
    Priority.LOW: PacketType.SUBMIT_JOB_LOW_BG,
}

#: The longest unique id a server accepts.
MAX_UNIQUE = 63


class SubmissionCarrier(Protocol):
    """What a submission needs from the connection carrying it."""

    def sendSubmission(self, sub: "_Submission") -> None:
        """Put C{sub} on this connection (it is connected)."""

    def forgetSubmission(self, sub: "_Submission") -> None:
        """The caller gave up on C{sub}: let go of it."""


class SubmissionRouter(Protocol):
    """What a submission needs from the client that chose its connection."""

    def submissionLost(self, sub: "_Submission", created: bool, reason: Failure,
                       server: Any) -> None:
        """
        The connection carrying C{sub} (to C{server}, a pool server or
        C{None}) went away, before (C{created} false) or after the server
        acknowledged it.
        """


class _Request:
    """
    A request the server answers with one packet.

    @ivar reply: the packet type that answers it (an C{ERROR} may too).
    """

    __slots__ = ("deferred", "answered", "argument", "reply")

    def __init__(self, reply: int, argument: bytes = b"") -> None:
        self.deferred: Deferred[Any] = Deferred()
        self.answered = False
        self.argument = argument
        self.reply = reply

    def answer(self, value: Any) -> None:
        """The reply came: fire the caller's Deferred."""
        self.answered = True
        if not self.deferred.called:
            self.deferred.callback(value)

    def fail(self, reason: Any) -> None:
        self.answered = True
        if not self.deferred.called:
            self.deferred.errback(reason)


class _Submission(_Request):
    """
    One job submission, from the caller's call to the final answer.

    @ivar carrier: the connection carrying it now (a L{SubmissionCarrier}).
    @ivar router: the client routing it (a L{SubmissionRouter}), or C{None}
        for a submission made on one connection.
    @ivar tried: the pool servers that dropped it before acknowledging it.
    @ivar rounds: how many times a connection was lost before C{JOB_CREATED}.
    @ivar patient: wait for a server through outages (it has a timeout).
    @ivar waiting: the wait for a server, while it has none.
    """

    __slots__ = ("function", "unique", "payload", "kind", "background", "when",
                 "onStatus", "onData", "onWarning", "handle", "carrier", "router",
                 "retries", "tried", "waiting", "cancelled", "rounds", "server", "patient")

    def __init__(self, function: bytes, unique: bytes, payload: bytes, kind: int,
                 background: bool, when: Optional[int] = None,
                 onStatus: Optional[StatusCallback] = None,
                 onData: Optional[DataCallback] = None,
                 onWarning: Optional[DataCallback] = None,
                 retries: int = 0) -> None:
        self.function = function
        self.unique = unique
        self.payload: Optional[bytes] = payload
        self.kind = kind
        self.background = background
        self.when = when
        self.onStatus = onStatus
        self.onData = onData
        self.onWarning = onWarning
        self.retries = retries
        self.handle: Optional[bytes] = None
        self.carrier: Optional[SubmissionCarrier] = None
        self.router: Optional[SubmissionRouter] = None
        self.server: Any = None
        self.tried: List[Any] = []
        self.rounds = 0
        self.patient = False
        self.waiting: Optional[Deferred] = None
        self.cancelled = False
        self.answered = False
        self.reply = PacketType.JOB_CREATED
        self.argument = b""
        self.deferred = Deferred(self._cancel)

    @property
    def finished(self) -> bool:
        """Whether the caller has its answer (or gave up)."""
        return self.cancelled or self.deferred.called

    def packetArguments(self) -> tuple:
        payload = self.payload if self.payload is not None else b""
        if self.kind == PacketType.SUBMIT_JOB_EPOCH:
            return (self.function, self.unique, str(self.when).encode("ascii"), payload)
        return (self.function, self.unique, payload)

    def packet(self) -> Union[bytes, List[bytes]]:
        """
        The submission's request packet: C{bytes}, or for a large payload a
        list of two buffers to write in order (the payload not copied).
        """
        payload = self.payload if self.payload is not None else b""
        function, unique = self.function, self.unique
        if self.kind == PacketType.SUBMIT_JOB_EPOCH or len(payload) >= _BIG_PAYLOAD:
            if self.kind == PacketType.SUBMIT_JOB_EPOCH:
                head = b"".join((function, b"\0", unique, b"\0", str(self.when).encode("ascii"),
                                 b"\0"))
            else:
                head = b"".join((function, b"\0", unique, b"\0"))
            header = requestHeader(self.kind, len(head) + len(payload))
            if len(payload) >= _BIG_PAYLOAD:
                return [header + head, payload]
            return b"".join((header, head, payload))
        header = requestHeader(self.kind, len(function) + len(unique) + 2 + len(payload))
        return b"".join((header, function, b"\0", unique, b"\0", payload))

    def sentOn(self, carrier: SubmissionCarrier, server: Any) -> None:
        """It was written on C{carrier} (to C{server}) and waits for C{JOB_CREATED}."""
        self.carrier = carrier
        self.server = server
        self.answered = False
        self.handle = None

    def _cancel(self, d: Deferred) -> None:
        self.cancelled = True
        self._release()
        if self.waiting is not None:
            waiting, self.waiting = self.waiting, None
            waiting.cancel()
        carrier, self.carrier = self.carrier, None
        if carrier is not None:
            carrier.forgetSubmission(self)

    def _release(self) -> None:
        # A refused, failed or abandoned job must not keep its payload alive
        # for as long as someone holds its Deferred.
        self.payload = None
        self.onStatus = self.onData = self.onWarning = None

    def finish(self, result: Any) -> None:
        """Fire the caller's Deferred (once) and let go of everything."""
        self.answered = True
        self.carrier = None
        self._release()
        if not self.deferred.called:
            if isinstance(result, (Failure, Exception)):
                self.deferred.errback(result)
            else:
                self.deferred.callback(result)

    def complete(self, result: bytes) -> None:
        """L{finish} with a job's result (C{WORK_COMPLETE}): the hot path, inlined."""
        self.answered = True
        self.carrier = None
        self.payload = None
        self.onStatus = self.onData = self.onWarning = None
        deferred = self.deferred
        if not deferred.called:
            deferred.callback(result)

    def lost(self, created: bool, reason: Failure) -> None:
        """The connection carrying this submission went away."""
        self.carrier = None
        if self.finished:
            return
        if self.router is not None:
            self.router.submissionLost(self, created, reason, self.server)
        else:
            self.finish(ConnectionLost(f"connection lost: {reason.getErrorMessage()}"))


def makeSubmission(function: Union[bytes, str], payload: Union[bytes, str],
                   unique: Optional[Union[bytes, str]], priority: Priority,
                   background: bool, when: Optional[float],
                   onStatus: Optional[StatusCallback] = None,
                   onData: Optional[DataCallback] = None,
                   onWarning: Optional[DataCallback] = None,
                   retries: int = 0) -> _Submission:
    """Check and encode the arguments of a submission."""
    if type(function) is not bytes:
        function = toBytes(function, "function")
    if type(payload) is not bytes:
        payload = toBytes(payload, "payload")
    if unique is None:
        unique = b""
    else:
        unique = toBytes(unique, "unique")
        if len(unique) > MAX_UNIQUE:
            raise ValueError(f"unique ids are limited to {MAX_UNIQUE} bytes")
    if when is not None:
        Priority(priority)
        if not background:
            raise ValueError("a run-at time needs a background job")
        kind: int = PacketType.SUBMIT_JOB_EPOCH
        when = int(when)
    else:
        kinds = _BACKGROUND if background else _FOREGROUND
        try:
            kind = kinds[priority]
        except (KeyError, TypeError):
            kind = kinds[Priority(priority)]  # raises ValueError if it is none
    return _Submission(function, unique, payload, kind, background, when,  # type: ignore[arg-type]
                       onStatus, onData, onWarning, retries)


__all__ = ["DataCallback", "MAX_UNIQUE", "StatusCallback", "SubmissionCarrier",
           "SubmissionRouter", "makeSubmission"]

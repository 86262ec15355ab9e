# -*- test-case-name: tests.test_store_contract -*-
"""
Plain records shared by the server, its stores and the client library.
"""
from __future__ import annotations

from enum import IntEnum
from typing import TYPE_CHECKING, Callable, Optional

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred


class Priority(IntEnum):
    """
    Job priorities, in the order workers receive them: every C{HIGH} job
    before any C{NORMAL} one, every C{NORMAL} before any C{LOW}.
    """

    HIGH = 0
    NORMAL = 1
    LOW = 2


class StoredJob:
    """
    One background job as a persistent store records it.

    The server hands its stores objects with these attributes (its own job
    objects, or instances of this class); stores return instances of this class
    from L{txgear.interfaces.IJobStore.load}.

    @ivar key: a positive integer the server gives the job, increasing in
        submission order and unique in its store (the server continues after
        the largest key it loaded); stores use it to remove and order jobs.
    @ivar function: the function name.
    @ivar unique: the unique id (may be empty).
    @ivar payload: the workload bytes.
    @ivar priority: a L{Priority} value (an C{int}).
    @ivar when: the Unix time before which the job must not run, or C{0}.
    @ivar reducer: the reducer name of a map/reduce job, or C{b""}.
    @ivar clientId: the C{SET_CLIENT_ID} of the submitting connection, or C{b""}.
    @ivar attempts: runs that ended without completing (see the retry
        policies in docs/jobs.md), or 0.
    @ivar retryAt: while the job waits out a retry's backoff, the Unix time
        in milliseconds before which it must not run again; else 0.
    @ivar lastError: why its last run ended without completing (the
        WORK_EXCEPTION data, or C{worker lost}, C{timeout}, C{WORK_FAIL}), or C{b""}.
    """

    __slots__ = ("key", "function", "unique", "payload", "priority", "when", "reducer", "clientId",
                 "attempts", "retryAt", "lastError")

    def __init__(
        self,
        key: int,
        function: bytes,
        unique: bytes,
        payload: bytes,
        priority: int = Priority.NORMAL,
        when: int = 0,
        reducer: bytes = b"",
        clientId: bytes = b"",
        attempts: int = 0,
        retryAt: int = 0,
        lastError: bytes = b"",
    ) -> None:
        self.key = key
        self.function = function
        self.unique = unique
        self.payload = payload
        self.priority = int(priority)
        self.when = when
        self.reducer = reducer
        self.clientId = clientId
        self.attempts = attempts
        self.retryAt = retryAt
        self.lastError = lastError

    def _fields(self) -> tuple:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, StoredJob):
            return NotImplemented
        return self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash(self._fields())

    def __repr__(self) -> str:
        return "StoredJob({})".format(", ".join(f"{n}={getattr(self, n)!r}" for n in self.__slots__))

    @classmethod
    def fromJob(cls, job: object) -> "StoredJob":
        """Copy the stored attributes of any job-like object."""
        return cls(*(getattr(job, name) for name in cls.__slots__))


class DeadJob:
    """
    A background job that used up its attempts, as a store's dead set keeps
    it (see docs/jobs.md).

    @ivar key: the job's key (its handle is C{<prefix>:<key>}); stores keep
        dead jobs under it, apart from the queue's keys.
    @ivar function: the function name.
    @ivar unique: the unique id (may be empty).
    @ivar payload: the workload bytes; C{b""} in listings, which leave
        payloads in the store (C{payloadSize} says how large it is).
    @ivar priority: a L{Priority} value (an C{int}).
    @ivar reducer: the reducer name of a map/reduce job, or C{b""}.
    @ivar clientId: the C{SET_CLIENT_ID} of the submitting connection, or C{b""}.
    @ivar attempts: the runs it had, all ended without completing.
    @ivar lastError: why the last one ended (the WORK_EXCEPTION data, or
        C{worker lost}, C{timeout}, C{WORK_FAIL}).
    @ivar diedAt: when it entered the dead set, in Unix milliseconds.
    @ivar payloadSize: the size of its payload in bytes.
    """

    __slots__ = ("key", "function", "unique", "payload", "priority", "reducer", "clientId",
                 "attempts", "lastError", "diedAt", "payloadSize")

    def __init__(self, key: int, function: bytes, unique: bytes, payload: bytes,
                 priority: int = Priority.NORMAL, reducer: bytes = b"", clientId: bytes = b"",
                 attempts: int = 0, lastError: bytes = b"", diedAt: int = 0,
                 payloadSize: Optional[int] = None) -> None:
        self.key = key
        self.function = function
        self.unique = unique
        self.payload = payload
        self.priority = int(priority)
        self.reducer = reducer
        self.clientId = clientId
        self.attempts = attempts
        self.lastError = lastError
        self.diedAt = diedAt
        self.payloadSize = len(payload) if payloadSize is None else payloadSize

    def _fields(self) -> tuple:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, DeadJob):
            return NotImplemented
        return self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash(self._fields())

    def __repr__(self) -> str:
        return "DeadJob({})".format(", ".join(f"{n}={getattr(self, n)!r}" for n in self.__slots__))

    @classmethod
    def fromJob(cls, job: object, diedAt: int) -> "DeadJob":
        """The dead-set record of any job-like object (see L{StoredJob}) that died at C{diedAt}."""
        return cls(job.key, job.function, job.unique, job.payload,  # type: ignore[attr-defined]
                   job.priority, job.reducer, job.clientId,  # type: ignore[attr-defined]
                   job.attempts, job.lastError, diedAt)  # type: ignore[attr-defined]

    def withoutPayload(self) -> "DeadJob":
        """A copy for listings: the payload left out, its size kept."""
        return DeadJob(self.key, self.function, self.unique, b"", self.priority, self.reducer,
                       self.clientId, self.attempts, self.lastError, self.diedAt,
                       self.payloadSize)

    def revived(self) -> StoredJob:
        """The job to queue again: same key, unique and payload, fresh attempts."""
        return StoredJob(self.key, self.function, self.unique, self.payload, self.priority, 0,
                         self.reducer, self.clientId)


#: The statuses of a kept result (L{KeptResult.status}).
KEPT_COMPLETE, KEPT_FAIL, KEPT_EXCEPTION = "complete", "fail", "exception"
KEPT_STATUSES = (KEPT_COMPLETE, KEPT_FAIL, KEPT_EXCEPTION)


class KeptResult:
    """
    How a background job ended, kept for a while by a function's C{keep:TTL}
    policy (see docs/jobs.md).

    @ivar key: the job's key (its handle is C{<prefix>:<key>}).
    @ivar function: the function name.
    @ivar unique: the unique id (may be empty).
    @ivar status: C{"complete"}, C{"fail"} or C{"exception"}.
    @ivar result: the WORK_COMPLETE payload, or the WORK_EXCEPTION data
        (C{b""} for a WORK_FAIL); C{b""} in listings and when not C{kept}.
    @ivar size: the size of the result in bytes (kept or not).
    @ivar kept: C{False} for a result above the size limit: its status is
        known, its bytes were not kept.
    @ivar finishedAt: when the job ended, in Unix milliseconds.
    @ivar expiresAt: when the result expires, in Unix milliseconds.
    """

    __slots__ = ("key", "function", "unique", "status", "result", "size", "kept",
                 "finishedAt", "expiresAt")

    def __init__(self, key: int, function: bytes, unique: bytes, status: str, result: bytes,
                 finishedAt: int, expiresAt: int, kept: bool = True,
                 size: Optional[int] = None) -> None:
        self.key = key
        self.function = function
        self.unique = unique
        self.status = status
        self.result = result
        self.size = len(result) if size is None else size
        self.kept = kept
        self.finishedAt = finishedAt
        self.expiresAt = expiresAt

    def _fields(self) -> tuple:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, KeptResult):
            return NotImplemented
        return self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash(self._fields())

    def __repr__(self) -> str:
        return "KeptResult({})".format(", ".join(f"{n}={getattr(self, n)!r}"
                                                 for n in self.__slots__))

    def withoutResult(self) -> "KeptResult":
        """A copy for listings: the bytes left out, their size kept."""
        return KeptResult(self.key, self.function, self.unique, self.status, b"",
                          self.finishedAt, self.expiresAt, self.kept, self.size)


class JobStatus:
    """
    The state of a job, as C{GET_STATUS} or C{GET_STATUS_UNIQUE} report it.

    @ivar handle: the job handle asked about (C{GET_STATUS}), else C{None}.
    @ivar unique: the unique id asked about (C{GET_STATUS_UNIQUE}), else C{None}.
    @ivar known: whether the server knows the job (queued or running).
    @ivar running: whether a worker holds it.
    @ivar numerator: the last C{WORK_STATUS} numerator (0 before any).
    @ivar denominator: the last C{WORK_STATUS} denominator (0 before any).
    @ivar waiting: how many foreground clients wait for it (C{GET_STATUS_UNIQUE}
        only), else C{None}.
    @ivar server: the name of the server that answered, when known.
    """

    __slots__ = ("handle", "unique", "known", "running", "numerator", "denominator", "waiting", "server")

    def __init__(self, handle: Optional[bytes], unique: Optional[bytes], known: bool, running: bool,
                 numerator: int, denominator: int, waiting: Optional[int] = None,
                 server: Optional[str] = None) -> None:
        self.handle = handle
        self.unique = unique
        self.known = known
        self.running = running
        self.numerator = numerator
        self.denominator = denominator
        self.waiting = waiting
        self.server = server

    def __repr__(self) -> str:
        what = f"handle={self.handle!r}" if self.handle is not None else f"unique={self.unique!r}"
        return (f"JobStatus({what}, known={self.known}, running={self.running}, "
                f"{self.numerator}/{self.denominator}, waiting={self.waiting}, server={self.server!r})")


class BackgroundJob:
    """
    A background job the server accepted, or one named by a client later
    (L{txgear.client.GearmanClient.backgroundJob},
    L{txgear.client.GearmanClient.backgroundJobByUnique}).

    @ivar handle: the job handle the server assigned; C{b""} for a job
        named by function and unique only.
    @ivar server: the name (address as given) of the server it lives on;
        pass the whole object to L{GearmanClient.getStatus}.
    @ivar unique: the unique id it was submitted with.
    @ivar function: the function name, when known (else C{b""}).
    """

    __slots__ = ("handle", "server", "unique", "function", "_fetch")

    def __init__(self, handle: bytes, server: Optional[str], unique: bytes = b"",
                 function: bytes = b"",
                 fetch: Optional[Callable[["BackgroundJob", Optional[float]], "Deferred[bytes]"]] = None
                 ) -> None:
        self.handle = handle
        self.server = server
        self.unique = unique
        self.function = function
        self._fetch = fetch

    def result(self, timeout: Optional[float] = None) -> "Deferred[bytes]":
        """
        Wait for the job to finish and read its kept result (its function
        needs a C{keep:TTL} policy on the server; see docs/jobs.md).

        The client polls the job's server with a growing delay (C{GET_STATUS}
        while it is queued or running, then the admin command C{show result}).

        @param timeout: seconds to wait at most (then C{TimeoutError}); by
            default it waits as long as the job runs.
        @return: fires with the result bytes (the C{WORK_COMPLETE} payload);
            fails with L{txgear.errors.JobFailed} (it ended with C{WORK_FAIL}),
            L{txgear.errors.JobException} (C{.data}: the exception data),
            L{txgear.errors.ResultNotKept} (finished, result above the
            server's size limit), L{txgear.errors.ResultUnknown} (not known
            and nothing kept: no keep policy, expired, or never there).
            Cancel it to stop waiting.
        """
        if self._fetch is None:
            from twisted.internet.defer import fail

            return fail(ValueError("this BackgroundJob is not bound to a GearmanClient: use "
                                   "GearmanClient.submitBackground or GearmanClient.backgroundJob"))
        return self._fetch(self, timeout)

    def __repr__(self) -> str:
        if not self.handle:
            return f"BackgroundJob(function={self.function!r}, unique={self.unique!r}, server={self.server!r})"
        return f"BackgroundJob({self.handle!r}, server={self.server!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, BackgroundJob):
            return NotImplemented
        return (self.handle, self.server) == (other.handle, other.server)

    def __hash__(self) -> int:
        return hash((self.handle, self.server))

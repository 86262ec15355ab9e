# -*- test-case-name: tests.test_server_lifecycle -*-
"""
Background jobs on their way to a store, and the replies held back for them.

A job handed to L{StoreQueue.write} goes to the store with every other job
of the same reactor turn (one C{addMany}). Its submitters get JOB_CREATED
only once the store has it; every later reply to the same connection waits
behind it, so a connection's replies keep their request order. No I/O of
its own: the store and the clock are injected.
"""
from __future__ import annotations

from collections import deque
from enum import IntEnum
from typing import Any, Callable, Dict, List

from twisted.python.failure import Failure

from txgear._log import logger
from txgear._packet import PacketType, encodeResponse, responseHeader

_H_JOB_CREATED = responseHeader(PacketType.JOB_CREATED, 0)[:8]

#: What submitters hear when the store failed: fixed, as the failure's own text may
#: name files or hosts.
ERR_NOT_STORED = encodeResponse(PacketType.ERROR, b"QUEUE_ERROR", b"Job could not be stored")


class StoreState(IntEnum):
    """Where a job stands with the store (independent of its run state)."""

    #: Not in a store: a memory job, or one the store keeps for the next start.
    NONE = 0
    #: Handed to the store, not yet durable.
    WRITING = 1
    #: Durable: it must be removed from the store when it ends.
    STORED = 2
    #: The store refused it; C{job.storeError} is the ERROR its submitters get.
    FAILED = 3


NONE, WRITING, STORED, FAILED = StoreState.NONE, StoreState.WRITING, StoreState.STORED, StoreState.FAILED


class LaterReply:
    """
    A reply held in a session's order until it is known (a status the
    cluster's shared queue gives): L{WRITING} until L{resolve}.
    """

    __slots__ = ("storeState", "packet")

    def __init__(self) -> None:
        self.storeState = WRITING
        self.packet = b""

    def resolve(self, packet: bytes) -> None:
        """The reply is C{packet}; send it with the replies it held back."""
        self.packet = packet
        self.storeState = STORED


class StoreQueue:
    """
    Batches background jobs to an L{txgear.interfaces.IJobStore} and holds
    the replies that must wait for it.

    @param store: the store.
    @param clock: an C{IReactorTime}; one batch per reactor turn.
    @param stored: called with each batch once the store has it (its jobs
        are L{STORED} by then).
    @param failed: called with each batch the store refused (its jobs are
        L{FAILED} by then).
    @param stats: a L{txgear.server._stats.ServerStats} told each batch's
        commit latency and each ERROR sent for a refused job, or C{None}.
    @ivar writing: jobs handed to the store that it has not answered for.
    """

    _log = logger()

    def __init__(self, store: Any, clock: Any, stored: Callable[[List[Any]], None],
                 failed: Callable[[List[Any]], None], stats: Any = None) -> None:
        self.store = store
        self._stats = stats
        self.writing = 0
        self._clock = clock
        self._stored = stored
        self._failed = failed
        self._unstored: List[Any] = []
        # Sessions with replies held back, in no particular order.
        self._holding: Dict[Any, None] = {}

    def write(self, job: Any) -> None:
        """Record C{job} in the store with the rest of this reactor turn's jobs."""
        job.storeState = WRITING
        if type(job.payload) is not bytes:
            job.payload = bytes(job.payload)  # a large one arrived as a view
        unstored = self._unstored
        unstored.append(job)
        if len(unstored) == 1:
            self._clock.callLater(0, self._flush)

    def remove(self, job: Any) -> None:
        """Forget C{job} in the store (it ended)."""
        job.storeState = NONE
        self.store.remove(job).addErrback(self._removeFailed, job)

    def update(self, job: Any) -> None:
        """
        Write C{job} over its stored copy (a retry changed its attempts,
        last error and due time). If that fails the store keeps the older
        copy, which is logged: after a restart the job would run sooner.
        """
        self.store.addMany((job,)).addErrback(self._updateFailed, job)

    def holdReply(self, session: Any, job: Any) -> None:
        """C{session}'s next reply is C{job}'s JOB_CREATED (or ERROR), once the store answers."""
        if session.replies is None:
            session.replies = deque()
        session.replies.append(job)
        self._holding[session] = None

    def holdAndWrite(self, session: Any, jobs: List[Any]) -> None:
        """L{holdReply} then L{write} for each of C{jobs}, new jobs of C{session}, in order."""
        replies = session.replies
        if replies is None:
            replies = session.replies = deque()
        replies.extend(jobs)
        self._holding[session] = None
        for job in jobs:
            job.storeState = WRITING
            if type(job.payload) is not bytes:
                job.payload = bytes(job.payload)  # a large one arrived as a view
        unstored = self._unstored
        first = not unstored
        unstored.extend(jobs)
        if first and unstored:
            self._clock.callLater(0, self._flush)

    def forget(self, session: Any) -> None:
        """C{session} is gone: nothing to send it any more."""
        self._holding.pop(session, None)

    def releaseReplies(self) -> None:
        """Send held replies whose jobs are no longer being written (a dead job retried)."""
        self._release()

    @property
    def pending(self) -> int:
        """Background jobs not yet durable: waiting for this turn's batch, or being written."""
        return len(self._unstored) + self.writing

    def _flush(self) -> None:
        batch, self._unstored = self._unstored, []
        self.writing += len(batch)
        started = self._clock.seconds()
        d = self.store.addMany(batch)
        d.addCallbacks(self._written, self._notWritten, callbackArgs=(batch, started),
                       errbackArgs=(batch, started))

    def _answered(self, batch: List[Any], started: float) -> None:
        self.writing -= len(batch)
        if self._stats is not None:
            self._stats.storeCommit.observe(self._clock.seconds() - started)

    def _written(self, _: object, batch: List[Any], started: float) -> None:
        self._answered(batch, started)
        for job in batch:
            job.storeState = STORED
        self._stored(batch)
        self._release()

    def _notWritten(self, failure: Failure, batch: List[Any], started: float) -> None:
        self._answered(batch, started)
        self._log.failure("Could not store {count} background jobs", failure, count=len(batch))
        packet = ERR_NOT_STORED  # the detail (a file path...) is for the log only
        for job in batch:
            job.storeState = FAILED
            job.storeError = packet
        self._failed(batch)
        self._release()

    def _release(self) -> None:
        """Send what no longer waits for the store, session by session."""
        holding = self._holding
        for session in list(holding):
            if _flushReplies(session, self._stats):
                del holding[session]

    def _updateFailed(self, failure: Failure, job: Any) -> None:
        self._log.failure("Could not record the retry of job {handle!r} in the store", failure,
                          handle=job.handle)

    def _removeFailed(self, failure: Failure, job: Any) -> None:
        self._log.failure("Could not remove job {handle!r} from the store", failure,
                          handle=job.handle)


def _flushReplies(session: Any, stats: Any = None) -> bool:
    """Send C{session}'s held replies up to the first job still being written."""
    replies = session.replies
    # Joined into one write: a batch answers up to hundreds of one session's jobs.
    out: List[bytes] = []
    done = True
    while replies:
        item = replies[0]
        if type(item) is not bytes:
            state = item.storeState
            if state is WRITING:
                done = False
                break
            if type(item) is LaterReply:
                item = item.packet
            elif state is FAILED:
                item = item.storeError
                if stats is not None and not session.closed:
                    stats.errorSent(item)
            else:
                handle = item.handle
                item = _H_JOB_CREATED + len(handle).to_bytes(4, "big") + handle
        replies.popleft()
        out.append(item)
    if out and not session.closed:
        session.peer.write(out[0] if len(out) == 1 else b"".join(out))
    if done:
        session.replies = None
    return done


__all__ = ["LaterReply", "StoreQueue", "StoreState"]

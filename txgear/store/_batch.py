# -*- test-case-name: tests.test_store_contract -*-
"""
The machinery the database-backed stores share: a private one-thread pool that
runs a blocking driver, and batching of every C{add}/C{addMany}/C{remove}
issued during one reactor turn into one transaction.

The reactor thread only appends one entry per call to a list (an
C{addMany} of 400 jobs is one entry: a list of 400 record tuples and one
Deferred) and, once per turn, schedules a flush; one batch is written at a
time, and writes issued while a batch is in flight wait behind it (and so
form the next, larger batch). Order is kept.

Before a batch is written, each C{add}/C{addMany} is checked for a record
no store can hold (L{recordsProblem}); such a call fails on its own and the
rest of the batch is written. A batch that fails while being written (a full
disk, a lost connection) fails as a whole.

When a batch is written, the store's thread takes the writes that waited
behind it at once (under a lock shared with the reactor thread, which only
appends) and writes them, without waiting for the reactor to hand them
over; each batch's outcome goes back to the reactor in order. The thread
stops at a dead-set call, which the reactor runs on its own as before.

Removals alone wait: while nothing but removals is pending, they are written
L{REMOVE_LINGER} seconds after the first, or once L{REMOVE_BATCH} are
pending, whichever comes first; anything else (an add, whose submitter waits
for it) brings them along at the end of its turn. Nobody waits for a
removal (the job has ended), and each statement has a fixed cost: a drain
finishes a few jobs per turn, which made a batch of a few keys each (16,000
statements for 100,000 jobs, 35 µs of the store's thread per job). A removal
not yet written when the server dies means that job runs again after a
restart, as before for one in flight.
"""
from __future__ import annotations

import threading
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple, TypeVar

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from txgear._log import logger
from txgear.errors import StoreError
from txgear.jobs import DeadJob, KeptResult, StoredJob
from txgear.store._record import recordsProblem

_T = TypeVar("_T")

#: One write: C{(True, records)} for an C{add}/C{addMany} (a list of
#: L{txgear.store._record.Record}), C{(False, key)} for a C{remove},
#: C{(BURY, deadJob)} for an C{addDead} (a L{txgear.jobs.DeadJob}), or
#: C{(CALL, (function, args))} for a dead-set call run on its own, in order.
Operation = Tuple[Any, Any]

#: The kind of an C{addDead} operation.
BURY = "bury"

#: The kind of an C{addKept} operation.
KEEP = "keep"

#: The kind of a dead-set call (retry, purge, list, count): run in the
#: store's thread after every write issued before it, and before any after.
CALL = "call"

#: Removals alone are written this many seconds after the first of them...
REMOVE_LINGER = 0.01
#: ...or once this many operations are pending, whichever comes first.
REMOVE_BATCH = 500


def splitDead(operations: List[Operation]) -> Tuple[List[Operation], List[DeadJob]]:
    """
    Separate a batch's C{addDead}s from its queue writes: each becomes the
    removal of its key from the queue (in its place, so the order of the
    queue's writes is kept) and a dead record.

    @return: the queue's operations (for L{txgear.store._record.collapse})
        and the dead records to write in the same transaction (the last
        one of a key given twice).
    """
    queue, dead, kept = splitFinished(operations)
    assert not kept
    return queue, dead


def splitFinished(operations: List[Operation]
                  ) -> Tuple[List[Operation], List[DeadJob], List[KeptResult]]:
    """
    As L{splitDead}, and the C{addKept}s likewise: each becomes the removal
    of its key from the queue and a kept result, to write in the same
    transaction (the last one of a key given twice).
    """
    dead: Dict[int, DeadJob] = {}
    kept: Dict[int, KeptResult] = {}
    queue: List[Operation] = []
    for kind, item in operations:
        if kind == BURY:
            queue.append((False, item.key))
            dead[item.key] = item
        elif kind == KEEP:
            queue.append((False, item.key))
            kept[item.key] = item
        else:
            queue.append((kind, item))
    return queue, list(dead.values()), list(kept.values())


class ThreadedBatchStore:
    """
    Base class of the stores that run a blocking driver in their own thread.

    Subclasses implement, all called in the store's only pool thread:
    C{_openInThread() -> list[StoredJob]}, C{_writeInThread(operations)} (a
    list of L{Operation}, in the order issued, written in one transaction;
    raise L{StoreError} on failure, writing none of them and leaving the store
    able to try again later) and C{_closeInThread()} (release everything, also
    after a failed open). L{txgear.store._record.collapse} turns the
    operations into the records to store and the keys to delete.

    @ivar description: see L{txgear.interfaces.IJobStore.description}.
    """

    _log = logger()
    _threadName = "txgear-store"
    description = "?"

    def __init__(self, reactor: Any = None) -> None:
        if reactor is None:
            from twisted.internet import reactor as globalReactor
            reactor = globalReactor
        self._reactor = reactor
        self._pool: Optional[ThreadPool] = None
        self._state = "new"  # opening, open, closing, releasing, closed
        # Appended to by the reactor thread; taken from by the reactor thread
        # (a first batch, a dead-set call) and by the store's thread (the
        # batches after it): both under _lock.
        self._pending: List[Tuple[Operation, Deferred[None]]] = []
        self._lock = threading.Lock()
        self._flushCall: Any = None
        # The flush scheduled is REMOVE_LINGER away (only removals pending).
        self._flushLingers = False
        # Pending operations other than removals (under _lock).
        self._urgent = 0
        # Set and cleared by the reactor thread only: a batch or call is in
        # the store's thread.
        self._writing = False
        self._closeWaiters: List[Deferred[None]] = []
        self._shutdownTrigger: Any = None
        self._calls = 0  # dead-set calls among the pending operations

    # Subclass hooks --------------------------------------------------------

    def _openInThread(self) -> List[StoredJob]:
        raise NotImplementedError()

    def _writeInThread(self, operations: List[Operation]) -> None:
        raise NotImplementedError()

    def _closeInThread(self) -> None:
        raise NotImplementedError()

    def _listDeadInThread(self, function: Optional[bytes], limit: Optional[int]) -> List[DeadJob]:
        raise NotImplementedError()

    def _retryDeadInThread(self, keys: List[int]) -> List[StoredJob]:
        raise NotImplementedError()

    def _purgeDeadInThread(self, keys: List[int]) -> int:
        raise NotImplementedError()

    def _countDeadInThread(self) -> int:
        raise NotImplementedError()

    def _listKeptInThread(self, limit: Optional[int]) -> List[KeptResult]:
        raise NotImplementedError()

    def _getKeptInThread(self, key: int) -> Optional[KeptResult]:
        raise NotImplementedError()

    def _expireKeptInThread(self, now: int) -> int:
        raise NotImplementedError()

    def _purgeKeptInThread(self, keys: List[int]) -> int:
        raise NotImplementedError()

    # IJobStore -------------------------------------------------------------

    def open(self) -> Deferred[List[StoredJob]]:
        """
        Start the store's thread, connect, check or create the schema and
        load every stored job.

        @return: see L{txgear.interfaces.IJobStore.open}.
        """
        if self._state != "new":
            return fail(StoreError(f"{self.description}: open() called twice"))
        self._state = "opening"
        pool = ThreadPool(minthreads=1, maxthreads=1, name=self._threadName)
        pool.start()
        self._pool = pool
        # Whoever opened the store closes it, in its own order (the server's
        # service: after its connections). Only if nobody did, the thread is
        # stopped when the reactor has stopped, so the process can exit.
        self._shutdownTrigger = self._reactor.addSystemEventTrigger(
            "during", "shutdown", self._stopThreadAtShutdown)
        d = self._callInThread(self._openInThread)
        d.addCallbacks(self._opened, self._openFailed)
        return d

    def add(self, job: Any) -> Deferred[None]:
        """
        Queue C{job} for the next batch: C{addMany([job])}.

        @return: fires once the batch holding it is committed; fails with
            L{StoreError} if that batch could not be written.
        """
        return self.addMany((job,))

    def addMany(self, jobs: Iterable[Any]) -> Deferred[None]:
        """
        Queue every job of C{jobs} for the next batch, as one entry with one
        Deferred.

        @return: fires once the batch holding them is committed; fails with
            L{StoreError} if that batch could not be written (then none of
            them is recorded).
        """
        # The hot path of a burst of submits: one list of tuples, one Deferred.
        if self._state != "open":
            return fail(StoreError(f"{self.description}: the store is not open"))
        d: Deferred[None] = Deferred()
        entry = ((True, [(job.key, job.priority, job.function, job.unique, job.payload, job.when,
                          job.reducer, job.clientId, job.attempts, job.retryAt, job.lastError)
                         for job in jobs]), d)
        with self._lock:
            self._pending.append(entry)
            self._urgent += 1
        if not self._writing:
            self._scheduleFlush(True)
        return d

    def remove(self, job: Any) -> Deferred[None]:
        """
        Queue the removal of C{job} (by its key) for the next batch.

        @return: fires once the removal is committed.
        """
        return self._enqueue((False, job.key))

    def addDead(self, job: Any, diedAt: int) -> Deferred[None]:
        """
        Queue, for the next batch, the move of C{job} from the queue to the
        dead set (see L{txgear.interfaces.IJobStore.addDead}); its record is
        taken now.
        """
        return self._enqueue((BURY, DeadJob.fromJob(job, diedAt)))

    def listDead(self, function: Optional[bytes] = None,
                 limit: Optional[int] = None) -> Deferred[List[DeadJob]]:
        """See L{txgear.interfaces.IJobStore.listDead}."""
        return self._deadCall(self._listDeadInThread, function, limit)

    def retryDead(self, keys: Iterable[int]) -> Deferred[List[StoredJob]]:
        """See L{txgear.interfaces.IJobStore.retryDead}."""
        return self._deadCall(self._retryDeadInThread, list(keys))

    def purgeDead(self, keys: Iterable[int]) -> Deferred[int]:
        """See L{txgear.interfaces.IJobStore.purgeDead}."""
        return self._deadCall(self._purgeDeadInThread, list(keys))

    def countDead(self) -> Deferred[int]:
        """See L{txgear.interfaces.IJobStore.countDead}."""
        return self._deadCall(self._countDeadInThread)

    def addKept(self, result: KeptResult) -> Deferred[None]:
        """
        Queue, for the next batch, the removal of the job of C{result.key}
        from the queue and the keeping of C{result} (see
        L{txgear.interfaces.IJobStore.addKept}).
        """
        return self._enqueue((KEEP, result))

    def listKept(self, limit: Optional[int] = None) -> Deferred[List[KeptResult]]:
        """See L{txgear.interfaces.IJobStore.listKept}."""
        return self._deadCall(self._listKeptInThread, limit)

    def getKept(self, key: int) -> Deferred[Optional[KeptResult]]:
        """See L{txgear.interfaces.IJobStore.getKept}."""
        return self._deadCall(self._getKeptInThread, key)

    def expireKept(self, now: int) -> Deferred[int]:
        """See L{txgear.interfaces.IJobStore.expireKept}."""
        return self._deadCall(self._expireKeptInThread, now)

    def purgeKept(self, keys: Iterable[int]) -> Deferred[int]:
        """See L{txgear.interfaces.IJobStore.purgeKept}."""
        return self._deadCall(self._purgeKeptInThread, list(keys))

    def close(self) -> Deferred[None]:
        """
        Write the pending batch, then release the connection and the thread.
        Adds and removes issued after C{close} fail with L{StoreError}.

        @return: fires once everything is written and released; never fails
            (failed writes are reported to their own Deferreds).
        """
        if self._state in ("new", "closed"):
            self._state = "closed"
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._closeWaiters.append(waiter)
        if self._state == "open":
            self._startClosing()
        return waiter

    # Internals -------------------------------------------------------------

    def _callInThread(self, function: Callable[..., _T], *args: Any) -> Deferred[_T]:
        assert self._pool is not None
        return deferToThreadPool(self._reactor, self._pool, self._guard, function, *args)

    def _guard(self, function: Callable[..., _T], *args: Any) -> _T:
        """
        Run C{function}, turning an unexpected driver exception into a
        L{StoreError} that names the store.
        """
        try:
            return function(*args)
        except StoreError:
            raise
        except Exception as e:
            raise StoreError(f"{self.description}: {e.__class__.__name__}: {e}") from e

    def _opened(self, jobs: List[StoredJob]) -> List[StoredJob]:
        self._state = "open"
        self._log.info("Opened job store {store}: {count} stored background jobs",
                       store=self.description, count=len(jobs))
        if self._closeWaiters:
            self._startClosing()
        return jobs

    def _openFailed(self, reason: Failure) -> Deferred[Any]:
        self._state = "releasing"
        released = self._callInThread(self._closeInThread)
        released.addErrback(lambda f: None)
        released.addCallback(lambda _: self._released())
        released.addCallback(lambda _: reason)
        return released

    def _deadCall(self, function: Callable[..., Any], *args: Any) -> Deferred[Any]:
        return self._enqueue((CALL, (function, args)))

    def _enqueue(self, operation: Operation) -> Deferred[Any]:
        if self._state != "open":
            return fail(StoreError(f"{self.description}: the store is not open"))
        d: Deferred[Any] = Deferred()
        urgent = operation[0] is not False
        with self._lock:
            self._pending.append((operation, d))
            if urgent:
                self._urgent += 1
                if operation[0] == CALL:
                    self._calls += 1
        if not self._writing:
            self._scheduleFlush(urgent)
        return d

    def _scheduleFlush(self, urgent: bool) -> None:
        """
        In the reactor thread, with no batch in the store's thread: flush at
        the end of this turn, or, for removals alone (not C{urgent}, fewer
        than L{REMOVE_BATCH} pending), L{REMOVE_LINGER} after the first.
        """
        call = self._flushCall
        if urgent or len(self._pending) >= REMOVE_BATCH:
            if call is None:
                self._flushCall = self._reactor.callLater(0, self._flush)
            elif self._flushLingers:
                call.reset(0)
            self._flushLingers = False
        elif call is None:
            self._flushCall = self._reactor.callLater(REMOVE_LINGER, self._flush)
            self._flushLingers = True

    def _flushPending(self) -> None:
        """In the reactor thread, once the store's thread is idle: flush what is pending, or schedule it."""
        if self._state == "closing" or self._urgent or len(self._pending) >= REMOVE_BATCH:
            self._flush()
        else:
            self._scheduleFlush(False)

    def _flush(self) -> None:
        call, self._flushCall = self._flushCall, None
        if call is not None and call.active():
            call.cancel()
        if self._writing or not self._pending:
            return
        with self._lock:
            pending = self._pending
            (kind, item), d = pending[0]
            if kind == CALL:
                del pending[0]
                self._calls -= 1
                self._urgent -= 1
            else:
                batch = self._takeWrites()
        self._writing = True
        if kind == CALL:
            function, args = item
            called = self._callInThread(function, *args)
            called.addBoth(self._called, d)
            return
        assert self._pool is not None
        self._pool.callInThread(self._writeBatches, batch)

    def _takeWrites(self) -> List[Tuple[Operation, Deferred[None]]]:
        """
        With C{_lock} held: take the pending writes up to the first dead-set
        call (none if it comes first).
        """
        pending = self._pending
        if self._calls:
            end = next(i for i, ((kind, _), _) in enumerate(pending) if kind == CALL)
            batch, self._pending = pending[:end], pending[end:]
            self._urgent = sum(1 for (kind, _), _ in self._pending if kind is not False)
        else:
            batch, self._pending = pending, []
            self._urgent = 0
        return batch

    def _writeBatches(self, batch: List[Tuple[Operation, Deferred[None]]]) -> None:
        """
        In the store's thread: write C{batch}, then each batch of the writes
        issued meanwhile, until none is left or a dead-set call comes first;
        each batch's outcome is handed to the reactor thread, in order.
        """
        while batch:
            try:
                result: Any = self._guard(self._writeValid, [operation for operation, _ in batch])
            except BaseException:
                result = Failure()
            following: List[Tuple[Operation, Deferred[None]]] = []
            if self._keepWriting():
                with self._lock:
                    # Removals alone wait for more (see the module docstring).
                    if self._urgent or len(self._pending) >= REMOVE_BATCH:
                        following = self._takeWrites()
            self._reactor.callFromThread(self._written, result, batch, not following)
            batch = following

    def _keepWriting(self) -> bool:
        """
        In the store's thread, after a batch: whether it may go on with the
        writes issued meanwhile (else the reactor thread flushes them once it
        has the batch's outcome). For subclasses with work of their own to run
        between batches.
        """
        return True

    def _writeValid(self, operations: List[Operation]) -> Dict[int, str]:
        """
        In the store's thread: write, in one transaction, every operation
        whose records can be stored.

        @return: the problem of each operation left out, by its index.
        """
        problems: Dict[int, str] = {}
        for index, (isAdd, items) in enumerate(operations):
            if isAdd is True:
                problem = recordsProblem(items)
                if problem is not None:
                    problems[index] = problem
        if problems:
            operations = [op for index, op in enumerate(operations) if index not in problems]
        if operations:
            self._writeInThread(operations)
        return problems

    def _written(self, result: Any, batch: List[Tuple[Operation, Deferred[None]]],
                 last: bool) -> None:
        """
        A batch was written (or failed: C{result} is a L{Failure}): fire its
        Deferreds. If it was the store's thread's C{last}, what is pending
        now (issued by these callbacks, or a dead-set call) is flushed.
        """
        if isinstance(result, Failure):
            count = sum(len(items) if isAdd is True else 1 for (isAdd, items), _ in batch)
            self._log.warn("Writing {count} changes to job store {store} failed: {error}",
                           count=count, store=self.description, error=result.getErrorMessage())
            for _, d in batch:
                d.errback(result)
        elif result:
            for index, (_, d) in enumerate(batch):
                problem = result.get(index)
                if problem is None:
                    d.callback(None)
                else:
                    self._log.warn("Job store {store}: write refused: {problem}",
                                   store=self.description, problem=problem)
                    d.errback(StoreError(f"{self.description}: {problem}"))
        else:
            for _, d in batch:
                d.callback(None)
        if not last:
            return
        self._writing = False
        if self._pending:
            self._flushPending()
        elif self._state == "closing":
            self._release()

    def _called(self, result: Any, d: Deferred[Any]) -> None:
        """A dead-set call returned: answer it, then go on with what waits."""
        self._writing = False
        if isinstance(result, Failure):
            self._log.warn("Job store {store}: dead-set call failed: {error}",
                           store=self.description, error=result.getErrorMessage())
            d.errback(result)
        else:
            d.callback(result)
        if self._pending:
            self._flushPending()
        elif self._state == "closing":
            self._release()

    def _startClosing(self) -> None:
        self._state = "closing"
        self._flush()
        if not self._writing:
            self._release()

    def _release(self) -> None:
        self._state = "releasing"
        d = self._callInThread(self._closeInThread)
        d.addErrback(lambda f: self._log.failure("Closing job store {store} failed", f,
                                                 store=self.description))
        d.addCallback(lambda _: self._released())

    def _released(self) -> None:
        self._state = "closed"
        if self._pool is not None:
            self._pool.stop()
            self._pool = None
        if self._shutdownTrigger is not None:
            self._reactor.removeSystemEventTrigger(self._shutdownTrigger)
            self._shutdownTrigger = None
        waiters, self._closeWaiters = self._closeWaiters, []
        for waiter in waiters:
            waiter.callback(None)

    def _stopThreadAtShutdown(self) -> None:
        self._shutdownTrigger = None
        if self._pool is not None:
            self._log.warn("Job store {store} was not closed before the reactor stopped",
                           store=self.description)
            self._pool.stop()
            self._pool = None

# -*- test-case-name: tests.test_store_contract -*-
"""
The in-memory job store: the reference L{IJobStore}, and C{--queue memory}.
"""
from __future__ import annotations

import heapq
from typing import Any, Dict, Iterable, List, Optional, Tuple

from twisted.internet.defer import Deferred, fail, succeed
from zope.interface import implementer

from txgear.errors import StoreError
from txgear.interfaces import IJobStore
from txgear.jobs import DeadJob, KeptResult, StoredJob
from txgear.store._record import MAX_WHEN


@implementer(IJobStore)
class MemoryJobStore:
    """
    Keeps background jobs in a dictionary: nothing survives the process.

    Every method returns an already-fired Deferred. Give two instances the same
    C{jobs}, C{dead} and C{kept} dictionaries to make the second see what the
    first recorded, as a restart would with a real store (the contract tests
    do this).

    @ivar jobs: the recorded jobs by key.
    @ivar dead: the dead set by key.
    @ivar kept: the kept results by key.
    """

    description = "memory"

    def __init__(self, jobs: Optional[Dict[int, StoredJob]] = None,
                 dead: Optional[Dict[int, DeadJob]] = None,
                 kept: Optional[Dict[int, KeptResult]] = None) -> None:
        """
        @param jobs: the backing dictionary, shared with another instance to
            simulate a restart; a new empty one by default.
        @param dead: the backing dictionary of the dead set, likewise.
        @param kept: the backing dictionary of the kept results, likewise.
        """
        self.jobs: Dict[int, StoredJob] = {} if jobs is None else jobs
        self.dead: Dict[int, DeadJob] = {} if dead is None else dead
        self.kept: Dict[int, KeptResult] = {} if kept is None else kept
        # (expiresAt, key) of every kept result (and of replaced ones, found
        # stale when popped): expiry pops only what expires.
        self._expiry: List[Tuple[int, int]] = [(r.expiresAt, r.key) for r in self.kept.values()]
        heapq.heapify(self._expiry)

    def open(self) -> Deferred[List[StoredJob]]:
        """
        @return: a fired Deferred with the recorded jobs, high priority first,
            then by key.
        """
        return succeed(sorted(self.jobs.values(), key=_priorityAndKey))

    def add(self, job: Any) -> Deferred[None]:
        """
        Record a copy of C{job}, replacing any job with the same key.
        Fails with L{StoreError} if no store could hold it (see L{addMany}).
        """
        if not 0 <= job.when <= MAX_WHEN:
            return fail(StoreError(f"memory: run time {job.when} out of range"))
        self.jobs[job.key] = StoredJob.fromJob(job)
        return succeed(None)

    def addMany(self, jobs: Iterable[Any]) -> Deferred[None]:
        """
        Record a copy of every job of C{jobs}, as L{add} does; none of them if
        one has a run time the real stores cannot hold (negative or beyond
        signed 64 bits): then fail with L{StoreError}, as they do.
        """
        jobs = list(jobs)
        for job in jobs:
            if not 0 <= job.when <= MAX_WHEN:
                return fail(StoreError(f"memory: run time {job.when} out of range"))
        stored = self.jobs
        for job in jobs:
            stored[job.key] = StoredJob.fromJob(job)
        return succeed(None)

    def remove(self, job: Any) -> Deferred[None]:
        """
        Forget C{job}; unknown keys are ignored.
        """
        self.jobs.pop(job.key, None)
        return succeed(None)

    def addDead(self, job: Any, diedAt: int) -> Deferred[None]:
        """
        Move C{job} from the queue to the dead set (see
        L{txgear.interfaces.IJobStore.addDead}).
        """
        self.jobs.pop(job.key, None)
        self.dead[job.key] = DeadJob.fromJob(job, diedAt)
        return succeed(None)

    def listDead(self, function: Optional[bytes] = None,
                 limit: Optional[int] = None) -> Deferred[List[DeadJob]]:
        """
        @return: a fired Deferred with the dead set, newest first, without
            payloads.
        """
        dead = [entry.withoutPayload() for entry in self.dead.values()
                if function is None or entry.function == function]
        dead.sort(key=_newestFirst)
        return succeed(dead if limit is None else dead[:limit])

    def retryDead(self, keys: Iterable[int]) -> Deferred[List[StoredJob]]:
        """
        Queue the dead jobs of C{keys} again, with fresh attempts.
        """
        revived = []
        for key in keys:
            entry = self.dead.pop(key, None)
            if entry is not None:
                job = entry.revived()
                self.jobs[key] = job
                revived.append(StoredJob.fromJob(job))
        return succeed(revived)

    def purgeDead(self, keys: Iterable[int]) -> Deferred[int]:
        """
        Delete the dead jobs of C{keys}.
        """
        count = 0
        for key in keys:
            if self.dead.pop(key, None) is not None:
                count += 1
        return succeed(count)

    def countDead(self) -> Deferred[int]:
        """
        @return: a fired Deferred with the size of the dead set.
        """
        return succeed(len(self.dead))

    def addKept(self, result: KeptResult) -> Deferred[None]:
        """Take the job of C{result.key} off the queue and keep C{result}."""
        self.jobs.pop(result.key, None)
        self.kept[result.key] = result
        heapq.heappush(self._expiry, (result.expiresAt, result.key))
        return succeed(None)

    def listKept(self, limit: Optional[int] = None) -> Deferred[List[KeptResult]]:
        """@return: a fired Deferred with the kept results, newest first, without bytes."""
        kept = sorted((r.withoutResult() for r in self.kept.values()),
                      key=lambda r: (-r.finishedAt, -r.key))
        return succeed(kept if limit is None else kept[:limit])

    def getKept(self, key: int) -> Deferred[Optional[KeptResult]]:
        """@return: a fired Deferred with the kept result of C{key}, or C{None}."""
        return succeed(self.kept.get(key))

    def expireKept(self, now: int) -> Deferred[int]:
        """Delete the kept results expired at C{now} (Unix ms): O(expired log n)."""
        expiry = self._expiry
        count = 0
        while expiry and expiry[0][0] <= now:
            expiresAt, key = heapq.heappop(expiry)
            result = self.kept.get(key)
            if result is not None and result.expiresAt == expiresAt:
                del self.kept[key]
                count += 1
        return succeed(count)

    def purgeKept(self, keys: Iterable[int]) -> Deferred[int]:
        """Delete the kept results of C{keys} (their expiry entries go stale)."""
        count = 0
        for key in keys:
            if self.kept.pop(key, None) is not None:
                count += 1
        return succeed(count)

    def close(self) -> Deferred[None]:
        """
        Nothing to flush.
        """
        return succeed(None)


def _priorityAndKey(job: StoredJob) -> Tuple[int, int]:
    return job.priority, job.key


def _newestFirst(job: DeadJob) -> Tuple[int, int]:
    return -job.diedAt, -job.key

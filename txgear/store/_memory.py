# -*- test-case-name: tests.test_store_contract -*-
"""
The in-memory job store: the reference L{IJobStore}, and C{--queue memory}.
"""
from __future__ import annotations

from typing import Dict, List, Optional

from twisted.internet.defer import Deferred, succeed
from zope.interface import implementer

from txgear.interfaces import IJobStore
from txgear.jobs import StoredJob


@implementer(IJobStore)
class MemoryJobStore:
    """
    Keeps background jobs in a dictionary: nothing survives the process.

    Every method returns an already-fired Deferred. Give two instances the same
    C{jobs} dictionary to make the second see what the first recorded, as a
    restart would with a real store (the contract tests do this).

    @ivar jobs: the recorded jobs by key, in the order of their first C{add}.
    """

    description = "memory"

    def __init__(self, jobs: Optional[Dict[bytes, StoredJob]] = None) -> None:
        """
        @param jobs: the backing dictionary, shared with another instance to
            simulate a restart; a new empty one by default.
        """
        self.jobs: Dict[bytes, StoredJob] = {} if jobs is None else jobs

    def open(self) -> Deferred[List[StoredJob]]:
        """
        @return: a fired Deferred with the recorded jobs, high priority first,
            then in the order they were first added.
        """
        return succeed(sorted(self.jobs.values(), key=_priorityOf))

    def add(self, job: StoredJob) -> Deferred[None]:
        """
        Record a copy of C{job}; a job with the same key keeps its place.
        """
        self.jobs[job.key] = StoredJob(job.key, job.function, job.unique, job.payload, job.priority,
                                       job.when, job.reducer, job.clientId)
        return succeed(None)

    def remove(self, job: StoredJob) -> Deferred[None]:
        """
        Forget C{job}; unknown keys are ignored.
        """
        self.jobs.pop(job.key, None)
        return succeed(None)

    def close(self) -> Deferred[None]:
        """
        Nothing to flush.
        """
        return succeed(None)


def _priorityOf(job: StoredJob) -> int:
    return job.priority

# -*- test-case-name: tests.test_server_deadset -*-
"""
The dead set's index in the server's memory: which background jobs used up
their attempts, newest first, per function, within a size and an age limit.

The jobs themselves (payloads included) stay in the store
(L{txgear.interfaces.IJobStore.addDead}); the index keeps, per job, only
what C{show dead} prints and the size of its payload, so its memory is
bounded by the size limit, whatever the payloads. Without a store
(C{--queue memory}) a L{txgear.store.MemoryJobStore} of its own holds them.

Limits: past C{maxJobs}, the oldest jobs are dropped as each new one dies;
jobs older than C{maxAge} are dropped by one timer, armed for the oldest
job's expiry. Both are counted (L{DeadSet.droppedBySize},
L{DeadSet.droppedByAge}), logged, and purged from the store.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Dict, Iterable, Iterator, List, Optional, Tuple

from txgear._log import logger
from txgear.jobs import DeadJob

#: Default size limit of the dead set (C{--dead-max-jobs}).
DEFAULT_DEAD_MAX_JOBS = 10000

#: Default age limit of the dead set, in seconds (C{--dead-max-age}): 30 days.
DEFAULT_DEAD_MAX_AGE = 30 * 86400.0


class DeadEntry:
    """
    One dead job as the index knows it (no payload).

    @ivar diedAt: when it died, in Unix milliseconds.
    """

    __slots__ = ("key", "handle", "function", "unique", "attempts", "lastError", "diedAt",
                 "payloadSize")

    def __init__(self, key: int, handle: bytes, function: bytes, unique: bytes, attempts: int,
                 lastError: bytes, diedAt: int, payloadSize: int) -> None:
        self.key = key
        self.handle = handle
        self.function = function
        self.unique = unique
        self.attempts = attempts
        self.lastError = lastError
        self.diedAt = diedAt
        self.payloadSize = payloadSize


class DeadSet:
    """
    The index of the dead set, and the store calls that keep it durable.

    @param store: the L{txgear.interfaces.IJobStore} that keeps dead jobs.
    @param clock: an C{IReactorTime}: times of death, the age limit's timer.
    @param handlePrefix: handles are C{handlePrefix + key} (the prefix ends
        with C{:}).
    @param maxJobs: the size limit (0: none).
    @param maxAge: the age limit in seconds (0: none).
    @ivar droppedBySize: jobs dropped for the size limit since start.
    @ivar droppedByAge: jobs dropped for the age limit since start.
    """

    _log = logger()

    def __init__(self, store: Any, clock: Any, handlePrefix: bytes,
                 maxJobs: int = DEFAULT_DEAD_MAX_JOBS,
                 maxAge: float = DEFAULT_DEAD_MAX_AGE) -> None:
        self.store = store
        self.clock = clock
        self.handlePrefix = handlePrefix
        self.maxJobs = maxJobs
        self.maxAge = maxAge
        self.droppedBySize = 0
        self.droppedByAge = 0
        # Oldest first, in order of death.
        self._entries: "OrderedDict[int, DeadEntry]" = OrderedDict()
        self._byFunction: Dict[bytes, Dict[int, DeadEntry]] = {}
        self._ageCall: Any = None
        self._ageKey = 0

    def __len__(self) -> int:
        return len(self._entries)

    def counts(self) -> Dict[bytes, int]:
        """Dead jobs per function (for the metrics' gauge)."""
        return {name: len(entries) for name, entries in self._byFunction.items()}

    def now(self) -> int:
        """The clock's time in Unix milliseconds."""
        return int(self.clock.seconds() * 1000)

    # -- entering -------------------------------------------------------------

    def add(self, job: Any) -> None:
        """
        C{job}, a background job that used up its attempts, enters the dead
        set: indexed now, moved in the store with its turn's batch.
        """
        diedAt = self.now()
        entry = DeadEntry(job.key, job.handle, job.function, job.unique, job.attempts,
                          job.lastError, diedAt, len(job.payload))
        self._index(entry)
        d = self.store.addDead(job, diedAt)
        d.addErrback(self._notBuried, entry)
        self._trim()

    def load(self, dead: Iterable[DeadJob]) -> int:
        """
        Index the dead set a store listed at start-up (any order), then
        apply the limits.

        @return: how many were indexed.
        """
        count = 0
        for job in sorted(dead, key=lambda d: (d.diedAt, d.key)):
            if job.key in self._entries:
                continue
            self._index(DeadEntry(job.key, self.handlePrefix + b"%d" % job.key, job.function,
                                  job.unique, job.attempts, job.lastError, job.diedAt,
                                  job.payloadSize))
            count += 1
        self._trim()
        return count

    def keys(self) -> "set[int]":
        """The keys indexed now (for L{sync})."""
        return set(self._entries)

    def sync(self, listed: Iterable[DeadJob], issued: "set[int]") -> Tuple[int, int]:
        """
        Bring the index in line with the store's dead set, shared with other
        servers (a cluster): index the jobs it lists that are not indexed,
        and forget the ones that were indexed when the listing was issued
        (C{issued}, from L{keys}) but that it no longer lists (retried or
        purged elsewhere). Entries added since the listing was issued stay.

        @return: how many were added, and how many forgotten.
        """
        listedKeys = set()
        fresh = []
        for job in listed:
            listedKeys.add(job.key)
            if job.key not in self._entries:
                fresh.append(job)
        gone = [self._entries[key] for key in issued - listedKeys if key in self._entries]
        for entry in gone:
            self._unindex(entry)
        if fresh:
            for job in fresh:
                self._index(DeadEntry(job.key, self.handlePrefix + b"%d" % job.key,
                                      job.function, job.unique, job.attempts, job.lastError,
                                      job.diedAt, job.payloadSize))
            self._entries = OrderedDict(sorted(self._entries.items(),
                                               key=lambda item: (item[1].diedAt, item[0])))
        return len(fresh), len(gone)

    def _index(self, entry: DeadEntry) -> None:
        self._entries[entry.key] = entry
        perFunction = self._byFunction.get(entry.function)
        if perFunction is None:
            perFunction = self._byFunction[entry.function] = {}
        perFunction[entry.key] = entry

    def _unindex(self, entry: DeadEntry) -> None:
        self._entries.pop(entry.key, None)
        perFunction = self._byFunction.get(entry.function)
        if perFunction is not None:
            perFunction.pop(entry.key, None)
            if not perFunction:
                del self._byFunction[entry.function]

    def _notBuried(self, failure: Any, entry: DeadEntry) -> None:
        self._log.failure("Could not move job {handle!r} to the dead set; the store keeps it "
                          "queued, so it runs again after a restart", failure,
                          handle=entry.handle)
        if self._entries.get(entry.key) is entry:
            self._unindex(entry)

    # -- reading --------------------------------------------------------------

    def newest(self, function: Optional[bytes] = None) -> Iterator[DeadEntry]:
        """The dead jobs (of C{function}, or all), newest first."""
        if function is None:
            return reversed(list(self._entries.values()))
        return reversed(list(self._byFunction.get(function, {}).values()))

    def get(self, handle: bytes) -> Optional[DeadEntry]:
        """The dead job of C{handle}, or C{None}."""
        prefix = self.handlePrefix
        if not handle.startswith(prefix) or not handle[len(prefix):].isdigit():
            return None
        entry = self._entries.get(int(handle[len(prefix):]))
        return entry if entry is not None and entry.handle == handle else None

    # -- leaving ----------------------------------------------------------------

    def take(self, entries: List[DeadEntry]) -> None:
        """Take C{entries} out of the index (retried or purged)."""
        for entry in entries:
            self._unindex(entry)

    def putBack(self, entries: List[DeadEntry]) -> None:
        """Index C{entries} again (a retry the store refused: still dead there)."""
        for entry in entries:
            self._index(entry)
        self._entries = OrderedDict(sorted(self._entries.items(),
                                           key=lambda item: (item[1].diedAt, item[0])))

    def purge(self, function: Optional[bytes] = None) -> int:
        """
        Delete the dead jobs of C{function} (or all), from the store too.

        @return: how many.
        """
        entries = list(self.newest(function))
        self.take(entries)
        self._purgeStored(entries, "purge")
        return len(entries)

    def _purgeStored(self, entries: List[DeadEntry], why: str) -> None:
        if not entries:
            return
        d = self.store.purgeDead([entry.key for entry in entries])
        d.addErrback(lambda f: self._log.failure(
            "Could not delete {count} jobs from the dead set ({why})", f, count=len(entries),
            why=why))

    def _trim(self) -> None:
        """Drop the oldest jobs beyond the size limit, then those past the age limit."""
        entries = self._entries
        dropped: List[DeadEntry] = []
        if self.maxJobs and len(entries) > self.maxJobs:
            while len(entries) > self.maxJobs:
                entry = next(iter(entries.values()))
                self._unindex(entry)
                dropped.append(entry)
            self.droppedBySize += len(dropped)
            self._log.info("Dead set over {limit} jobs: dropped the {count} oldest (first "
                           "{handle!r}); {total} dropped for size since start",
                           limit=self.maxJobs, count=len(dropped), handle=dropped[0].handle,
                           total=self.droppedBySize)
            self._purgeStored(dropped, "size limit")
        self._expire()

    def _expire(self) -> None:
        """Drop the jobs past the age limit, and arm the timer for the next."""
        if not self.maxAge:
            return
        entries = self._entries
        oldestKept = self.now() - int(self.maxAge * 1000)
        dropped: List[DeadEntry] = []
        while entries:
            entry = next(iter(entries.values()))
            if entry.diedAt > oldestKept:
                break
            self._unindex(entry)
            dropped.append(entry)
        if dropped:
            self.droppedByAge += len(dropped)
            self._log.info("Dead set: dropped {count} jobs older than {age:.0f} s (first "
                           "{handle!r}); {total} dropped for age since start",
                           count=len(dropped), age=self.maxAge, handle=dropped[0].handle,
                           total=self.droppedByAge)
            self._purgeStored(dropped, "age limit")
        call = self._ageCall
        if call is not None and call.active():
            if entries and self._ageKey == next(iter(entries)):
                return  # armed for the same oldest job already
            call.cancel()
        self._ageCall = None
        if entries:
            entry = next(iter(entries.values()))
            self._ageKey = entry.key
            delay = max(0.0, (entry.diedAt - oldestKept) / 1000.0)
            self._ageCall = self.clock.callLater(delay, self._expire)

    def stop(self) -> None:
        """Cancel the age limit's timer."""
        if self._ageCall is not None and self._ageCall.active():
            self._ageCall.cancel()
        self._ageCall = None


def memoryDeadStore() -> Any:
    """The store of the dead set when the server has none (C{--queue memory})."""
    from txgear.store._memory import MemoryJobStore
    return MemoryJobStore()


__all__ = ["DEFAULT_DEAD_MAX_AGE", "DEFAULT_DEAD_MAX_JOBS", "DeadEntry", "DeadSet",
           "memoryDeadStore"]

# -*- test-case-name: tests.test_server_kept -*-
"""
Kept results: how background jobs of a C{keep:TTL} policy ended, kept until
they expire (see docs/jobs.md).

The bytes stay in the store (L{txgear.interfaces.IJobStore.addKept}, read on
demand by L{KeptResults.fetch}); the server's index keeps, per result, its
handle, function, unique, status, size and expiry, so its memory is bounded
by C{maxResults} whatever the results. Past it the oldest results are
dropped (counted, logged, purged from the store). Results above C{maxSize}
bytes are recorded without their bytes (status and size known).

Expiry: a heap by expiry time; a sweep every L{SWEEP_INTERVAL} seconds,
armed only while results are kept, pops the expired entries (its work is
the number expired, plus replaced entries found stale) and has the store
delete the same expiry range.
"""
from __future__ import annotations

import heapq
from collections import OrderedDict
from typing import Any, Dict, Iterable, List, Optional, Tuple

from twisted.internet.defer import Deferred

from txgear._log import logger
from txgear.jobs import KeptResult

#: Default largest result kept, in bytes (C{--keep-max-size}).
DEFAULT_KEEP_MAX_SIZE = 1024 * 1024

#: Default most results indexed (C{--keep-max-results}).
DEFAULT_KEEP_MAX_RESULTS = 100000

#: Seconds between two expiry sweeps.
SWEEP_INTERVAL = 1.0


class KeptEntry:
    """One kept result as the index knows it (no bytes)."""

    __slots__ = ("key", "handle", "function", "unique", "status", "size", "kept", "expiresAt")

    def __init__(self, key: int, handle: bytes, function: bytes, unique: bytes, status: str,
                 size: int, kept: bool, expiresAt: int) -> None:
        self.key = key
        self.handle = handle
        self.function = function
        self.unique = unique
        self.status = status
        self.size = size
        self.kept = kept
        self.expiresAt = expiresAt


class KeptResults:
    """
    The index of kept results and the store calls that keep them.

    @param store: the L{txgear.interfaces.IJobStore} that keeps the bytes.
    @param clock: an C{IReactorTime}.
    @param handlePrefix: handles are C{handlePrefix + key}.
    @param maxSize: results larger than this many bytes are not kept.
    @param maxResults: the index's size limit (0: none).
    @ivar added: results kept (bytes included) since start.
    @ivar tooLarge: results recorded without their bytes (above C{maxSize}) since start.
    @ivar dropped: results dropped for the size limit since start.
    @ivar expired: results expired since start.
    @ivar sweepWork: heap entries the sweeps have looked at since start
        (what a sweep costs: the expired ones, not the kept ones).
    """

    _log = logger()

    def __init__(self, store: Any, clock: Any, handlePrefix: bytes,
                 maxSize: int = DEFAULT_KEEP_MAX_SIZE,
                 maxResults: int = DEFAULT_KEEP_MAX_RESULTS) -> None:
        self.store = store
        self.clock = clock
        self.handlePrefix = handlePrefix
        self.maxSize = maxSize
        self.maxResults = maxResults
        self.added = 0
        self.tooLarge = 0
        self.dropped = 0
        self.expired = 0
        self.sweepWork = 0
        # Oldest first, in order of finish.
        self._entries: "OrderedDict[int, KeptEntry]" = OrderedDict()
        self._byUnique: Dict[Tuple[bytes, bytes], KeptEntry] = {}
        self._expiry: List[Tuple[int, int]] = []
        self._sweepCall: Any = None

    def __len__(self) -> int:
        return len(self._entries)

    def now(self) -> int:
        """The clock's time in Unix milliseconds."""
        return int(self.clock.seconds() * 1000)

    # -- entering -------------------------------------------------------------

    def add(self, job: Any, status: str, result: bytes, ttl: float) -> None:
        """
        Keep how C{job} (a background job) ended: C{status} and C{result},
        for C{ttl} seconds; indexed now, written with its turn's batch (which
        also takes the job off the queue).
        """
        now = self.now()
        size = len(result)
        kept = size <= self.maxSize
        record = KeptResult(job.key, job.func.name, job.unique, status,
                            result if kept else b"", now, now + int(ttl * 1000), kept, size)
        if kept:
            self.added += 1
        else:
            self.tooLarge += 1
            self._log.info("Result of job {handle!r} not kept: {size} bytes, above "
                           "--keep-max-size {limit}", handle=job.handle, size=size,
                           limit=self.maxSize)
        entry = self._entryOf(record, job.handle)
        self._index(entry)
        d = self.store.addKept(record)
        d.addErrback(self._notKept, entry)
        self._trim()

    def load(self, kept: Iterable[KeptResult]) -> int:
        """
        Index the kept results a store listed at start-up (those expired
        meanwhile are deleted from the store), then apply the limit.
        """
        count = 0
        now = self.now()
        for record in sorted(kept, key=lambda r: (r.finishedAt, r.key)):
            if record.expiresAt <= now:
                continue
            self._index(self._entryOf(record, self.handlePrefix + b"%d" % record.key))
            count += 1
        d = self.store.expireKept(now)
        d.addErrback(lambda f: self._log.failure("Could not delete expired kept results", f))
        self._trim()
        return count

    def merge(self, kept: Iterable[KeptResult]) -> int:
        """
        Index the kept results another server of a cluster wrote (listed by
        the shared store) that are not indexed here yet; returns how many.
        """
        count = 0
        now = self.now()
        for record in sorted(kept, key=lambda r: (r.finishedAt, r.key)):
            if record.expiresAt <= now or record.key in self._entries:
                continue
            self._index(self._entryOf(record, self.handlePrefix + b"%d" % record.key))
            count += 1
        if count:
            self._trim()
        return count

    def _entryOf(self, record: KeptResult, handle: bytes) -> KeptEntry:
        return KeptEntry(record.key, handle, record.function, record.unique, record.status,
                         record.size, record.kept, record.expiresAt)

    def _index(self, entry: KeptEntry) -> None:
        old = self._entries.pop(entry.key, None)
        if old is not None:
            self._unindexUnique(old)
        self._entries[entry.key] = entry
        if entry.unique:
            self._byUnique[(entry.function, entry.unique)] = entry
        heapq.heappush(self._expiry, (entry.expiresAt, entry.key))
        if self._sweepCall is None:
            self._sweepCall = self.clock.callLater(SWEEP_INTERVAL, self.sweep)

    def _unindexUnique(self, entry: KeptEntry) -> None:
        if entry.unique and self._byUnique.get((entry.function, entry.unique)) is entry:
            del self._byUnique[(entry.function, entry.unique)]

    def _unindex(self, entry: KeptEntry) -> None:
        if self._entries.get(entry.key) is entry:
            del self._entries[entry.key]
        self._unindexUnique(entry)

    def _notKept(self, failure: Any, entry: KeptEntry) -> None:
        self._log.failure("Could not keep the result of job {handle!r}", failure,
                          handle=entry.handle)
        self._unindex(entry)

    # -- reading --------------------------------------------------------------

    def get(self, handle: bytes) -> Optional[KeptEntry]:
        """The unexpired kept result of C{handle}, or C{None}."""
        prefix = self.handlePrefix
        if not handle.startswith(prefix) or not handle[len(prefix):].isdigit():
            return None
        entry = self._entries.get(int(handle[len(prefix):]))
        if entry is None or entry.handle != handle or entry.expiresAt <= self.now():
            return None
        return entry

    def byUnique(self, function: bytes, unique: bytes) -> Optional[KeptEntry]:
        """The unexpired kept result of C{function}'s job C{unique}, or C{None}."""
        entry = self._byUnique.get((function, unique))
        if entry is None or entry.expiresAt <= self.now():
            return None
        return entry

    def fetch(self, entry: KeptEntry) -> "Deferred[Optional[KeptResult]]":
        """Read the result of C{entry} (bytes included) from the store."""
        return self.store.getKept(entry.key)

    # -- leaving ----------------------------------------------------------------

    def _trim(self) -> None:
        entries = self._entries
        if not self.maxResults or len(entries) <= self.maxResults:
            return
        dropped: List[KeptEntry] = []
        while len(entries) > self.maxResults:
            entry = next(iter(entries.values()))
            self._unindex(entry)
            dropped.append(entry)
        self.dropped += len(dropped)
        self._log.info("Kept results over {limit}: dropped the {count} oldest (first "
                       "{handle!r}); {total} dropped since start", limit=self.maxResults,
                       count=len(dropped), handle=dropped[0].handle, total=self.dropped)
        d = self.store.purgeKept([entry.key for entry in dropped])
        d.addErrback(lambda f: self._log.failure("Could not delete {count} kept results",
                                                 f, count=len(dropped)))

    def sweep(self) -> int:
        """
        Drop the expired results from the index and the store (one store
        call for the whole expiry range), then arm the next sweep if any
        remain. Returns how many expired.
        """
        self._sweepCall = None
        now = self.now()
        expiry = self._expiry
        count = 0
        while expiry and expiry[0][0] <= now:
            expiresAt, key = heapq.heappop(expiry)
            self.sweepWork += 1
            entry = self._entries.get(key)
            if entry is not None and entry.expiresAt == expiresAt:
                self._unindex(entry)
                count += 1
        if count:
            self.expired += count
            self._log.debug("Kept results: {count} expired", count=count)
            d = self.store.expireKept(now)
            d.addErrback(lambda f: self._log.failure("Could not delete expired kept results", f))
        if self._entries:
            self._sweepCall = self.clock.callLater(SWEEP_INTERVAL, self.sweep)
        else:
            self._expiry = []  # only stale entries left
        return count

    def stop(self) -> None:
        """Cancel the sweep's timer."""
        if self._sweepCall is not None and self._sweepCall.active():
            self._sweepCall.cancel()
        self._sweepCall = None


__all__ = ["DEFAULT_KEEP_MAX_RESULTS", "DEFAULT_KEEP_MAX_SIZE", "KeptEntry", "KeptResults",
           "SWEEP_INTERVAL"]

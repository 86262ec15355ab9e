# -*- test-case-name: tests.test_cluster_coordinator -*-
"""
The reactor side of a cluster member: which background jobs this server runs
itself, claiming more from the shared queue when its workers are idle,
returning dead servers' jobs to the queue, and dropping what it held when its
lease is lost (see docs/cluster.md).

Three things start a claim round, which asks the store for up to the free
prefetch room of every function with idle workers, in one statement:
a worker that found nothing to grab (C{NO_JOB}), a local queue that fell
below half its prefetch, and a notification of new jobs (LISTEN, debounced);
a poll every C{poll} seconds is the fallback for lost notifications and
scheduled jobs. At most one round is in flight; a trigger during it runs
another right after.
"""
from __future__ import annotations

import threading
from typing import Any, Dict, List, Optional

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure

from txgear._log import logger
from txgear.cluster._membership import formatShowServers
from txgear.cluster._store import KEY_BITS, ClusterJobStore
from txgear.server._state import DONE, PENDING
from txgear.server._storequeue import NONE, STORED

#: Seconds between polls (claims for idle workers, reclaiming dead servers' jobs).
DEFAULT_POLL = 1.0
#: Seconds a notification waits for others before its claim round.
DEFAULT_DEBOUNCE = 0.005
#: Most jobs of one function a server keeps queued locally, whatever its workers.
MAX_PREFETCH = 256
#: A backlog (claim rounds that come back full) lets a function's room grow up
#: to this many times its prefetch, in doublings: fewer, larger rounds.
MAX_BURST = 8
#: Seconds between looks at the shared dead set and kept results.
SHARED_SYNC = 5.0
#: The newest kept results one look takes in.
KEPT_SYNC_LIMIT = 10000

#: Functions one claim round asks for at most.
MAX_FUNCTIONS_PER_ROUND = 1000

_KEY_MASK = (1 << KEY_BITS) - 1


def prefetchOf(workers: int) -> int:
    """How many jobs of a function with C{workers} workers a server keeps queued locally."""
    return min(MAX_PREFETCH, 2 * workers + 16)


class ClusterCoordinator:
    """
    Joins a L{txgear.server._state.JobServerState} to a cluster's shared
    queue.

    @param state: the server state (its C{store} is C{store}).
    @param store: the L{ClusterJobStore}.
    @param clock: an C{IReactorTime} for the poll and the debounce.
    @param poll: seconds between polls.
    @param debounce: seconds a notification waits before its claim round.
    @param listen: whether to LISTEN for new jobs (a thread of its own).
    @ivar reclaimed: jobs of dead servers this server returned to the queue.
    @ivar claimed: jobs this server claimed from the queue.
    @ivar dropped: jobs dropped because the lease was lost.
    """

    _log = logger()

    def __init__(self, state: Any, store: ClusterJobStore, clock: Any = None,
                 poll: float = DEFAULT_POLL, debounce: float = DEFAULT_DEBOUNCE,
                 listen: bool = True) -> None:
        if clock is None:
            from twisted.internet import reactor as clock  # type: ignore[no-redef]
        self.state = state
        self.store = store
        self.membership = store.membership
        self.clock = clock
        self.poll = poll
        self.debounce = debounce
        self.listen = listen
        self.handlePrefix = state.handlePrefix
        self.reclaimed = 0
        self.claimed = 0
        self.dropped = 0
        # Functions whose workers may take more jobs than are queued here.
        self._hungry: Dict[Any, None] = {}
        # New jobs written claimed by this server, not yet stored, per function.
        self._claimedPending: Dict[Any, int] = {}
        # Their keys, and their functions.
        self._claimedKeys: Dict[int, Any] = {}
        # Functions whose last claim rounds came back full: how much to widen the next.
        self._burst: Dict[Any, int] = {}
        self._claiming = False
        self._again = False
        self._roundCall: Any = None
        self._poller: Optional[LoopingCall] = None
        self._reclaiming = False
        self._syncing = False
        self._syncedAt = float("-inf")
        self._blockWanted = False
        self._listener: Optional[threading.Thread] = None
        self._stopListening = threading.Event()
        self.running = False
        self._counts: List[Any] = []
        self._countedAt = float("-inf")
        self._counting = False
        self._troubles: Dict[str, None] = {}
        state.cluster = self
        store.decideClaim = self.decideClaim
        store.onOpened = self.start
        store.onClosing = self.stop
        self.membership.onLeaseLost = self._leaseLost

    # Life ------------------------------------------------------------------

    def start(self) -> None:
        """The store is open: take its key block, start polling and listening."""
        self.running = True
        self._useKeyBlock(self.store.keyBlock)
        poller = LoopingCall(self._poll)
        poller.clock = self.clock
        self._poller = poller
        poller.start(self.poll, now=True)
        if self.listen:
            self._stopListening.clear()
            listener = threading.Thread(target=self._listenInThread, name="txgear-cluster-listen",
                                        daemon=True)
            self._listener = listener
            listener.start()

    def stop(self) -> None:
        """Stop polling, claiming and listening (the store then closes)."""
        self.running = False
        if self._poller is not None and self._poller.running:
            self._poller.stop()
        self._poller = None
        if self._roundCall is not None and self._roundCall.active():
            self._roundCall.cancel()
        self._roundCall = None
        self._stopListening.set()

    # The state's hooks --------------------------------------------------------

    def decideClaim(self, job: Any) -> bool:
        """
        Whether the new background C{job} runs here (written claimed by this
        server): if a foreground client waits on it here, or this server has
        workers for its function and room in its local prefetch.
        """
        function = job.func
        if job.clients:
            claim = True
        elif not function.workers or job.when > self.clock.seconds() + self.poll:
            # Nobody here runs it, or not now: any server takes it when it is due.
            claim = False
        else:
            pending = self._claimedPending.get(function, 0)
            claim = function.queued + pending < prefetchOf(function.workers)
        if claim:
            self._claimedPending[function] = self._claimedPending.get(function, 0) + 1
            self._claimedKeys[job.key] = function
        return claim

    def keepStored(self, job: Any) -> bool:
        """
        The background C{job}'s batch is stored: C{True} if it runs (or
        ran) here; else it was dropped here (queued for any server, or the
        same unique is another job of the cluster, whose handle its
        submitters get).
        """
        self._unpend(job.key)
        claimed, holder = self.store.takeOutcome(job.key)
        if claimed:
            return True
        if job.clients or job.state != PENDING:
            # A foreground client waits on it here, or it was one already:
            # it runs here as a local job, and the cluster's copy elsewhere.
            job.background = False
            job.storeState = NONE
            return True
        job.storeState = NONE  # not held here: nothing to remove from the store
        self.state._move(job, DONE)
        if holder is not None:
            # Its submitters' held JOB_CREATED names the cluster's job.
            job.handle = self.handlePrefix + b"%d" % holder
        return False

    def notStored(self, job: Any) -> None:
        """The new job's batch failed."""
        self._unpend(job.key)
        self.store.forgetOutcome(job.key)

    def _unpend(self, key: int) -> None:
        function = self._claimedKeys.pop(key, None)
        if function is None:
            return
        count = self._claimedPending.get(function, 0)
        if count > 1:
            self._claimedPending[function] = count - 1
        else:
            self._claimedPending.pop(function, None)

    def grabbed(self, session: Any, job: Any) -> None:
        """
        A worker grabbed C{job} (C{None}: found nothing): a claimed job is
        marked started in the store; an empty or low queue asks for more.
        """
        if job is None:
            for function in session.functions:
                self._hungry[function] = None
            self._wantRound()
            return
        if job.storeState is STORED and job.background:
            self.store.jobStarted(job).addErrback(self._startFailed, job)
        function = job.func
        if function.queued * 2 < prefetchOf(function.workers) and function not in self._hungry:
            self._hungry[function] = None
            self._wantRound()

    def _startFailed(self, failure: Failure, job: Any) -> None:
        self._trouble("started", "Could not mark jobs started: {error}",
                      error=failure.getErrorMessage())

    def ownsHandle(self, handle: bytes) -> Optional[int]:
        """The key of a handle of this cluster, else C{None}."""
        prefix = self.handlePrefix
        if not handle.startswith(prefix):
            return None
        digits = handle[len(prefix):]
        if not digits.isdigit() or len(digits) > 19:
            return None
        return int(digits)

    def remoteStatus(self, key: Optional[int], unique: Optional[bytes]) -> Deferred[Any]:
        """The shared queue's view of a job not known here (GET_STATUS)."""
        return self.store.remoteStatus(key, unique)

    # Admin -----------------------------------------------------------------

    def showServers(self) -> Deferred[bytes]:
        """The admin reply to C{show servers}."""
        held = self.store.heldCounts()
        listed = held.addCallback(lambda counts: self.membership.listServers().addCallback(
            lambda rows: [row._replace(jobsHeld=counts.get(row.id, 0)) for row in rows]))
        return listed.addCallback(formatShowServers)

    def clusterStatus(self) -> Deferred[List[Any]]:
        """Per function: jobs queued for any server and jobs claimed, cluster-wide."""
        return self.store.queuedCounts()

    def recentCounts(self) -> List[Any]:
        """
        L{clusterStatus} as of the last look, for a synchronous reader (the
        metrics); starts a new look if that one is older than a second.
        """
        now = self.clock.seconds()
        if not self._counting and now - self._countedAt >= 1.0 and self.running:
            self._counting = True

            def counted(rows: List[Any]) -> None:
                self._fine("count", "Counting the cluster's jobs")
                self._counts = rows
                self._countedAt = self.clock.seconds()

            def failed(failure: Failure) -> None:
                self._trouble("count", "Counting the cluster's jobs failed: {error}",
                              error=failure.getErrorMessage())

            d = self.clusterStatus()
            d.addCallbacks(counted, failed)
            d.addBoth(lambda _: setattr(self, "_counting", False))
        return self._counts

    # Claiming ----------------------------------------------------------------

    def _wantRound(self) -> None:
        if not self.running:
            return
        if self._claiming:
            self._again = True
        elif self._roundCall is None:
            self._roundCall = self.clock.callLater(0, self._claimRound)

    def _notified(self) -> None:
        """New jobs were queued somewhere in the cluster."""
        if not self.running or not self._hungry:
            return
        if self._claiming:
            self._again = True
        elif self._roundCall is None:
            self._roundCall = self.clock.callLater(self.debounce, self._claimRound)

    def _wanted(self) -> Dict[bytes, int]:
        wanted: Dict[bytes, int] = {}
        hungry = self._hungry
        for function in list(hungry):
            if len(wanted) >= MAX_FUNCTIONS_PER_ROUND:
                break
            workers = function.workers
            room = (prefetchOf(workers) * self._burst.get(function, 1) - function.queued
                    - self._claimedPending.get(function, 0))
            if not workers or room <= 0 or self.state.functions.get(function.name) is not function:
                del hungry[function]
                if not workers:
                    self._burst.pop(function, None)
                continue
            wanted[function.name] = room
        return wanted

    def _claimRound(self) -> None:
        self._roundCall = None
        if not self.running or self._claiming:
            return
        if not self.membership.leaseValid():
            return  # the next renewal or rejoin, then the poll, tries again
        wanted = self._wanted()
        if not wanted:
            return
        self._claiming = True
        self._again = False
        d = self.store.claim(wanted)
        d.addCallback(self._widen, wanted)
        d.addCallbacks(self._claimedJobs, self._claimFailed)
        d.addBoth(self._roundEnded)

    def _widen(self, claimed: Any, wanted: Dict[bytes, int]) -> Any:
        """A function whose round came back full has a backlog: widen its next round."""
        got: Dict[bytes, int] = {}
        for job in claimed[1]:
            got[job.function] = got.get(job.function, 0) + 1
        functions = self.state.functions
        for name, room in wanted.items():
            function = functions.get(name)
            if function is None:
                continue
            if got.get(name, 0) >= room:
                self._burst[function] = min(MAX_BURST, self._burst.get(function, 1) * 2)
            else:
                self._burst.pop(function, None)
        return claimed

    def _claimedJobs(self, claimed: Any) -> None:
        self._fine("claim", "Claiming jobs")
        generation, jobs = claimed
        if not jobs:
            return
        if self.membership.generation != generation:
            return  # lost meanwhile: the rows go back with the stale generation
        self.claimed += len(jobs)
        self.state.adoptClaimed(jobs)
        # There may be more: ask again while workers keep room.
        self._again = True

    def _claimFailed(self, failure: Failure) -> None:
        self._trouble("claim", "Claiming jobs of cluster {cluster!r} failed: {error}",
                      cluster=self.store.cluster, error=failure.getErrorMessage())

    def _roundEnded(self, _: Any) -> None:
        self._claiming = False
        if self._again and self.running:
            self._again = False
            self._wantRound()

    # The poll ------------------------------------------------------------------

    def _poll(self) -> None:
        if not self.running:
            return
        if (self.state._nextKey & _KEY_MASK) > (1 << (KEY_BITS - 1)) and not self._blockWanted:
            self._blockWanted = True
            self.store.nextKeyBlock().addCallbacks(self._useKeyBlock, self._blockFailed)
        if not self._reclaiming:
            self._reclaiming = True
            d = self.store.reclaim(10 * self.membership.lease)
            d.addCallbacks(self._reclaimedJobs, self._reclaimFailed)
            d.addBoth(self._reclaimEnded)
        if not self._syncing and self.clock.seconds() - self._syncedAt >= SHARED_SYNC:
            self._syncShared()
        self._wantRound()

    def _syncShared(self) -> None:
        """Take in what other servers did to the shared dead set and kept results."""
        self._syncing = True
        self._syncedAt = self.clock.seconds()
        state = self.state
        issued = state.dead.keys()
        limit = state.dead.maxJobs or None
        dead = self.store.listDead(None, limit)
        dead.addCallback(lambda listed: state.dead.sync(listed, issued))
        kept = dead.addCallback(lambda _: self.store.listKept(KEPT_SYNC_LIMIT))
        kept.addCallback(state.kept.merge)
        kept.addCallbacks(lambda _: self._fine("shared", "Reading the shared dead set"),
                          lambda f: self._trouble("shared", "Reading the shared dead set and "
                                                  "kept results failed: {error}",
                                                  error=f.getErrorMessage()))
        kept.addBoth(lambda _: setattr(self, "_syncing", False))

    def _useKeyBlock(self, block: int) -> None:
        self._blockWanted = False
        self.state._nextKey = (block << KEY_BITS) | 1

    def _blockFailed(self, failure: Failure) -> None:
        self._blockWanted = False
        self._log.warn("Taking a new key block failed: {error}", error=failure.getErrorMessage())

    def _reclaimedJobs(self, counts: Any) -> None:
        self._fine("reclaim", "Reclaiming jobs of dead servers")
        count, started = counts
        if count:
            self.reclaimed += count
            self._log.warn("Returned {count} jobs of servers without a live lease to cluster"
                           " {cluster!r} ({started} had started: they count an attempt)",
                           count=count, cluster=self.store.cluster, started=started)

    def _reclaimFailed(self, failure: Failure) -> None:
        self._trouble("reclaim", "Reclaiming jobs of dead servers failed: {error}",
                      error=failure.getErrorMessage())

    def _reclaimEnded(self, _: Any) -> None:
        self._reclaiming = False

    # Troubles ----------------------------------------------------------------

    def _trouble(self, what: str, message: str, **fields: Any) -> None:
        """Log the first failure of C{what} in a row (a database away fails every tick)."""
        if what in self._troubles:
            return
        self._troubles[what] = None
        self._log.warn(message + " (logged once until it works again)", **fields)

    def _fine(self, what: str, doing: str) -> None:
        if self._troubles.pop(what, 0) is None:
            self._log.info("{doing} works again", doing=doing)

    # Lease lost ------------------------------------------------------------------

    def _leaseLost(self, generation: int) -> None:
        count = self.state.dropClaimed()
        self.dropped += count
        self._log.warn("Lease of generation {generation} lost: dropped {count} jobs held under"
                       " it (they run again elsewhere)", generation=generation, count=count)

    # Listening -------------------------------------------------------------------

    def _listenInThread(self) -> None:
        """LISTEN on the store's channel until stopped, reconnecting after errors."""
        import psycopg
        from psycopg import sql
        stop = self._stopListening
        reactor = self.store._reactor
        while not stop.is_set():
            try:
                with psycopg.connect(self.store._conninfo, autocommit=True) as connection:
                    connection.execute(sql.SQL("LISTEN {}").format(
                        sql.Identifier(self.store.channel)))
                    reactor.callFromThread(self._fine, "listen", "LISTEN for cluster jobs")
                    while not stop.is_set():
                        for notify in connection.notifies(timeout=0.5):
                            if notify.payload == self.store.cluster:
                                reactor.callFromThread(self._notified)
                            if stop.is_set():
                                break
            except Exception as e:
                if not stop.is_set():
                    reactor.callFromThread(self._trouble, "listen", "LISTEN for cluster jobs "
                                           "failed: {error}; polling meanwhile", error=str(e))
                    stop.wait(1.0)

    def stopped(self) -> Deferred[None]:
        """Fires once the listening thread is gone (at most one timeout after L{stop})."""
        listener = self._listener
        if listener is None or not listener.is_alive():
            return succeed(None)
        from twisted.internet.threads import deferToThread
        return deferToThread(listener.join, 5.0)


__all__ = ["ClusterCoordinator", "DEFAULT_DEBOUNCE", "DEFAULT_POLL", "MAX_PREFETCH", "prefetchOf"]

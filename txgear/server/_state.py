# -*- test-case-name: tests.test_server_state -*-
"""
The job server's state machine: queues, jobs, workers and clients.

Synchronous and transport-free. Connections appear here as L{Session}s, made
by L{JobServerState.connect} for a peer that provides
L{txgear.interfaces.IServerPeer}; the protocol layer maps packets to the
methods of this class. Time comes from an injected clock (an
L{twisted.internet.interfaces.IReactorTime}).

Every job goes through one lifecycle::

    NEW -> PENDING (waiting for the store) -> QUEUED or SCHEDULED -> RUNNING -> DONE
              QUEUED or SCHEDULED <- RUNNING (an attempt failed, its policy retries it:
                                              SCHEDULED while it waits out its backoff)
                          SCHEDULED -> QUEUED (its time came)
                        any state -> DONE (completed, failed, cancelled, abandoned)

and only L{JobServerState._move} changes a job's state (what ends an attempt
without completing goes through L{JobServerState._attemptEnded}, and a job
that fails for good through L{JobServerState._exhausted}): it keeps every
counter of the job's L{Function}, the queues, the scheduler, the worker's
held jobs and the indexes right, and on DONE forgets the job (and its
function, once nothing uses it). Store batching and the replies held for it
live in L{txgear.server._storequeue}, epoch timers in
L{txgear.server._scheduler}.

Every per-job operation is O(1) in the number of queued jobs, functions and
connections: a grab looks only at the heads of the worker's own functions'
queues, wake-ups pop sleepers off per-function ordered dicts, and jobs removed
while queued are dropped lazily when they reach the head of their queue (the
queues are compacted once such dead entries outnumber live ones, and a
removed job lets go of its payload at once).
"""
from __future__ import annotations

import math
import platform
import random as _random
from collections import OrderedDict, deque
from typing import Any, Callable, Deque, Dict, List, Optional, Sequence, Tuple

from twisted.internet.defer import Deferred

from txgear._log import logger
from txgear._peerlog import PeerLog
from txgear._packet import PacketType, encodeResponse, responseHeader
from txgear.jobs import KEPT_COMPLETE, KEPT_EXCEPTION, KEPT_FAIL, Priority
from txgear.server._policy import EXCEPTION, FAIL, LOST, TIMEOUT, PolicyTable, RetryPolicy
from txgear.server._deadset import (DEFAULT_DEAD_MAX_AGE, DEFAULT_DEAD_MAX_JOBS, DeadEntry,
                                    DeadSet, memoryDeadStore)
from txgear.server._kept import DEFAULT_KEEP_MAX_RESULTS, DEFAULT_KEEP_MAX_SIZE, KeptResults
from txgear.server._scheduler import EpochScheduler
from txgear.server._stats import (CANCELLED as OUT_CANCELLED, COMPLETE as OUT_COMPLETE,
                                  DEAD as OUT_DEAD, EXCEPTION as OUT_EXCEPTION, FAIL as OUT_FAIL,
                                  LOST as OUT_LOST, RETRIED as OUT_RETRIED,
                                  TIMEOUT as OUT_TIMEOUT, FunctionStats, ServerStats)
from txgear.server._storequeue import ERR_NOT_STORED, LaterReply, StoreQueue, StoreState

#: A policy's outcome -> the metrics' count of jobs that ended so for good.
_OUTCOME_COUNTED = {LOST: OUT_LOST, TIMEOUT: OUT_TIMEOUT, FAIL: OUT_FAIL, EXCEPTION: OUT_EXCEPTION}

HIGH, NORMAL, LOW = Priority.HIGH.value, Priority.NORMAL.value, Priority.LOW.value

#: Jobs held at once that make the next empty queue worth an L{onEmptied} call.
LARGE_QUEUE = 10000

#: A function table that grew to this size and then shrank to an eighth of it
#: is rebuilt at its new size (and L{JobServerState.onEmptied} called).
LARGE_FUNCTION_TABLE = 10000

#: Largest unique id accepted (gearmand refuses 65 bytes and more).
MAX_UNIQUE = 64

#: Default cap on the number of functions known at once (C{--max-functions}).
DEFAULT_MAX_FUNCTIONS = 100000

#: Seconds after a NOOP at which a job still queued wakes the next sleeper.
WAKE_RECHECK = 0.25

#: Longest last error kept on a job (the start of a WORK_EXCEPTION's data).
MAX_LAST_ERROR = 1024

#: Handles of jobs taken from a worker (timed out, cancelled) whose late
#: reports are dropped quietly; older ones then get JOB_NOT_FOUND.
MAX_DROPPED_HANDLES = 1024

# Dead queue entries tolerated before a function's queues are compacted.
_COMPACT_MINIMUM = 64

# Job states.
PENDING = 0  # waiting for the store to record it
QUEUED = 1
RUNNING = 2
DONE = 3  # completed, failed, cancelled or abandoned: gone
SCHEDULED = 4  # an epoch job waiting for its time
NEW = 5  # just made, in no queue yet

_S_NONE, _S_WRITING, _S_STORED = StoreState.NONE, StoreState.WRITING, StoreState.STORED

_BIG = 64 * 1024

_NO_LIMITS = (0, 0, 0)
# Shared by functions that never queued a job: they get their own list with their queues.
_NO_COUNTS = (0, 0, 0)

_NOOP = encodeResponse(PacketType.NOOP)
_NO_JOB = encodeResponse(PacketType.NO_JOB)
_H_JOB_CREATED = responseHeader(PacketType.JOB_CREATED, 0)[:8]
_H_WORK_FAIL = responseHeader(PacketType.WORK_FAIL, 0)[:8]
# Packet types the per-job path compares with, as plain ints (an enum
# member costs a class attribute lookup each time).
_GRAB_JOB = int(PacketType.GRAB_JOB)
_GRAB_JOB_ALL = int(PacketType.GRAB_JOB_ALL)
_JOB_ASSIGN = int(PacketType.JOB_ASSIGN)
_JOB_ASSIGN_UNIQ = int(PacketType.JOB_ASSIGN_UNIQ)
_JOB_ASSIGN_ALL = int(PacketType.JOB_ASSIGN_ALL)
_WORK_EXCEPTION = int(PacketType.WORK_EXCEPTION)
_WORK_FAIL = int(PacketType.WORK_FAIL)


def _errorPacket(code: bytes, text: bytes) -> bytes:
    return encodeResponse(PacketType.ERROR, code, text)


ERR_JOB_NOT_FOUND = _errorPacket(b"JOB_NOT_FOUND", b"Job given in work result not found")
ERR_JOB_NOT_FOUND_DATA = _errorPacket(b"JOB_NOT_FOUND", b"Job does not exist on server")
ERR_JOB_NOT_FOUND_EXC = _errorPacket(
    b"JOB_NOT_FOUND", b"An exception was received for a job that does not exist"
)
ERR_UNIQUE_TOO_LARGE = _errorPacket(b"ARGUMENT_TOO_LARGE", b"Unique value too large")
ERR_QUEUE_FULL = _errorPacket(b"QUEUE_ERROR", b"Job queue is full")
ERR_TOO_MANY_FUNCTIONS = _errorPacket(b"QUEUE_ERROR", b"Too many functions")
ERR_UNKNOWN_OPTION = _errorPacket(b"UNKNOWN_OPTION", b"Server does not recognize given option")
ERR_SHUTTING_DOWN = _errorPacket(b"QUEUE_ERROR", b"Server is shutting down")


class Function:
    """
    One function name: its three priority queues, its counters and its
    sleeping workers.

    @ivar queues: the HIGH, NORMAL and LOW queues, made when a first job is
        queued (C{None} before); they may also hold dead entries (jobs that
        left them early), counted in C{dead}.
    @ivar pending: jobs waiting for the store.
    @ivar queued: live queued jobs.
    @ivar running: jobs a worker holds.
    @ivar scheduled: epoch jobs waiting for their time.
    @ivar workers: connections registered for it (each counts once).
    @ivar sleepers: sessions registered for this function that sent PRE_SLEEP
        and have not been woken yet, oldest first; C{None} until a first one.
    @ivar uniques: its queued or running jobs by coalescing key; C{None}
        until a first job with a unique (most functions never get one, and
        an attacker may register many: every object they keep costs memory).
    @ivar maxQueue: per-priority limits on its jobs; 0 = none.
    @ivar kept: made by C{create function} (or given a C{maxqueue}): never
        forgotten for being unused.
    @ivar stats: its L{FunctionStats}, from its first job on (C{None} before).
    """

    __slots__ = ("name", "queues", "dead", "pending", "queued", "running", "scheduled", "workers",
                 "sleepers", "uniques", "maxQueue", "priorityCounts", "kept", "stats")

    def __init__(self, name: bytes) -> None:
        self.name = name
        self.queues: Optional[Tuple[Deque[Job], Deque[Job], Deque[Job]]] = None
        self.dead = 0
        self.pending = 0
        self.queued = 0
        self.running = 0
        self.scheduled = 0
        self.workers = 0
        self.sleepers: "Optional[OrderedDict[Session, None]]" = None
        self.uniques: Optional[Dict[Any, Job]] = None
        self.maxQueue: Sequence[int] = _NO_LIMITS
        # Queued live jobs per priority; a list of its own from its first queued job.
        self.priorityCounts: List[int] = _NO_COUNTS  # type: ignore[assignment]
        self.kept = False
        # Made with its first job: functions only registered cost nothing.
        self.stats: FunctionStats = None  # type: ignore[assignment]

    def total(self) -> int:
        """Jobs of this function, in any state but DONE."""
        return self.pending + self.queued + self.running + self.scheduled


class Job:
    """
    A job the server knows about.

    @ivar key: its number, unique in the server's store across restarts: the
        job's handle is C{<prefix>:<key>}, and a store records it under it.
    @ivar clients: sessions of the foreground clients attached to the job.
    @ivar background: C{True} if any submitter asked for a background job;
        such a job never goes away because a client disconnected.
    @ivar worker: the session holding the job while it runs.
    @ivar state: where it is in the lifecycle (see the module docstring);
        changed only by L{JobServerState._move}.
    @ivar storeState: a L{StoreState}; C{storeError} is the ERROR packet once
        it is L{StoreState.FAILED}.
    @ivar attempts: runs that ended without completing (worker lost, timed
        out, WORK_FAIL, WORK_EXCEPTION).
    @ivar lastError: why the last of them ended: the WORK_EXCEPTION data
        (cut to L{MAX_LAST_ERROR}), or C{worker lost}, C{timeout}, C{WORK_FAIL}.
    @ivar retryAt: while it waits out a retry's backoff, the Unix time in
        milliseconds at which it is queued again; else 0.
    @ivar since: when it entered its state, while QUEUED or RUNNING (the
        queue wait and run time histograms).
    """

    # What every job sets has a slot; what few jobs ever set (epoch, reduce,
    # client id, status, retries, timeouts, store errors) is a class default,
    # shadowed in the instance's dictionary, made only by the first such
    # assignment: smaller jobs, fewer stores per new job (and on PyPy, whose
    # collector copies and marks every live job, less to copy and mark).
    __slots__ = ("handle", "func", "unique", "payload", "priority", "background", "key",
                 "clients", "worker", "state", "coalesceKey", "storeState", "since",
                 "__dict__")

    when = 0
    reducer = b""
    clientId = b""
    numerator = b"0"
    denominator = b"0"
    attempts = 0
    lastError = b""
    retryAt = 0
    timeoutCall: Any = None
    storeError = b""

    def __init__(self, handle: bytes, function: Function, unique: bytes, payload: bytes,
                 priority: int, background: bool, when: int, reducer: bytes,
                 clientId: bytes, key: int) -> None:
        self.handle = handle
        self.func = function
        self.unique = unique
        self.payload = payload
        self.priority = priority
        self.background = background
        self.key = key
        self.clients: Any = ()  # a list once a client attaches; most jobs have none
        self.worker: Optional[Session] = None
        self.state = NEW
        self.coalesceKey: Any = None
        self.storeState = _S_NONE
        self.since = 0.0
        if when:
            self.when = when
        if reducer:
            self.reducer = reducer
        if clientId:
            self.clientId = clientId

    @property
    def function(self) -> bytes:
        """The function name (what a store records)."""
        return self.func.name


_newObject = object.__new__


def _backgroundJob(handle: bytes, function: Function, payload: bytes, key: int,
                   clientId: bytes, state: int, since: float) -> Job:
    """
    C{Job(handle, function, b"", payload, NORMAL, True, 0, b"", clientId,
    key)} in C{state} since C{since}, made without C{__init__}'s tests: the
    runs of background submissions make hundreds per read (a test compares
    the two).
    """
    job = _newObject(Job)
    job.handle = handle
    job.func = function
    job.unique = b""
    job.payload = payload
    job.priority = NORMAL
    job.background = True
    job.key = key
    job.clients = ()
    job.worker = None
    job.state = state
    job.coalesceKey = None
    job.storeState = _S_NONE
    job.since = since
    if clientId:
        job.clientId = clientId
    return job


class Session:
    """
    The server's view of one connection, in whichever roles it plays.

    @ivar peer: an L{txgear.interfaces.IServerPeer}; the protocol bounds that
        output itself (see L{txgear.server._protocol}).
    @ivar functions: the functions registered, once each, in registration order.
    @ivar registered: the same functions, for O(1) membership.
    @ivar timeouts: CAN_DO_TIMEOUT limits, in seconds, by function.
    @ivar held: jobs this session runs, by handle.
    @ivar dropped: handles taken from this worker (timed out, cancelled):
        what it still reports on them is dropped quietly.
    @ivar waiting: foreground jobs this session is attached to.
    @ivar replies: output held back behind a JOB_CREATED that waits for the
        store, in request order (see L{txgear.server._storequeue}).
    """

    __slots__ = ("peer", "id", "clientId", "functions", "registered", "timeouts", "held",
                 "dropped", "waiting", "sleeping", "exceptions", "replies", "rotation",
                 "closed", "__weakref__")

    def __init__(self, peer: Any, sessionId: int) -> None:
        self.peer = peer
        self.id = sessionId
        self.clientId = b"-"
        self.functions: List[Function] = []
        self.registered: Dict[Function, None] = {}
        self.timeouts: Dict[Function, float] = {}
        self.held: Dict[bytes, Job] = {}
        self.dropped: Optional[Dict[bytes, None]] = None
        self.waiting: Dict[Job, None] = {}
        self.sleeping = False
        self.exceptions = False
        self.replies: Optional[Deque[Any]] = None
        self.rotation = 0
        self.closed = False

    def write(self, data: bytes) -> None:
        """Send bytes now, or behind replies that wait for the store."""
        if self.replies is None:
            self.peer.write(data)
        else:
            self.replies.append(data)

    def writeSequence(self, data: List[bytes]) -> None:
        if self.replies is None:
            self.peer.writeSequence(data)
        else:
            self.replies.append(b"".join(data))

    def _drop(self, handle: bytes) -> None:
        """Quietly ignore what this worker still sends about C{handle}."""
        dropped = self.dropped
        if dropped is None:
            dropped = self.dropped = {}
        elif len(dropped) >= MAX_DROPPED_HANDLES:
            del dropped[next(iter(dropped))]
        dropped[handle] = None


class JobServerState:
    """
    Everything a job server knows: functions, jobs and connections.

    @param clock: an C{IReactorTime} for timers (CAN_DO_TIMEOUT, epoch jobs,
        wake-up rechecks).
    @param handlePrefix: job handles are C{<prefix>:<n>}; default
        C{H:<hostname>} as gearmand.
    @param jobRetries: the default retry policy when C{policies} is not
        given (see L{RetryPolicy.fromJobRetries}): fail a job (WORK_FAIL to
        its clients) once it has lost its worker or timed out this many
        times; 0 = a lost worker's job is retried forever (gearmand 1.1.20's
        meaning of 0) but a timed out job fails at once.
    @param policies: the L{PolicyTable} of retry policies.
    @param random: draws the backoffs' jitter (a float in [0, 1)).
    @param roundRobin: alternate between a worker's functions instead of
        serving strictly by priority then submission order.
    @param workerWakeup: how many sleeping workers one new runnable job wakes;
        0 wakes all of the function's sleepers, as gearmand does by default.
        A job still queued L{WAKE_RECHECK} seconds after its NOOPs wakes the
        next sleepers.
    @param store: an L{txgear.interfaces.IJobStore} for background jobs, or
        C{None} to keep them in memory only.
    @param onEmptied: called when much of the state was just freed: the job
        table shrank to an eighth of a peak of L{LARGE_QUEUE} or more (it is
        then rebuilt at its new size), the last job is gone after at least
        L{LARGE_QUEUE} were held at once, or a function table of
        L{LARGE_FUNCTION_TABLE} or more has shrunk to an eighth. The moment
        to give memory back (see L{txgear.server._reclaim}).
    @param maxFunctions: how many functions may exist at once; past it, a
        CAN_DO of a new name is ignored and a submission gets C{ERROR
        QUEUE_ERROR}. Jobs loaded from the store are never refused.
    @param deadMaxJobs: the dead set's size limit (0: none).
    @param deadMaxAge: the dead set's age limit in seconds (0: none).
    @param keepMaxSize: results above this many bytes are not kept.
    @param keepMaxResults: the kept results' index size limit (0: none).
    @ivar dead: the L{DeadSet}: background jobs that used up their attempts.
    @ivar kept: the L{KeptResults} of background jobs of C{keep:TTL} policies.
    """

    _log = logger()

    def __init__(self, clock: Any = None, handlePrefix: Optional[bytes] = None,
                 jobRetries: int = 0, roundRobin: bool = False, workerWakeup: int = 1,
                 store: Any = None, onEmptied: Optional[Callable[[], None]] = None,
                 maxFunctions: int = DEFAULT_MAX_FUNCTIONS,
                 wakeRecheck: float = WAKE_RECHECK, policies: Optional[PolicyTable] = None,
                 random: Callable[[], float] = _random.random,
                 deadMaxJobs: int = DEFAULT_DEAD_MAX_JOBS,
                 deadMaxAge: float = DEFAULT_DEAD_MAX_AGE,
                 keepMaxSize: int = DEFAULT_KEEP_MAX_SIZE,
                 keepMaxResults: int = DEFAULT_KEEP_MAX_RESULTS) -> None:
        if clock is None:
            from twisted.internet import reactor as clock  # type: ignore[no-redef]
        self.clock = clock
        self.peerLog = PeerLog(self._log, clock)  # lines peers cause, rate-limited
        if handlePrefix is None:
            handlePrefix = ("H:" + (platform.node() or "localhost")).encode("utf-8")
        self.handlePrefix = handlePrefix + b":"
        # JOB_CREATED up to a handle's number, by its count of digits: the
        # reply to a new job is then one concatenation.
        self._createdHeader = [responseHeader(PacketType.JOB_CREATED, len(self.handlePrefix) + digits)
                               for digits in range(21)]
        self._createdHead = [header + self.handlePrefix for header in self._createdHeader]
        self.jobRetries = jobRetries
        self.policies = policies if policies is not None else PolicyTable(
            RetryPolicy.fromJobRetries(jobRetries))
        self.random = random
        self.roundRobin = roundRobin
        self.workerWakeup = workerWakeup
        self.maxFunctions = maxFunctions
        self.wakeRecheck = wakeRecheck
        self.store = store
        #: The counters C{/metrics} reports (see L{txgear.server._stats}).
        self.stats = ServerStats()
        self.storeQueue: Optional[StoreQueue] = None
        if store is not None:
            self.storeQueue = StoreQueue(store, clock, self._jobsStored, self._jobsNotStored,
                                         self.stats)
        self.dead = DeadSet(store if store is not None else memoryDeadStore(), clock,
                            self.handlePrefix, deadMaxJobs, deadMaxAge)
        # Without a store, kept results share the dead set's memory store.
        self.kept = KeptResults(self.dead.store, clock, self.handlePrefix, keepMaxSize,
                                keepMaxResults)
        #: Background submissions answered with a kept result's handle.
        self.idempotentHits = 0
        # Job keys (and handle numbers) continue after the largest one loaded.
        self._nextKey = 1
        self.onEmptied = onEmptied
        self._largeQueue = False
        # The most jobs held since the job table was last rebuilt, once it
        # reached LARGE_QUEUE (0 before): a dict never shrinks by deletion.
        self._jobsPeak = 0
        self.functions: Dict[bytes, Function] = {}
        self._functionsPeak = 0
        self.jobs: Dict[bytes, Job] = {}
        self._uniqueIndex: Dict[bytes, Dict[Job, None]] = {}
        self.sessions: Dict[int, Session] = {}
        self._nextSession = 1
        self.scheduler = EpochScheduler(clock, self._epochDue)
        # Functions whose sleepers were woken while others slept on: when.
        self._wakeWatch: Dict[Function, float] = {}
        self._wakeCall: Any = None
        self._functionsRefused = 0
        self.accepting = True
        self._idleWaiters: List[Deferred[None]] = []
        # Jobs some worker holds, and who waits for there to be none (a stop).
        self.runningCount = 0
        self._noneRunningWaiters: List[Deferred[None]] = []
        #: The L{txgear.cluster.ClusterCoordinator} of a cluster member, else C{None}.
        self.cluster: Any = None

    # -- the lifecycle -----------------------------------------------------

    def _move(self, job: Job, new: int) -> None:
        """
        The one place a job changes state: leave the old state's counters,
        queue, timer or worker, then enter C{new}'s. A job entering RUNNING
        has its C{worker} set already; one leaving QUEUED for RUNNING has
        been popped off its queue by the grab.
        """
        old = job.state
        function = job.func
        # Branches in order of frequency; the grab (QUEUED -> RUNNING), once
        # per job, is done in one piece and returns.
        if old == QUEUED:
            if new == RUNNING:
                job.state = RUNNING
                queued = function.queued = function.queued - 1
                function.priorityCounts[job.priority] -= 1
                if not queued and self._wakeWatch:
                    self._unwatch(function)
                function.running += 1
                self.runningCount += 1
                job.worker.held[job.handle] = job  # type: ignore[union-attr]
                now = self.clock.seconds()
                function.stats.wait.observe(now - job.since)
                job.since = now
                return
            function.queued -= 1
            function.priorityCounts[job.priority] -= 1
            # Still in its queue: dropped when it reaches the head, or when
            # dead entries outnumber live ones.
            function.dead += 1
            if function.dead > _COMPACT_MINIMUM and function.dead > function.queued:
                self._compact(function, job)
            if not function.queued and self._wakeWatch:
                self._unwatch(function)
        elif old == RUNNING:
            function.running -= 1
            self.runningCount -= 1
            function.stats.run.observe(self.clock.seconds() - job.since)
            if not self.runningCount and self._noneRunningWaiters:
                self._noneRunning()
            worker = job.worker
            if worker is not None:
                job.worker = None
                worker.held.pop(job.handle, None)
            call = job.timeoutCall
            if call is not None:
                if call.active():
                    call.cancel()
                job.timeoutCall = None
        elif old == SCHEDULED:
            function.scheduled -= 1
            self.scheduler.remove(job)
        elif old == PENDING:
            function.pending -= 1
        job.state = new
        if new == DONE:
            # Forget the job (inline: this is the end of every job's hot path).
            self.jobs.pop(job.handle, None)
            if job.coalesceKey is not None:
                self._unindex(job)
            storeState = job.storeState
            if storeState is _S_STORED:
                self.storeQueue.remove(job)  # type: ignore[union-attr]
            if job.clients:
                for client in job.clients:
                    client.waiting.pop(job, None)
                job.clients = ()
            if old != RUNNING and storeState is not _S_WRITING:
                # A dead queue entry may outlive it: let go of the payload now.
                job.payload = b""
            if not function.workers and not function.kept and not function.total():
                self._forgetFunction(function)
            if not self.accepting:
                self._checkIdle()
            if self._jobsPeak and len(self.jobs) * 8 <= self._jobsPeak:
                self._shrinkJobs()
            elif self._largeQueue and not self.jobs:
                self._largeQueue = False
                if self.onEmptied is not None:
                    self.onEmptied()
        elif new == QUEUED:
            queues = function.queues
            if queues is None:
                queues = function.queues = (deque(), deque(), deque())
                function.priorityCounts = [0, 0, 0]
            queues[job.priority].append(job)
            job.since = self.clock.seconds()
            function.queued += 1
            function.priorityCounts[job.priority] += 1
            if function.sleepers:
                self._wake(function)
        elif new == RUNNING:
            function.running += 1
            self.runningCount += 1
            job.worker.held[job.handle] = job  # type: ignore[union-attr]
            job.since = self.clock.seconds()
        elif new == SCHEDULED:
            function.scheduled += 1
            self.scheduler.add(job, self._dueTime(job))
        elif new == PENDING:
            function.pending += 1

    def _shrinkJobs(self) -> None:
        """
        The job table holds an eighth of its peak: copy it (and the unique
        index) into tables of their size, and give the memory back. Each
        copy follows at least seven times as many removals: O(1) per job.
        """
        jobs = self.jobs = dict(self.jobs)
        self._uniqueIndex = dict(self._uniqueIndex)
        self._jobsPeak = len(jobs) if len(jobs) >= LARGE_QUEUE else 0
        self._largeQueue = bool(jobs)
        if self.onEmptied is not None:
            self.onEmptied()

    def _unindex(self, job: Job) -> None:
        """Remove a job from the coalescing indexes (O(1))."""
        function = job.func
        uniques = function.uniques
        if uniques and uniques.get(job.coalesceKey) is job:
            del uniques[job.coalesceKey]
            if not uniques:
                function.uniques = None  # its table may have been large
        index = self._uniqueIndex.get(job.unique)
        if index is not None:
            index.pop(job, None)
            if not index:
                del self._uniqueIndex[job.unique]

    def _compact(self, function: Function, leaving: Job) -> None:
        """
        Drop a function's dead queue entries, and C{leaving}, which is
        leaving QUEUED (amortised O(1) per removal).
        """
        queues = function.queues
        if queues is not None:
            function.queues = tuple(  # type: ignore[assignment]
                deque(job for job in queue if job.state == QUEUED and job is not leaving)
                for queue in queues)
        function.dead = 0

    @staticmethod
    def _dueTime(job: Job) -> float:
        """The Unix time before which C{job} may not run: its epoch, or its retry's."""
        if job.retryAt:
            return max(job.when, job.retryAt / 1000.0)
        return job.when

    def _makeRunnable(self, job: Job) -> None:
        when = self._dueTime(job)
        if when and when > self.clock.seconds():
            self._move(job, SCHEDULED)
        else:
            self._move(job, QUEUED)

    def _epochDue(self, job: Job) -> None:
        if job.state == SCHEDULED:
            job.when = 0
            job.retryAt = 0
            self._move(job, QUEUED)

    # -- functions -------------------------------------------------------

    def function(self, name: bytes) -> Function:
        """The L{Function} called C{name}, created if new (whatever the cap)."""
        function = self.functions.get(name)
        if function is None:
            function = self._addFunction(name)
        return function

    def _newFunction(self, name: bytes) -> Optional[Function]:
        """A new L{Function}, or C{None} when L{maxFunctions} exist already."""
        if len(self.functions) >= self.maxFunctions:
            # Logged once per many refusals: a peer must not turn them into a log flood.
            if self._functionsRefused % 10000 == 0:
                self._log.warn("{count} functions exist already (--max-functions): {name!r} "
                               "refused ({refused} refused so far)", count=len(self.functions),
                               name=name[:64], refused=self._functionsRefused + 1)
            self._functionsRefused += 1
            return None
        return self._addFunction(name)

    def _addFunction(self, name: bytes) -> Function:
        functions = self.functions
        function = functions[name] = Function(name)
        if len(functions) > self._functionsPeak:
            self._functionsPeak = len(functions)
        return function

    def _forgetIfUnused(self, function: Function) -> None:
        if not function.workers and not function.kept and not function.total():
            self._forgetFunction(function)

    def _forgetFunction(self, function: Function) -> None:
        functions = self.functions
        if functions.get(function.name) is function:
            del functions[function.name]
            if function.stats is not None:
                self.stats.retire(function.stats)
            if (self._functionsPeak >= LARGE_FUNCTION_TABLE
                    and len(functions) * 8 <= self._functionsPeak):
                # A dict never shrinks by deletion: copy what is left into a
                # table of its size, and give the memory back.
                self.functions = dict(functions)
                self._functionsPeak = len(functions)
                if self.onEmptied is not None:
                    self.onEmptied()
        self._wakeWatch.pop(function, None)

    def createFunction(self, name: bytes) -> Optional[str]:
        """Admin C{create function}: C{None} on success, else the error text."""
        function = self.functions.get(name)
        if function is None:
            function = self._newFunction(name)
            if function is None:
                return "too many functions"
        function.kept = True
        return None

    # -- connections -----------------------------------------------------

    def connect(self, peer: Any) -> Session:
        """A new connection: returns its L{Session}."""
        session = Session(peer, self._nextSession)
        self._nextSession += 1
        self.sessions[session.id] = session
        return session

    def disconnect(self, session: Session) -> None:
        """
        The connection went away: requeue the jobs it held, detach it from
        the jobs it waited on, and forget its registrations.
        """
        if session.closed:
            return
        session.closed = True
        self.sessions.pop(session.id, None)
        if self.storeQueue is not None:
            self.storeQueue.forget(session)
        if session.sleeping:
            self._stopSleeping(session)
        touched: Dict[Function, None] = {}
        for job in list(session.held.values()):
            touched[job.func] = None
            self._attemptEnded(job, LOST, b"worker lost")
        session.held.clear()
        session.dropped = None
        functions = session.functions
        session.functions = []
        session.registered = {}
        session.timeouts.clear()
        for function in functions:
            function.workers -= 1
            touched[function] = None
        for job in list(session.waiting):
            clients = job.clients
            if session in clients:
                clients.remove(session)
            if not clients and not job.background and job.state != RUNNING:
                # Nobody waits for the result: drop it, as gearmand does.
                job.func.stats.finished[OUT_LOST] += 1
                self._move(job, DONE)
        session.waiting.clear()
        # A worker that was woken but went away may leave jobs nobody was told of.
        for function in touched:
            if function.queued and function.sleepers:
                self._wake(function, function.queued)
            self._forgetIfUnused(function)
        self._checkIdle()

    # -- worker registration --------------------------------------------

    def canDo(self, session: Session, name: bytes, timeout: float = 0.0) -> None:
        """
        CAN_DO / CAN_DO_TIMEOUT (C{timeout} in seconds; 0 = none). A
        connection registers a function once; repeating it only sets the
        timeout.
        """
        function = self.functions.get(name)
        if function is None:
            function = self._newFunction(name)
            if function is None:
                return
        if timeout > 0:
            session.timeouts[function] = timeout
        elif session.timeouts:
            session.timeouts.pop(function, None)
        if function in session.registered:
            return
        session.registered[function] = None
        session.functions.append(function)
        function.workers += 1
        if session.sleeping:
            if function.queued:
                self._wakeSession(session)
            else:
                self._addSleeper(function, session)

    def cantDo(self, session: Session, name: bytes) -> None:
        """CANT_DO: forget this session's registration of C{name}."""
        function = self.functions.get(name)
        if function is None or session.registered.pop(function, 1) is not None:
            return
        session.functions.remove(function)
        function.workers -= 1
        session.timeouts.pop(function, None)
        if function.sleepers:
            function.sleepers.pop(session, None)
        self._forgetIfUnused(function)

    def resetAbilities(self, session: Session) -> None:
        """RESET_ABILITIES."""
        functions = session.functions
        session.functions = []
        session.registered = {}
        session.timeouts.clear()
        for function in functions:
            function.workers -= 1
            if function.sleepers:
                function.sleepers.pop(session, None)
            self._forgetIfUnused(function)

    def setClientId(self, session: Session, clientId: bytes) -> None:
        session.clientId = clientId.strip() or b"-"

    # -- sleeping and waking ---------------------------------------------

    def preSleep(self, session: Session) -> None:
        """PRE_SLEEP: NOOP at once if work is ready, else sleep until some is."""
        for function in session.functions:
            if function.queued:
                session.write(_NOOP)
                return
        if not session.sleeping:
            session.sleeping = True
            for function in session.functions:
                self._addSleeper(function, session)

    @staticmethod
    def _addSleeper(function: Function, session: Session) -> None:
        sleepers = function.sleepers
        if sleepers is None:
            sleepers = function.sleepers = OrderedDict()
        sleepers[session] = None

    def _stopSleeping(self, session: Session) -> None:
        session.sleeping = False
        for function in session.functions:
            sleepers = function.sleepers
            if sleepers:
                sleepers.pop(session, None)

    def _wakeSession(self, session: Session) -> None:
        self._stopSleeping(session)
        session.write(_NOOP)

    def _wake(self, function: Function, jobs: int = 1) -> None:
        """Wake sleepers of C{function} for C{jobs} newly runnable jobs."""
        sleepers = function.sleepers
        if not sleepers:
            return
        count = self.workerWakeup * jobs if self.workerWakeup > 0 else len(sleepers)
        while sleepers and count > 0:
            session, _ = sleepers.popitem(last=False)
            self._wakeSession(session)
            count -= 1
        if sleepers and function not in self._wakeWatch:
            # Others sleep on: if the woken ones do not grab, wake them later.
            self._wakeWatch[function] = self.clock.seconds()
            if self._wakeCall is None:
                self._wakeCall = self.clock.callLater(self.wakeRecheck, self._recheckWakes)

    def _unwatch(self, function: Function) -> None:
        # The timer is left to run out: cancelling and re-arming it for every
        # job would cost a timer per job while workers sleep.
        self._wakeWatch.pop(function, None)

    def _recheckWakes(self) -> None:
        """Jobs still queued L{wakeRecheck} seconds after their NOOPs: wake the next sleepers."""
        self._wakeCall = None
        now = self.clock.seconds()
        watch = self._wakeWatch
        due = []
        for function, woken in watch.items():  # oldest first
            if woken + self.wakeRecheck > now + 1e-6:
                break
            due.append(function)
        for function in due:
            del watch[function]
            if function.queued and function.sleepers:
                self._log.debug("Jobs of {function!r} still queued after a wake-up; waking more",
                                function=function.name)
                self._wake(function, function.queued)
        if self._wakeCall is not None:
            self._wakeCall.cancel()
            self._wakeCall = None
        if watch:
            first = next(iter(watch.values()))
            self._wakeCall = self.clock.callLater(max(0.0, first + self.wakeRecheck - now),
                                                  self._recheckWakes)

    # -- submitting ------------------------------------------------------

    def submit(self, session: Session, name: bytes, unique: bytes, payload: bytes,
               priority: int = NORMAL, background: bool = False, when: int = 0,
               reducer: bytes = b"") -> None:
        """
        A SUBMIT_JOB* request: create the job (or attach to the job with the
        same function and unique), and answer JOB_CREATED or ERROR.
        """
        if len(unique) > MAX_UNIQUE:
            self.peerLog.warn(session.peer, "unique", "Session {id}: unique id of {size} bytes "
                              "refused", id=session.id, size=len(unique))
            self.sendError(session, ERR_UNIQUE_TOO_LARGE)
            return
        function = self.functions.get(name)
        if function is None:
            function = self._newFunction(name)
            if function is None:
                self.sendError(session, ERR_TOO_MANY_FUNCTIONS)
                return
        if unique:
            coalesceKey: Any = unique if unique != b"-" else ((b"-", payload) if payload else None)
            if coalesceKey is not None:
                job = function.uniques.get(coalesceKey) if function.uniques else None
                if job is not None:
                    self._attach(session, job, background)
                    return
            if background and unique != b"-" and self.kept:
                policy = self.policies.forFunction(name)
                if policy.idempotent and policy.keep:
                    entry = self.kept.byUnique(name, unique)
                    if entry is not None:
                        # Ran already, its result is kept: the same handle, no new run.
                        self.idempotentHits += 1
                        handle = entry.handle
                        session.write(_H_JOB_CREATED + len(handle).to_bytes(4, "big") + handle)
                        self._forgetIfUnused(function)
                        return
        else:
            coalesceKey = None
        if not self.accepting:
            self.sendError(session, ERR_SHUTTING_DOWN)
            self._forgetIfUnused(function)
            return
        limit = function.maxQueue[priority]
        if limit and function.total() >= limit:
            self.peerLog.info(session.peer, "full", "Queue of {function} full ({limit} jobs): "
                              "submit refused", function=name, limit=limit)
            self.sendError(session, ERR_QUEUE_FULL)
            return
        key = self._nextKey
        self._nextKey = key + 1
        number = b"%d" % key
        handle = self.handlePrefix + number
        job = Job(handle, function, unique, payload, priority, background, when, reducer,
                  session.clientId if session.clientId != b"-" else b"", key)
        stats = function.stats
        if stats is None:
            stats = function.stats = self.stats.forFunction(name)
        stats.submitted[background] += 1
        jobs = self.jobs
        jobs[handle] = job
        count = len(jobs)
        if count >= LARGE_QUEUE:
            self._largeQueue = True
            if count > self._jobsPeak:
                self._jobsPeak = count
        if coalesceKey is not None:
            self._index(job, coalesceKey)
        if not background:
            job.clients = [session]
            session.waiting[job] = None
        elif self.storeQueue is not None:
            self._move(job, PENDING)
            self._persist(job, session)
            return
        session.write(self._createdHead[len(number)] + number)
        # _makeRunnable, inline: every submit passes here.
        self._move(job, SCHEDULED if when and when > self.clock.seconds() else QUEUED)

    def submitBackgroundMany(self, session: Session, name: bytes, payloads: List[bytes]) -> None:
        """
        Several SUBMIT_JOB_BG requests of one session for function C{name},
        without unique ids, in order: the same as L{submit} for each, with
        their JOB_CREATED replies written together.

        A pipelining client sends hundreds of them in one read. Where
        nothing but queueing applies (the function known and without limits,
        the server accepting; without a store, no reply of the session held
        back; with one, not a cluster member) they are made in one loop;
        otherwise each goes through L{submit}.
        """
        function = self.functions.get(name)
        storeQueue = self.storeQueue
        if (function is None or not self.accepting or function.maxQueue[NORMAL]
                or (session.replies is not None if storeQueue is None else self.cluster is not None)):
            submit = self.submit
            for payload in payloads:
                submit(session, name, b"", payload, NORMAL, True)
            return
        if storeQueue is not None:
            self._submitStoredMany(session, function, payloads)
            return
        if function.queues is None:
            function.queues = (deque(), deque(), deque())
            function.priorityCounts = [0, 0, 0]
        if function.stats is None:
            function.stats = self.stats.forFunction(name)
        clientId = session.clientId if session.clientId != b"-" else b""
        prefix = self.handlePrefix
        # Each reply is a shared header and the job's handle, joined once.
        headers = self._createdHeader
        jobs = self.jobs
        queue = function.queues[NORMAL]
        submitted = function.stats.submitted
        now = self.clock.seconds()
        key = self._nextKey
        replies: List[bytes] = []
        append = replies.append
        for payload in payloads:
            number = b"%d" % key
            handle = prefix + number
            # Then _move(job, QUEUED), inline.
            job = _backgroundJob(handle, function, payload, key, clientId, QUEUED, now)
            key += 1
            jobs[handle] = job
            submitted[True] += 1
            append(headers[len(number)])
            append(handle)
            queue.append(job)
            function.queued += 1
            function.priorityCounts[NORMAL] += 1
            if function.sleepers:
                # Woken in order: this session's replies so far go first
                # (it may be one of the sleepers).
                self._nextKey = key
                session.peer.write(b"".join(replies))
                del replies[:]
                self._wake(function)
        self._nextKey = key
        if replies:
            session.peer.write(b"".join(replies))
        count = len(jobs)
        if count >= LARGE_QUEUE:
            self._largeQueue = True
            if count > self._jobsPeak:
                self._jobsPeak = count

    def _submitStoredMany(self, session: Session, function: Function, payloads: List[bytes]) -> None:
        """
        L{submitBackgroundMany}'s loop with a store: each job waits in
        PENDING for this turn's batch, its JOB_CREATED held until the store
        has it (L{submit} then L{_persist} for each, inline).
        """
        if function.stats is None:
            function.stats = self.stats.forFunction(function.name)
        clientId = session.clientId if session.clientId != b"-" else b""
        prefix = self.handlePrefix
        jobs = self.jobs
        key = self._nextKey
        made: List[Job] = []
        append = made.append
        for payload in payloads:
            handle = prefix + b"%d" % key
            # Then _move(job, PENDING), inline.
            job = _backgroundJob(handle, function, payload, key, clientId, PENDING, 0.0)
            key += 1
            jobs[handle] = job
            append(job)
        self._nextKey = key
        function.stats.submitted[True] += len(made)
        function.pending += len(made)
        self.storeQueue.holdAndWrite(session, made)  # type: ignore[union-attr]
        count = len(jobs)
        if count >= LARGE_QUEUE:
            self._largeQueue = True
            if count > self._jobsPeak:
                self._jobsPeak = count

    def _index(self, job: Job, coalesceKey: Any) -> None:
        job.coalesceKey = coalesceKey
        uniques = job.func.uniques
        if uniques is None:
            uniques = job.func.uniques = {}
        uniques[coalesceKey] = job
        index = self._uniqueIndex.get(job.unique)
        if index is None:
            self._uniqueIndex[job.unique] = {job: None}
        else:
            index[job] = None

    def _attach(self, session: Session, job: Job, background: bool) -> None:
        if background:
            if not job.background:
                # A background submitter makes the job survive its foreground
                # clients; gearmand loses it when they go (not copied).
                job.background = True
                if self.storeQueue is not None and job.state != DONE:
                    self._persist(job, session)
                    return
        elif session not in job.clients:
            if job.clients:
                job.clients.append(session)
            else:
                job.clients = [session]
            session.waiting[job] = None
        if job.storeState is _S_WRITING:
            # Answer once the store has the job, in this session's order.
            self.storeQueue.holdReply(session, job)  # type: ignore[union-attr]
            return
        handle = job.handle
        session.write(_H_JOB_CREATED + len(handle).to_bytes(4, "big") + handle)

    # -- persistence -----------------------------------------------------

    def _persist(self, job: Job, session: Session) -> None:
        """
        Record a background job; JOB_CREATED goes out once it is durable. A
        new job waits in PENDING; a foreground job turned background stays
        runnable meanwhile.
        """
        storeQueue: StoreQueue = self.storeQueue  # type: ignore[assignment]
        storeQueue.holdReply(session, job)
        if job.storeState is not _S_WRITING:
            storeQueue.write(job)

    def _jobsStored(self, batch: List[Job]) -> None:
        cluster = self.cluster
        now = self.clock.seconds()
        for job in batch:
            if cluster is not None and not cluster.keepStored(job):
                continue  # another server of the cluster runs it
            if job.state == PENDING:
                if job.when or job.retryAt:
                    self._makeRunnable(job)
                    continue
                # _move(job, QUEUED), inline: every stored job passes here.
                function = job.func
                function.pending -= 1
                job.state = QUEUED
                queues = function.queues
                if queues is None:
                    queues = function.queues = (deque(), deque(), deque())
                    function.priorityCounts = [0, 0, 0]
                queues[job.priority].append(job)
                job.since = now
                function.queued += 1
                function.priorityCounts[job.priority] += 1
                if function.sleepers:
                    self._wake(function)
            elif job.state == DONE:
                # Finished (cancelled) while being written: forget it again.
                self.storeQueue.remove(job)  # type: ignore[union-attr]
                job.payload = b""

    def _jobsNotStored(self, batch: List[Job]) -> None:
        cluster = self.cluster
        for job in batch:
            if cluster is not None:
                cluster.notStored(job)
            if job.state == PENDING:
                if job.clients:
                    # Foreground clients also wait on it: keep it as a memory job.
                    job.background = False
                    self._makeRunnable(job)
                else:
                    job.func.stats.finished[OUT_LOST] += 1
                    self._move(job, DONE)
            elif job.state == DONE:
                job.payload = b""  # kept only for the store's sake
            else:
                job.background = False

    def loadStored(self, stored: Sequence[Any]) -> int:
        """
        Re-create background jobs a store loaded at start-up, in the order
        given (priority, then submission), each under its old handle.
        Returns how many were created.
        """
        return self._load(stored, False)

    def adoptClaimed(self, claimed: Sequence[Any]) -> int:
        """
        Take in background jobs this server claimed from its cluster's
        shared queue (L{txgear.cluster.ClaimedJob}s, each under its cluster
        handle). A job whose previous server died while running it (C{lost})
        has that attempt counted as a lost worker's, under its retry policy.
        Returns how many were taken in.
        """
        return self._load(claimed, True)

    def _load(self, stored: Sequence[Any], claimed: bool) -> int:
        count = 0
        for record in stored:
            if not claimed and record.key >= self._nextKey:
                self._nextKey = record.key + 1
            function = self.function(record.function)
            unique = record.unique
            coalesceKey: Any = None
            handle = self.handlePrefix + b"%d" % record.key
            if unique:
                coalesceKey = unique if unique != b"-" else (
                    (b"-", record.payload) if record.payload else None)
            if claimed and handle in self.jobs:
                local = self.jobs[handle]
                if local.storeState is _S_NONE and local.state != DONE:
                    # Its local copy (kept for a foreground client) becomes the cluster's job.
                    local.background = True
                    local.storeState = _S_STORED
                    count += 1
                    continue
            if handle in self.jobs:
                # Not removed: the store would remove the first one, by key.
                self._log.warn("Stored job {key!r} loaded twice; ignoring the copy", key=record.key)
                self._forgetIfUnused(function)
                continue
            if claimed and coalesceKey is not None and function.uniques \
                    and coalesceKey in function.uniques:
                # A local foreground job has its unique: the cluster's job runs all the same.
                coalesceKey = None
            if coalesceKey is not None and function.uniques and coalesceKey in function.uniques:
                self._log.warn("Stored job {key!r} duplicates unique {unique!r}; dropping it",
                               key=record.key, unique=unique)
                if self.store is not None:
                    self.store.remove(record).addErrback(lambda f: None)
                self._forgetIfUnused(function)
                continue
            job = Job(handle, function, unique, record.payload, record.priority, True,
                      record.when, record.reducer, record.clientId, record.key)
            job.storeState = _S_STORED
            job.attempts = getattr(record, "attempts", 0)
            job.lastError = getattr(record, "lastError", b"")
            job.retryAt = getattr(record, "retryAt", 0)
            if function.stats is None:
                # Submitted in an earlier run: counted there.
                function.stats = self.stats.forFunction(function.name)
            self.jobs[handle] = job
            if coalesceKey is not None:
                self._index(job, coalesceKey)
            if claimed and getattr(record, "lost", False):
                self._attemptEnded(job, LOST, b"server lost")
            else:
                self._makeRunnable(job)
            count += 1
        if len(self.jobs) >= LARGE_QUEUE:
            self._largeQueue = True
            self._jobsPeak = max(self._jobsPeak, len(self.jobs))
        return count

    # -- grabbing --------------------------------------------------------

    def grab(self, session: Session, kind: int = PacketType.GRAB_JOB_UNIQ) -> None:
        """
        GRAB_JOB, GRAB_JOB_UNIQ or GRAB_JOB_ALL: assign the best job for this
        worker (global priority, then submission order) or answer NO_JOB.
        """
        if session.sleeping:
            self._stopSleeping(session)
        functions = session.functions
        job = None
        if len(functions) == 1:
            function = functions[0]
            queues = function.queues
            if queues is not None:
                for priority in (HIGH, NORMAL, LOW):
                    queue = queues[priority]
                    while queue:
                        head = queue.popleft()
                        if head.state == QUEUED:
                            job = head
                            break
                        function.dead -= 1
                    if job is not None:
                        break
        elif functions:
            job = self._pickAmong(session, functions)
        if job is None:
            session.write(_NO_JOB)
            if self.cluster is not None:
                self.cluster.grabbed(session, None)
            return
        self._assign(session, job, kind)
        if self.cluster is not None:
            self.cluster.grabbed(session, job)

    def _pickAmong(self, session: Session, functions: List[Function]) -> Optional[Job]:
        count = len(functions)
        start = session.rotation % count if self.roundRobin else 0
        for priority in (HIGH, NORMAL, LOW):
            best: Optional[Job] = None
            bestIndex = 0
            for i in range(count):
                index = (start + i) % count
                function = functions[index]
                queues = function.queues
                if queues is None:
                    continue
                queue = queues[priority]
                while queue:
                    head = queue[0]
                    if head.state == QUEUED:
                        break
                    queue.popleft()
                    function.dead -= 1
                if not queue:
                    continue
                head = queue[0]
                if self.roundRobin:
                    best, bestIndex = head, index
                    break
                if best is None or head.key < best.key:
                    best, bestIndex = head, index
            if best is not None:
                best.func.queues[priority].popleft()  # type: ignore[index]
                session.rotation = bestIndex + 1
                return best
        return None

    def _assign(self, session: Session, job: Job, kind: int) -> None:
        job.worker = session
        self._move(job, RUNNING)
        function = job.func
        handle = job.handle
        payload = job.payload
        if kind == _GRAB_JOB:
            head = b"\0".join((handle, function.name, b""))
            ptype = _JOB_ASSIGN
        elif kind == _GRAB_JOB_ALL and job.reducer:
            head = b"\0".join((handle, function.name, job.unique, job.reducer, b""))
            ptype = _JOB_ASSIGN_ALL
        else:
            head = b"\0".join((handle, function.name, job.unique, b""))
            ptype = _JOB_ASSIGN_UNIQ
        if len(payload) >= _BIG:
            session.writeSequence([responseHeader(ptype, len(head) + len(payload)) + head, payload])
        else:
            session.write(responseHeader(ptype, len(head) + len(payload)) + head + payload)
        timeout = session.timeouts.get(function) if session.timeouts else None
        if timeout:
            job.timeoutCall = self.clock.callLater(timeout, self._jobTimedOut, job, session)

    def _jobTimedOut(self, job: Job, session: Session) -> None:
        job.timeoutCall = None
        if job.worker is not session or job.state != RUNNING:
            return
        session._drop(job.handle)
        self._attemptEnded(job, TIMEOUT, b"timeout")

    def _attemptEnded(self, job: Job, outcome: str, error: bytes,
                      exception: Any = None) -> None:
        """
        A running job's attempt ended without completing: its worker went
        away (L{LOST}), overran its CAN_DO_TIMEOUT (L{TIMEOUT}), or sent
        WORK_FAIL (L{FAIL}) or WORK_EXCEPTION (L{EXCEPTION}, whose packet
        body is C{exception}). The attempt is counted and C{error} kept as
        the job's last error. If the function's policy retries C{outcome}
        and attempts are left, the job waits out its backoff (SCHEDULED, or
        QUEUED at once for none), keeping its handle, unique and clients,
        and a stored job's new state is written to the store; else it fails
        for good (L{_exhausted}). WORK_FAIL and WORK_EXCEPTION retry only
        background jobs: a foreground client hears of them at once.
        """
        job.attempts += 1
        job.numerator = job.denominator = b"0"
        job.lastError = error
        policy = self.policies.forFunction(job.func.name)
        if (not policy.retries(outcome) or policy.exhausted(job.attempts)
                or (not job.background and (outcome == FAIL or outcome == EXCEPTION))):
            if outcome == LOST or outcome == TIMEOUT or policy.retries(outcome):
                self._log.warn("Job {handle!r} failed after {attempts} attempts ({why})",
                               handle=job.handle, attempts=job.attempts,
                               why=error.decode("utf-8", "replace")[:80])
            job.func.stats.finished[_OUTCOME_COUNTED[outcome]] += 1
            self.stats.attemptFailed(self.clock.seconds(), job.func.name, job.handle, outcome,
                                     True, error)
            self._exhausted(job, exception)
            return
        if not job.clients and not job.background:
            job.func.stats.finished[OUT_LOST] += 1
            self.stats.attemptFailed(self.clock.seconds(), job.func.name, job.handle, outcome,
                                     True, error)
            self._move(job, DONE)  # nobody waits for it any more
            return
        job.func.stats.finished[OUT_RETRIED] += 1
        self.stats.attemptFailed(self.clock.seconds(), job.func.name, job.handle, outcome,
                                 False, error)
        delay = policy.delay(job.attempts, self.random)
        if delay > 0:
            job.retryAt = math.ceil((self.clock.seconds() + delay) * 1000)
            self._move(job, SCHEDULED)
        else:
            job.retryAt = 0
            self._move(job, QUEUED)
        self._log.info("Job {handle!r}: attempt {attempts} ended ({why}); retried in "
                       "{delay:.3f} s", handle=job.handle, attempts=job.attempts,
                       why=outcome, delay=delay)
        if job.storeState is _S_STORED or job.storeState is _S_WRITING:
            self.storeQueue.update(job)  # type: ignore[union-attr]

    def _exhausted(self, job: Job, exception: Any = None) -> None:
        """
        The one way a job ends for good without completing (its attempts
        are used up, or its policy does not retry how the last one ended):
        WORK_FAIL to its clients (the WORK_EXCEPTION packet body
        C{exception}, if given, to those that asked for exceptions), and the
        job is gone. A background job moves to the dead set (L{DeadSet}),
        with C{job.attempts} and C{job.lastError}; a foreground one is gone
        (its clients were told).
        """
        handle = job.handle
        fail = _H_WORK_FAIL + len(handle).to_bytes(4, "big") + handle
        clients = job.clients
        if clients:
            job.clients = ()
            packet = (None if exception is None else
                      responseHeader(PacketType.WORK_EXCEPTION, len(exception)) + exception)
            for client in clients:
                client.waiting.pop(job, None)
                client.write(packet if packet is not None and client.exceptions else fail)
        if job.background:
            job.func.stats.finished[OUT_DEAD] += 1
            self.dead.add(job)
            if exception is not None:
                self._keep(job, KEPT_EXCEPTION, exception)
            else:
                self._keep(job, KEPT_FAIL, b"")
            if job.storeState is _S_STORED:
                job.storeState = _S_NONE  # the dead set's write takes it off the queue
        self._move(job, DONE)

    def _keep(self, job: Job, status: str, body: bytes) -> None:
        """
        Keep how the background C{job} ended, if its policy says so; C{body}
        is the WORK_COMPLETE / WORK_EXCEPTION packet body (handle, NUL,
        data), or C{b""}. The store's write takes the job off the queue.
        """
        ttl = self.policies.forFunction(job.func.name).keep
        if not ttl:
            return
        result = bytes(body[len(job.handle) + 1:]) if body else b""
        self.kept.add(job, status, result, ttl)
        if job.storeState is _S_STORED:
            job.storeState = _S_NONE

    def resultOf(self, handle: bytes, visible: Optional[Callable[[Any], bool]] = None) -> Any:
        """
        Admin C{show result HANDLE}: the error code (bytes) of a job whose
        result cannot be read (C{RUNNING}, C{QUEUED}, C{UNKNOWN_JOB}: none
        kept, expired, or not C{visible}), else its L{txgear.server._kept.KeptEntry}.
        """
        job = self.jobs.get(handle)
        if job is not None and job.state != DONE and (visible is None or visible(job.func.name)):
            return b"RUNNING" if job.state == RUNNING else b"QUEUED"
        entry = self.kept.get(handle)
        if entry is None or (visible is not None and not visible(entry.function)):
            return b"UNKNOWN_JOB"
        return entry

    def handleOfUnique(self, function: bytes, unique: bytes) -> Optional[bytes]:
        """The handle of C{function}'s live job C{unique}, else of its kept result, or C{None}."""
        fn = self.functions.get(function)
        if fn is not None and fn.uniques:
            job = fn.uniques.get(unique)
            if job is not None and job.state != DONE:
                return job.handle
        entry = self.kept.byUnique(function, unique)
        return None if entry is None else entry.handle

    def loadKept(self, kept: Sequence[Any]) -> int:
        """
        Index the kept results a store listed at start-up; job keys continue
        after the largest kept one too.
        """
        for record in kept:
            if record.key >= self._nextKey:
                self._nextKey = record.key + 1
        return self.kept.load(kept)

    # -- the dead set ----------------------------------------------------

    def loadDead(self, dead: Sequence[Any]) -> int:
        """
        Index the dead set a store listed at start-up (after L{loadStored});
        job keys continue after the largest dead one too, so that a retried
        dead job keeps a handle no other job has.

        @return: how many were indexed.
        """
        for job in dead:
            if job.key >= self._nextKey:
                self._nextKey = job.key + 1
        return self.dead.load(dead)

    def retryDeadJob(self, handle: bytes) -> Optional[bytes]:
        """
        Admin C{retry dead HANDLE}: queue the dead job again.

        @return: C{None} once it is on its way back, else the error code:
            C{UNKNOWN_JOB} (no such dead job), C{UNIQUE_IN_USE} (a live job
            of its function has its unique: it stays dead).
        """
        entry = self.dead.get(handle)
        if entry is None:
            return b"UNKNOWN_JOB"
        if self._uniqueTaken(entry):
            return b"UNIQUE_IN_USE"
        self._revive([entry])
        return None

    def retryDeadFunction(self, name: bytes) -> Tuple[int, int]:
        """
        Admin C{retry dead function NAME}: queue its dead jobs again, but
        those whose unique a live job has (they stay dead).

        @return: how many are retried, and how many stay for their unique.
        """
        entries: List[DeadEntry] = []
        uniques = set()
        taken = 0
        # Newest first: of two dead jobs with one unique, the newer comes back.
        for entry in self.dead.newest(name):
            unique = entry.unique if entry.unique not in (b"", b"-") else None
            if self._uniqueTaken(entry) or (unique is not None and unique in uniques):
                taken += 1
                continue
            if unique is not None:
                uniques.add(unique)
            entries.append(entry)
        entries.reverse()  # oldest first: they queue in the order they came
        if entries:
            self._revive(entries)
        return len(entries), taken

    def _uniqueTaken(self, entry: DeadEntry) -> bool:
        if not entry.unique or entry.unique == b"-":
            return False
        function = self.functions.get(entry.function)
        return bool(function is not None and function.uniques
                    and entry.unique in function.uniques)

    def _revive(self, entries: List[DeadEntry]) -> None:
        """
        Take C{entries} from the dead set back to the queue: each is a job
        again at once (its handle known, its unique taken, PENDING), and
        runnable once the store has moved it back with its payload.
        """
        self.dead.take(entries)
        jobs = []
        writing = _S_WRITING if self.storeQueue is not None else _S_NONE
        for entry in entries:
            function = self.function(entry.function)
            job = Job(entry.handle, function, entry.unique, b"", NORMAL, True, 0, b"", b"",
                      entry.key)
            job.storeState = writing
            if function.stats is None:
                function.stats = self.stats.forFunction(function.name)
            self.jobs[job.handle] = job
            if entry.unique and entry.unique != b"-":
                self._index(job, entry.unique)
            self._move(job, PENDING)
            jobs.append(job)
        self._log.info("Retrying {count} dead jobs (first {handle!r})", count=len(jobs),
                       handle=jobs[0].handle)
        d = self.dead.store.retryDead([entry.key for entry in entries])
        d.addCallbacks(self._revived, self._notRevived, callbackArgs=(jobs,),
                       errbackArgs=(jobs, entries))

    def _revived(self, stored: List[Any], jobs: List[Job]) -> None:
        byKey = {record.key: record for record in stored}
        for job in jobs:
            record = byKey.get(job.key)
            if record is None:  # no longer in the store's dead set
                job.storeState = _S_NONE
                if job.state != DONE:
                    self._finish(job, _H_WORK_FAIL + len(job.handle).to_bytes(4, "big")
                                 + job.handle)
                continue
            job.payload = record.payload
            job.priority = record.priority
            job.reducer = record.reducer
            job.clientId = record.clientId
            if self.storeQueue is None:
                # The dead set's own memory store queued it: the job lives here only.
                self.dead.store.remove(record)
                job.storeState = _S_NONE
                if job.state == PENDING:
                    self._makeRunnable(job)
                continue
            job.storeState = _S_STORED
            if job.state == PENDING:
                self._makeRunnable(job)
            elif job.state == DONE:
                # Cancelled while it came back: off the queue again.
                self.storeQueue.remove(job)
                job.payload = b""
        if self.storeQueue is not None:
            self.storeQueue.releaseReplies()

    def _notRevived(self, failure: Any, jobs: List[Job], entries: List[DeadEntry]) -> None:
        self._log.failure("Could not retry {count} dead jobs; they stay dead", failure,
                          count=len(jobs))
        self.dead.putBack(entries)
        for job in jobs:
            if job.storeState is _S_WRITING:
                job.storeState = StoreState.FAILED
                job.storeError = ERR_NOT_STORED
            if job.state != DONE:
                self._finish(job, _H_WORK_FAIL + len(job.handle).to_bytes(4, "big") + job.handle)
        if self.storeQueue is not None:
            self.storeQueue.releaseReplies()

    def purgeDead(self, name: Optional[bytes] = None) -> int:
        """Admin C{purge dead [FUNCTION]}: delete dead jobs; how many."""
        return self.dead.purge(name)

    # -- work results ----------------------------------------------------

    def workStatus(self, session: Session, handle: bytes, numerator: bytes,
                   denominator: bytes, body: bytes) -> None:
        job = session.held.get(handle)
        if job is None:
            if not self._unknownHandle(session, handle, "WORK_STATUS"):
                self.sendError(session, ERR_JOB_NOT_FOUND)
            return
        job.numerator = numerator
        job.denominator = denominator
        self._relay(job, PacketType.WORK_STATUS, body, session)

    def workData(self, session: Session, kind: int, handle: bytes, body: bytes) -> None:
        """WORK_DATA or WORK_WARNING: relayed to the attached clients."""
        job = session.held.get(handle)
        if job is None:
            if not self._unknownHandle(session, handle, PacketType(kind).name):
                self.sendError(session, ERR_JOB_NOT_FOUND_DATA)
            return
        self._relay(job, kind, body, session)

    def workEnd(self, session: Session, kind: int, handle: bytes, body: bytes) -> None:
        """WORK_COMPLETE, WORK_FAIL or WORK_EXCEPTION: relay and end the job."""
        job = session.held.get(handle)
        if job is None:
            if self._unknownHandle(session, handle, PacketType(kind).name, True):
                return
            self.sendError(session, ERR_JOB_NOT_FOUND_EXC if kind == PacketType.WORK_EXCEPTION
                          else ERR_JOB_NOT_FOUND)
            return
        if kind == _WORK_EXCEPTION:
            data = bytes(body[:len(handle) + 1 + MAX_LAST_ERROR]).partition(b"\0")[2]
            self._attemptEnded(job, EXCEPTION, data, body)
        elif kind == _WORK_FAIL:
            self._attemptEnded(job, FAIL, b"WORK_FAIL")
        else:
            job.func.stats.finished[OUT_COMPLETE] += 1
            if job.background:
                self._keep(job, KEPT_COMPLETE, body)
            self._finish(job, responseHeader(kind, len(body)) + body if len(body) < _BIG
                         else [responseHeader(kind, len(body)), body], session)

    def _unknownHandle(self, session: Session, handle: bytes, what: str,
                       final: bool = False) -> bool:
        """
        A report on a job this session does not hold: C{True} if the job was
        taken from it (timed out, cancelled), so the report is dropped quietly.
        """
        dropped = session.dropped
        if dropped is not None and handle in dropped:
            if final:
                del dropped[handle]
            return True
        # Info, not a warning: a worker whose job was taken long ago sends
        # these in good faith.
        self.peerLog.info(session.peer, "handle", "Session {id}: {what} for {handle}, which it "
                          "does not hold", id=session.id, what=what, handle=handle)
        return False

    def _relay(self, job: Job, kind: int, body: bytes, worker: Session) -> None:
        clients = job.clients
        if not clients:
            return
        if len(body) < _BIG:
            packet = responseHeader(kind, len(body)) + body
            for client in clients:
                client.write(packet)
        else:
            # One buffer shared by every client's output, never copied per client.
            header = responseHeader(kind, len(body))
            for client in clients:
                client.writeSequence([header, body])

    def _finish(self, job: Job, packet: Any, worker: Optional[Session] = None) -> None:
        """Send the final packet to every attached client and end the job."""
        clients = job.clients
        if clients:
            job.clients = ()
            for client in clients:
                client.waiting.pop(job, None)
                if type(packet) is list:
                    client.writeSequence(packet)
                else:
                    client.write(packet)
        self._move(job, DONE)

    def sendError(self, session: Session, packet: bytes) -> None:
        """Send an ERROR packet (whole) to C{session}, counted by code."""
        self.stats.errorSent(packet)
        session.write(packet)

    def oldestQueued(self, function: Function) -> Optional[float]:
        """
        When the longest-waiting queued job of C{function} was queued, or
        C{None} if none is. Reads the heads of its three queues only
        (dead heads are dropped on the way, as a grab does): amortised O(1).
        """
        queues = function.queues
        if queues is None or not function.queued:
            return None
        oldest: Optional[float] = None
        for queue in queues:
            while queue and queue[0].state != QUEUED:
                queue.popleft()
                function.dead -= 1
            if queue:
                since = queue[0].since
                if oldest is None or since < oldest:
                    oldest = since
        return oldest

    # -- status ----------------------------------------------------------

    def getStatus(self, session: Session, handle: bytes,
                  visible: Optional[Callable[[Job], bool]] = None) -> None:
        """
        GET_STATUS; a job C{visible} refuses is answered as unknown. A
        cluster member asks the shared queue about a cluster handle it does
        not hold (when no access list restricts what the session sees).
        """
        job = self.jobs.get(handle)
        if job is None and visible is None and self.cluster is not None:
            key = self.cluster.ownsHandle(handle)
            if key is not None:
                self._answerRemotely(session, self.cluster.remoteStatus(key, None),
                                     PacketType.STATUS_RES, handle)
                return
        if job is None or (visible is not None and not visible(job)):
            session.write(encodeResponse(PacketType.STATUS_RES, handle, b"0", b"0", b"0", b"0"))
            return
        session.write(encodeResponse(PacketType.STATUS_RES, handle, b"1",
                                     b"1" if job.state == RUNNING else b"0",
                                     job.numerator, job.denominator))

    def getStatusUnique(self, session: Session, unique: bytes,
                        visible: Optional[Callable[[Job], bool]] = None) -> None:
        """GET_STATUS_UNIQUE; jobs C{visible} refuses are left out (as if unknown)."""
        jobs = self._uniqueIndex.get(unique)
        job = None
        if jobs:
            job = next(iter(jobs)) if visible is None else next(filter(visible, jobs), None)
        if job is None:
            if visible is None and self.cluster is not None and unique:
                self._answerRemotely(session, self.cluster.remoteStatus(None, unique),
                                     PacketType.STATUS_RES_UNIQUE, unique)
                return
            session.write(encodeResponse(PacketType.STATUS_RES_UNIQUE, unique,
                                         b"0", b"0", b"0", b"0", b"0"))
            return
        session.write(encodeResponse(PacketType.STATUS_RES_UNIQUE, unique, b"1",
                                     b"1" if job.state == RUNNING else b"0",
                                     job.numerator, job.denominator,
                                     b"%d" % len(job.clients)))

    def _answerRemotely(self, session: Session, found: "Deferred[Any]", kind: int,
                        key: bytes) -> None:
        """
        Answer a status request from the cluster's shared queue: the reply
        is held in the session's order until C{found} fires with a
        L{txgear.cluster.RemoteStatus} (a failure answers unknown).
        """
        reply = LaterReply()
        storeQueue: StoreQueue = self.storeQueue  # type: ignore[assignment]
        storeQueue.holdReply(session, reply)

        def answer(status: Any) -> None:
            known = b"1" if status is not None and status.known else b"0"
            running = b"1" if status is not None and status.running else b"0"
            fields = [key, known, running, b"0", b"0"]
            if kind == PacketType.STATUS_RES_UNIQUE:
                fields.append(b"0")
            reply.resolve(encodeResponse(kind, *fields))
            storeQueue.releaseReplies()

        def failed(failure: Any) -> None:
            self._log.warn("Status of {key!r} from the cluster failed: {error}", key=key,
                           error=failure.getErrorMessage())
            answer(None)
        found.addCallbacks(answer, failed)

    def dropClaimed(self) -> int:
        """
        The cluster lease was lost: forget every stored background job held
        here without writing anything about them (other servers run them
        again). Running ones are taken from their workers (what those still
        send is dropped quietly); foreground clients attached to one get
        WORK_FAIL. Returns how many jobs were dropped.
        """
        count = 0
        for job in list(self.jobs.values()):
            if job.storeState is not _S_STORED or job.state == DONE:
                continue
            count += 1
            job.storeState = _S_NONE
            if job.state == RUNNING and job.worker is not None:
                job.worker._drop(job.handle)
            self._finish(job, _H_WORK_FAIL + len(job.handle).to_bytes(4, "big") + job.handle)
        return count

    def attach(self, session: Session, handle: bytes) -> bool:
        """
        Attach C{session} to the job C{handle} as one more waiting client,
        without a JOB_CREATED (the HTTP API's event streams): it gets the
        job's WORK_* packets from now on, and keeps a foreground job alive
        as its submitter does. C{False} if there is no such job.
        """
        job = self.jobs.get(handle)
        if job is None or job.state == DONE:
            return False
        if session not in job.clients:
            if job.clients:
                job.clients.append(session)
            else:
                job.clients = [session]
            session.waiting[job] = None
        return True

    # -- admin -----------------------------------------------------------

    def cancel(self, handle: bytes) -> bool:
        """Admin C{cancel job}: WORK_FAIL to its clients, and forget it."""
        job = self.jobs.get(handle)
        if job is None or job.state == DONE:
            return False
        worker = job.worker
        if worker is not None:
            # The worker may still report on it: dropped quietly.
            worker._drop(handle)
        job.func.stats.finished[OUT_CANCELLED] += 1
        self._finish(job, _H_WORK_FAIL + len(handle).to_bytes(4, "big") + handle)
        return True

    def dropFunction(self, name: bytes) -> Optional[str]:
        """Admin C{drop function}: C{None} on success, else gearmand's error text."""
        lowered = name.lower()
        for fname, function in self.functions.items():
            if fname.lower() == lowered:
                if function.workers or function.total() or function.uniques:
                    return "there are still connected workers or executing clients"
                self._forgetFunction(function)
                return None
        return "function not found"

    def setMaxQueue(self, name: bytes, limits: Sequence[int]) -> None:
        """Admin C{maxqueue}: a function given limits is kept when unused."""
        function = self.functions.get(name)
        if function is not None:
            function.maxQueue = [max(0, n) for n in limits]
            if any(function.maxQueue):
                function.kept = True

    # -- graceful shutdown ----------------------------------------------

    def stopAccepting(self) -> None:
        """
        Refuse new jobs from now on (coalescing onto existing ones still
        works). With a store, the background jobs it holds that no worker
        runs yet are set aside: they wait in the store for the next start
        instead of delaying this stop.
        """
        self.accepting = False
        if self.store is None:
            return
        for job in list(self.jobs.values()):
            if job.storeState is _S_STORED and not job.clients and job.state in (QUEUED, SCHEDULED):
                job.storeState = _S_NONE  # forget it here, keep it in the store
                self._move(job, DONE)

    def whenIdle(self) -> "Deferred[None]":
        """Fires once no job is queued or running."""
        d: Deferred[None] = Deferred()
        self._idleWaiters.append(d)
        self._checkIdle()
        return d

    def whenNoneRunning(self) -> "Deferred[None]":
        """Fires once no worker holds a job (at once if none does)."""
        d: Deferred[None] = Deferred()
        self._noneRunningWaiters.append(d)
        if not self.runningCount:
            self._noneRunning()
        return d

    def _noneRunning(self) -> None:
        waiters, self._noneRunningWaiters = self._noneRunningWaiters, []
        for d in waiters:
            if not d.called:  # a waiter may have been cancelled (a timeout)
                d.callback(None)

    def _checkIdle(self) -> None:
        if self._idleWaiters and not self.jobs:
            waiters, self._idleWaiters = self._idleWaiters, []
            for d in waiters:
                d.callback(None)

    def cancelTimers(self) -> None:
        """Cancel every pending timer (used when the service stops)."""
        self.scheduler.cancel()
        self.dead.stop()
        self.kept.stop()
        if self._wakeCall is not None and self._wakeCall.active():
            self._wakeCall.cancel()
        self._wakeCall = None
        self._wakeWatch = {}
        for job in self.jobs.values():
            if job.timeoutCall is not None and job.timeoutCall.active():
                job.timeoutCall.cancel()
            job.timeoutCall = None

# -*- test-case-name: tests.test_server_state -*-
"""
The job server's state machine: queues, jobs, workers and clients.

Synchronous and transport-free. Connections appear here as L{Session}s, made
by L{JobServerState.connect} for a peer that provides
L{txgear.interfaces.IServerPeer}-like C{write}/C{writeSequence}; the protocol
layer maps packets to the methods of this class. Time comes from an injected
clock (an L{twisted.internet.interfaces.IReactorTime}).

Every per-job operation is O(1) in the number of queued jobs, functions and
connections: a grab looks only at the heads of the worker's own functions'
queues, wake-ups pop sleepers off per-function ordered dicts, and jobs removed
while queued are dropped lazily when they reach the head of their queue.
"""
from __future__ import annotations

import heapq
import platform
from collections import OrderedDict, deque
from typing import Any, Callable, Deque, Dict, List, Optional, Sequence, Tuple

from twisted.internet.defer import Deferred
from txgear._log import logger
from twisted.python.failure import Failure

from txgear._packet import PacketType, encodeResponse, responseHeader
from txgear.jobs import Priority

HIGH, NORMAL, LOW = Priority.HIGH.value, Priority.NORMAL.value, Priority.LOW.value

#: Jobs held at once that make the next empty queue worth an L{onEmptied} call.
LARGE_QUEUE = 10000

#: Largest unique id accepted (gearmand refuses 65 bytes and more).
MAX_UNIQUE = 64

# Job states.
PENDING = 0  # waiting for the store to record it
QUEUED = 1
RUNNING = 2
DONE = 3  # completed, failed, cancelled or abandoned: gone
SCHEDULED = 4  # an epoch job waiting for its time

# Job.storeState values (besides None, and an ERROR packet after a failure).
STORE_PENDING = 0
STORE_DONE = 1

_BIG = 64 * 1024

_NOOP = encodeResponse(PacketType.NOOP)
_NO_JOB = encodeResponse(PacketType.NO_JOB)
_H_JOB_CREATED = responseHeader(PacketType.JOB_CREATED, 0)[:8]
_H_WORK_FAIL = responseHeader(PacketType.WORK_FAIL, 0)[:8]


def _errorPacket(code: bytes, text: bytes) -> bytes:
    return encodeResponse(PacketType.ERROR, code, text)


ERR_JOB_NOT_FOUND = _errorPacket(b"JOB_NOT_FOUND", b"Job given in work result not found")
ERR_JOB_NOT_FOUND_DATA = _errorPacket(b"JOB_NOT_FOUND", b"Job does not exist on server")
ERR_JOB_NOT_FOUND_EXC = _errorPacket(
    b"JOB_NOT_FOUND", b"An exception was received for a job that does not exist"
)
ERR_UNIQUE_TOO_LARGE = _errorPacket(b"ARGUMENT_TOO_LARGE", b"Unique value too large")
ERR_QUEUE_FULL = _errorPacket(b"QUEUE_ERROR", b"Job queue is full")
ERR_UNKNOWN_OPTION = _errorPacket(b"UNKNOWN_OPTION", b"Server does not recognize given option")
ERR_SHUTTING_DOWN = _errorPacket(b"QUEUE_ERROR", b"Server is shutting down")


class Function:
    """
    One function name: its three priority queues, its counters and its
    sleeping workers.

    @ivar queued: live queued jobs (the deques may also hold dead entries).
    @ivar running: jobs a worker holds.
    @ivar workers: registrations (a connection registering twice counts twice,
        as in gearmand).
    @ivar sleepers: sessions registered for this function that sent PRE_SLEEP
        and have not been woken yet, oldest first.
    @ivar maxQueue: per-priority limits on queued + running jobs; 0 = none.
    """

    __slots__ = ("name", "queues", "queued", "running", "scheduled", "workers", "sleepers",
                 "uniques", "maxQueue", "priorityCounts")

    def __init__(self, name: bytes) -> None:
        self.name = name
        self.queues: Tuple[Deque[Job], Deque[Job], Deque[Job]] = (deque(), deque(), deque())
        self.queued = 0
        self.running = 0
        self.scheduled = 0
        self.workers = 0
        self.sleepers: "OrderedDict[Session, None]" = OrderedDict()
        self.uniques: Dict[Any, Job] = {}
        self.maxQueue = [0, 0, 0]
        self.priorityCounts = [0, 0, 0]  # queued live jobs per priority

    def total(self) -> int:
        """Jobs of this function, queued, scheduled or running."""
        return self.queued + self.running + self.scheduled


class Job:
    """
    A job the server knows about.

    @ivar clients: sessions of the foreground clients attached to the job.
    @ivar background: C{True} if any submitter asked for a background job;
        such a job never goes away because a client disconnected.
    @ivar worker: the session holding the job while it runs.
    @ivar key: the id under which a store records the job (background only).
    """

    __slots__ = ("handle", "func", "unique", "payload", "priority", "background",
                 "when", "reducer", "clientId", "key", "clients", "worker", "numerator",
                 "denominator", "retries", "state", "seq", "coalesceKey", "timeoutCall",
                 "persisted", "storeState")

    def __init__(self, handle: bytes, function: Function, unique: bytes, payload: bytes,
                 priority: int, background: bool, when: int, reducer: bytes,
                 clientId: bytes, seq: int) -> None:
        self.handle = handle
        self.func = function
        self.unique = unique
        self.payload = payload
        self.priority = priority
        self.background = background
        self.when = when
        self.reducer = reducer
        self.clientId = clientId
        self.key = 0
        self.clients: Any = ()  # a list once a client attaches; most jobs have none
        self.worker: Optional[Session] = None
        self.numerator = b"0"
        self.denominator = b"0"
        self.retries = 0
        self.state = QUEUED
        self.seq = seq
        self.coalesceKey: Any = None
        self.timeoutCall: Any = None
        self.persisted = False
        # None; STORE_PENDING while a store writes it; STORE_DONE once it has
        # it; or the ERROR packet its submitters get if the store failed.
        self.storeState: Any = None

    @property
    def function(self) -> bytes:
        """The function name (what a store records)."""
        return self.func.name


class Session:
    """
    The server's view of one connection, in whichever roles it plays.

    @ivar peer: the protocol; the state calls its C{write} and C{writeSequence}
        (the protocol bounds that output itself: see txgear.server._protocol).
    @ivar functions: the functions registered (in registration order; a
        function registered twice appears twice).
    @ivar timeouts: CAN_DO_TIMEOUT limits, in seconds, by function.
    @ivar held: jobs this session runs, by handle.
    @ivar waiting: foreground jobs this session is attached to.
    """

    __slots__ = ("peer", "id", "clientId", "functions", "timeouts", "held", "waiting",
                 "sleeping", "exceptions", "replies", "rotation", "closed",
                 "__weakref__")

    def __init__(self, peer: Any, sessionId: int) -> None:
        self.peer = peer
        self.id = sessionId
        self.clientId = b"-"
        self.functions: List[Function] = []
        self.timeouts: Dict[Function, float] = {}
        self.held: Dict[bytes, Job] = {}
        self.waiting: Dict[Job, None] = {}
        self.sleeping = False
        self.exceptions = False
        # Output held back behind a JOB_CREATED that waits for the store, in
        # request order: bytes, or the Job whose JOB_CREATED goes there.
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

    def _awaitStore(self, job: "Job") -> None:
        """This session's next reply is C{job}'s JOB_CREATED, once it is stored."""
        if self.replies is None:
            self.replies = deque()
        self.replies.append(job)

    def _flushReplies(self) -> bool:
        """Send what no longer waits for the store; C{True} once nothing does."""
        replies = self.replies
        while replies:
            item = replies[0]
            if type(item) is not bytes:
                state = item.storeState
                if state == STORE_PENDING:
                    return False
                if state == STORE_DONE:
                    handle = item.handle
                    item = _H_JOB_CREATED + len(handle).to_bytes(4, "big") + handle
                else:
                    item = state
            replies.popleft()
            if not self.closed:
                self.peer.write(item)
        self.replies = None
        return True


class JobServerState:
    """
    Everything a job server knows: functions, jobs and connections.

    @param clock: an C{IReactorTime} for timers (CAN_DO_TIMEOUT, epoch jobs).
    @param handlePrefix: job handles are C{<prefix>:<n>}; default
        C{H:<hostname>} as gearmand.
    @param jobRetries: fail a job (WORK_FAIL to its clients) once it has been
        requeued this many times after losing its worker; 0 = retry forever
        (gearmand 1.1.20's meaning of 0).
    @param roundRobin: alternate between a worker's functions instead of
        serving strictly by priority then submission order.
    @param workerWakeup: how many sleeping workers one new runnable job wakes;
        0 wakes all of the function's sleepers, as gearmand does by default.
    @param store: an L{txgear.interfaces.IJobStore} for background jobs, or
        C{None} to keep them in memory only.
    @param onEmptied: called when the last job is gone after at least
        L{LARGE_QUEUE} were held at once: the moment to give memory back
        (PyPy's collector otherwise waits for the heap to grow well past
        its last size).
    """

    _log = logger()

    def __init__(self, clock: Any = None, handlePrefix: Optional[bytes] = None,
                 jobRetries: int = 0, roundRobin: bool = False, workerWakeup: int = 1,
                 store: Any = None, onEmptied: Optional[Callable[[], None]] = None) -> None:
        if clock is None:
            from twisted.internet import reactor as clock  # type: ignore[no-redef]
        self.clock = clock
        if handlePrefix is None:
            handlePrefix = ("H:" + (platform.node() or "localhost")).encode("utf-8")
        self.handlePrefix = handlePrefix + b":"
        self.jobRetries = jobRetries
        self.roundRobin = roundRobin
        self.workerWakeup = workerWakeup
        self.store = store
        # Store keys continue after the largest one loaded (handles restart at 1).
        self._nextKey = 1
        self.onEmptied = onEmptied
        self._largeQueue = False
        self._unstored: List[Job] = []
        # Sessions whose output waits for a JOB_CREATED the store holds back.
        self._storeWaiting: Dict[Session, None] = {}
        self.functions: Dict[bytes, Function] = {}
        self.jobs: Dict[bytes, Job] = {}
        self._uniqueIndex: Dict[bytes, List[Job]] = {}
        self.sessions: Dict[int, Session] = {}
        self._nextHandle = 1
        self._nextSession = 1
        self._seq = 0
        self._epochHeap: List[Tuple[int, int, Job]] = []
        self._epochCall: Any = None
        self.accepting = True
        self._idleWaiters: List[Deferred[None]] = []

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
        self._storeWaiting.pop(session, None)
        if session.sleeping:
            self._stopSleeping(session)
        touched: Dict[Function, None] = {}
        for job in list(session.held.values()):
            if job.state == RUNNING and job.worker is session:
                self._jobLostWorker(job, "worker disconnected")
                touched[job.func] = None
        session.held.clear()
        for function in session.functions:
            function.workers -= 1
            touched[function] = None
        session.functions = []
        session.timeouts.clear()
        for job in session.waiting:
            clients = job.clients
            if session in clients:
                clients.remove(session)
            if not clients and not job.background and job.state != RUNNING:
                # Nobody waits for the result: drop it, as gearmand does.
                self._forget(job)
        session.waiting.clear()
        # A worker that was woken but went away may leave jobs nobody was told of.
        for function in touched:
            if function.queued and function.sleepers:
                self._wake(function, function.queued)
        self._checkIdle()

    # -- worker registration --------------------------------------------

    def function(self, name: bytes) -> Function:
        """The L{Function} called C{name}, created if new."""
        function = self.functions.get(name)
        if function is None:
            function = self.functions[name] = Function(name)
        return function

    def canDo(self, session: Session, name: bytes, timeout: float = 0.0) -> None:
        """CAN_DO / CAN_DO_TIMEOUT (C{timeout} in seconds; 0 = none)."""
        function = self.function(name)
        session.functions.append(function)
        function.workers += 1
        if timeout > 0:
            session.timeouts[function] = timeout
        else:
            session.timeouts.pop(function, None)
        if session.sleeping:
            if function.queued:
                self._wakeSession(session)
            else:
                function.sleepers[session] = None

    def cantDo(self, session: Session, name: bytes) -> None:
        """CANT_DO: forget every registration of C{name} by this session."""
        function = self.functions.get(name)
        if function is None or function not in session.functions:
            return
        count = session.functions.count(function)
        session.functions = [f for f in session.functions if f is not function]
        function.workers -= count
        session.timeouts.pop(function, None)
        function.sleepers.pop(session, None)

    def resetAbilities(self, session: Session) -> None:
        """RESET_ABILITIES."""
        for function in session.functions:
            function.workers -= 1
            function.sleepers.pop(session, None)
        session.functions = []
        session.timeouts.clear()

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
                function.sleepers[session] = None

    def _stopSleeping(self, session: Session) -> None:
        session.sleeping = False
        for function in session.functions:
            function.sleepers.pop(session, None)

    def _wakeSession(self, session: Session) -> None:
        self._stopSleeping(session)
        session.write(_NOOP)

    def _wake(self, function: Function, jobs: int = 1) -> None:
        """Wake sleepers of C{function} for C{jobs} newly runnable jobs."""
        sleepers = function.sleepers
        count = self.workerWakeup * jobs if self.workerWakeup > 0 else len(sleepers)
        while sleepers and count > 0:
            session, _ = sleepers.popitem(last=False)
            self._wakeSession(session)
            count -= 1

    # -- submitting ------------------------------------------------------

    def submit(self, session: Session, name: bytes, unique: bytes, payload: bytes,
               priority: int = NORMAL, background: bool = False, when: int = 0,
               reducer: bytes = b"") -> None:
        """
        A SUBMIT_JOB* request: create the job (or attach to the job with the
        same function and unique), and answer JOB_CREATED or ERROR.
        """
        if len(unique) > MAX_UNIQUE:
            self._log.warn("Session {id}: unique id of {size} bytes refused", id=session.id,
                           size=len(unique))
            session.write(ERR_UNIQUE_TOO_LARGE)
            return
        function = self.functions.get(name)
        if function is None:
            function = self.functions[name] = Function(name)
        if unique:
            key: Any = unique if unique != b"-" else ((b"-", payload) if payload else None)
            if key is not None:
                job = function.uniques.get(key)
                if job is not None:
                    self._attach(session, job, background)
                    return
        else:
            key = None
        if not self.accepting:
            session.write(ERR_SHUTTING_DOWN)
            return
        limit = function.maxQueue[priority]
        if limit and function.total() >= limit:
            self._log.info("Queue of {function!r} full ({limit} jobs): submit refused",
                           function=name, limit=limit)
            session.write(ERR_QUEUE_FULL)
            return
        handle = self.handlePrefix + b"%d" % self._nextHandle
        self._nextHandle += 1
        self._seq += 1
        job = Job(handle, function, unique, payload, priority, background, when, reducer,
                  session.clientId if session.clientId != b"-" else b"",
                  self._seq)
        jobs = self.jobs
        jobs[handle] = job
        if len(jobs) >= LARGE_QUEUE:
            self._largeQueue = True
        if key is not None:
            job.coalesceKey = key
            function.uniques[key] = job
            index = self._uniqueIndex.get(unique)
            if index is None:
                self._uniqueIndex[unique] = [job]
            else:
                index.append(job)
        if not background:
            job.clients = [session]
            session.waiting[job] = None
        if background and self.store is not None:
            self._persist(job, session, True)
            return
        session.write(_H_JOB_CREATED + len(handle).to_bytes(4, "big") + handle)
        self._makeRunnable(job)

    def _attach(self, session: Session, job: Job, background: bool) -> None:
        if background:
            if not job.background:
                # A background submitter makes the job survive its foreground
                # clients; gearmand loses it when they go (not copied).
                job.background = True
                if self.store is not None and job.state != DONE:
                    self._persist(job, session, False)
                    return
        elif session not in job.clients:
            if job.clients:
                job.clients.append(session)
            else:
                job.clients = [session]
            session.waiting[job] = None
        if job.storeState == STORE_PENDING:
            # Answer once the store has the job, in this session's order.
            session._awaitStore(job)
            self._storeWaiting[session] = None
            return
        handle = job.handle
        session.write(_H_JOB_CREATED + len(handle).to_bytes(4, "big") + handle)

    # -- persistence -----------------------------------------------------

    def _persist(self, job: Job, session: Session, new: bool) -> None:
        """
        Record a background job; JOB_CREATED goes out once it is durable.
        Jobs of one reactor turn go to the store together (one C{addMany}).
        """
        session._awaitStore(job)
        self._storeWaiting[session] = None
        if job.storeState == STORE_PENDING:  # already being written
            return
        job.storeState = STORE_PENDING
        if new:
            job.state = PENDING
        # else: a foreground job turned background stays runnable meanwhile.
        job.key = self._nextKey
        self._nextKey += 1
        if type(job.payload) is not bytes:
            job.payload = bytes(job.payload)  # a large one arrived as a view
        unstored = self._unstored
        unstored.append(job)
        if len(unstored) == 1:
            self.clock.callLater(0, self._storeBatch)

    def _storeBatch(self) -> None:
        batch, self._unstored = self._unstored, []
        d = self.store.addMany(batch)
        d.addCallbacks(self._stored, self._storeFailed, callbackArgs=(batch,),
                       errbackArgs=(batch,))

    def _stored(self, _: object, batch: List[Job]) -> None:
        for job in batch:
            job.persisted = True
            job.storeState = STORE_DONE
            if job.state == PENDING:
                self._makeRunnable(job)
            elif job.state == DONE:
                # Finished (cancelled) while being written: forget it again.
                self.store.remove(job).addErrback(self._logStoreFailure, job)
        self._flushStoreWaiting()

    def _flushStoreWaiting(self) -> None:
        """Send the replies the store's answer has released, session by session."""
        waiting = self._storeWaiting
        for session in list(waiting):
            if session._flushReplies():
                del waiting[session]

    def _storeFailed(self, failure: Failure, batch: List[Job]) -> None:
        self._log.failure("Could not store {count} background jobs", failure, count=len(batch))
        text = str(failure.value).encode("utf-8", "replace")[:200] or b"store failure"
        packet = _errorPacket(b"QUEUE_ERROR", text)
        for job in batch:
            job.storeState = packet
            if job.state == PENDING:
                if job.clients:
                    # Foreground clients also wait on it: keep it as a memory job.
                    job.background = False
                    self._makeRunnable(job)
                else:
                    self._forget(job)
            elif job.state != DONE:
                job.background = False
        self._flushStoreWaiting()

    def _logStoreFailure(self, failure: Failure, job: Job) -> None:
        self._log.failure("Could not remove job {handle!r} from the store", failure,
                          handle=job.handle)

    def loadStored(self, stored: Sequence[Any]) -> int:
        """
        Re-create background jobs a store loaded at start-up, in the order
        given (priority, then submission). Returns how many were created.
        """
        count = 0
        for record in stored:
            if record.key >= self._nextKey:
                self._nextKey = record.key + 1
            function = self.function(record.function)
            unique = record.unique
            key: Any = None
            if unique:
                key = unique if unique != b"-" else ((b"-", record.payload) if record.payload else None)
                if key is not None and key in function.uniques:
                    self._log.warn("Stored job {key!r} duplicates unique {unique!r}; dropping it",
                                   key=record.key, unique=unique)
                    if self.store is not None:
                        self.store.remove(record).addErrback(lambda f: None)
                    continue
            handle = self.handlePrefix + b"%d" % self._nextHandle
            self._nextHandle += 1
            self._seq += 1
            job = Job(handle, function, unique, record.payload, record.priority, True,
                      record.when, record.reducer, record.clientId, self._seq)
            job.key = record.key
            job.persisted = True
            self.jobs[handle] = job
            if key is not None:
                job.coalesceKey = key
                function.uniques[key] = job
                self._uniqueIndex.setdefault(unique, []).append(job)
            self._makeRunnable(job)
            count += 1
        return count

    # -- queues ------------------------------------------------------------

    def _makeRunnable(self, job: Job) -> None:
        when = job.when
        function = job.func
        if when and when > self.clock.seconds():
            job.state = SCHEDULED
            function.scheduled += 1
            self._scheduleEpoch(job)
            return
        self._enqueue(job)

    def _enqueue(self, job: Job) -> None:
        """Put a job at the tail of its priority queue and wake a sleeper."""
        job.state = QUEUED
        function = job.func
        function.queues[job.priority].append(job)
        function.queued += 1
        function.priorityCounts[job.priority] += 1
        if function.sleepers:
            self._wake(function)

    def _scheduleEpoch(self, job: Job) -> None:
        heapq.heappush(self._epochHeap, (job.when, job.seq, job))
        head = self._epochHeap[0]
        if head[2] is job:
            if self._epochCall is not None and self._epochCall.active():
                self._epochCall.cancel()
            delay = max(0.0, job.when - self.clock.seconds())
            self._epochCall = self.clock.callLater(delay, self._epochDue)

    def _epochDue(self) -> None:
        self._epochCall = None
        heap = self._epochHeap
        now = self.clock.seconds()
        while heap and heap[0][0] <= now:
            _, _, job = heapq.heappop(heap)
            if job.state == SCHEDULED:
                job.func.scheduled -= 1
                job.when = 0
                self._makeRunnable(job)
        while heap and heap[0][2].state != SCHEDULED:
            heapq.heappop(heap)
        if heap:
            self._epochCall = self.clock.callLater(max(0.0, heap[0][0] - now), self._epochDue)

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
            queues = functions[0].queues
            for priority in (HIGH, NORMAL, LOW):
                queue = queues[priority]
                while queue:
                    head = queue[0]
                    if head.state == QUEUED and head.worker is None:
                        job = queue.popleft()
                        break
                    queue.popleft()
                if job is not None:
                    break
        elif functions:
            job = self._pickAmong(session, functions)
        if job is None:
            session.write(_NO_JOB)
            return
        self._assign(session, job, kind)

    def _pickAmong(self, session: Session, functions: List[Function]) -> Optional[Job]:
        count = len(functions)
        start = session.rotation % count if self.roundRobin else 0
        for priority in (HIGH, NORMAL, LOW):
            best: Optional[Job] = None
            bestIndex = 0
            for i in range(count):
                index = (start + i) % count
                queue = functions[index].queues[priority]
                while queue:
                    head = queue[0]
                    if head.state == QUEUED and head.worker is None:
                        break
                    queue.popleft()
                if not queue:
                    continue
                head = queue[0]
                if self.roundRobin:
                    best, bestIndex = head, index
                    break
                if best is None or head.seq < best.seq:
                    best, bestIndex = head, index
            if best is not None:
                best.func.queues[priority].popleft()
                session.rotation = bestIndex + 1
                return best
        return None

    def _assign(self, session: Session, job: Job, kind: int) -> None:
        function = job.func
        function.queued -= 1
        function.priorityCounts[job.priority] -= 1
        function.running += 1
        job.state = RUNNING
        job.worker = session
        session.held[job.handle] = job
        handle = job.handle
        payload = job.payload
        if kind == PacketType.GRAB_JOB:
            head = b"\0".join((handle, function.name, b""))
            ptype = PacketType.JOB_ASSIGN
        elif kind == PacketType.GRAB_JOB_ALL and job.reducer:
            head = b"\0".join((handle, function.name, job.unique, job.reducer, b""))
            ptype = PacketType.JOB_ASSIGN_ALL
        else:
            head = b"\0".join((handle, function.name, job.unique, b""))
            ptype = PacketType.JOB_ASSIGN_UNIQ
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
        self._log.info("Job {handle!r} exceeded its worker's timeout; requeued",
                       handle=job.handle)
        del session.held[job.handle]
        self._jobLostWorker(job, "worker timed out")

    def _jobLostWorker(self, job: Job, why: str) -> None:
        """Requeue a job whose worker went away, or fail it past --job-retries."""
        if job.timeoutCall is not None:
            if job.timeoutCall.active():
                job.timeoutCall.cancel()
            job.timeoutCall = None
        function = job.func
        function.running -= 1
        job.worker = None
        job.retries += 1
        job.numerator = job.denominator = b"0"
        if self.jobRetries and job.retries >= self.jobRetries:
            self._log.warn("Job {handle!r} failed after {retries} retries ({why})",
                           handle=job.handle, retries=job.retries, why=why)
            self._finish(job, _H_WORK_FAIL + len(job.handle).to_bytes(4, "big") + job.handle)
            return
        if not job.clients and not job.background:
            self._forget(job)
            return
        self._enqueue(job)

    # -- work results ----------------------------------------------------

    def workStatus(self, session: Session, handle: bytes, numerator: bytes,
                   denominator: bytes, body: bytes) -> None:
        job = session.held.get(handle)
        if job is None:
            self._unknownHandle(session, handle, "WORK_STATUS")
            session.write(ERR_JOB_NOT_FOUND)
            return
        job.numerator = numerator
        job.denominator = denominator
        self._relay(job, PacketType.WORK_STATUS, body, session)

    def workData(self, session: Session, kind: int, handle: bytes, body: bytes) -> None:
        """WORK_DATA or WORK_WARNING: relayed to the attached clients."""
        job = session.held.get(handle)
        if job is None:
            self._unknownHandle(session, handle, PacketType(kind).name)
            session.write(ERR_JOB_NOT_FOUND_DATA)
            return
        self._relay(job, kind, body, session)

    def workEnd(self, session: Session, kind: int, handle: bytes, body: bytes) -> None:
        """WORK_COMPLETE, WORK_FAIL or WORK_EXCEPTION: relay and end the job."""
        job = session.held.pop(handle, None)
        if job is None:
            self._unknownHandle(session, handle, PacketType(kind).name)
            session.write(ERR_JOB_NOT_FOUND_EXC if kind == PacketType.WORK_EXCEPTION
                          else ERR_JOB_NOT_FOUND)
            return
        if job.worker is not session:
            return  # cancelled by an admin while running: result dropped
        job.func.running -= 1
        job.worker = None
        if job.timeoutCall is not None:
            if job.timeoutCall.active():
                job.timeoutCall.cancel()
            job.timeoutCall = None
        if kind == PacketType.WORK_EXCEPTION:
            self._finishException(job, body, session)
        else:
            self._finish(job, responseHeader(kind, len(body)) + body if len(body) < _BIG
                         else [responseHeader(kind, len(body)), body], session)

    def _unknownHandle(self, session: Session, handle: bytes, what: str) -> None:
        # Info, not a warning: a worker whose job timed out or was cancelled
        # sends these in good faith.
        self._log.info("Session {id}: {what} for {handle!r}, which it does not hold",
                       id=session.id, what=what, handle=handle)

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
        """Send the final packet to every attached client and forget the job."""
        for client in job.clients:
            client.waiting.pop(job, None)
            if type(packet) is list:
                client.writeSequence(packet)
            else:
                client.write(packet)
        job.clients = ()
        self._forget(job)

    def _finishException(self, job: Job, body: bytes, worker: Session) -> None:
        exception = responseHeader(PacketType.WORK_EXCEPTION, len(body)) + body
        fail = _H_WORK_FAIL + len(job.handle).to_bytes(4, "big") + job.handle
        for client in job.clients:
            client.waiting.pop(job, None)
            client.write(exception if client.exceptions else fail)
        job.clients = ()
        self._forget(job)

    def _forget(self, job: Job) -> None:
        """Remove every trace of a finished job (its queue entry is dropped lazily)."""
        state = job.state
        if state == QUEUED:
            function = job.func
            function.queued -= 1
            function.priorityCounts[job.priority] -= 1
        elif state == SCHEDULED:
            job.func.scheduled -= 1
        job.state = DONE
        self.jobs.pop(job.handle, None)
        key = job.coalesceKey
        if key is not None:
            uniques = job.func.uniques
            if uniques.get(key) is job:
                del uniques[key]
            index = self._uniqueIndex.get(job.unique)
            if index is not None:
                if len(index) == 1:
                    del self._uniqueIndex[job.unique]
                else:
                    index.remove(job)
        if job.persisted and self.store is not None:
            job.persisted = False
            self.store.remove(job).addErrback(self._logStoreFailure, job)
        for client in job.clients:
            client.waiting.pop(job, None)
        job.clients = ()
        if not self.accepting:
            self._checkIdle()
        if self._largeQueue and not self.jobs:
            self._largeQueue = False
            if self.onEmptied is not None:
                self.onEmptied()

    # -- status ----------------------------------------------------------

    def getStatus(self, session: Session, handle: bytes) -> None:
        job = self.jobs.get(handle)
        if job is None:
            session.write(encodeResponse(PacketType.STATUS_RES, handle, b"0", b"0", b"0", b"0"))
            return
        session.write(encodeResponse(PacketType.STATUS_RES, handle, b"1",
                                     b"1" if job.state == RUNNING else b"0",
                                     job.numerator, job.denominator))

    def getStatusUnique(self, session: Session, unique: bytes) -> None:
        jobs = self._uniqueIndex.get(unique)
        if not jobs:
            session.write(encodeResponse(PacketType.STATUS_RES_UNIQUE, unique,
                                         b"0", b"0", b"0", b"0", b"0"))
            return
        job = jobs[0]
        session.write(encodeResponse(PacketType.STATUS_RES_UNIQUE, unique, b"1",
                                     b"1" if job.state == RUNNING else b"0",
                                     job.numerator, job.denominator,
                                     b"%d" % len(job.clients)))

    # -- admin -----------------------------------------------------------

    def cancel(self, handle: bytes) -> bool:
        """Admin C{cancel job}: WORK_FAIL to its clients, and forget it."""
        job = self.jobs.get(handle)
        if job is None or job.state == DONE:
            return False
        if job.state == RUNNING:
            worker = job.worker
            job.func.running -= 1
            job.worker = None
            if job.timeoutCall is not None and job.timeoutCall.active():
                job.timeoutCall.cancel()
            job.timeoutCall = None
            # The worker may still report on it: accept and drop what it sends.
            job.state = DONE
            if worker is not None:
                worker.held[handle] = job
        self._finish(job, _H_WORK_FAIL + len(handle).to_bytes(4, "big") + handle)
        return True

    def dropFunction(self, name: bytes) -> Optional[str]:
        """Admin C{drop function}: C{None} on success, else gearmand's error text."""
        lowered = name.lower()
        for fname, function in self.functions.items():
            if fname.lower() == lowered:
                if function.workers or function.running or function.queued or function.uniques:
                    return "there are still connected workers or executing clients"
                del self.functions[fname]
                return None
        return "function not found"

    def setMaxQueue(self, name: bytes, limits: Sequence[int]) -> None:
        function = self.functions.get(name)
        if function is not None:
            function.maxQueue = [max(0, n) for n in limits]

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
            if job.persisted and not job.clients and job.state in (QUEUED, SCHEDULED):
                job.persisted = False  # forget it here, keep it in the store
                self._forget(job)
                job.persisted = True

    def whenIdle(self) -> "Deferred[None]":
        """Fires once no job is queued or running."""
        d: Deferred[None] = Deferred()
        self._idleWaiters.append(d)
        self._checkIdle()
        return d

    def _checkIdle(self) -> None:
        if self._idleWaiters and not self.jobs:
            waiters, self._idleWaiters = self._idleWaiters, []
            for d in waiters:
                d.callback(None)

    def cancelTimers(self) -> None:
        """Cancel every pending timer (used when the service stops)."""
        if self._epochCall is not None and self._epochCall.active():
            self._epochCall.cancel()
        self._epochCall = None
        for job in self.jobs.values():
            if job.timeoutCall is not None and job.timeoutCall.active():
                job.timeoutCall.cancel()
            job.timeoutCall = None


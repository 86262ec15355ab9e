# -*- test-case-name: tests.test_worker -*-
"""
The Gearman worker: registering functions and running the jobs servers
hand out.

  - L{GearmanWorkerFactory} holds the registered functions and the
    concurrency limit; each L{GearmanWorkerProtocol} it builds is one
    connection to one job server. Several connections built by one factory
    share its limit.
  - L{GearmanWorker} is a service that connects to every listed server
    (a C{ClientService} each, with backoff), re-registers its functions
    after each reconnect, and stops gracefully.

A function is called with a L{Job} and may return a value, a L{Deferred},
or be an C{async def}. Its result completes the job (C{WORK_COMPLETE}):
C{bytes}, C{str} (UTF-8 encoded) or C{None} (empty result). Raising
L{JobFailed} fails the job (C{WORK_FAIL}); any other exception sends
C{WORK_EXCEPTION} with C{"ExceptionType: message"} and is logged with its
traceback.

Each connection grabs with C{GRAB_JOB_UNIQ} (so L{Job.unique} is known),
sleeps with C{PRE_SLEEP} after C{NO_JOB}, and grabs again on C{NOOP}. A
connection asks for another job whenever the worker has a free slot, so up
to C{concurrency} jobs run at once, whichever servers they come from. While
its jobs finish at once (short functions that return a value), a connection
also grabs one job ahead, so that jobs arrive two to a read (see
L{GearmanWorkerProtocol}; C{grabAhead=False} turns this off).
"""
from __future__ import annotations

import inspect
from collections import deque
from typing import TYPE_CHECKING, Any, Callable, Deque, Dict, List, Optional, Sequence, Union

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.protocol import ClientFactory
from twisted.logger import LogLevel
from twisted.python.failure import Failure

from txgear._log import logger
from txgear._packet import PacketType, encodeRequest
from txgear._pool import PoolServer, PoolService, ServerPool

if TYPE_CHECKING:
    from txgear._tlsclient import TLSOptions
from txgear._protocol import GearmanPeerProtocol, missingArguments, toBytes
from txgear.errors import JobFailed

JobFunction = Callable[["Job"], Any]


_bytes = toBytes


def _resultBytes(value: Any) -> bytes:
    if value is None:
        return b""
    return toBytes(value, "a job function's result (bytes, str or None)")


_WORK_COMPLETE = PacketType.WORK_COMPLETE.value

#: A connection grabs ahead only while its jobs finish at once and within
#: this many seconds: the per-job overhead it saves (tens of microseconds)
#: matters only for short jobs, and a job it grabs ahead waits behind the
#: job before it.
GRAB_AHEAD_WITHIN = 0.001

# Job states
_RUNNING = 0
_DONE = 1
_TIMED_OUT = 2
_ABANDONED = 3


class Job:
    """
    A job a server assigned to this worker.

    @ivar function: the function name (C{bytes}).
    @ivar handle: the job handle (C{bytes}).
    @ivar unique: the unique id (C{bytes}; empty if none, or if the server
        only answered plain C{GRAB_JOB}).
    @ivar payload: the workload (C{bytes}).
    @ivar reducer: the reducer of a map/reduce job (C{bytes}, usually empty).
    @ivar server: the name of the server the job came from, if known.
    """

    __slots__ = ("function", "handle", "unique", "payload", "reducer", "server",
                 "_protocol", "_state", "_deferred", "_timer", "_serial")

    def __init__(self, function: bytes, handle: bytes, unique: bytes, payload: bytes,
                 reducer: bytes = b"", protocol: Optional["GearmanWorkerProtocol"] = None,
                 server: Optional[str] = None) -> None:
        self.function = function
        self.handle = handle
        self.unique = unique
        self.payload = payload
        self.reducer = reducer
        self.server = server
        self._protocol = protocol
        self._state = _RUNNING
        self._deferred: Optional[Deferred] = None
        self._timer: Any = None
        self._serial = 0  # its key among the worker's running jobs

    def __repr__(self) -> str:
        return f"<Job {self.function!r} {self.handle!r} unique={self.unique!r} {len(self.payload)} bytes>"

    @property
    def active(self) -> bool:
        """Whether the job still runs and its connection is up (updates reach the server)."""
        return self._state == _RUNNING and self._protocol is not None

    def _send(self, kind: int, *args: bytes) -> None:
        if self.active:
            assert self._protocol is not None
            self._protocol.sendPacket(kind, self.handle, *args)

    def sendStatus(self, numerator: int, denominator: int) -> None:
        """Report progress (C{WORK_STATUS}), e.g. C{sendStatus(3, 10)}."""
        self._send(PacketType.WORK_STATUS, str(int(numerator)).encode("ascii"),
                   str(int(denominator)).encode("ascii"))

    def sendData(self, data: Union[bytes, str]) -> None:
        """Send partial results (C{WORK_DATA}) to the waiting clients."""
        self._send(PacketType.WORK_DATA, _bytes(data, "data"))

    def sendWarning(self, data: Union[bytes, str]) -> None:
        """Send a warning (C{WORK_WARNING}) to the waiting clients."""
        self._send(PacketType.WORK_WARNING, _bytes(data, "data"))


class _Function:
    __slots__ = ("name", "callable", "timeout")

    def __init__(self, name: bytes, callable: JobFunction, timeout: Optional[float]) -> None:
        self.name = name
        self.callable = callable
        self.timeout = timeout

    def registration(self) -> tuple:
        if self.timeout:
            return (PacketType.CAN_DO_TIMEOUT, self.name,
                    str(max(1, int(round(self.timeout * 1000)))).encode("ascii"))
        return (PacketType.CAN_DO, self.name)


class GearmanWorkerProtocol(GearmanPeerProtocol):
    """
    One worker connection to a job server.

    Each connection has at most one GRAB outstanding for a free slot of the
    worker (see L{GearmanWorkerFactory}). While the jobs it runs finish at
    once (a result, not a pending L{Deferred}, within L{GRAB_AHEAD_WITHIN}
    seconds), it also keeps a second GRAB outstanding behind that one, for
    no slot ("grabbing ahead"): its job usually arrives when the job before
    it has finished, and the two come and go in one read and one write
    instead of two each. A job it brings while no slot is free waits here
    (at most one per connection) and starts first when one frees.

    @ivar poolServer: the L{PoolServer} this connection belongs to, if any.
    """

    _log = logger()
    poolServer: Optional[PoolServer] = None

    def __init__(self) -> None:
        self.jobs: Dict[bytes, Job] = {}
        # Outstanding GRABs in the order sent (answers come in that order):
        # False for the one holding a slot, True for the one grabbing ahead.
        self._grabs: Deque[bool] = deque()
        self._grabbing = False  # the slot's GRAB is outstanding
        self._ahead = False  # a GRAB ahead is outstanding
        self._held: Optional[Job] = None  # assigned, waiting for a slot
        self._fast = False  # the last job here finished at once: grab ahead
        self._drained = False  # NO_JOB came and a GRAB is still out: grab no more
        self._sleeping = False
        self._queued = False
        self._lost = False
        self._grabKind: int = PacketType.GRAB_JOB_UNIQ
        self._grabsSent = 0
        self._fence: Optional[int] = None  # GRAB count when an ECHO was sent to check it
        self._jobServer: Optional[str] = None  # Job.server of its jobs, once known
        self.connected = False

    @property
    def _core(self) -> "GearmanWorkerFactory":
        return self.factory  # type: ignore[no-any-return]

    def connectionMade(self) -> None:
        GearmanPeerProtocol.connectionMade(self)
        self.connected = True
        core = self._core
        if core.clientId is not None:
            self.sendPacket(PacketType.SET_CLIENT_ID, core.clientId)
        for function in core.functions.values():
            self.sendPacket(*function.registration())
        core.addConnection(self)
        if core.functions:
            self._log.info("Registered {functions} with {server}",
                           functions=_names(core.functions), server=self._serverName())
        self.wantWork()

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.connected = False
        self._lost = True
        core = self._core
        core.removeConnection(self)
        jobs, self.jobs = self.jobs, {}
        for job in jobs.values():
            # The server requeues (gearmand) or fails (Perl) these jobs; our
            # results for them can no longer be delivered.
            job._protocol = None
        if self._held is not None:
            self._held = None
            core.dropHeld(self)
        grabs, self._grabs = self._grabs, deque()
        self._grabbing = self._ahead = False
        for ahead in grabs:
            if ahead:
                core.aheadAnswered()
            else:
                core.releaseSlot()
        if self.poolServer is not None:
            self.poolServer.protocolLost(self)
        if jobs:
            self._log.warn("Lost connection to {server} while running {count} job(s); their "
                           "results will be dropped", server=self._serverName(), count=len(jobs))

    def _serverName(self) -> str:
        if self.poolServer is not None:
            return self.poolServer.name
        return self._peerName()

    # Grabbing

    def wantWork(self) -> None:
        """
        Grab a job if this connection may and the worker has a free slot;
        grab ahead too if its jobs finish at once.
        """
        if self._lost or self._sleeping or self._drained or self.transport is None:
            return
        core: GearmanWorkerFactory = self.factory  # type: ignore[assignment]
        if core.stopping or not core.functions:
            return
        if not self._grabbing:
            if self._held is not None or not core.reserveSlot(self):
                return
            self._grabbing = True
            self._grabs.append(False)
            self._grabsSent += 1
            self._write(_GRAB_PACKETS[self._grabKind])
        if self._fast and not self._ahead and self._fence is None and core.mayGrabAhead():
            self._ahead = True
            self._grabs.append(True)
            core.aheadSent()
            self._grabsSent += 1
            self._write(_GRAB_PACKETS[self._grabKind])

    def wake(self) -> None:
        """Forget any sleep: something may be runnable (new function registered)."""
        if self._sleeping:
            self._sleeping = False
        self.wantWork()

    def packet_NOOP(self) -> None:
        if self._sleeping:
            self._sleeping = False
            self.wantWork()

    def _answered(self) -> Optional[bool]:
        """
        The oldest outstanding GRAB got its answer: whether it was one
        grabbing ahead (C{None}: no GRAB was outstanding).
        """
        grabs = self._grabs
        if not grabs:
            return None
        ahead = grabs.popleft()
        if ahead:
            self._ahead = False
        else:
            self._grabbing = False
        return ahead

    def packet_NO_JOB(self) -> None:
        ahead = self._answered()
        if ahead is None:
            self._protocolViolation("NO_JOB without a GRAB")
            return
        if self._grabs:
            # Another GRAB's answer is still to come: sleep (or not) then.
            self._drained = True
        else:
            self._drained = False
            self._sleeping = True
            self.sendPacket(PacketType.PRE_SLEEP)
        if ahead:
            self._core.aheadAnswered()
        else:
            self._core.releaseSlot()

    def packet_JOB_ASSIGN(self, handle: bytes, function: bytes, payload: bytes) -> None:
        self._assigned(Job(function, handle, b"", payload))

    def packet_JOB_ASSIGN_UNIQ(self, handle: bytes, function: bytes, unique: bytes, payload: bytes) -> None:
        self._assigned(Job(function, handle, unique, payload))

    def body_JOB_ASSIGN_UNIQ(self, body: bytes) -> None:
        arguments = body.split(b"\0", 3)
        if len(arguments) != 4:
            raise missingArguments(PacketType.JOB_ASSIGN_UNIQ, len(arguments))
        handle, function, unique, payload = arguments
        self._assigned(Job(function, handle, unique, payload))

    def packet_JOB_ASSIGN_ALL(self, handle: bytes, function: bytes, unique: bytes,
                              reducer: bytes, payload: bytes) -> None:
        self._assigned(Job(function, handle, unique, payload, reducer))

    def _assigned(self, job: Job) -> None:
        ahead = self._answered()
        if ahead is None:
            self._protocolViolation("job assigned without a GRAB")
            return
        self._drained = False
        job._protocol = self
        server = self._jobServer
        if server is None:
            server = self._jobServer = self._serverName()
        job.server = server
        self.jobs[job.handle] = job
        core: GearmanWorkerFactory = self.factory  # type: ignore[assignment]
        if ahead:
            if core.takeFreeSlot():
                core.aheadAnswered()
            elif self._grabbing:
                # The slot of the GRAB still outstanding goes to this job;
                # that GRAB now grabs ahead (so as many are ahead as before).
                self._grabbing = False
                self._ahead = True
                self._grabs[0] = True
            else:
                self._held = job
                core.hold(self)
                core.aheadAnswered()
                return
        core.runJob(self, job)
        self.wantWork()

    def startHeld(self) -> None:
        """A slot was given to the job held here: run it."""
        job, self._held = self._held, None
        if job is None:
            self._core.releaseSlot()
            return
        self._core.runJob(self, job)
        self.wantWork()

    def finishJob(self, job: Job, kind: int, *args: bytes) -> None:
        """Send the job's final packet, if its connection still stands."""
        if job._protocol is self and not self._lost:
            if len(args) == 1:
                self.sendHandlePacket(kind, job.handle, args[0])
            else:
                self.sendPacket(kind, job.handle, *args)
        self.jobs.pop(job.handle, None)

    def packet_ERROR(self, code: bytes, text: bytes) -> None:
        if code == b"JOB_NOT_FOUND":
            self._log.info("Server {server} no longer knows a job we reported on: {text!r}",
                           server=self._serverName(), text=text)
            return
        if self._grabs and self._grabKind != PacketType.GRAB_JOB and self._fence is None:
            # Either our GRAB_JOB_UNIQ is refused (an old server, e.g. Perl's,
            # answers server_error) or the ERROR answers an earlier packet and
            # the GRAB's answer is still to come. An ECHO tells them apart (the
            # server answers in order); until it returns, no second GRAB.
            self._fence = self._grabsSent
            self.sendPacket(PacketType.ECHO_REQ, _GRAB_CHECK)
        self._log.warn("Server {server} sent ERROR {code!r}: {text!r}",
                       server=self._serverName(), code=code, text=text)

    def packet_ECHO_RES(self, data: bytes) -> None:
        if data != _GRAB_CHECK or self._fence is None:
            return
        fence, self._fence = self._fence, None
        if self._grabs and self._grabsSent == fence:
            # Nothing answered the GRAB but that ERROR: fall back to GRAB_JOB
            # (the new GRAB takes the refused one's place).
            self._log.info("Server {server} refused GRAB_JOB_UNIQ; using GRAB_JOB",
                           server=self._serverName())
            self._grabKind = PacketType.GRAB_JOB
            self._grabsSent += 1
            self.sendPacket(self._grabKind)

    def packet_OPTION_RES(self, data: bytes) -> None:
        pass


class GearmanWorkerFactory(ClientFactory):
    """
    The registered functions, the concurrency limit, and the running jobs
    of a worker; builds L{GearmanWorkerProtocol}s (one per server
    connection), which all share them.

    @ivar functions: registered functions, by name.
    @ivar concurrency: the most jobs run at once across all connections.
    @ivar clientId: sent as C{SET_CLIENT_ID} on connect when not C{None}.
    @ivar stopping: set by L{stopGrabbing}; no new jobs are asked for.
    @ivar grabAhead: whether connections may grab ahead (see
        L{GearmanWorkerProtocol}).
    """

    protocol = GearmanWorkerProtocol
    noisy = False
    _log = logger()

    def __init__(self, concurrency: int = 1, clock: Any = None,
                 clientId: Optional[Union[bytes, str]] = None, useAsyncio: bool = False,
                 grabAhead: bool = True) -> None:
        """
        @param concurrency: the most jobs run at once, across all connections.
        @param clock: the clock for job timeouts (default: the global reactor).
        @param clientId: sent as C{SET_CLIENT_ID} on connect.
        @param useAsyncio: run C{async def} functions as asyncio tasks (with
            the asyncio reactor), so they can await asyncio futures; by
            default they run as Twisted coroutines and await Deferreds.
        @param grabAhead: while jobs finish at once, keep a second GRAB
            outstanding on each connection (see L{GearmanWorkerProtocol});
            never while a function registered with a timeout is.
        """
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.functions: Dict[bytes, _Function] = {}
        self.concurrency = concurrency
        self._clockArg = clock
        self.clientId = None if clientId is None else _bytes(clientId, "client id")
        self.stopping = False
        self.useAsyncio = useAsyncio
        self._protocols: List[GearmanWorkerProtocol] = []
        self.grabAhead = grabAhead
        self._busy = 0  # running jobs + outstanding GRABs for a slot
        self._aheadCount = 0  # outstanding GRABs ahead, all connections
        self._timeouts = 0  # registered functions with a timeout
        self._held: Deque[GearmanWorkerProtocol] = deque()  # connections holding a job
        self._waiting: Deque[GearmanWorkerProtocol] = deque()
        # Running jobs by serial number (not id(): on PyPy, id() of a young
        # object allocates a copy of it in the old generation).
        self._running: Dict[int, Job] = {}
        self._serial = 0
        self._idleWaiters: List[Deferred] = []

    @property
    def clock(self) -> Any:
        if self._clockArg is None:
            from twisted.internet import reactor

            self._clockArg = reactor
        return self._clockArg

    def buildProtocol(self, addr: Any) -> GearmanWorkerProtocol:
        proto = self.protocol()
        proto.factory = self
        return proto

    # Registration

    def register(self, name: Union[bytes, str], function: JobFunction,
                 timeout: Optional[float] = None) -> None:
        """
        Register (or replace) a function.

        @param name: the Gearman function name.
        @param function: called with a L{Job}; see the module docstring.
        @param timeout: seconds a job may run. Sent to the server as
            C{CAN_DO_TIMEOUT} (in milliseconds, as gearmand >= 1.1.19
            expects); the worker also cancels the job's Deferred and sends
            C{WORK_FAIL} when it passes.
        """
        if not callable(function):
            raise TypeError("function must be callable")
        entry = _Function(_bytes(name, "function name"), function, timeout)
        self.functions[entry.name] = entry
        self._timeouts = sum(1 for f in self.functions.values() if f.timeout)
        for proto in list(self._protocols):
            proto.sendPacket(*entry.registration())
            proto.wake()

    def unregister(self, name: Union[bytes, str]) -> None:
        """Stop accepting jobs for C{name} (C{CANT_DO})."""
        key = _bytes(name, "function name")
        if self.functions.pop(key, None) is None:
            return
        self._timeouts = sum(1 for f in self.functions.values() if f.timeout)
        for proto in list(self._protocols):
            proto.sendPacket(PacketType.CANT_DO, key)

    # Slots

    def runningJobs(self) -> List[Job]:
        """The jobs running now."""
        return list(self._running.values())

    def addConnection(self, proto: GearmanWorkerProtocol) -> None:
        """C{proto} connected: it shares the registrations and the slots."""
        self._protocols.append(proto)

    def removeConnection(self, proto: GearmanWorkerProtocol) -> None:
        """C{proto} lost its connection."""
        try:
            self._protocols.remove(proto)
        except ValueError:
            pass

    def reserveSlot(self, proto: GearmanWorkerProtocol) -> bool:
        """
        Take a slot for a GRAB on C{proto}; if none is free, queue C{proto}
        to be called back (L{GearmanWorkerProtocol.wantWork}) when one is.
        """
        if self._busy < self.concurrency:
            self._busy += 1
            return True
        if not proto._queued:
            proto._queued = True
            self._waiting.append(proto)
        return False

    def releaseSlot(self) -> None:
        """
        A GRAB got no job, or a job ended: give its slot to a held job, else
        to a waiting connection.
        """
        self._busy -= 1
        held = self._held
        while held and self._busy < self.concurrency:
            self._busy += 1
            held.popleft().startHeld()
        waiting = self._waiting
        while waiting and self._busy < self.concurrency and not self.stopping:
            proto = waiting.popleft()
            proto._queued = False
            proto.wantWork()
        self._checkIdle()

    def takeFreeSlot(self) -> bool:
        """Take a free slot for a job a GRAB ahead brought, if there is one."""
        if self._busy < self.concurrency and not self._held:
            self._busy += 1
            return True
        return False

    def mayGrabAhead(self) -> bool:
        """Whether a connection whose jobs finish at once may grab ahead now."""
        return self.grabAhead and not self._timeouts

    def aheadSent(self) -> None:
        """A connection sent a GRAB ahead."""
        self._aheadCount += 1

    def aheadAnswered(self) -> None:
        """A GRAB ahead was answered (or its connection lost)."""
        self._aheadCount -= 1
        self._checkIdle()

    def hold(self, proto: GearmanWorkerProtocol) -> None:
        """C{proto} holds a job until a slot frees (L{releaseSlot})."""
        self._held.append(proto)

    def dropHeld(self, proto: GearmanWorkerProtocol) -> None:
        """C{proto}, which held a job, lost its connection."""
        try:
            self._held.remove(proto)
        except ValueError:
            pass
        self._checkIdle()

    def _idle(self) -> bool:
        return self._busy == 0 and self._aheadCount == 0 and not self._held

    def _checkIdle(self) -> None:
        if self._idleWaiters and self._idle():
            waiters, self._idleWaiters = self._idleWaiters, []
            for d in waiters:
                d.callback(None)

    # Running

    def runJob(self, proto: GearmanWorkerProtocol, job: Job) -> None:
        """Run C{job}, assigned on C{proto} (its slot is taken)."""
        entry = self.functions.get(job.function)
        if entry is None:
            self._log.warn("Assigned job {handle!r} for unregistered function {function!r}; failing it",
                           handle=job.handle, function=job.function)
            job._state = _DONE
            proto.finishJob(job, PacketType.WORK_FAIL)
            self.releaseSlot()
            return
        serial = job._serial = self._serial = self._serial + 1
        self._running[serial] = job
        clock = self._clockArg or self.clock
        started = clock.seconds()
        try:
            result = entry.callable(job)
        except BaseException:
            d: Deferred = Deferred()
            d.errback(Failure())
        else:
            if type(result) is bytes and job._state == _RUNNING and job._protocol is proto:
                # Finished at once with bytes, the common case: complete it
                # now, without a Deferred (what _jobDone would do).
                proto._fast = clock.seconds() - started < GRAB_AHEAD_WITHIN
                job._state = _DONE
                del self._running[serial]
                try:
                    proto.finishJob(job, _WORK_COMPLETE, result)
                finally:
                    self.releaseSlot()
                return
            if isinstance(result, Deferred):
                d = result
            elif inspect.isawaitable(result):
                if self.useAsyncio:
                    import asyncio

                    d = Deferred.fromFuture(asyncio.ensure_future(result))
                elif inspect.iscoroutine(result):
                    d = Deferred.fromCoroutine(result)
                else:
                    d = Deferred.fromFuture(result)  # type: ignore[arg-type]
            else:
                d = succeed(result)
        if d.called:
            # Finished synchronously: no timer needed.
            proto._fast = clock.seconds() - started < GRAB_AHEAD_WITHIN
            d.addBoth(self._jobDone, job)
            return
        proto._fast = False
        job._deferred = d
        if entry.timeout:
            job._timer = self.clock.callLater(entry.timeout, self._timedOut, job)
        d.addBoth(self._jobDone, job)

    def _timedOut(self, job: Job) -> None:
        job._timer = None
        if job._state == _RUNNING and job._deferred is not None:
            job._state = _TIMED_OUT
            job._deferred.cancel()

    def _jobDone(self, result: Any, job: Job) -> None:
        if job._timer is not None:
            if job._timer.active():
                job._timer.cancel()
            job._timer = None
        state, job._state = job._state, _DONE
        job._deferred = None
        self._running.pop(job._serial, None)
        proto = job._protocol
        try:
            if state == _ABANDONED:
                self._log.info("Job {handle!r} abandoned at shutdown", handle=job.handle)
                return
            if proto is None:
                self._log.warn("Job {handle!r} finished after its connection was lost; "
                               "result dropped", handle=job.handle)
                return
            if state == _TIMED_OUT:
                self._log.warn("Job {handle!r} ({function!r}) timed out", handle=job.handle,
                               function=job.function)
                proto.finishJob(job, PacketType.WORK_FAIL)
                return
            if isinstance(result, Failure):
                if result.check(JobFailed):
                    self._log.info("Job {handle} ({function}) failed: {error}",
                                   handle=_text(job.handle), function=_text(job.function),
                                   error=result.getErrorMessage())
                    proto.finishJob(job, PacketType.WORK_FAIL)
                else:
                    # The handler's failure, not ours: error, not critical.
                    self._log.failure("Job {handle} ({function}) raised", result,
                                      level=LogLevel.error, handle=_text(job.handle),
                                      function=_text(job.function))
                    proto.finishJob(job, PacketType.WORK_EXCEPTION, _describe(result))
                return
            try:
                data = _resultBytes(result)
            except TypeError:
                failure = Failure()
                self._log.failure("Job {handle} ({function}) returned a bad value", failure,
                                  level=LogLevel.error, handle=_text(job.handle),
                                  function=_text(job.function))
                proto.finishJob(job, PacketType.WORK_EXCEPTION, _describe(failure))
                return
            proto.finishJob(job, PacketType.WORK_COMPLETE, data)
        finally:
            self.releaseSlot()

    # Stopping

    def stopGrabbing(self) -> None:
        """Ask for no more jobs; running ones continue."""
        self.stopping = True
        for proto in self._waiting:
            proto._queued = False
        self._waiting.clear()

    def resumeGrabbing(self) -> None:
        """Undo L{stopGrabbing}."""
        self.stopping = False
        for proto in list(self._protocols):
            proto.wake()

    def whenIdle(self) -> Deferred[None]:
        """Fires when no job runs or waits for a slot and no GRAB is outstanding."""
        if self._idle():
            return succeed(None)
        def cancel(d: Deferred) -> None:
            if d in self._idleWaiters:
                self._idleWaiters.remove(d)

        d: Deferred[None] = Deferred(cancel)
        self._idleWaiters.append(d)
        return d

    def abandonRunning(self) -> None:
        """
        Cancel every running job, sending nothing for them; jobs waiting for
        a slot are dropped (the server takes them back when the connection
        closes).
        """
        held, self._held = self._held, deque()
        for proto in held:
            job, proto._held = proto._held, None
            if job is not None:
                proto.jobs.pop(job.handle, None)
                self._log.info("Job {handle!r} dropped at shutdown before it started",
                               handle=job.handle)
        for job in list(self._running.values()):
            if job._state == _RUNNING:
                job._state = _ABANDONED
                if job._deferred is not None:
                    job._deferred.cancel()


#: The GRAB packets, encoded once.
_GRAB_PACKETS: Dict[int, bytes] = {
    kind: encodeRequest(kind) for kind in (PacketType.GRAB_JOB, PacketType.GRAB_JOB_UNIQ)}

#: The ECHO payload that tells whether an ERROR answered our GRAB_JOB_UNIQ.
_GRAB_CHECK = b"txgear: GRAB_JOB_UNIQ check"


def _text(value: bytes) -> str:
    """Bytes from the wire, for a log line (never a bytes repr)."""
    return value.decode("utf-8", "backslashreplace")


def _names(functions: Dict[bytes, Any]) -> str:
    return ", ".join(_text(name) for name in functions)


def _describe(failure: Failure) -> bytes:
    value = failure.value
    if isinstance(value, CancelledError):
        return b"CancelledError: the job was cancelled"
    name = type(value).__name__
    text = str(value)
    return (f"{name}: {text}" if text else name).encode("utf-8", "replace")


class GearmanWorker(PoolService):
    """
    A worker over one or more job servers.

    Connects to every server (a
    L{twisted.application.internet.ClientService} each, reconnecting with
    backoff), registers the functions on each connection (again after every
    reconnect), and runs up to C{concurrency} jobs at once from whichever
    servers are up.

    Use it as a service (C{worker.setServiceParent(application)}) or call
    L{connect} / L{close}.
    """

    _log = logger()

    def __init__(self, servers: Sequence[str], concurrency: int = 1, reactor: Any = None,
                 clock: Any = None, clientId: Optional[Union[bytes, str]] = None,
                 grace: float = 30.0, retryPolicy: Optional[Callable[[int], float]] = None,
                 connectTimeout: float = 30.0,
                 endpointFor: Optional[Callable[[PoolServer], Any]] = None,
                 useAsyncio: bool = False,
                 tls: Optional["TLSOptions"] = None, grabAhead: bool = True) -> None:
        """
        @param servers: server addresses (see L{txgear.client.GearmanClient}).
        @param concurrency: the most jobs run at once, across all servers.
        @param reactor: the reactor (default: the global one).
        @param clock: the clock for timeouts, grace and reconnection.
        @param clientId: sent as C{SET_CLIENT_ID} (shown by C{workers}).
        @param grace: seconds L{stopService} lets running jobs finish.
        @param retryPolicy: the delay before reconnection attempt C{n}, as
            C{twisted.application.internet.backoffPolicy()} makes.
        @param connectTimeout: connect timeout for C{host:port} addresses.
        @param endpointFor: makes each server's endpoint (for tests).
        @param tls: connect to C{host:port} addresses with TLS: verify each
            server's certificate against C{tls.ca} and the host, and present
            C{tls.certificate} (see L{txgear.TLSOptions}).
        @param useAsyncio: run C{async def} functions as asyncio tasks (see
            L{GearmanWorkerFactory}).
        @param grabAhead: while jobs finish at once, keep a second GRAB
            outstanding per connection (see L{GearmanWorkerProtocol}); pass
            C{False} to ask for a job only when a slot is free.
        """
        if reactor is None:
            from twisted.internet import reactor as globalReactor

            reactor = globalReactor
        self._clock = clock if clock is not None else reactor
        self.grace = grace
        self.factory = GearmanWorkerFactory(concurrency, self._clock, clientId, useAsyncio, grabAhead)
        self._pool = ServerPool(servers, self.factory, reactor=reactor, clock=self._clock,
                                retryPolicy=retryPolicy, connectTimeout=connectTimeout,
                                endpointFor=endpointFor, tls=tls)

    @property
    def pool(self) -> ServerPool:
        """The L{ServerPool} (for inspection)."""
        return self._pool

    @property
    def concurrency(self) -> int:
        """The most jobs run at once."""
        return self.factory.concurrency

    def register(self, name: Union[bytes, str], function: JobFunction,
                 timeout: Optional[float] = None) -> None:
        """Register a function; see L{GearmanWorkerFactory.register}."""
        self.factory.register(name, function, timeout)

    def unregister(self, name: Union[bytes, str]) -> None:
        """Unregister a function; see L{GearmanWorkerFactory.unregister}."""
        self.factory.unregister(name)

    def function(self, name: Optional[str] = None, timeout: Optional[float] = None) -> Callable[[JobFunction], JobFunction]:
        """
        Decorator form of L{register}::

            @worker.function("resize", timeout=60)
            async def resize(job): ...
        """
        def decorate(f: JobFunction) -> JobFunction:
            self.register(name or f.__name__, f, timeout)
            return f
        return decorate

    def runningJobs(self) -> List[Job]:
        """The jobs running now."""
        return self.factory.runningJobs()

    def connectedServers(self) -> List[str]:
        """Addresses of the servers connected now."""
        return [s.name for s in self._pool.connectedServers()]

    def startService(self) -> None:
        Service.startService(self)
        self.factory.resumeGrabbing()
        self._pool.start()

    def stopService(self) -> Deferred[None]:
        """
        Stop gracefully: ask for no more jobs, let running jobs finish for up
        to C{grace} seconds (jobs still running then are cancelled and their
        results dropped, so the server requeues them when the connection
        closes), then disconnect.
        """
        Service.stopService(self)
        factory = self.factory
        factory.stopGrabbing()
        idle = factory.whenIdle()
        if not idle.called:
            self._log.info("Waiting up to {grace}s for {count} running job(s)",
                           grace=self.grace, count=len(factory.runningJobs()))
        timer = self._clock.callLater(self.grace, idle.cancel) if not idle.called else None

        def finished(result: Any) -> Deferred[None]:
            if timer is not None and timer.active():
                timer.cancel()
            if isinstance(result, Failure):
                result.trap(CancelledError)
                self._log.warn("Grace period over; abandoning {count} running job(s)",
                               count=len(factory.runningJobs()))
                factory.abandonRunning()
            if self.running:
                # connect() or startService() came while we waited: stay up.
                return succeed(None)
            return self._pool.stop()

        return idle.addBoth(finished)



__all__ = ["GearmanWorker", "GearmanWorkerFactory", "GearmanWorkerProtocol", "Job"]

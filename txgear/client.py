# -*- test-case-name: tests.test_client -*-
"""
The Gearman client: submitting jobs and asking about them.

Two levels:

  - L{GearmanClientProtocol} / L{GearmanClientFactory}: one connection to one
    job server. Connect it with any endpoint and call its methods.
  - L{GearmanClient}: a service over a pool of servers, with reconnection,
    unique-id hashing, round-robin, and failover of submissions the server
    never acknowledged. Use this one in applications.

Every submission returns a L{Deferred}. A foreground one fires with the
job's result bytes, or fails with L{JobFailed} (C{WORK_FAIL}),
L{JobException} (C{WORK_EXCEPTION}, carrying the worker's payload),
L{ServerError} (the server refused the job), L{ConnectionLost} (the
connection dropped after the server acknowledged the job), L{NoServers}
(no server could be reached), or L{twisted.internet.defer.TimeoutError}
(the C{timeout} passed). Cancelling it stops waiting and frees everything
the client holds for the job; Gearman has no way to stop the job itself.

Progress (C{WORK_STATUS}), partial data (C{WORK_DATA}) and warnings
(C{WORK_WARNING}) reach the caller through the C{onStatus}, C{onData} and
C{onWarning} callbacks, called in the order the packets arrive, before the
result Deferred fires.
"""
from __future__ import annotations

from collections import deque
from typing import Any, Callable, Deque, Dict, List, Optional, Sequence, Union

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, fail
from twisted.internet.protocol import ClientFactory
from twisted.logger import Logger
from twisted.python.failure import Failure

from txgear._packet import PacketType
from txgear._pool import PoolServer, PoolService, ServerPool
from txgear._protocol import GearmanPeerProtocol, toBytes
from txgear.errors import (
    ConnectionLost,
    GearmanError,
    JobException,
    JobFailed,
    NoServers,
    ServerError,
)
from txgear.jobs import Priority

StatusCallback = Callable[[int, int], object]
DataCallback = Callable[[bytes], object]

_FOREGROUND = {
    Priority.HIGH: PacketType.SUBMIT_JOB_HIGH,
    Priority.NORMAL: PacketType.SUBMIT_JOB,
    Priority.LOW: PacketType.SUBMIT_JOB_LOW,
}
_BACKGROUND = {
    Priority.HIGH: PacketType.SUBMIT_JOB_HIGH_BG,
    Priority.NORMAL: PacketType.SUBMIT_JOB_BG,
    Priority.LOW: PacketType.SUBMIT_JOB_LOW_BG,
}


_bytes = toBytes


def _int(value: bytes) -> int:
    try:
        return int(value)
    except ValueError:
        return 0


class JobStatus:
    """
    The state of a job, as C{GET_STATUS} or C{GET_STATUS_UNIQUE} report it.

    @ivar handle: the job handle asked about (C{GET_STATUS}), else C{None}.
    @ivar unique: the unique id asked about (C{GET_STATUS_UNIQUE}), else C{None}.
    @ivar known: whether the server knows the job (queued or running).
    @ivar running: whether a worker holds it.
    @ivar numerator: the last C{WORK_STATUS} numerator (0 before any).
    @ivar denominator: the last C{WORK_STATUS} denominator (0 before any).
    @ivar waiting: how many foreground clients wait for it (C{GET_STATUS_UNIQUE}
        only), else C{None}.
    @ivar server: the name of the server that answered, when known.
    """

    __slots__ = ("handle", "unique", "known", "running", "numerator", "denominator", "waiting", "server")

    def __init__(self, handle: Optional[bytes], unique: Optional[bytes], known: bool, running: bool,
                 numerator: int, denominator: int, waiting: Optional[int] = None,
                 server: Optional[str] = None) -> None:
        self.handle = handle
        self.unique = unique
        self.known = known
        self.running = running
        self.numerator = numerator
        self.denominator = denominator
        self.waiting = waiting
        self.server = server

    def __repr__(self) -> str:
        what = f"handle={self.handle!r}" if self.handle is not None else f"unique={self.unique!r}"
        return (f"JobStatus({what}, known={self.known}, running={self.running}, "
                f"{self.numerator}/{self.denominator}, waiting={self.waiting}, server={self.server!r})")


class BackgroundJob:
    """
    A background job the server accepted.

    @ivar handle: the job handle the server assigned.
    @ivar server: the name (address as given) of the server it lives on;
        pass the whole object to L{GearmanClient.getStatus}.
    @ivar unique: the unique id it was submitted with.
    """

    __slots__ = ("handle", "server", "unique")

    def __init__(self, handle: bytes, server: Optional[str], unique: bytes = b"") -> None:
        self.handle = handle
        self.server = server
        self.unique = unique

    def __repr__(self) -> str:
        return f"BackgroundJob({self.handle!r}, server={self.server!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, BackgroundJob):
            return NotImplemented
        return (self.handle, self.server) == (other.handle, other.server)

    def __hash__(self) -> int:
        return hash((self.handle, self.server))


class _Request:
    """A request the server answers with one packet (in order)."""

    __slots__ = ("deferred", "answered", "argument")

    def __init__(self, argument: bytes = b"") -> None:
        self.deferred: Deferred[Any] = Deferred()
        self.answered = False
        self.argument = argument

    def fail(self, reason: Any) -> None:
        self.answered = True
        if not self.deferred.called:
            self.deferred.errback(reason)


class _Submission(_Request):
    """
    One job submission, from the caller's call to the final answer. It may
    visit several connections (failover) but is in at most one at a time.
    """

    __slots__ = ("function", "unique", "payload", "kind", "background", "when",
                 "onStatus", "onData", "onWarning", "handle", "protocol", "owner",
                 "retries", "tried", "waiting", "cancelled", "rounds")

    def __init__(self, function: bytes, unique: bytes, payload: bytes, kind: int,
                 background: bool, when: Optional[int] = None,
                 onStatus: Optional[StatusCallback] = None,
                 onData: Optional[DataCallback] = None,
                 onWarning: Optional[DataCallback] = None,
                 retries: int = 0) -> None:
        self.function = function
        self.unique = unique
        self.payload = payload
        self.kind = kind
        self.background = background
        self.when = when
        self.onStatus = onStatus
        self.onData = onData
        self.onWarning = onWarning
        self.retries = retries
        self.handle: Optional[bytes] = None
        self.protocol: Optional[GearmanClientProtocol] = None
        self.owner: Optional[GearmanClient] = None
        self.tried: List[PoolServer] = []
        self.rounds = 0
        self.waiting: Optional[Deferred] = None
        self.cancelled = False
        self.answered = False
        self.deferred = Deferred(self._cancel)

    def packetArguments(self) -> tuple:
        if self.kind == PacketType.SUBMIT_JOB_EPOCH:
            return (self.function, self.unique, str(self.when).encode("ascii"), self.payload)
        return (self.function, self.unique, self.payload)

    def _cancel(self, d: Deferred) -> None:
        self.cancelled = True
        if self.waiting is not None:
            waiting, self.waiting = self.waiting, None
            waiting.cancel()
        if self.protocol is not None:
            self.protocol._forget(self)

    def finish(self, result: Any) -> None:
        """Fire the caller's Deferred (once) and let go of everything."""
        self.answered = True
        self.protocol = None
        if not self.deferred.called:
            if isinstance(result, (Failure, Exception)):
                self.deferred.errback(result)
            else:
                self.deferred.callback(result)

    def lost(self, created: bool, reason: Failure, server: Optional[PoolServer]) -> None:
        """The connection carrying this submission (to C{server}) went away."""
        self.protocol = None
        if self.cancelled or self.deferred.called:
            return
        if self.owner is not None:
            self.owner._submissionLost(self, created, reason, server)
        else:
            self.finish(ConnectionLost(f"connection lost: {reason.getErrorMessage()}"))


class GearmanClientProtocol(GearmanPeerProtocol):
    """
    One client connection to a job server.

    Submissions are pipelined: any number may be in flight at once. The
    server acknowledges submissions with C{JOB_CREATED} in the order it got
    them, and the later C{WORK_*} packets carry the job handle, so answers
    arriving in any order reach the right caller.

    @ivar exceptions: send C{OPTION_REQ exceptions} on connect, so worker
        exceptions arrive as C{WORK_EXCEPTION} with their payload.
    @ivar clientId: sent as C{SET_CLIENT_ID} on connect when not C{None}.
    """

    _log = Logger()
    exceptions = True
    clientId: Optional[bytes] = None
    poolServer: Optional[PoolServer] = None

    def __init__(self) -> None:
        self._created: Deque[_Submission] = deque()
        self._order: Deque[_Request] = deque()
        self._byHandle: Dict[bytes, List[_Submission]] = {}
        self._echoes: Deque[_Request] = deque()
        self._statuses: Deque[_Request] = deque()
        self._statusUniques: Deque[_Request] = deque()
        self._options: Deque[_Request] = deque()
        self._lost = False
        self.connected = False

    # Connection events

    def connectionMade(self) -> None:
        GearmanPeerProtocol.connectionMade(self)
        self.connected = True
        if self.clientId is not None:
            self.sendPacket(PacketType.SET_CLIENT_ID, self.clientId)
        if self.exceptions:
            self._request(self._options, PacketType.OPTION_REQ, b"exceptions").deferred.addErrback(
                self._optionRefused)
        server = self.poolServer
        if server is not None:
            server.protocolConnected(self)

    def _optionRefused(self, reason: Failure) -> None:
        if not reason.check(ConnectionLost):
            self._log.info("Server {peer} refused OPTION_REQ exceptions: {error}",
                           peer=self._peerName(), error=reason.getErrorMessage())

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.connected = False
        self._lost = True
        created, self._created = self._created, deque()
        byHandle, self._byHandle = self._byHandle, {}
        others = list(self._echoes) + list(self._statuses) + list(self._statusUniques) + list(self._options)
        self._echoes.clear()
        self._statuses.clear()
        self._statusUniques.clear()
        self._options.clear()
        self._order.clear()
        server = self.poolServer
        if server is not None:
            server.protocolLost(self)
        if reason is None:
            reason = Failure(ConnectionLost("connection closed"))
        for sub in created:
            if not sub.answered:
                sub.lost(False, reason, server)
        for subs in byHandle.values():
            for sub in subs:
                sub.lost(True, reason, server)
        message = reason.getErrorMessage()
        for request in others:
            if not request.answered:
                request.fail(ConnectionLost(f"connection lost: {message}"))

    # Requests

    def _request(self, queue: Deque[_Request], kind: int, argument: bytes) -> _Request:
        request = _Request(argument)
        if self._lost or self.transport is None:
            request.fail(ConnectionLost("not connected"))
            return request
        queue.append(request)
        self._order.append(request)
        self.sendPacket(kind, argument)
        return request

    def _sendSubmission(self, sub: _Submission) -> None:
        """Put C{sub} on this connection (the caller checked it is connected)."""
        sub.protocol = self
        sub.answered = False
        self._created.append(sub)
        self._order.append(sub)
        self.sendPacket(sub.kind, *sub.packetArguments())

    def _forget(self, sub: _Submission) -> None:
        """
        The caller cancelled C{sub}. Before JOB_CREATED its FIFO slot stays
        (the acknowledgement is swallowed when it comes); after, its handle
        entry goes and later packets for it are ignored.
        """
        sub.protocol = None
        if sub.handle is not None:
            subs = self._byHandle.get(sub.handle)
            if subs is not None:
                try:
                    subs.remove(sub)
                except ValueError:
                    pass
                if not subs:
                    del self._byHandle[sub.handle]

    def submit(self, function: Union[bytes, str], payload: Union[bytes, str] = b"",
               unique: Optional[Union[bytes, str]] = None, priority: Priority = Priority.NORMAL,
               onStatus: Optional[StatusCallback] = None, onData: Optional[DataCallback] = None,
               onWarning: Optional[DataCallback] = None) -> Deferred[bytes]:
        """
        Submit a foreground job on this connection.

        @param function: the function name.
        @param payload: the workload.
        @param unique: the unique id (jobs with the same function and unique
            coalesce on the server); none by default.
        @param priority: a L{Priority}.
        @param onStatus: called with C{(numerator, denominator)} per C{WORK_STATUS}.
        @param onData: called with the bytes of each C{WORK_DATA}.
        @param onWarning: called with the bytes of each C{WORK_WARNING}.
        @return: fires with the result bytes; see the module docstring for
            its failures. A lost connection fails it with L{ConnectionLost}.
        """
        sub = makeSubmission(function, payload, unique, priority, False, None,
                             onStatus, onData, onWarning)
        return self._submitHere(sub)

    def submitBackground(self, function: Union[bytes, str], payload: Union[bytes, str] = b"",
                         unique: Optional[Union[bytes, str]] = None,
                         priority: Priority = Priority.NORMAL,
                         when: Optional[float] = None) -> Deferred[bytes]:
        """
        Submit a background job on this connection.

        @param when: Unix time before which the job must not run
            (C{SUBMIT_JOB_EPOCH}; such jobs have normal priority).
        @return: fires with the job handle.
        """
        sub = makeSubmission(function, payload, unique, priority, True, when)
        return self._submitHere(sub).addCallback(lambda job: job.handle)

    def _submitHere(self, sub: _Submission) -> Deferred:
        if self._lost or self.transport is None:
            return fail(ConnectionLost("not connected"))
        self._sendSubmission(sub)
        return sub.deferred

    def echo(self, data: Union[bytes, str] = b"") -> Deferred[bytes]:
        """
        Send C{ECHO_REQ}.

        @return: fires with the data the server echoed.
        """
        return self._request(self._echoes, PacketType.ECHO_REQ, _bytes(data, "data")).deferred

    def getStatus(self, handle: Union[bytes, str]) -> Deferred[JobStatus]:
        """
        Ask about a job by handle (C{GET_STATUS}).

        @return: fires with a L{JobStatus}.
        """
        return self._request(self._statuses, PacketType.GET_STATUS, _bytes(handle, "handle")).deferred

    def getStatusUnique(self, unique: Union[bytes, str]) -> Deferred[JobStatus]:
        """
        Ask about a job by unique id (C{GET_STATUS_UNIQUE}; gearmand and txgear).

        @return: fires with a L{JobStatus} whose C{waiting} is set.
        """
        return self._request(self._statusUniques, PacketType.GET_STATUS_UNIQUE,
                             _bytes(unique, "unique")).deferred

    def setClientId(self, clientId: Union[bytes, str]) -> None:
        """Label this connection (C{SET_CLIENT_ID}); the server sends no reply."""
        self.clientId = _bytes(clientId, "client id")
        if not self._lost and self.transport is not None:
            self.sendPacket(PacketType.SET_CLIENT_ID, self.clientId)

    def setOption(self, name: Union[bytes, str]) -> Deferred[bytes]:
        """
        Turn on a connection option (C{OPTION_REQ}).

        @return: fires with the option name the server accepted, or fails
            with L{ServerError}.
        """
        return self._request(self._options, PacketType.OPTION_REQ, _bytes(name, "option")).deferred

    def pendingCount(self) -> int:
        """How many submissions wait for an answer on this connection."""
        return len(self._created) + sum(len(s) for s in self._byHandle.values())

    # Answers

    def _trimOrder(self) -> None:
        order = self._order
        while order and order[0].answered:
            order.popleft()

    def _nextAnswer(self, queue: Deque[Any], what: str) -> Any:
        while queue:
            request = queue.popleft()
            if not request.answered:
                request.answered = True
                self._trimOrder()
                return request
        raise _Unexpected(what)

    def packet_JOB_CREATED(self, handle: bytes) -> None:
        try:
            sub = self._nextAnswer(self._created, "JOB_CREATED")
        except _Unexpected as e:
            self._protocolViolation(str(e))
            return
        sub.handle = handle
        if sub.cancelled or sub.deferred.called:
            return
        if sub.background:
            server = self.poolServer
            sub.finish(BackgroundJob(handle, server.name if server is not None else None, sub.unique))
            return
        subs = self._byHandle.get(handle)
        if subs is None:
            self._byHandle[handle] = [sub]
        else:
            subs.append(sub)  # coalesced with a job we already wait for

    def _forHandle(self, handle: bytes) -> Optional[List[_Submission]]:
        subs = self._byHandle.get(handle)
        if subs is None:
            self._log.debug("Packet for unknown or abandoned job {handle!r}", handle=handle)
        return subs

    def _end(self, handle: bytes, result: Any) -> None:
        subs = self._byHandle.pop(handle, None)
        if subs is None:
            self._log.debug("Result for unknown or abandoned job {handle!r}", handle=handle)
            return
        for sub in subs:
            sub.finish(result)

    def packet_WORK_COMPLETE(self, handle: bytes, result: bytes) -> None:
        self._end(handle, result)

    def packet_WORK_FAIL(self, handle: bytes) -> None:
        # gearmand substitutes WORK_FAIL "handle\0" for an exception sent to a
        # client without the exceptions option.
        if handle.endswith(b"\0"):
            handle = handle.rstrip(b"\0")
        self._end(handle, JobFailed(f"job {handle.decode('ascii', 'replace')} failed"))

    def packet_WORK_EXCEPTION(self, handle: bytes, data: bytes) -> None:
        self._end(handle, JobException(data))

    def _notify(self, handle: bytes, attribute: str, *args: Any) -> None:
        subs = self._forHandle(handle)
        if subs is None:
            return
        for sub in list(subs):
            callback = getattr(sub, attribute)
            if callback is None:
                continue
            try:
                callback(*args)
            except Exception:
                self._log.failure("Job {handle!r}: {callback} raised", handle=handle, callback=attribute)

    def packet_WORK_STATUS(self, handle: bytes, numerator: bytes, denominator: bytes) -> None:
        self._notify(handle, "onStatus", _int(numerator), _int(denominator))

    def packet_WORK_DATA(self, handle: bytes, data: bytes) -> None:
        self._notify(handle, "onData", data)

    def packet_WORK_WARNING(self, handle: bytes, data: bytes) -> None:
        self._notify(handle, "onWarning", data)

    def _answer(self, queue: Deque[_Request], what: str, value: Any) -> None:
        try:
            request = self._nextAnswer(queue, what)
        except _Unexpected as e:
            self._protocolViolation(str(e))
            return
        request.deferred.callback(value)

    def packet_ECHO_RES(self, data: bytes) -> None:
        self._answer(self._echoes, "ECHO_RES", data)

    def packet_OPTION_RES(self, name: bytes) -> None:
        self._answer(self._options, "OPTION_RES", name)

    def packet_STATUS_RES(self, handle: bytes, known: bytes, running: bytes,
                          numerator: bytes, denominator: bytes) -> None:
        self._answer(self._statuses, "STATUS_RES", JobStatus(
            handle, None, known == b"1", running == b"1", _int(numerator), _int(denominator),
            server=self._serverName()))

    def packet_STATUS_RES_UNIQUE(self, unique: bytes, known: bytes, running: bytes,
                                 numerator: bytes, denominator: bytes, waiting: bytes) -> None:
        self._answer(self._statusUniques, "STATUS_RES_UNIQUE", JobStatus(
            None, unique, known == b"1", running == b"1", _int(numerator), _int(denominator),
            _int(waiting), server=self._serverName()))

    def _serverName(self) -> Optional[str]:
        server = self.poolServer
        return server.name if server is not None else None

    def packet_ERROR(self, code: bytes, text: bytes) -> None:
        # Requests are answered in order, so an ERROR is the answer to the
        # oldest request not yet answered.
        order = self._order
        while order:
            request = order.popleft()
            if not request.answered:
                request.answered = True
                self._trimOrder()
                if isinstance(request, _Submission):
                    request.finish(ServerError(code, text))
                else:
                    request.fail(ServerError(code, text))
                return
        self._log.warn("Server {peer} sent ERROR {code!r} {text!r} with no request pending",
                       peer=self._peerName(), code=code, text=text)

    def packet_NOOP(self) -> None:
        pass


class _Unexpected(Exception):
    def __init__(self, what: str) -> None:
        Exception.__init__(self, f"unexpected {what}: no request waits for it")


def makeSubmission(function: Union[bytes, str], payload: Union[bytes, str],
                   unique: Optional[Union[bytes, str]], priority: Priority,
                   background: bool, when: Optional[float],
                   onStatus: Optional[StatusCallback] = None,
                   onData: Optional[DataCallback] = None,
                   onWarning: Optional[DataCallback] = None,
                   retries: int = 0) -> _Submission:
    """Check and encode the arguments of a submission."""
    function = _bytes(function, "function")
    payload = _bytes(payload, "payload")
    unique = b"" if unique is None else _bytes(unique, "unique")
    if len(unique) > 63:
        raise ValueError("unique ids are limited to 63 bytes")
    priority = Priority(priority)
    if when is not None:
        if not background:
            raise ValueError("a run-at time needs a background job")
        kind: int = PacketType.SUBMIT_JOB_EPOCH
        when = int(when)
    elif background:
        kind = _BACKGROUND[priority]
    else:
        kind = _FOREGROUND[priority]
    return _Submission(function, unique, payload, kind, background, when,
                       onStatus, onData, onWarning, retries)


class GearmanClientFactory(ClientFactory):
    """
    Builds L{GearmanClientProtocol}s.

    @ivar exceptions: see L{GearmanClientProtocol.exceptions}.
    @ivar clientId: see L{GearmanClientProtocol.clientId}.
    """

    protocol = GearmanClientProtocol

    def __init__(self, clientId: Optional[Union[bytes, str]] = None, exceptions: bool = True) -> None:
        self.clientId = None if clientId is None else _bytes(clientId, "client id")
        self.exceptions = exceptions

    def buildProtocol(self, addr: Any) -> GearmanClientProtocol:
        proto = self.protocol()
        proto.factory = self
        proto.exceptions = self.exceptions
        proto.clientId = self.clientId
        return proto


class GearmanClient(PoolService):
    """
    A Gearman client over one or more job servers.

    It keeps one connection per server (a L{ClientService} each, reconnecting
    with exponential backoff). Add it to an application as a service, or call
    L{connect} and L{close} yourself.

    Choosing a server: a job with a unique id goes to the server the id
    hashes to (as the Perl client does), so duplicates coalesce; other jobs
    go round-robin over the connected servers. A submission that cannot be
    delivered (server down, or the connection drops before C{JOB_CREATED})
    silently moves on to the next server. Once a server acknowledged a job,
    losing its connection fails the job with L{ConnectionLost} and it is
    never resubmitted, unless the caller passed C{retries}.
    """

    _log = Logger()

    def __init__(self, servers: Sequence[str], reactor: Any = None, clock: Any = None,
                 clientId: Optional[Union[bytes, str]] = None, exceptions: bool = True,
                 retryPolicy: Optional[Callable[[int], float]] = None,
                 connectTimeout: float = 30.0,
                 endpointFor: Optional[Callable[[PoolServer], Any]] = None) -> None:
        """
        @param servers: addresses: C{"host"}, C{"host:port"}, C{"[::1]:port"}
            or client endpoint strings (C{"tls:gear1:4730"}, C{"unix:/path"}).
        @param reactor: the reactor (default: the global one).
        @param clock: the clock for timeouts and reconnection (default: reactor).
        @param clientId: sent as C{SET_CLIENT_ID} on every connection.
        @param exceptions: ask servers for C{WORK_EXCEPTION} packets.
        @param retryPolicy: reconnection delays, see L{ClientService}.
        @param connectTimeout: connect timeout for C{host:port} addresses.
        @param endpointFor: makes each server's endpoint (for tests).
        """
        if reactor is None:
            from twisted.internet import reactor as globalReactor

            reactor = globalReactor
        self._reactor = reactor
        self._clock = clock if clock is not None else reactor
        self._clientId = None if clientId is None else _bytes(clientId, "client id")
        self._exceptions = exceptions
        self._factory = GearmanClientFactory(self._clientId, exceptions)
        self._pool = ServerPool(servers, self._factory, reactor=reactor, clock=self._clock,
                                retryPolicy=retryPolicy, connectTimeout=connectTimeout,
                                endpointFor=endpointFor)

    @property
    def servers(self) -> List[str]:
        """The server addresses, as given."""
        return [s.name for s in self._pool.servers]

    @property
    def pool(self) -> ServerPool:
        """The L{ServerPool} (for inspection)."""
        return self._pool

    def connectedServers(self) -> List[str]:
        """The addresses of the servers connected right now."""
        return [s.name for s in self._pool.connectedServers()]

    # Service

    def startService(self) -> None:
        Service.startService(self)
        self._pool.start()

    def stopService(self) -> Deferred[None]:
        """
        Close every connection. Jobs in flight fail with L{ConnectionLost}
        (or L{NoServers} if not yet acknowledged).
        """
        Service.stopService(self)
        return self._pool.stop()  # fails waiting submissions with NoServers


    # Submitting

    def submit(self, function: Union[bytes, str], payload: Union[bytes, str] = b"",
               unique: Optional[Union[bytes, str]] = None, priority: Priority = Priority.NORMAL,
               onStatus: Optional[StatusCallback] = None, onData: Optional[DataCallback] = None,
               onWarning: Optional[DataCallback] = None, timeout: Optional[float] = None,
               retries: int = 0) -> Deferred[bytes]:
        """
        Submit a foreground job and wait for its result.

        @param function: the function name.
        @param payload: the workload (C{str} is UTF-8 encoded).
        @param unique: unique id: jobs with the same function and unique that
            are queued or running at the same time run once, and every
            submitter gets the result. Also chooses the server.
        @param priority: L{Priority.HIGH}, C{NORMAL} or C{LOW}.
        @param onStatus: called with C{(numerator, denominator)} for each
            C{WORK_STATUS}.
        @param onData: called with each C{WORK_DATA} chunk.
        @param onWarning: called with each C{WORK_WARNING} chunk.
        @param timeout: seconds to wait before failing with
            L{twisted.internet.defer.TimeoutError} (as C{addTimeout}).
        @param retries: how many times to resubmit the job if a server
            connection is lost after the server acknowledged it. 0 (the
            default) never resubmits: the job may already have run.
        @return: fires with the result bytes. Fails with L{JobFailed},
            L{JobException} (C{.data} is the worker's payload), L{ServerError},
            L{ConnectionLost}, L{NoServers}, or C{TimeoutError}.
        """
        sub = makeSubmission(function, payload, unique, priority, False, None,
                             onStatus, onData, onWarning, retries)
        return self._start(sub, timeout)

    def submitBackground(self, function: Union[bytes, str], payload: Union[bytes, str] = b"",
                         unique: Optional[Union[bytes, str]] = None,
                         priority: Priority = Priority.NORMAL, when: Optional[float] = None,
                         timeout: Optional[float] = None) -> Deferred[BackgroundJob]:
        """
        Submit a background job.

        @param when: a Unix time before which the job must not run
            (C{SUBMIT_JOB_EPOCH}; normal priority only).
        @return: fires with a L{BackgroundJob} (handle and server) once a
            server accepted the job.
        """
        sub = makeSubmission(function, payload, unique, priority, True, when)
        return self._start(sub, timeout)

    def _start(self, sub: _Submission, timeout: Optional[float]) -> Deferred:
        sub.owner = self
        self._dispatch(sub)
        if timeout is not None:
            sub.deferred.addTimeout(timeout, self._clock)
        return sub.deferred

    def _dispatch(self, sub: _Submission) -> None:
        pool = self._pool
        if sub.tried and len(sub.tried) >= len(pool.servers):
            # Every server dropped it before acknowledging: one more round,
            # waiting for reconnections, then give up.
            sub.rounds += 1
            if sub.rounds > 1:
                sub.finish(NoServers("every Gearman server dropped the connection before "
                                     "accepting the job"))
                return
            sub.tried = []
        preferred = pool.ringFor(sub.unique) if sub.unique else None
        if preferred is None and not sub.tried:
            server = pool.pickConnected()
            if server is not None:
                self._deliver(server, sub)
                return
        waiting = pool.whenReady(preferred, sub.tried)
        if waiting.called:
            waiting.addCallbacks(lambda server: self._deliver(server, sub),
                                 lambda f: self._noServer(f, sub))
            return
        sub.waiting = waiting
        waiting.addCallbacks(self._ready, self._noServer, callbackArgs=(sub,), errbackArgs=(sub,))

    def _ready(self, server: PoolServer, sub: _Submission) -> None:
        sub.waiting = None
        self._deliver(server, sub)

    def _deliver(self, server: PoolServer, sub: _Submission) -> None:
        if sub.cancelled or sub.deferred.called:
            return
        sub.handle = None
        server.protocol._sendSubmission(sub)

    def _noServer(self, reason: Failure, sub: _Submission) -> None:
        sub.waiting = None
        if reason.check(CancelledError):
            return
        sub.finish(reason)

    def _submissionLost(self, sub: _Submission, created: bool, reason: Failure,
                        server: Optional[PoolServer]) -> None:
        if not self._pool.running:
            sub.finish(ConnectionLost("the client was closed before the job finished"))
        elif not created:
            # The server never acknowledged it: try the next one.
            if server is not None and server not in sub.tried:
                sub.tried.append(server)
            self._log.debug("Submission lost before JOB_CREATED; trying another server")
            self._dispatch(sub)
        elif sub.retries > 0:
            sub.retries -= 1
            sub.tried = []
            self._log.info("Connection lost while job {handle!r} ran; resubmitting "
                           "({retries} retries left)", handle=sub.handle, retries=sub.retries)
            self._dispatch(sub)
        else:
            sub.finish(ConnectionLost(
                f"connection to the server was lost after it accepted job "
                f"{(sub.handle or b'').decode('ascii', 'replace')}: {reason.getErrorMessage()}"))

    # Queries

    def _server(self, name: Optional[str]) -> Optional[PoolServer]:
        if name is None:
            return None
        for server in self._pool.servers:
            if server.name == name:
                return server
        raise ValueError(f"{name!r} is not one of this client's servers")

    def _onServer(self, preferred: Optional[List[PoolServer]],
                  call: Callable[[GearmanClientProtocol], Deferred]) -> Deferred:
        return self._pool.whenReady(preferred).addCallback(lambda server: call(server.protocol))

    def getStatus(self, job: Union[BackgroundJob, bytes, str],
                  server: Optional[str] = None) -> Deferred[JobStatus]:
        """
        Ask the server that owns a job about it (C{GET_STATUS}).

        @param job: a L{BackgroundJob}, or a handle (then give C{server}, or
            with several servers every connected one is asked and the one
            that knows the handle answers).
        @param server: the server name, when C{job} is a bare handle.
        @return: fires with a L{JobStatus}.
        """
        if isinstance(job, BackgroundJob):
            handle, server = job.handle, job.server
        else:
            handle = _bytes(job, "handle")
        target = self._server(server)
        if target is not None:
            return self._onServer([target], lambda p: p.getStatus(handle))
        if len(self._pool.servers) == 1:
            return self._onServer(None, lambda p: p.getStatus(handle))
        return self._askAll(lambda p: p.getStatus(handle))

    def _askAll(self, call: Callable[[GearmanClientProtocol], Deferred]) -> Deferred[JobStatus]:
        servers = self._pool.connectedServers()
        if not servers:
            return self._onServer(None, call)
        from twisted.internet.defer import gatherResults

        def pick(results: List[JobStatus]) -> JobStatus:
            for status in results:
                if status.known:
                    return status
            return results[0]

        return gatherResults([call(s.protocol) for s in servers], consumeErrors=True).addCallback(pick)

    def getStatusUnique(self, unique: Union[bytes, str]) -> Deferred[JobStatus]:
        """
        Ask about a job by unique id, on the server that unique hashes to
        (C{GET_STATUS_UNIQUE}; gearmand and txgear servers).
        """
        unique = _bytes(unique, "unique")
        return self._onServer(self._pool.ringFor(unique), lambda p: p.getStatusUnique(unique))

    def echo(self, data: Union[bytes, str] = b"", server: Optional[str] = None) -> Deferred[bytes]:
        """
        Send C{ECHO_REQ} to one server (round-robin unless C{server} is given).

        @return: fires with the echoed bytes.
        """
        data = _bytes(data, "data")
        target = self._server(server)
        return self._onServer([target] if target is not None else None, lambda p: p.echo(data))

    def setClientId(self, clientId: Union[bytes, str]) -> None:
        """Label every connection, now and after reconnecting (C{SET_CLIENT_ID})."""
        self._clientId = _bytes(clientId, "client id")
        self._factory.clientId = self._clientId
        for server in self._pool.servers:
            if server.protocol is not None:
                server.protocol.setClientId(self._clientId)


__all__ = [
    "BackgroundJob",
    "GearmanClient",
    "GearmanClientFactory",
    "GearmanClientProtocol",
    "JobStatus",
    "GearmanError",
    "NoServers",
]

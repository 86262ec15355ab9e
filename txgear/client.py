# -*- test-case-name: tests.test_client -*-
"""
The Gearman client: submitting jobs and asking about them.

The pieces live in their own modules: L{txgear._clientprotocol} (one
connection), L{txgear._submission} (the submission state machine),
L{txgear.jobs} (the records); this module holds the client over a pool.

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
(no server could be reached), or L{SubmitTimeout}, a
L{twisted.internet.defer.TimeoutError} (the C{timeout} passed; its text says
whether any worker is registered for the function). Cancelling it stops waiting and frees everything
the client holds for the job; Gearman has no way to stop the job itself.

Progress (C{WORK_STATUS}), partial data (C{WORK_DATA}) and warnings
(C{WORK_WARNING}) reach the caller through the C{onStatus}, C{onData} and
C{onWarning} callbacks, called in the order the packets arrive, before the
result Deferred fires.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, gatherResults
from twisted.python.failure import Failure

from txgear._adminquery import queryStatus
from txgear._clientprotocol import GearmanClientFactory, GearmanClientProtocol
from txgear._log import logger
from txgear._pool import PoolServer, PoolService, ServerPool

if TYPE_CHECKING:
    from txgear._tlsclient import TLSOptions
from txgear._protocol import toBytes
from txgear._resultquery import queryResult, showResultCommand
from txgear._resultwait import ResultWait
from txgear._submission import DataCallback, StatusCallback, _Submission, makeSubmission
from txgear.errors import (
    ConnectionLost,
    GearmanError,
    JobException,
    JobFailed,
    NoServers,
    ServerError,
    SubmitTimeout,
)
from txgear.jobs import BackgroundJob, JobStatus, Priority

_bytes = toBytes


class GearmanClient(PoolService):
    """
    A Gearman client over one or more job servers.

    It keeps one connection per server (a
    L{twisted.application.internet.ClientService} each, reconnecting with
    exponential backoff). Add it to an application as a service, or call
    L{connect} and L{close} yourself.

    Choosing a server: a job with a unique id goes to the server the id
    hashes to (see L{txgear._pool.serverIndex}), so duplicates coalesce; other
    jobs go round-robin over the connected servers. A submission that cannot
    be delivered (server down, or the connection drops before C{JOB_CREATED})
    silently moves on to another server, or waits for one. Once a server acknowledged a job,
    losing its connection fails the job with L{ConnectionLost} and it is
    never resubmitted, unless the caller passed C{retries}.
    """

    _log = logger()

    def __init__(self, servers: Sequence[str], reactor: Any = None, clock: Any = None,
                 clientId: Optional[Union[bytes, str]] = None, exceptions: bool = True,
                 retryPolicy: Optional[Callable[[int], float]] = None,
                 connectTimeout: float = 30.0,
                 endpointFor: Optional[Callable[[PoolServer], Any]] = None,
                 tls: Optional["TLSOptions"] = None) -> None:
        """
        @param servers: addresses: C{"host"}, C{"host:port"}, C{"[::1]:port"}
            or client endpoint strings (C{"tls:gear1:4730"}, C{"unix:/path"}).
        @param reactor: the reactor (default: the global one).
        @param clock: the clock for timeouts and reconnection (default: reactor).
        @param clientId: sent as C{SET_CLIENT_ID} on every connection.
        @param exceptions: ask servers for C{WORK_EXCEPTION} packets.
        @param retryPolicy: the delay before reconnection attempt C{n}, as
            C{twisted.application.internet.backoffPolicy()} makes.
        @param connectTimeout: connect timeout for C{host:port} addresses.
        @param endpointFor: makes each server's endpoint (for tests).
        @param tls: connect to C{host:port} addresses with TLS: verify each
            server's certificate against C{tls.ca} and the host, and present
            C{tls.certificate} (see L{txgear.TLSOptions}).
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
                                endpointFor=endpointFor, tls=tls)
        self._router = _Router(self._pool)

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
        return self._start(sub, timeout).addCallback(self._bind)

    def _bind(self, job: BackgroundJob) -> BackgroundJob:
        job._fetch = self._fetchResult
        return job

    # Results of background jobs (kept by a keep:TTL policy)

    def backgroundJob(self, handle: Union[bytes, str],
                      server: Optional[str] = None) -> BackgroundJob:
        """
        A background job submitted earlier (by this or another process),
        named by its handle; call L{BackgroundJob.result} to wait for its
        kept result.

        @param handle: the job handle (from C{JOB_CREATED}).
        @param server: the name of the server that gave the handle, one of
            L{servers}; needed when the client has more than one.
        @raise ValueError: no C{server} with several servers, or an unknown one.
        """
        return self._bind(BackgroundJob(_bytes(handle, "handle"), self._serverOf(server)))

    def backgroundJobByUnique(self, function: Union[bytes, str], unique: Union[bytes, str],
                              server: Optional[str] = None) -> BackgroundJob:
        """
        A background job submitted earlier with a unique id, named by its
        function and unique; call L{BackgroundJob.result} to wait for its
        kept result (the live job with that unique, else the kept result).

        @param server: the name of its server; by default the server the
            unique hashes to, where L{submitBackground} sends it.
        @raise ValueError: an unknown C{server}, or an empty unique.
        """
        function, unique = _bytes(function, "function"), _bytes(unique, "unique")
        if not unique or unique == b"-":
            raise ValueError("a job is named by a non-empty unique (not '-')")
        if server is None:
            server = self._pool.ringFor(unique)[0].name
        return self._bind(BackgroundJob(b"", self._serverOf(server), unique, function))

    def _serverOf(self, name: Optional[str]) -> str:
        if name is None:
            if len(self._pool.servers) != 1:
                raise ValueError("a handle names one server: give server= (one of "
                                 f"{self.servers})")
            return self._pool.servers[0].name
        target = self._server(name)
        assert target is not None
        return target.name

    def _fetchResult(self, job: BackgroundJob, timeout: Optional[float]) -> Deferred[bytes]:
        target = self._server(job.server)
        if target is None:
            target = self._server(self._serverOf(None))
        assert target is not None
        server: PoolServer = target
        if job.handle:
            handle = job.handle
            command = showResultCommand(handle=handle)
            describe = handle.decode("utf-8", "replace")
            askStatus = lambda: self._onServer([server], lambda p: p.getStatus(handle))
        else:
            unique = job.unique
            command = showResultCommand(function=job.function, unique=unique)
            describe = f"{job.function.decode('utf-8', 'replace')}/{unique.decode('utf-8', 'replace')}"
            askStatus = lambda: self._onServer([server], lambda p: p.getStatusUnique(unique))
        askResult = lambda: queryResult(server.connectAside, self._clock, command)
        return ResultWait(askStatus, askResult, self._clock, describe).start(timeout)

    def _start(self, sub: _Submission, timeout: Optional[float]) -> Deferred:
        sub.router = self._router
        sub.patient = timeout is not None
        self._router.dispatch(sub)
        if timeout is not None:
            sub.deferred.addTimeout(timeout, self._clock,
                                    onTimeoutCancel=lambda result, t: self._explain(sub, t))
        return sub.deferred

    def _explain(self, sub: _Submission, timeout: float) -> Any:
        """
        The failure of a submission whose timeout passed. For a foreground
        job the server accepted, its C{status} says whether any worker is
        registered for the function (asked on a connection of its own, for
        at most a second).
        """
        function = sub.function.decode("utf-8", "replace")
        seconds = f"{timeout:g}"
        plain = SubmitTimeout(f"job for {function!r} did not finish within {seconds} s",
                              sub.function)
        server = sub.server
        if sub.background or sub.handle is None or server is None or not self._pool.running:
            if sub.handle is None:
                plain = SubmitTimeout(f"no Gearman server accepted the job for {function!r} "
                                      f"within {seconds} s", sub.function)
            return Failure(plain)

        def explain(table: Dict[bytes, Tuple[int, int, int]]) -> Failure:
            workers = table.get(sub.function, (0, 0, 0))[2]
            if workers == 0:
                return Failure(SubmitTimeout(
                    f"no worker is registered for {function!r} on {server.name}: the job "
                    f"waited {seconds} s in its queue", sub.function, 0))
            return Failure(SubmitTimeout(
                f"job for {function!r} did not finish within {seconds} s ({workers} "
                f"worker(s) registered for it on {server.name})", sub.function, workers))

        return queryStatus(server.connectAside, self._clock, 1.0).addCallbacks(
            explain, lambda f: Failure(plain))

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


class _Router:
    """
    Chooses the server of each submission of a L{GearmanClient} and moves
    it on when its connection is lost (a L{SubmissionRouter}).

    @ivar maxLosses: how many times a submission may be dropped before
        C{JOB_CREATED}, per server, before it fails with L{NoServers} (a
        job that makes servers drop the connection must not loop forever).
    """

    _log = logger()
    maxLosses = 2

    def __init__(self, pool: ServerPool) -> None:
        self._pool = pool

    def dispatch(self, sub: _Submission) -> None:
        """
        Send C{sub} to a server: the one its unique hashes to (by payload
        for the unique C{"-"}), else the next connected one in turn;
        waiting for one if none is connected. Once a connection was lost
        under it, a submission with a timeout waits for a server until its
        timeout, even while every server is down.
        """
        pool = self._pool
        preferred: Optional[List[PoolServer]] = None
        if sub.unique:
            key = sub.payload if sub.unique == b"-" else sub.unique
            preferred = pool.ringFor(key or b"")
        exclude = sub.tried
        if exclude and not any(s not in exclude for s in pool.connectedServers()):
            # Every connected server dropped it already: wait for any server,
            # the same ones included, as with a single server.
            exclude = []
        if preferred is None and not exclude:
            server = pool.pickConnected()
            if server is not None:
                self._deliver(server, sub)
                return
        waiting = pool.whenReady(preferred, exclude, patient=sub.patient and bool(sub.tried))
        if waiting.called:
            waiting.addCallbacks(self._deliver, self._noServer, callbackArgs=(sub,),
                                 errbackArgs=(sub,))
            return
        sub.waiting = waiting
        waiting.addCallbacks(self._ready, self._noServer, callbackArgs=(sub,), errbackArgs=(sub,))

    def _ready(self, server: PoolServer, sub: _Submission) -> None:
        sub.waiting = None
        self._deliver(server, sub)

    def _deliver(self, server: PoolServer, sub: _Submission) -> None:
        if sub.finished:
            return
        server.protocol.sendSubmission(sub)

    def _noServer(self, reason: Failure, sub: _Submission) -> None:
        sub.waiting = None
        if reason.check(CancelledError):
            return
        sub.finish(reason)

    def submissionLost(self, sub: _Submission, created: bool, reason: Failure,
                       server: Any) -> None:
        """See L{txgear._submission.SubmissionRouter}."""
        if not self._pool.running:
            sub.finish(ConnectionLost("the client was closed before the job finished"))
        elif not created:
            # The server never acknowledged it: try another one, or wait.
            sub.rounds += 1
            if sub.rounds > self.maxLosses * len(self._pool.servers):
                sub.finish(NoServers("the Gearman servers dropped the connection "
                                     f"{sub.rounds} times before accepting the job"))
                return
            if server is not None and server not in sub.tried:
                sub.tried.append(server)
            self._log.debug("Submission lost before JOB_CREATED; trying again")
            self.dispatch(sub)
        elif sub.retries > 0:
            sub.retries -= 1
            sub.tried = []
            self._log.info("Connection lost while job {handle!r} ran; resubmitting "
                           "({retries} retries left)", handle=sub.handle, retries=sub.retries)
            self.dispatch(sub)
        else:
            sub.finish(ConnectionLost(
                f"connection to the server was lost after it accepted job "
                f"{(sub.handle or b'').decode('ascii', 'replace')}: {reason.getErrorMessage()}"))


__all__ = [
    "BackgroundJob",
    "GearmanClient",
    "GearmanClientFactory",
    "GearmanClientProtocol",
    "JobStatus",
    "GearmanError",
    "NoServers",
]

# -*- test-case-name: tests.test_client -*-
"""
One client connection to one job server: L{GearmanClientProtocol} and its
factory.

Every request that the server answers with one packet (a submission, an
echo, a status query, an option) waits in one queue, in the order it was
sent, and leaves it when answered: by its reply packet, or by an C{ERROR}
(the answer to the oldest request). Foreground jobs the server acknowledged
are then found by handle.
"""
from __future__ import annotations

from collections import deque
from typing import Any, Deque, Dict, List, Optional, Union

from twisted.internet.defer import Deferred, fail
from twisted.internet.protocol import ClientFactory
from twisted.python.failure import Failure

from txgear._log import logger
from txgear._packet import PacketType
from txgear._protocol import GearmanPeerProtocol, missingArguments, toBytes
from txgear._submission import (
    DataCallback,
    StatusCallback,
    _Request,
    _Submission,
    makeSubmission,
)
from txgear.errors import ConnectionLost, JobException, JobFailed, ServerError
from txgear.jobs import BackgroundJob, JobStatus, Priority


_JOB_CREATED = PacketType.JOB_CREATED.value


def _int(value: bytes) -> int:
    try:
        return int(value)
    except ValueError:
        return 0


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
    @ivar poolServer: the pool server this connection belongs to, if any;
        told when the connection is lost.
    """

    _log = logger()
    exceptions = True
    clientId: Optional[bytes] = None
    poolServer: Any = None

    def __init__(self) -> None:
        self._outstanding: Deque[_Request] = deque()
        self._byHandle: Dict[bytes, List[_Submission]] = {}
        self._lost = False
        self.connected = False

    # Connection events

    def connectionMade(self) -> None:
        GearmanPeerProtocol.connectionMade(self)
        self.connected = True
        if self.clientId is not None:
            self.sendPacket(PacketType.SET_CLIENT_ID, self.clientId)
        if self.exceptions:
            self._request(PacketType.OPTION_REQ, PacketType.OPTION_RES,
                          b"exceptions").deferred.addErrback(self._optionRefused)

    def _optionRefused(self, reason: Failure) -> None:
        if not reason.check(ConnectionLost):
            self._log.info("Server {peer} refused OPTION_REQ exceptions: {error}",
                           peer=self._serverName() or self._peerName(),
                           error=reason.getErrorMessage())

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.connected = False
        self._lost = True
        outstanding, self._outstanding = self._outstanding, deque()
        byHandle, self._byHandle = self._byHandle, {}
        server = self.poolServer
        if server is not None:
            server.protocolLost(self)
        if reason is None:
            reason = Failure(ConnectionLost("connection closed"))
        message = reason.getErrorMessage()
        for request in outstanding:
            if request.answered:
                continue
            if isinstance(request, _Submission):
                request.lost(False, reason)
            else:
                request.fail(ConnectionLost(f"connection lost: {message}"))
        for subs in byHandle.values():
            for sub in subs:
                sub.lost(True, reason)

    # Requests

    def _request(self, kind: int, reply: int, argument: bytes) -> _Request:
        request = _Request(reply, argument)
        if self._lost or self.transport is None:
            request.fail(ConnectionLost("not connected"))
            return request
        self._outstanding.append(request)
        self.sendPacket(kind, argument)
        return request

    def sendSubmission(self, sub: _Submission) -> None:
        """
        Put C{sub} on this connection (L{SubmissionCarrier}; the caller
        checked it is connected).
        """
        # sub.sentOn(self, self.poolServer), inlined: once per job.
        sub.carrier = self
        sub.server = self.poolServer
        sub.answered = False
        sub.handle = None
        self._outstanding.append(sub)
        packet = sub.packet()
        if type(packet) is bytes:
            self._write(packet)
        else:
            self._writeSequence(packet)  # type: ignore[arg-type]

    def forgetSubmission(self, sub: _Submission) -> None:
        """
        The caller cancelled C{sub} (L{SubmissionCarrier}). Before
        C{JOB_CREATED} its place in the queue stays (the acknowledgement is
        swallowed when it comes); after, its handle entry goes and later
        packets for it are ignored.
        """
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
        @return: fires with the result bytes; see L{txgear.client} for its
            failures. A lost connection fails it with L{ConnectionLost}.
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
        self.sendSubmission(sub)
        return sub.deferred

    def echo(self, data: Union[bytes, str] = b"") -> Deferred[bytes]:
        """
        Send C{ECHO_REQ}.

        @return: fires with the data the server echoed.
        """
        return self._request(PacketType.ECHO_REQ, PacketType.ECHO_RES,
                             toBytes(data, "data")).deferred

    def getStatus(self, handle: Union[bytes, str]) -> Deferred[JobStatus]:
        """
        Ask about a job by handle (C{GET_STATUS}).

        @return: fires with a L{JobStatus}.
        """
        return self._request(PacketType.GET_STATUS, PacketType.STATUS_RES,
                             toBytes(handle, "handle")).deferred

    def getStatusUnique(self, unique: Union[bytes, str]) -> Deferred[JobStatus]:
        """
        Ask about a job by unique id (C{GET_STATUS_UNIQUE}; gearmand and txgear).

        @return: fires with a L{JobStatus} whose C{waiting} is set.
        """
        return self._request(PacketType.GET_STATUS_UNIQUE, PacketType.STATUS_RES_UNIQUE,
                             toBytes(unique, "unique")).deferred

    def setClientId(self, clientId: Union[bytes, str]) -> None:
        """Label this connection (C{SET_CLIENT_ID}); the server sends no reply."""
        self.clientId = toBytes(clientId, "client id")
        if not self._lost and self.transport is not None:
            self.sendPacket(PacketType.SET_CLIENT_ID, self.clientId)

    def setOption(self, name: Union[bytes, str]) -> Deferred[bytes]:
        """
        Turn on a connection option (C{OPTION_REQ}).

        @return: fires with the option name the server accepted, or fails
            with L{ServerError}.
        """
        return self._request(PacketType.OPTION_REQ, PacketType.OPTION_RES,
                             toBytes(name, "option")).deferred

    def pendingCount(self) -> int:
        """How many submissions wait for an answer on this connection."""
        waiting = sum(1 for r in self._outstanding if isinstance(r, _Submission))
        return waiting + sum(len(s) for s in self._byHandle.values())

    def outstandingCount(self) -> int:
        """How many requests of any kind wait for their reply on this connection."""
        return len(self._outstanding)

    # Answers

    def _take(self, reply: int) -> Optional[_Request]:
        """
        The oldest request that C{reply} answers, out of the queue; a
        protocol violation (and C{None}) if none waits for it.
        """
        outstanding = self._outstanding
        if outstanding and outstanding[0].reply == reply:
            return outstanding.popleft()
        # Servers keep submissions in order, but may answer other kinds of
        # request sooner (a durable store delays JOB_CREATED).
        for i, request in enumerate(outstanding):
            if request.reply == reply:
                del outstanding[i]
                return request
        self._protocolViolation(f"unexpected {PacketType(reply).name}: no request waits for it")
        return None

    def packet_JOB_CREATED(self, handle: bytes) -> None:
        outstanding = self._outstanding
        sub: Optional[_Request]
        if outstanding and outstanding[0].reply == _JOB_CREATED:
            sub = outstanding.popleft()
        else:
            sub = self._take(_JOB_CREATED)
            if sub is None:
                return
        assert isinstance(sub, _Submission)
        sub.answered = True
        sub.handle = handle
        if sub.cancelled or sub.deferred.called:
            return
        if sub.background:
            server = self.poolServer
            sub.finish(BackgroundJob(handle, server.name if server is not None else None, sub.unique,
                                     sub.function))
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

    def body_WORK_COMPLETE(self, body: bytes) -> None:
        handle, separator, result = body.partition(b"\0")
        if not separator:
            raise missingArguments(PacketType.WORK_COMPLETE, 1)
        subs = self._byHandle.pop(handle, None)
        if subs is None:
            self._log.debug("Result for unknown or abandoned job {handle!r}", handle=handle)
            return
        for sub in subs:
            sub.complete(result)

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

    def _answer(self, reply: int, value: Any) -> None:
        request = self._take(reply)
        if request is not None:
            request.answer(value)

    def packet_ECHO_RES(self, data: bytes) -> None:
        self._answer(PacketType.ECHO_RES, data)

    def packet_OPTION_RES(self, name: bytes) -> None:
        self._answer(PacketType.OPTION_RES, name)

    def packet_STATUS_RES(self, handle: bytes, known: bytes, running: bytes,
                          numerator: bytes, denominator: bytes) -> None:
        self._answer(PacketType.STATUS_RES, JobStatus(
            handle, None, known == b"1", running == b"1", _int(numerator), _int(denominator),
            server=self._serverName()))

    def packet_STATUS_RES_UNIQUE(self, unique: bytes, known: bytes, running: bytes,
                                 numerator: bytes, denominator: bytes, waiting: bytes) -> None:
        self._answer(PacketType.STATUS_RES_UNIQUE, JobStatus(
            None, unique, known == b"1", running == b"1", _int(numerator), _int(denominator),
            _int(waiting), server=self._serverName()))

    def _serverName(self) -> Optional[str]:
        server = self.poolServer
        return server.name if server is not None else None

    def packet_ERROR(self, code: bytes, text: bytes) -> None:
        # Requests are answered in order, so an ERROR answers the oldest one;
        # it leaves the queue now, payload and all.
        outstanding = self._outstanding
        if outstanding:
            request = outstanding.popleft()
            if isinstance(request, _Submission):
                request.finish(ServerError(code, text))
            else:
                request.fail(ServerError(code, text))
            return
        self._log.warn("Server {peer} sent ERROR {code!r} {text!r} with no request pending",
                       peer=self._serverName() or self._peerName(), code=code, text=text)

    def packet_NOOP(self) -> None:
        pass


class GearmanClientFactory(ClientFactory):
    """
    Builds L{GearmanClientProtocol}s.

    @ivar exceptions: see L{GearmanClientProtocol.exceptions}.
    @ivar clientId: see L{GearmanClientProtocol.clientId}.
    """

    protocol = GearmanClientProtocol
    noisy = False

    def __init__(self, clientId: Optional[Union[bytes, str]] = None, exceptions: bool = True) -> None:
        self.clientId = None if clientId is None else toBytes(clientId, "client id")
        self.exceptions = exceptions

    def buildProtocol(self, addr: Any) -> GearmanClientProtocol:
        proto = self.protocol()
        proto.factory = self
        proto.exceptions = self.exceptions
        proto.clientId = self.clientId
        return proto


__all__ = ["GearmanClientFactory", "GearmanClientProtocol"]

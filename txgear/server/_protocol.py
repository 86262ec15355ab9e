# -*- test-case-name: tests.test_server_protocol -*-
"""
The job server's connections: bytes in, calls on L{JobServerState} out.

Each message is sniffed on its first byte (NUL: a binary packet; anything
else: an admin text line), so one connection may mix both, as with gearmand.

What bad input gets (also in docs/server.md):
  - bad magic, packet type 0 or above 42, a text line over 8 KiB, more than 8
    tokens on a text line: the connection is closed (as gearmand);
  - a body larger than the maximum packet size: C{ERROR ARGUMENT_TOO_LARGE},
    then the connection is closed (gearmand would reserve the memory);
  - a response magic on a request type: C{ERROR INVALID_MAGIC};
  - a response-only or unimplemented type: C{ERROR INVALID_COMMAND};
  - a body with too few arguments: C{ERROR INVALID_PACKET} (gearmand reads
    into the next packet); the connection stays usable;
  - a function name too long or holding control characters: C{ERROR
    ARGUMENT_TOO_LARGE} / C{ERROR INVALID_ARGUMENT}; an epoch outside 0 to
    year 9999: C{ERROR INVALID_ARGUMENT}; a client id is cleaned and cut
    (L{txgear.server._names}).

Log lines a peer causes go through the state's L{PeerLog} (rate-limited).
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Tuple

from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Factory, Protocol
from txgear._log import logger
from zope.interface import implementer

from txgear._packet import (
    ARGUMENT_COUNTS,
    DEFAULT_MAX_PACKET,
    MAX_TYPE,
    TEXT,
    PacketDecoder,
    PacketType,
    encodeResponse,
)
from txgear._peerlog import PeerLog
from txgear._protocol import setNoDelay
from txgear._schedule import ScheduleError, nextRunTime
from txgear._turnwriter import TurnWriter
from txgear.server._admin import CLOSE, GRACEFUL, SHUTDOWN, AdminCommands
from txgear.server._names import DEFAULT_MAX_FUNCTION_NAME, cleanClientId, functionNameProblem
from txgear.server._state import ERR_UNKNOWN_OPTION, HIGH, LOW, NORMAL, JobServerState, Session

#: Room for the arguments besides the workload (function, unique, handle...),
#: so that a workload of exactly the maximum packet size is accepted.
ARGUMENT_ALLOWANCE = 64 * 1024

#: Workloads at least this large are passed around as memoryviews, not copied.
_BIG = 64 * 1024

#: Shortest CAN_DO_TIMEOUT, in milliseconds; shorter ones are raised to it (gearmand's minimum).
MIN_CAN_DO_TIMEOUT = 1000

ERR_INVALID_MAGIC = encodeResponse(PacketType.ERROR, b"INVALID_MAGIC", b"Request magic expected")
ERR_INVALID_COMMAND = encodeResponse(PacketType.ERROR, b"INVALID_COMMAND", b"Command not expected")
ERR_TOO_LARGE = encodeResponse(PacketType.ERROR, b"ARGUMENT_TOO_LARGE",
                               b"Packet size exceeds the server's maximum")
_ECHO_HEADER = encodeResponse(PacketType.ECHO_RES)[:8]

#: The latest SUBMIT_JOB_EPOCH time accepted: the end of year 9999 UTC, well
#: within what every store holds (signed 64 bits).
MAX_EPOCH = 253402300799
ERR_BAD_EPOCH = encodeResponse(PacketType.ERROR, b"INVALID_ARGUMENT",
                               b"Epoch must be a number of seconds from 0 to %d" % MAX_EPOCH)


def _invalidPacket(kind: int, got: int) -> bytes:
    return encodeResponse(PacketType.ERROR, b"INVALID_PACKET",
                          b"%s needs %d arguments, got %d"
                          % (PacketType(kind).name.encode(), ARGUMENT_COUNTS[kind], got))


class _Malformed(Exception):
    pass


def _split(body: bytes, kind: int) -> List[bytes]:
    count = ARGUMENT_COUNTS[kind]
    args = body.split(b"\0", count - 1)
    if len(args) != count:
        raise _Malformed(kind, len(args))
    return args


@implementer(IPushProducer)
class GearmanServerProtocol(Protocol):
    """
    One connection to the job server, in any mix of roles (client, worker,
    admin). Registered as a streaming producer on its transport so that a
    client that reads slowly pauses the workers feeding it.
    """

    _log = logger()
    factory: "GearmanServerFactory"
    session: Session
    transport: Any  # a connected transport (ITCPTransport and IPushProducer)

    def __init__(self) -> None:
        self._closedWaiters: List[Deferred[None]] = []
        self._readPauses = 0

    def connectionMade(self) -> None:
        factory = self.factory
        self.state = factory.state
        self.session = self.state.connect(self)
        self.session.exceptions = factory.exceptions
        self._decoder = PacketDecoder(expectRequests=True, allowText=True,
                                      maxPacket=factory.maxPacket + ARGUMENT_ALLOWANCE)
        transport = self.transport
        setNoDelay(transport)
        transport.registerProducer(self, True)
        self._output = output = factory.writer.output(transport)
        self.write = output.write  # type: ignore[method-assign]
        self.writeSequence = output.writeSequence  # type: ignore[method-assign]
        factory.connections[self.session] = self

    # The state calls these (IServerPeer). Output is sent once per reactor turn.
    def write(self, data: bytes) -> None:  # replaced in connectionMade
        self._output.write(data)

    def writeSequence(self, data: List[bytes]) -> None:  # replaced in connectionMade
        self._output.writeSequence(data)

    def pauseReading(self) -> None:
        """Stop reading this peer's requests (counted: each pause needs a resume)."""
        self._readPauses += 1
        if self._readPauses == 1:
            self.transport.pauseProducing()

    def resumeReading(self) -> None:
        self._readPauses -= 1
        if self._readPauses == 0 and not self.transport.disconnecting:
            self.transport.resumeProducing()

    # IPushProducer: the transport's write buffer is full / drained.
    def pauseProducing(self) -> None:
        # A peer that does not read its replies: stop reading its requests,
        # and stop the workers whose results would pile up for it.
        self.pauseReading()
        self.state.pauseWriting(self.session)

    def resumeProducing(self) -> None:
        self.resumeReading()
        self.state.resumeWriting(self.session)

    def stopProducing(self) -> None:
        pass

    def dataReceived(self, data: bytes) -> None:
        decoder = self._decoder
        dispatch = _DISPATCH
        transport = self.transport
        for kind, body in decoder.feed(data):
            if kind > 0:
                try:
                    dispatch[kind](self, body)
                except _Malformed as e:
                    self.factory.peerLog.warn(self, "malformed", "Malformed {kind} packet from {peer}",
                                              kind=PacketType(kind).name, peer=self._peer())
                    self.session.write(_invalidPacket(*e.args))
            elif kind == TEXT:
                self._adminLine(body)
            else:
                self.factory.peerLog.warn(self, "magic", "Response magic on packet {kind} from {peer}",
                                          kind=-kind, peer=self._peer())
                self.session.write(ERR_INVALID_MAGIC)
            if transport.disconnecting:
                return
        if decoder.error is not None:
            self._log.warn("Closing connection from {peer}: {error}", peer=self._peer(),
                           error=str(decoder.error))
            if "exceeds the limit" in str(decoder.error):
                # Tell the peer why; loseConnection also stops reading the body.
                self.write(ERR_TOO_LARGE)
                self._output.flush()
                self.transport.loseConnection()
            else:
                self._output.discard()
                self.transport.abortConnection()

    def connectionLost(self, reason: Any = None) -> None:
        self._output.discard()
        self.factory.connections.pop(self.session, None)
        self.state.disconnect(self.session)
        waiters, self._closedWaiters = self._closedWaiters, []
        for d in waiters:
            d.callback(None)

    def whenClosed(self) -> "Deferred[None]":
        """Fires once this connection is closed."""
        d: Deferred[None] = Deferred()
        self._closedWaiters.append(d)
        return d

    def _peer(self) -> str:
        try:
            return str(self.transport.getPeer())
        except Exception:
            return "?"

    def describe(self) -> Tuple[bytes, bytes]:
        """C{(fd, ip)} for the admin C{workers} listing."""
        try:
            fd = b"%d" % self.transport.fileno()
        except Exception:
            fd = b"-"
        peer = self.transport.getPeer()
        host = getattr(peer, "host", None)
        if host is None:
            host = getattr(peer, "name", None) or "-"
        if isinstance(host, bytes):
            host = host.decode("utf-8", "replace")
        return fd, (host or "-").encode("utf-8")

    # -- admin -------------------------------------------------------------

    def _adminLine(self, line: bytes) -> None:
        reply, action = self.factory.admin.run(self.session, line)
        if action == CLOSE:
            self._log.warn("Admin line with too many tokens from {peer}; closing", peer=self._peer())
            self._output.flush()
            self.transport.loseConnection()
            return
        self.session.write(reply)
        if action == SHUTDOWN:
            self.factory.requestShutdown(graceful=False)
        elif action == GRACEFUL:
            self.factory.requestShutdown(graceful=True)

    # -- packets -------------------------------------------------------------

    def _refusedName(self, name: bytes) -> bool:
        """
        Answer ERROR and return C{True} if C{name} cannot name a function
        (too long, or control characters: see L{functionNameProblem}).
        """
        problem = functionNameProblem(name, self.factory.maxFunctionName)
        if problem is None:
            return False
        self.factory.peerLog.warn(self, "name", "Function name {name} refused from {peer}: {why}",
                                  name=name, peer=self._peer(), why=problem[1].decode("ascii"))
        self.session.write(encodeResponse(PacketType.ERROR, *problem))
        return True

    def _canDo(self, body: bytes) -> None:
        if self._refusedName(body):
            return
        self.state.canDo(self.session, body)

    def _canDoTimeout(self, body: bytes) -> None:
        name, timeout = _split(body, PacketType.CAN_DO_TIMEOUT)
        if self._refusedName(name):
            return
        if len(timeout) > 20:
            # gearmand silently ignores an over-long number; so do we.
            self.factory.peerLog.warn(self, "timeout", "CAN_DO_TIMEOUT with an over-long timeout "
                                      "from {peer}", peer=self._peer())
            return
        try:
            milliseconds = int(timeout.strip() or b"0")
        except ValueError:
            milliseconds = 0
        if 0 < milliseconds < MIN_CAN_DO_TIMEOUT:
            # As gearmand: a client sending seconds (the Perl one) gets 1 s, not 3 ms.
            milliseconds = MIN_CAN_DO_TIMEOUT
        self.state.canDo(self.session, name, max(0, milliseconds) / 1000.0)

    def _cantDo(self, body: bytes) -> None:
        if self._refusedName(body):
            return
        self.state.cantDo(self.session, body)

    def _resetAbilities(self, body: bytes) -> None:
        self.state.resetAbilities(self.session)

    def _preSleep(self, body: bytes) -> None:
        self.state.preSleep(self.session)

    def _grabJob(self, body: bytes) -> None:
        self.state.grab(self.session, PacketType.GRAB_JOB)

    def _grabJobUniq(self, body: bytes) -> None:
        self.state.grab(self.session, PacketType.GRAB_JOB_UNIQ)

    def _grabJobAll(self, body: bytes) -> None:
        self.state.grab(self.session, PacketType.GRAB_JOB_ALL)

    def _workStatus(self, body: bytes) -> None:
        handle, numerator, denominator = _split(body, PacketType.WORK_STATUS)
        self.state.workStatus(self.session, handle, numerator, denominator, body)

    def _workComplete(self, body: bytes) -> None:
        end = body.find(b"\0")
        if end < 0:
            raise _Malformed(PacketType.WORK_COMPLETE, 1)
        self.state.workEnd(self.session, PacketType.WORK_COMPLETE, body[:end], body)

    def _workFail(self, body: bytes) -> None:
        self.state.workEnd(self.session, PacketType.WORK_FAIL, body, body)

    def _workException(self, body: bytes) -> None:
        end = body.find(b"\0")
        if end < 0:
            raise _Malformed(PacketType.WORK_EXCEPTION, 1)
        self.state.workEnd(self.session, PacketType.WORK_EXCEPTION, body[:end], body)

    def _workData(self, body: bytes) -> None:
        end = body.find(b"\0")
        if end < 0:
            raise _Malformed(PacketType.WORK_DATA, 1)
        self.state.workData(self.session, PacketType.WORK_DATA, body[:end], body)

    def _workWarning(self, body: bytes) -> None:
        end = body.find(b"\0")
        if end < 0:
            raise _Malformed(PacketType.WORK_WARNING, 1)
        self.state.workData(self.session, PacketType.WORK_WARNING, body[:end], body)

    def _getStatus(self, body: bytes) -> None:
        self.state.getStatus(self.session, body)

    def _getStatusUnique(self, body: bytes) -> None:
        self.state.getStatusUnique(self.session, body)

    def _echo(self, body: bytes) -> None:
        self.session.write(_ECHO_HEADER + len(body).to_bytes(4, "big") + body)

    def _setClientId(self, body: bytes) -> None:
        self.state.setClientId(self.session, cleanClientId(body))

    def _optionReq(self, body: bytes) -> None:
        if body.lower() == b"exceptions":
            self.session.exceptions = True
            self.session.write(encodeResponse(PacketType.OPTION_RES, body))
        else:
            self.session.write(ERR_UNKNOWN_OPTION)

    def _submitEpoch(self, body: bytes) -> None:
        name, unique, epoch, payload = _split(body, PacketType.SUBMIT_JOB_EPOCH)
        if name not in self.state.functions and self._refusedName(name):
            return
        # An empty epoch means now; a long one is refused before int() (which
        # is quadratic in the length of its input).
        try:
            when = int(epoch) if len(epoch) <= 20 and epoch.isdigit() else (0 if not epoch else -1)
        except ValueError:
            when = -1
        if not 0 <= when <= MAX_EPOCH:
            self.factory.peerLog.warn(self, "epoch", "SUBMIT_JOB_EPOCH with epoch {epoch} out of "
                                      "range from {peer}", epoch=epoch, peer=self._peer())
            self.session.write(ERR_BAD_EPOCH)
            return
        self.state.submit(self.session, name, unique, payload, NORMAL, True, when)

    def _submitSched(self, body: bytes) -> None:
        args = _split(body, PacketType.SUBMIT_JOB_SCHED)
        if args[0] not in self.state.functions and self._refusedName(args[0]):
            return
        try:
            when = nextRunTime(args[2:7], self.state.clock.seconds())
        except ScheduleError as e:
            self.session.write(encodeResponse(PacketType.ERROR, b"INVALID_ARGUMENT",
                                              str(e).encode("utf-8")))
            return
        self.state.submit(self.session, args[0], args[1], args[7], NORMAL, True, when)

    def _submitReduce(self, body: bytes) -> None:
        name, unique, reducer, _aggregator, payload = _split(body, PacketType.SUBMIT_REDUCE_JOB)
        if name not in self.state.functions and self._refusedName(name):
            return
        self.state.submit(self.session, name, unique, payload, NORMAL, False, 0, reducer)

    def _submitReduceBackground(self, body: bytes) -> None:
        name, unique, reducer, _aggregator, payload = _split(
            body, PacketType.SUBMIT_REDUCE_JOB_BACKGROUND)
        if name not in self.state.functions and self._refusedName(name):
            return
        self.state.submit(self.session, name, unique, payload, NORMAL, True, 0, reducer)

    def _invalidCommand(self, body: bytes) -> None:
        self.factory.peerLog.warn(self, "unexpected", "Unexpected packet from {peer}",
                                  peer=self._peer())
        self.session.write(ERR_INVALID_COMMAND)


def _submitter(kind: int, priority: int, background: bool) -> Callable[[GearmanServerProtocol, bytes], None]:
    def submit(self: GearmanServerProtocol, body: bytes) -> None:
        if len(body) < _BIG:
            args = body.split(b"\0", 2)
            if len(args) != 3:
                raise _Malformed(kind, len(args))
            # A known function's name was checked when it was first seen.
            if args[0] not in self.state.functions and self._refusedName(args[0]):
                return
            self.state.submit(self.session, args[0], args[1], args[2], priority, background)
            return
        # A large workload is kept as a view of the body instead of a copy.
        first = body.find(b"\0")
        second = body.find(b"\0", first + 1) if first >= 0 else -1
        if second < 0:
            raise _Malformed(kind, 1 if first < 0 else 2)
        name = body[:first]
        if name not in self.state.functions and self._refusedName(name):
            return
        unique = body[first + 1:second]
        payload: Any = memoryview(body)[second + 1:] if unique != b"-" else body[second + 1:]
        self.state.submit(self.session, name, unique, payload, priority, background)

    submit.__name__ = "_submit_" + PacketType(kind).name
    return submit


_HANDLERS: Dict[int, Callable[[GearmanServerProtocol, bytes], None]] = {
    PacketType.CAN_DO: GearmanServerProtocol._canDo,
    PacketType.CANT_DO: GearmanServerProtocol._cantDo,
    PacketType.RESET_ABILITIES: GearmanServerProtocol._resetAbilities,
    PacketType.PRE_SLEEP: GearmanServerProtocol._preSleep,
    PacketType.SUBMIT_JOB: _submitter(PacketType.SUBMIT_JOB, NORMAL, False),
    PacketType.GRAB_JOB: GearmanServerProtocol._grabJob,
    PacketType.WORK_STATUS: GearmanServerProtocol._workStatus,
    PacketType.WORK_COMPLETE: GearmanServerProtocol._workComplete,
    PacketType.WORK_FAIL: GearmanServerProtocol._workFail,
    PacketType.GET_STATUS: GearmanServerProtocol._getStatus,
    PacketType.ECHO_REQ: GearmanServerProtocol._echo,
    PacketType.SUBMIT_JOB_BG: _submitter(PacketType.SUBMIT_JOB_BG, NORMAL, True),
    PacketType.SUBMIT_JOB_HIGH: _submitter(PacketType.SUBMIT_JOB_HIGH, HIGH, False),
    PacketType.SET_CLIENT_ID: GearmanServerProtocol._setClientId,
    PacketType.CAN_DO_TIMEOUT: GearmanServerProtocol._canDoTimeout,
    PacketType.WORK_EXCEPTION: GearmanServerProtocol._workException,
    PacketType.OPTION_REQ: GearmanServerProtocol._optionReq,
    PacketType.WORK_DATA: GearmanServerProtocol._workData,
    PacketType.WORK_WARNING: GearmanServerProtocol._workWarning,
    PacketType.GRAB_JOB_UNIQ: GearmanServerProtocol._grabJobUniq,
    PacketType.SUBMIT_JOB_HIGH_BG: _submitter(PacketType.SUBMIT_JOB_HIGH_BG, HIGH, True),
    PacketType.SUBMIT_JOB_LOW: _submitter(PacketType.SUBMIT_JOB_LOW, LOW, False),
    PacketType.SUBMIT_JOB_LOW_BG: _submitter(PacketType.SUBMIT_JOB_LOW_BG, LOW, True),
    PacketType.SUBMIT_JOB_EPOCH: GearmanServerProtocol._submitEpoch,
    PacketType.SUBMIT_JOB_SCHED: GearmanServerProtocol._submitSched,
    PacketType.SUBMIT_REDUCE_JOB: GearmanServerProtocol._submitReduce,
    PacketType.SUBMIT_REDUCE_JOB_BACKGROUND: GearmanServerProtocol._submitReduceBackground,
    PacketType.GRAB_JOB_ALL: GearmanServerProtocol._grabJobAll,
    PacketType.GET_STATUS_UNIQUE: GearmanServerProtocol._getStatusUnique,
}

#: Handler per packet type; every type without one is answered INVALID_COMMAND
#: (response-only types, 5 UNUSED, 24 ALL_YOURS).
_DISPATCH: Tuple[Callable[[GearmanServerProtocol, bytes], None], ...] = tuple(
    _HANDLERS.get(kind, GearmanServerProtocol._invalidCommand) for kind in range(MAX_TYPE + 1)
)


class GearmanServerFactory(Factory):
    """
    Makes L{GearmanServerProtocol}s sharing one L{JobServerState}.

    @param state: the server state.
    @param maxPacket: the largest workload accepted, in bytes; a packet body
        may exceed it by L{ARGUMENT_ALLOWANCE} for its other arguments.
    @param allowShutdown: accept the admin C{shutdown [graceful]} commands.
    @param shutdown: called with C{graceful=} when such a command arrives.
    @param verbosity: returns the log level name the C{verbose} command reports.
    @param exceptions: forward WORK_EXCEPTION to every client, as if each had
        asked with OPTION_REQ (gearmand's C{--exceptions}).
    @param maxFunctionName: the longest function name accepted, in bytes.
    @ivar connections: the live protocols, by session.
    """

    protocol = GearmanServerProtocol  # type: ignore[assignment]
    noisy = False

    def __init__(self, state: Optional[JobServerState] = None, maxPacket: int = DEFAULT_MAX_PACKET,
                 allowShutdown: bool = False,
                 shutdown: Optional[Callable[..., Any]] = None,
                 verbosity: Callable[[], str] = lambda: "INFO", exceptions: bool = False,
                 maxFunctionName: int = DEFAULT_MAX_FUNCTION_NAME) -> None:
        self.state = state if state is not None else JobServerState()
        self.writer = TurnWriter(self.state.clock)
        self.exceptions = exceptions
        self.maxPacket = maxPacket
        self.maxFunctionName = maxFunctionName
        #: Rate-limits the log lines peers cause (shared with the state's).
        self.peerLog: PeerLog = self.state.peerLog
        self.connections: Dict[Session, GearmanServerProtocol] = {}
        self._shutdown = shutdown
        self.admin = AdminCommands(self.state, self._describe, verbosity, allowShutdown,
                                   maxFunctionName)

    def _describe(self, session: Session) -> Tuple[bytes, bytes]:
        protocol = self.connections.get(session)
        if protocol is None:
            return b"-", b"-"
        return protocol.describe()

    def requestShutdown(self, graceful: bool) -> None:
        if self._shutdown is not None:
            self._shutdown(graceful=graceful)

    def flush(self) -> None:
        """Send all output written so far (normally done once per reactor turn)."""
        self.writer.flush()

    def disconnectAll(self, grace: float = 5.0) -> "Deferred[None]":
        """
        Close every connection once its pending output is written; abort
        those still open after C{grace} seconds.

        @return: fires when every connection is closed.
        """
        self.writer.flush()
        protocols = list(self.connections.values())
        if not protocols:
            return succeed(None)
        waiting = [p.whenClosed() for p in protocols]
        for protocol in protocols:
            protocol.transport.loseConnection()

        def abortStragglers() -> None:
            for protocol in protocols:
                if protocol.session in self.connections:
                    protocol.transport.abortConnection()

        timer = self.state.clock.callLater(grace, abortStragglers)
        done = DeferredList(waiting)

        def finished(_: object) -> None:
            if timer.active():
                timer.cancel()

        return done.addCallback(finished)

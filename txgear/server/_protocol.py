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

import struct
import sys
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Set, Tuple, cast

from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.interfaces import ISSLTransport, ITCPTransport
from twisted.internet.protocol import Factory, Protocol
from txgear._log import logger

from txgear._packet import (
    ARGUMENT_COUNTS,
    DEFAULT_MAX_PACKET,
    HEADER_SIZE,
    MAX_TYPE,
    REQ,
    TEXT,
    PacketDecoder,
    PacketType,
    encodeResponse,
)
from txgear._peerlog import PeerLog
from txgear._protocol import SMALL_READ, setNoDelay, sizeNextRead
from txgear._schedule import ScheduleError, nextRunTime
from txgear._turnwriter import TurnWriter, directSocket
from txgear.server._access import AccessControl
from txgear.server._admin import CLOSE, GRACEFUL, SHUTDOWN, AdminCommands
from txgear.server._guard import AccessGuard, guardedDispatch
from txgear.server._identity import peerNames
from txgear.server._names import DEFAULT_MAX_FUNCTION_NAME, cleanClientId, functionNameProblem
from txgear.server._state import ERR_UNKNOWN_OPTION, HIGH, LOW, NORMAL, JobServerState, Session
from txgear.server._stats import ADMIN, CLIENT, WORKER

#: Room for the arguments besides the workload (function, unique, handle...),
#: so that a workload of exactly the maximum packet size is accepted.
ARGUMENT_ALLOWANCE = 64 * 1024

#: Default soft limit of a connection's unsent output: past it, its input waits.
DEFAULT_OUTPUT_SOFT_LIMIT = 1024 * 1024
#: Default hard limit of a connection's unsent output: past it, it is closed
#: (raised to fit two packets of the largest size if that is more).
DEFAULT_OUTPUT_HARD_LIMIT = 64 * 1024 * 1024
#: Default memory all connections' unfinished large messages may reserve together.
DEFAULT_PARTIAL_BUDGET = 256 * 1024 * 1024
#: Default seconds a message may take to arrive, from its first byte to its last.
DEFAULT_PACKET_DEADLINE = 60.0

#: Workloads at least this large are passed around as memoryviews, not copied.
_BIG = 64 * 1024

#: Reads of at least this many bytes mean large messages: read more at once
#: (see L{GearmanServerProtocol._sizeLargeReads}).
LARGE_READ_FROM = 64 * 1024
#: The read size while large messages arrive: a message of 64 KiB and its
#: header whole, below glibc's mmap threshold of 128 KiB.
LARGE_READ = 124 * 1024
#: Reads in a row smaller than L{LARGE_READ_FROM} before the read size goes back.
LARGE_READS_KEPT = 16
#: A view of a large body (see L{PacketDecoder}) is searched for its short
#: leading arguments (function, unique, handle) in a copy of this many bytes.
_VIEW_HEAD = 1024

#: Shortest CAN_DO_TIMEOUT, in milliseconds; shorter ones are raised to it (gearmand's minimum).
MIN_CAN_DO_TIMEOUT = 1000

ERR_INVALID_MAGIC = encodeResponse(PacketType.ERROR, b"INVALID_MAGIC", b"Request magic expected")
ERR_INVALID_COMMAND = encodeResponse(PacketType.ERROR, b"INVALID_COMMAND", b"Command not expected")
ERR_TOO_LARGE = encodeResponse(PacketType.ERROR, b"ARGUMENT_TOO_LARGE",
                               b"Packet size exceeds the server's maximum")
_ECHO_HEADER = encodeResponse(PacketType.ECHO_RES)[:8]
# Packet types passed on every job, as plain ints (an enum member costs a
# class attribute lookup each time).
_GRAB_JOB = int(PacketType.GRAB_JOB)
_GRAB_JOB_UNIQ = int(PacketType.GRAB_JOB_UNIQ)
_GRAB_JOB_ALL = int(PacketType.GRAB_JOB_ALL)
_WORK_COMPLETE = int(PacketType.WORK_COMPLETE)
_WORK_FAIL = int(PacketType.WORK_FAIL)
_SUBMIT_JOB_BG = int(PacketType.SUBMIT_JOB_BG)
#: The first 8 bytes of every SUBMIT_JOB_BG request (magic and type).
_SUBMIT_JOB_BG_HEAD = REQ + _SUBMIT_JOB_BG.to_bytes(4, "big")
_UINT32 = struct.Struct(">I")
#: Bytes of output one background submission may cause besides the handle
#: prefix: its JOB_CREATED (header, number) and a NOOP to itself.
_REPLY_ROOM = 12 + 20 + 12

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


#: Why a connection is not read (L{GearmanServerProtocol._pausedFor}).
_OUTPUT = "output"    # its output is over the soft limit: its requests would add more
_LISTING = "listing"  # an admin listing is still being produced for it
_BUDGET = "budget"    # its unfinished message waits for the partial-packet budget
_TURN = "turn"        # its admin replies used this reactor turn's share: the rest waits a turn

#: Bytes of admin replies (listings above all) one connection may produce in
#: one reactor turn; the rest waits for the next turn, so that a peer asking
#: for long listings over and over never holds the reactor (and every other
#: peer) for long. Binary packets are not counted: their replies are small
#: or are the peer's own payloads.
ADMIN_TURN_BYTES = 128 * 1024

#: Unfinished messages smaller than this never wait for the partial-packet
#: budget: ordinary requests of bystanders are never held back.
SMALL_MESSAGE = 64 * 1024


class _ClosedPeer:
    """What a session's peer becomes once its connection is lost: writes go nowhere."""

    __slots__ = ()

    def write(self, data: bytes) -> None:
        pass

    def writeSequence(self, data: List[bytes]) -> None:
        pass


_CLOSED_PEER = _ClosedPeer()


class GearmanServerProtocol(Protocol):
    """
    One connection to the job server, in any mix of roles (client, worker,
    admin).

    I/O policy (see docs/architecture.md):
      - output goes through a L{txgear._turnwriter.ConnectionOutput}, which
        counts what the peer has not taken; past the soft limit this
        connection's input is no longer dispatched nor read (its own requests
        make that output), until half of it has drained; past the hard limit
        the connection is aborted and its session handled as any lost
        connection. No other connection is ever paused on its behalf;
      - reading is paused for a set of reasons, and resumes exactly when none
        is left, whatever order pauses and resumes arrive in;
      - an unfinished message of L{SMALL_MESSAGE} bytes or more reserves its
        announced size from the factory's partial-packet budget, and waits,
        unread, until the budget has room; a message that has not arrived
        within the packet deadline closes the connection (one timer for the
        factory, armed only while some message is unfinished, not per packet).
    """

    _log = logger()
    #: Size reads as L{txgear._protocol.GearmanPeerProtocol.adaptiveReads}
    #: does (PyPy: a read's buffer is allocated in its nursery).
    adaptiveReads = sys.implementation.name == "pypy"
    _sizeReads = False
    factory: "GearmanServerFactory"
    session: Session
    transport: Any  # a connected transport (ITCPTransport and IPushProducer)

    def __init__(self) -> None:
        self._closedWaiters: List[Deferred[None]] = []
        self._pausedFor: Set[str] = set()
        # Dispatching stops while the output is full or a listing is produced.
        self._stalled = False
        self._dispatching = False
        # Messages decoded but not dispatched when the output filled up
        # (kinds and bodies alternating, as PacketDecoder.feedFlat gives them).
        self._held: Optional[List[Any]] = None
        self._listing: Optional[Iterator[bytes]] = None
        self._turnCall: Any = None
        self._reserved = 0
        self._partialSerial = -1
        # Reads left at LARGE_READ (-1: reads are not sized here), and the
        # read size to go back to.
        self._largeReads = -1
        self._lastRead = 0
        self._smallReadSize = 0
        # The names of its client certificate, once access control asked.
        self._names: Optional[Tuple[str, ...]] = None
        self._table = _DISPATCH
        # Its role for the metrics: what its last role-revealing request was.
        self._role = CLIENT

    def connectionMade(self) -> None:
        factory = self.factory
        if factory.guard is not None:
            self._table = _GUARDED_DISPATCH
        self.state = factory.state
        self._stats = self.state.stats
        self._stats.connections[CLIENT] += 1
        self.session = self.state.connect(self)
        self.session.exceptions = factory.exceptions
        self._decoder = PacketDecoder(
            expectRequests=True, allowText=True, maxPacket=factory.maxPacket + ARGUMENT_ALLOWANCE,
            viewKinds=_VIEW_KINDS if self._table is _DISPATCH else ())
        transport = self.transport
        setNoDelay(transport)
        # Reads sized for large messages (see _sizeLargeReads): only where
        # the transport reads up to its bufferSize (tcp.Connection).
        self._largeReads = 0 if directSocket(transport) is not None else -1
        if ITCPTransport.providedBy(transport):
            try:
                # A peer that vanished without a FIN is noticed eventually.
                transport.setTcpKeepAlive(True)
            except OSError:
                pass
        if self.adaptiveReads and directSocket(transport) is not None:
            # tcp.Connection.doRead reads up to its bufferSize.
            self._sizeReads = True
            transport.bufferSize = SMALL_READ
        self._output = output = factory.writer.output(
            transport, self, factory.outputSoftLimit, factory.outputHardLimit)
        self.write = output.write  # type: ignore[method-assign]
        self.writeSequence = output.writeSequence  # type: ignore[method-assign]
        factory.connections[self.session] = self

    # The state calls these (IServerPeer). Output is sent once per reactor turn.
    def write(self, data: bytes) -> None:  # replaced in connectionMade
        self._output.write(data)

    def writeSequence(self, data: List[bytes]) -> None:  # replaced in connectionMade
        self._output.writeSequence(data)

    # -- why this connection is not read --------------------------------------

    def _pause(self, reason: str) -> None:
        """Stop reading for C{reason} (idempotent)."""
        paused = self._pausedFor
        if reason in paused:
            return
        paused.add(reason)
        if reason != _BUDGET:
            self._stalled = True
        if len(paused) == 1:
            self.transport.pauseProducing()

    def _resume(self, reason: str) -> None:
        """C{reason} no longer holds; read again if no other reason remains."""
        paused = self._pausedFor
        if reason not in paused:
            return
        paused.discard(reason)
        self._stalled = _OUTPUT in paused or _LISTING in paused or _TURN in paused
        if not paused and not self.transport.disconnecting:
            self.transport.resumeProducing()

    # Listener of the ConnectionOutput.
    def outputFull(self) -> None:
        self._pause(_OUTPUT)

    def outputDrained(self) -> None:
        self._resume(_OUTPUT)
        if self._listing is not None and _TURN not in self._pausedFor:
            self._produceListing()
        if (not self._stalled and not self._dispatching and not self.transport.disconnecting
                and (self._held is not None or self._decoder.bufferedBytes())):
            # Requests read before the pause, not dispatched yet.
            self._resumeInput()

    def outputOverflow(self) -> None:
        self._log.warn("Closing connection from {peer}: more than {limit} bytes of output "
                       "it does not read", peer=self._peer(), limit=self.factory.outputHardLimit)
        self.transport.abortConnection()

    # -- input ------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        got = len(data)
        self._stats.bytesIn += got
        decoder = self._decoder
        largeReads = self._largeReads
        if largeReads > 0:
            self._sizeLargeReads(got)
        elif (largeReads == 0 and self._lastRead >= LARGE_READ_FROM
              and decoder.unfinishedSize() >= LARGE_READ_FROM):
            # A large message was split across reads: read such messages
            # whole from now on (a full read of small packets does not count).
            self._sizeLargeReads(LARGE_READ_FROM)
        elif self._sizeReads:
            sizeNextRead(self.transport, got)
        self._lastRead = got
        # (Its type's last byte first: the cheapest test that fails for other reads.)
        if (len(data) > HEADER_SIZE and data[7] == _SUBMIT_JOB_BG and self._table is _DISPATCH
                and not self._stalled and self._held is None and decoder.error is None
                and not decoder.bufferedBytes()):
            # A pipelining client's background submissions: taken straight
            # from the read, no message list, no copy of each body.
            self._dispatching = True
            try:
                taken = self._submitRunInRead(data)
            finally:
                self._dispatching = False
            if taken:
                if self.transport.disconnecting:
                    return
                if taken == len(data):
                    if self._reserved:
                        self._checkUnfinished(0)
                    return
                data = data[taken:]
        if self._stalled or self._held is not None:
            # Not dispatching now: keep it, undecoded, in order.
            decoder.add(data)
        else:
            messages = decoder.feedFlat(data)
            if messages or decoder.error is not None:
                self._dispatching = True
                try:
                    self._dispatch(messages)
                finally:
                    self._dispatching = False
        size = decoder.unfinishedSize()
        if size or self._reserved:
            self._checkUnfinished(size)

    def _sizeLargeReads(self, got: int) -> None:
        """
        Size the next read for large messages: once a message of
        L{LARGE_READ_FROM} bytes or more was split across reads (called with
        C{got} = L{LARGE_READ_FROM}), and after every read of at least that
        many bytes, read up to L{LARGE_READ} bytes at once, until
        L{LARGE_READS_KEPT} reads in a row are smaller; then go back to the
        size before.

        Twisted's 64 KiB reads split every message of 64 KiB or more in two,
        which costs a second read, a second pass through the reactor and
        the decoder, and a copy to join the two; a read of up to
        L{LARGE_READ} takes such a message whole (and the decoder gives its
        body as a view of the read). L{LARGE_READ} stays below glibc's
        mmap threshold (128 KiB), so that CPython's read buffer, allocated
        at its full size and then shrunk, comes from the heap, not from a
        fresh mapping. (Separate from any sizing of small reads, which it
        puts back when large messages stop.)
        """
        if self._largeReads < 0:
            return
        transport = self.transport
        if got >= LARGE_READ_FROM:
            if not self._largeReads:
                self._smallReadSize = transport.bufferSize
                transport.bufferSize = LARGE_READ
            self._largeReads = LARGE_READS_KEPT
            return
        self._largeReads -= 1
        if not self._largeReads:
            transport.bufferSize = self._smallReadSize

    def _resumeInput(self) -> None:
        """Dispatch what was received while dispatching was stopped."""
        self._dispatching = True
        try:
            held = self._held
            if held is not None:
                self._held = None
                self._dispatch(held)
                if self._stalled or self.transport.disconnecting:
                    return
            self._dispatch(self._decoder.feedFlat(b""))
        finally:
            self._dispatching = False
        self._checkUnfinished(self._decoder.unfinishedSize())

    def _dispatch(self, messages: List[Any]) -> None:
        """
        Dispatch C{messages} (kinds and bodies alternating) in order, until
        the output is full or a listing is being produced: the rest is held,
        in order, until it drains.
        """
        dispatch = self._table
        transport = self.transport
        packets = self._stats.packetsIn
        roles = _ROLES
        output = self._output
        turnStart = output.queued
        # By index: no iterator objects per read (most reads hold one message).
        count = len(messages)
        index = 0
        while index < count:
            kind = messages[index]
            body = messages[index + 1]
            index += 2
            if (kind == _SUBMIT_JOB_BG and index < count and messages[index] == _SUBMIT_JOB_BG
                    and dispatch is _DISPATCH):
                # A run of background submissions (a pipelining client).
                taken = self._submitRun(messages, index - 2, count)
            else:
                taken = 0
            if taken:
                index += 2 * taken - 2
            elif kind > 0:
                packets[kind] += 1
                role = roles[kind]
                if role is not None and role != self._role:
                    self._stats.roleChanged(self._role, role)
                    self._role = role
                try:
                    dispatch[kind](self, body)
                except _Malformed as e:
                    self.factory.peerLog.warn(self, "malformed", "Malformed {kind} packet from {peer}",
                                              kind=PacketType(kind).name, peer=self._peer())
                    self.state.sendError(self.session, _invalidPacket(*e.args))
            elif kind == TEXT:
                packets[TEXT] += 1
                if self._role != ADMIN:
                    self._stats.roleChanged(self._role, ADMIN)
                    self._role = ADMIN
                self._adminLine(body)
                if output.queued - turnStart > ADMIN_TURN_BYTES and not transport.disconnecting:
                    # This turn's share is used: the rest of the input waits a turn.
                    self._waitForNextTurn()
            else:
                self.factory.peerLog.warn(self, "magic", "Response magic on packet {kind} from {peer}",
                                          kind=-kind, peer=self._peer())
                self.state.sendError(self.session, ERR_INVALID_MAGIC)
            if transport.disconnecting:
                return
            if self._stalled:
                if index < count:
                    self._held = messages[index:]
                return
        decoder = self._decoder
        if decoder.error is not None:
            self._log.warn("Closing connection from {peer}: {error}", peer=self._peer(),
                           error=str(decoder.error))
            if "exceeds the limit" in str(decoder.error):
                # Tell the peer why; loseConnection also stops reading the body.
                self._stats.errorSent(ERR_TOO_LARGE)
                self.write(ERR_TOO_LARGE)
                self._output.flush()
                self.closeWhenWritten()
            else:
                self._output.discard()
                self.transport.abortConnection()

    def _submitRunInRead(self, data: bytes) -> int:
        """
        Make the complete SUBMIT_JOB_BG packets at the start of C{data} (a
        read, nothing held before it) as L{_submitRun} does, reading their
        payloads straight from it; return how many bytes they took (0: none,
        the decoder takes the read as usual). Anything else stops the run:
        another type or function, a unique id, a large or unfinished packet,
        the output's room; the decoder then checks what follows.
        """
        end = len(data)
        if end < HEADER_SIZE or not data.startswith(_SUBMIT_JOB_BG_HEAD):
            return 0
        size = _UINT32.unpack_from(data, 8)[0]
        stop = HEADER_SIZE + size
        first = data.find(b"\0", HEADER_SIZE, stop)
        if stop > end or first < 0 or first + 2 > stop or data[first + 1] != 0:
            return 0
        state = self.state
        name = data[HEADER_SIZE:first]
        if name not in state.functions:
            return 0  # checked and created by the generic path first
        head = data[HEADER_SIZE:first + 2]
        skip = first + 2
        shortest = skip - HEADER_SIZE
        left = self._runRoom()
        payloads: List[bytes] = []
        offset = 0
        while left:
            # The header, then the function's name and an empty unique, in
            # the body (not in the bytes after a body cut short).
            if (size >= _BIG or size < shortest
                    or not data.startswith(head, offset + HEADER_SIZE)):
                break
            payloads.append(data[offset + skip:stop])
            left -= 1
            offset = stop
            if end - offset < HEADER_SIZE or not data.startswith(_SUBMIT_JOB_BG_HEAD, offset):
                break
            size = _UINT32.unpack_from(data, offset + 8)[0]
            stop = offset + HEADER_SIZE + size
            if stop > end:
                break
        if payloads:
            self._submitPayloads(name, payloads)
        return offset

    def _runRoom(self) -> int:
        """How many background submissions' replies the output has room for."""
        output = self._output
        room = (output.softLimit - output.queued) // (_REPLY_ROOM + len(self.state.handlePrefix))
        return room if room > 0 else 0

    def _submitPayloads(self, name: bytes, payloads: List[bytes]) -> None:
        """Count and make a run of background submissions for function C{name}."""
        stats = self._stats
        stats.packetsIn[_SUBMIT_JOB_BG] += len(payloads)
        if self._role != CLIENT:
            stats.roleChanged(self._role, CLIENT)
            self._role = CLIENT
        self.state.submitBackgroundMany(self.session, name, payloads)

    def _submitRun(self, messages: List[Any], start: int, count: int) -> int:
        """
        Make the SUBMIT_JOB_BG requests at C{messages[start:]} (kinds and
        bodies alternating) in one call of
        L{JobServerState.submitBackgroundMany}, as many as follow in a row
        for one known function without a unique id, and as the output has
        room for their replies under its soft limit. Return how many were
        taken (0: none, the first is for L{_submitter}'s path).
        """
        body = messages[start + 1]
        end = body.find(b"\0")
        if end < 0 or len(body) <= end + 1 or body[end + 1] != 0 or len(body) >= _BIG:
            return 0
        state = self.state
        name = body[:end]
        if name not in state.functions:
            return 0  # checked and created by the generic path first
        # Their replies are written at once: never past the soft limit.
        stop = min(count, start + 2 * self._runRoom())
        prefix = body[:end + 2]
        skip = end + 2
        payloads: List[bytes] = []
        index = start
        while index < stop and messages[index] == _SUBMIT_JOB_BG:
            body = messages[index + 1]
            if len(body) >= _BIG or not body.startswith(prefix):
                break
            payloads.append(body[skip:])
            index += 2
        if payloads:
            self._submitPayloads(name, payloads)
        return len(payloads)

    def _checkUnfinished(self, size: int) -> None:
        """
        Once per read that ends inside a message (C{size}: its
        L{PacketDecoder.unfinishedSize}) or releases a reservation: an
        unfinished message reserves its size from the partial-packet budget
        if large, and a new one is timed.

        Called for most reads of large messages, so the common cases (a
        message completed, a new one started, a reservation that fits) are
        plain field updates here; only waiting for the budget calls out.
        """
        factory = self.factory
        reserved = self._reserved
        if not size:
            if reserved:
                # Its message is complete: give its reservation back.
                self._reserved = 0
                factory.partialReserved -= reserved
                if factory._budgetWaiters:
                    factory._admitWaiters()
            return
        serial = self._decoder.partialSerial
        if serial != self._partialSerial:
            # A new unfinished message: note when it began (the one deadline
            # timer of the factory looks at it later).
            self._partialSerial = serial
            if not self.transport.disconnecting:
                factory._partialSince[self] = factory._seconds()
                if factory._deadlineCall is None:
                    factory._armDeadline(factory.packetDeadline)
        if size >= SMALL_MESSAGE and size != reserved:
            others = factory.partialReserved - reserved
            if others == 0 or others + size <= factory.partialBudget:
                factory.partialReserved = others + size
                self._reserved = size
            else:
                factory._waitForBudget(self, size)

    def _tooLate(self, deadline: float) -> None:
        """Its unfinished message has taken longer than C{deadline} seconds."""
        self._log.warn("Closing connection from {peer}: a message unfinished after "
                       "{deadline} seconds", peer=self._peer(), deadline=deadline)
        self._output.discard()
        self.transport.abortConnection()

    def connectionLost(self, reason: Any = None) -> None:
        # Break every reference between this protocol, its session, its
        # output and its transport, and drop the buffers now: the server
        # raises the cyclic collector's thresholds, so memory that waited
        # for it would pile up.
        self._output.stopProducing()
        self._stats.connections[self._role] -= 1
        self.factory._connectionGone(self)
        self.state.disconnect(self.session)
        self.session.peer = _CLOSED_PEER
        self._decoder.clear()
        self._held = None
        self._listing = None
        if self._turnCall is not None:
            self._turnCall.cancel()
            self._turnCall = None
        self.__dict__.pop("write", None)
        self.__dict__.pop("writeSequence", None)
        waiters, self._closedWaiters = self._closedWaiters, []
        for d in waiters:
            d.callback(None)

    def closeWhenWritten(self) -> None:
        """
        Close once everything written is sent. A TLS transport of Twisted's
        waits for its producer (this connection's output) to unregister
        before it closes: the output is told, and unregisters once it has
        handed over all it holds (L{txgear._tlsprotocol} does the same for
        C{--tls-port}; this covers C{ssl:} endpoints given to C{--port}).
        """
        transport: Any = self.transport
        transport.loseConnection()
        if ISSLTransport.providedBy(transport) and getattr(transport, "disconnecting", False):
            self._output.transportClosing()

    def whenClosed(self) -> "Deferred[None]":
        """Fires once this connection is closed."""
        d: Deferred[None] = Deferred()
        self._closedWaiters.append(d)
        return d

    def accessNames(self) -> Tuple[str, ...]:
        """
        The names access control knows this connection by (see
        L{txgear.server._identity.peerNames}), computed on first use.
        """
        names = self._names
        if names is None:
            names = self._names = peerNames(self.transport)
        return names

    def knownNames(self) -> Optional[Tuple[str, ...]]:
        """L{accessNames} if computed already, else C{None}."""
        return self._names

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
        guard = self.factory.guard
        if guard is None:
            reply, action = self.factory.admin.run(self.session, line)
        else:
            reply, action = guard.runAdmin(self, line)
        if action == CLOSE:
            self._log.warn("Admin line with too many tokens from {peer}; closing", peer=self._peer())
            self._output.flush()
            self.closeWhenWritten()
            return
        if isinstance(reply, Deferred):
            # Read from the store (show result): what follows waits for it.
            answered: List[bytes] = []
            reply.addCallback(answered.append)
            if answered:
                reply = answered[0]
            else:
                self._pause(_LISTING)
                reply.addCallback(lambda _: self._asyncReply(answered[0]))
                return
        if type(reply) is not bytes:
            # A long listing: produced in pieces as the peer reads them.
            self._listing = iter(cast(Iterable[bytes], reply))
            self._pause(_LISTING)
            self._produceListing()
            return
        self.session.write(reply)
        if action == SHUTDOWN:
            self.factory.requestShutdown(graceful=False)
        elif action == GRACEFUL:
            self.factory.requestShutdown(graceful=True)

    def _asyncReply(self, reply: bytes) -> None:
        """An admin reply read from the store: send it, then read on."""
        if self.transport.disconnecting:
            return
        self.session.write(reply)
        self._resume(_LISTING)
        if (not self._stalled and not self._dispatching
                and (self._held is not None or self._decoder.bufferedBytes())):
            self._resumeInput()

    def _waitForNextTurn(self) -> None:
        """Stop producing and dispatching for this connection until the next reactor turn."""
        if _TURN in self._pausedFor:
            return
        self._pause(_TURN)
        self._turnCall = self.state.clock.callLater(0, self._nextTurn)

    def _nextTurn(self) -> None:
        """A new turn: go on with the listing, then with the input that waited."""
        self._turnCall = None
        if self.transport.disconnecting:
            return
        self._resume(_TURN)
        if self._listing is not None:
            self._produceListing()
        if (not self._stalled and not self._dispatching
                and (self._held is not None or self._decoder.bufferedBytes())):
            self._resumeInput()

    def _produceListing(self) -> None:
        """
        Write pieces of the listing in progress while the output has room,
        at most L{ADMIN_TURN_BYTES} of them a turn.
        """
        listing = self._listing
        output = self._output
        write = self.session.write
        turnEnd = output.queued + ADMIN_TURN_BYTES
        while not output.isFull():
            if output.queued > turnEnd:
                self._waitForNextTurn()
                return
            piece = next(listing, None)  # type: ignore[arg-type]
            if piece is None:
                # Done: the input that waited behind it is dispatched by
                # whoever called (the dispatch loop, or outputDrained).
                self._listing = None
                self._resume(_LISTING)
                return
            write(piece)

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
        self.state.sendError(self.session, encodeResponse(PacketType.ERROR, *problem))
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
        self.state.grab(self.session, _GRAB_JOB)

    def _grabJobUniq(self, body: bytes) -> None:
        self.state.grab(self.session, _GRAB_JOB_UNIQ)

    def _grabJobAll(self, body: bytes) -> None:
        self.state.grab(self.session, _GRAB_JOB_ALL)

    def _workStatus(self, body: bytes) -> None:
        handle, numerator, denominator = _split(body, PacketType.WORK_STATUS)
        self.state.workStatus(self.session, handle, numerator, denominator, body)

    def _workComplete(self, body: bytes) -> None:
        if type(body) is not bytes:
            self.state.workEnd(self.session, _WORK_COMPLETE,
                               _viewHandle(body, PacketType.WORK_COMPLETE), body)
            return
        end = body.find(b"\0")
        if end < 0:
            raise _Malformed(PacketType.WORK_COMPLETE, 1)
        self.state.workEnd(self.session, _WORK_COMPLETE, body[:end], body)

    def _workFail(self, body: bytes) -> None:
        self.state.workEnd(self.session, _WORK_FAIL, body, body)

    def _workException(self, body: bytes) -> None:
        end = body.find(b"\0")
        if end < 0:
            raise _Malformed(PacketType.WORK_EXCEPTION, 1)
        self.state.workEnd(self.session, PacketType.WORK_EXCEPTION, body[:end], body)

    def _workData(self, body: bytes) -> None:
        if type(body) is not bytes:
            self.state.workData(self.session, PacketType.WORK_DATA,
                                _viewHandle(body, PacketType.WORK_DATA), body)
            return
        end = body.find(b"\0")
        if end < 0:
            raise _Malformed(PacketType.WORK_DATA, 1)
        self.state.workData(self.session, PacketType.WORK_DATA, body[:end], body)

    def _workWarning(self, body: bytes) -> None:
        if type(body) is not bytes:
            self.state.workData(self.session, PacketType.WORK_WARNING,
                                _viewHandle(body, PacketType.WORK_WARNING), body)
            return
        end = body.find(b"\0")
        if end < 0:
            raise _Malformed(PacketType.WORK_WARNING, 1)
        self.state.workData(self.session, PacketType.WORK_WARNING, body[:end], body)

    def _getStatus(self, body: bytes) -> None:
        self.state.getStatus(self.session, body)

    def _getStatusUnique(self, body: bytes) -> None:
        self.state.getStatusUnique(self.session, body)

    def _echo(self, body: bytes) -> None:
        if type(body) is not bytes:
            self.session.writeSequence([_ECHO_HEADER + len(body).to_bytes(4, "big"), body])
            return
        self.session.write(_ECHO_HEADER + len(body).to_bytes(4, "big") + body)

    def _setClientId(self, body: bytes) -> None:
        self.state.setClientId(self.session, cleanClientId(body))

    def _optionReq(self, body: bytes) -> None:
        if body.lower() == b"exceptions":
            self.session.exceptions = True
            self.session.write(encodeResponse(PacketType.OPTION_RES, body))
        else:
            self.state.sendError(self.session, ERR_UNKNOWN_OPTION)

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
            self.state.sendError(self.session, ERR_BAD_EPOCH)
            return
        self.state.submit(self.session, name, unique, payload, NORMAL, True, when)

    def _submitSched(self, body: bytes) -> None:
        args = _split(body, PacketType.SUBMIT_JOB_SCHED)
        if args[0] not in self.state.functions and self._refusedName(args[0]):
            return
        try:
            when = nextRunTime(args[2:7], self.state.clock.seconds())
        except ScheduleError as e:
            self.state.sendError(self.session, encodeResponse(
                PacketType.ERROR, b"INVALID_ARGUMENT", str(e).encode("utf-8")))
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
        self.state.sendError(self.session, ERR_INVALID_COMMAND)


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
        # A large workload is kept as a view of the body instead of a copy
        # (the body may be a view of its read already: see _VIEW_KINDS).
        head = body if type(body) is bytes else bytes(body[:_VIEW_HEAD])
        first = head.find(b"\0")
        second = head.find(b"\0", first + 1) if first >= 0 else -1
        if second < 0 and head is not body:
            head = bytes(body)  # arguments longer than any name or unique
            first = head.find(b"\0")
            second = head.find(b"\0", first + 1) if first >= 0 else -1
        if second < 0:
            raise _Malformed(kind, 1 if first < 0 else 2)
        name = head[:first]
        if name not in self.state.functions and self._refusedName(name):
            return
        unique = head[first + 1:second]
        payload: Any = memoryview(body)[second + 1:] if unique != b"-" else bytes(body[second + 1:])
        self.state.submit(self.session, name, unique, payload, priority, background)

    submit.__name__ = "_submit_" + PacketType(kind).name
    return submit


def _viewHandle(body: Any, kind: int) -> bytes:
    """The handle that starts C{body}, a view (see L{_VIEW_KINDS})."""
    head = bytes(body[:_VIEW_HEAD])
    end = head.find(b"\0")
    if end < 0 and len(body) > _VIEW_HEAD:
        head = bytes(body)
        end = head.find(b"\0")
    if end < 0:
        raise _Malformed(kind, 1)
    return head[:end]


#: The packet types whose handlers take a large body as a view of its read
#: (L{PacketDecoder}'s C{viewKinds}): a workload or result passed on as it
#: came, never copied. Not for connections under access control, whose
#: guard reads bodies as C{bytes}.
_VIEW_KINDS = (PacketType.SUBMIT_JOB, PacketType.SUBMIT_JOB_BG, PacketType.SUBMIT_JOB_HIGH,
               PacketType.SUBMIT_JOB_HIGH_BG, PacketType.SUBMIT_JOB_LOW,
               PacketType.SUBMIT_JOB_LOW_BG, PacketType.WORK_COMPLETE, PacketType.WORK_DATA,
               PacketType.WORK_WARNING, PacketType.ECHO_REQ)


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
#: The same, for connections under access control (see L{txgear.server._guard}).
_GUARDED_DISPATCH = guardedDispatch(_DISPATCH)

#: The role a request reveals (see docs/operations.md), by packet type; C{None}:
#: the request says nothing of it (ECHO_REQ, SET_CLIENT_ID, WORK_* results...).
_ROLES: Tuple[Optional[int], ...] = tuple(
    WORKER if kind in (PacketType.CAN_DO, PacketType.CAN_DO_TIMEOUT, PacketType.CANT_DO,
                       PacketType.RESET_ABILITIES, PacketType.PRE_SLEEP, PacketType.GRAB_JOB,
                       PacketType.GRAB_JOB_UNIQ, PacketType.GRAB_JOB_ALL)
    else CLIENT if kind in (PacketType.SUBMIT_JOB, PacketType.SUBMIT_JOB_BG,
                            PacketType.SUBMIT_JOB_HIGH, PacketType.SUBMIT_JOB_HIGH_BG,
                            PacketType.SUBMIT_JOB_LOW, PacketType.SUBMIT_JOB_LOW_BG,
                            PacketType.SUBMIT_JOB_EPOCH, PacketType.SUBMIT_JOB_SCHED,
                            PacketType.SUBMIT_REDUCE_JOB,
                            PacketType.SUBMIT_REDUCE_JOB_BACKGROUND, PacketType.GET_STATUS,
                            PacketType.GET_STATUS_UNIQUE, PacketType.OPTION_REQ)
    else None
    for kind in range(MAX_TYPE + 1))


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
    @param outputSoftLimit: bytes of output a connection may leave unread
        before its own input is no longer dispatched nor read (until half of
        it has drained).
    @param outputHardLimit: bytes of output past which a connection that
        does not read is closed; by default the larger of 64 MiB and room
        for two packets of the largest size plus the soft limit.
    @param partialBudget: bytes all connections' unfinished messages of
        L{SMALL_MESSAGE} bytes or more may reserve together (their announced
        size); past it, such a connection is not read until there is room.
    @param packetDeadline: seconds a message may take from its first byte to
        its last before the connection is closed.
    @param access: an L{AccessControl} to apply (C{None}: everyone may do
        everything, as with gearmand). Set it before connections arrive:
        a connection keeps the choice it found.
    @ivar connections: the live protocols, by session.
    @ivar guard: the L{AccessGuard} applying C{access}, or C{None}.
    """

    protocol = GearmanServerProtocol  # type: ignore[assignment]
    noisy = False

    def __init__(self, state: Optional[JobServerState] = None, maxPacket: int = DEFAULT_MAX_PACKET,
                 allowShutdown: bool = False,
                 shutdown: Optional[Callable[..., Any]] = None,
                 verbosity: Callable[[], str] = lambda: "INFO", exceptions: bool = False,
                 maxFunctionName: int = DEFAULT_MAX_FUNCTION_NAME,
                 outputSoftLimit: int = DEFAULT_OUTPUT_SOFT_LIMIT,
                 outputHardLimit: Optional[int] = None,
                 partialBudget: int = DEFAULT_PARTIAL_BUDGET,
                 packetDeadline: float = DEFAULT_PACKET_DEADLINE,
                 access: Optional[AccessControl] = None) -> None:
        self.state = state if state is not None else JobServerState()
        self.writer = TurnWriter(self.state.clock)
        self.exceptions = exceptions
        self.maxPacket = maxPacket
        self.maxFunctionName = maxFunctionName
        #: Rate-limits the log lines peers cause (shared with the state's).
        self.peerLog: PeerLog = self.state.peerLog
        self.outputSoftLimit = outputSoftLimit
        if outputHardLimit is None:
            # Always room for one packet of the largest size, plus the soft limit.
            outputHardLimit = max(DEFAULT_OUTPUT_HARD_LIMIT,
                                  2 * (maxPacket + ARGUMENT_ALLOWANCE) + outputSoftLimit)
        self.outputHardLimit = outputHardLimit
        self.partialBudget = partialBudget
        self.packetDeadline = packetDeadline
        # Bytes reserved by unfinished large messages, and who waits for room, in order.
        self.partialReserved = 0
        self._budgetWaiters: Dict[GearmanServerProtocol, int] = {}
        # When each connection's unfinished message began (entries are dropped
        # lazily, by the one deadline timer), and that timer.
        self._partialSince: Dict[GearmanServerProtocol, float] = {}
        self._deadlineCall: Any = None
        self._seconds = self.state.clock.seconds
        self.connections: Dict[Session, GearmanServerProtocol] = {}
        self._shutdown = shutdown
        self.admin = AdminCommands(self.state, self._describe, verbosity, allowShutdown,
                                   maxFunctionName)
        self.guard: Optional[AccessGuard] = None
        self._access: Optional[AccessControl] = None
        self.access = access

    @property
    def access(self) -> Optional[AccessControl]:
        """The access control list applied to new connections, or C{None}."""
        return self._access

    @access.setter
    def access(self, access: Optional[AccessControl]) -> None:
        if self.guard is not None:
            self.guard.close()
        self._access = access
        self.guard = (AccessGuard(access, self.state, self.admin, self.connections)
                      if access is not None else None)

    # The partial-packet budget and the packet deadline: the common cases
    # are inline in GearmanServerProtocol._checkUnfinished.

    def _waitForBudget(self, protocol: GearmanServerProtocol, size: int) -> None:
        """
        C{protocol}'s unfinished message of C{size} bytes does not fit the
        budget: it gives back what it held, and waits, unread, for room. (A
        connection alone may always reserve, whatever the budget, so one
        packet of the largest size always arrives.)
        """
        self.partialReserved -= protocol._reserved
        protocol._reserved = 0
        self._budgetWaiters[protocol] = size
        protocol._pause(_BUDGET)

    def _releasePartial(self, protocol: GearmanServerProtocol) -> None:
        """C{protocol} no longer holds (nor waits for) a reservation."""
        self.partialReserved -= protocol._reserved
        protocol._reserved = 0
        self._budgetWaiters.pop(protocol, None)
        self._admitWaiters()

    def _admitWaiters(self) -> None:
        """Reserve for the waiting connections, in order, while their messages fit."""
        waiters = self._budgetWaiters
        # First come, first served: a large waiter is not overtaken forever.
        while waiters:
            waiter, size = next(iter(waiters.items()))
            if self.partialReserved and self.partialReserved + size > self.partialBudget:
                break
            del waiters[waiter]
            self.partialReserved += size
            waiter._reserved = size
            waiter._resume(_BUDGET)

    def _armDeadline(self, delay: float) -> None:
        self._deadlineCall = self.state.clock.callLater(delay, self._checkDeadlines)

    def _checkDeadlines(self) -> None:
        """
        Close each connection whose unfinished message is older than the
        packet deadline; forget those with none; re-arm for the oldest left.
        """
        self._deadlineCall = None
        clock = self.state.clock
        now = clock.seconds()
        deadline = self.packetDeadline
        since = self._partialSince
        first: Optional[float] = None
        for protocol, started in list(since.items()):
            if protocol.transport.disconnecting or not protocol._decoder.unfinishedSize():
                del since[protocol]
            elif protocol._pausedFor:
                # Not read by our choice: the peer cannot be late meanwhile.
                since[protocol] = now
                first = now if first is None else first
            elif now - started >= deadline:
                del since[protocol]
                protocol._tooLate(deadline)
            elif first is None or started < first:
                first = started
        if first is not None:
            self._armDeadline(first + deadline - now)

    def _connectionGone(self, protocol: GearmanServerProtocol) -> None:
        self.connections.pop(protocol.session, None)
        if protocol._reserved or protocol in self._budgetWaiters:
            self._releasePartial(protocol)
        since = self._partialSince
        if since.pop(protocol, None) is not None and not since and self._deadlineCall is not None:
            if self._deadlineCall.active():
                self._deadlineCall.cancel()
            self._deadlineCall = None

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
            protocol.closeWhenWritten()

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

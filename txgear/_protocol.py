# -*- test-case-name: tests.test_protocol -*-
"""
Shared plumbing of every txgear connection: decoding the byte stream,
dispatching packets to C{packet_<NAME>} methods, and writing packets.
"""
from __future__ import annotations

import sys
from typing import Any, Callable, ClassVar, List, Optional

from twisted.internet.interfaces import ITCPTransport
from twisted.internet.protocol import Protocol
from txgear._log import logger

from txgear._packet import (
    ARGUMENT_COUNTS,
    DEFAULT_MAX_PACKET,
    MAX_TYPE,
    PacketDecoder,
    PacketType,
    encodeRequest,
    requestHeader,
    responseHeader,
    splitArguments,
)
from txgear._turnwriter import directSocket, turnWriterFor
from txgear.errors import ProtocolError

#: Payloads at least this large are written without being copied into the packet.
_BIG_PAYLOAD = 64 * 1024

#: The read sizes of a connection with adaptive reads (see
#: L{GearmanPeerProtocol.adaptiveReads}): the smallest, and the largest
#: (Twisted's default).
SMALL_READ = 1024
LARGE_READ = 64 * 1024


def setNoDelay(transport: Any) -> None:
    """
    Turn Nagle's algorithm off on a TCP transport: Gearman's small packets
    otherwise wait for delayed ACKs (40 ms stalls on foreground jobs).
    """
    if ITCPTransport.providedBy(transport):
        try:
            transport.setTcpNoDelay(True)
        except OSError:
            pass


def sizeNextRead(transport: Any, got: int) -> None:
    """
    Size a TCP transport's next read (its C{bufferSize}, what
    C{tcp.Connection.doRead} asks C{recv} for) after a read of C{got} bytes:
    doubled while reads fill it, up to L{LARGE_READ}; halved while they use
    less than a quarter of it, down to L{SMALL_READ}.

    On PyPy a read's whole buffer is allocated in the young generation
    (its nursery, 1 MiB): Twisted's fixed 64 KiB reads of a few small
    packets fill it every few reads, and each minor collection then moves
    everything young and alive (jobs in flight) to the old generation.
    """
    size = transport.bufferSize
    if got >= size:
        if size < LARGE_READ:
            transport.bufferSize = min(size * 2, LARGE_READ)
    elif got < size // 4 and size > SMALL_READ:
        transport.bufferSize = max(size // 2, SMALL_READ)


def toBytes(value: Any, what: str) -> bytes:
    """
    Accept C{bytes}, C{str} (encoded as UTF-8), C{bytearray} or C{memoryview}
    where the API takes bytes.

    @raise TypeError: for anything else, naming C{what}.
    """
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    raise TypeError(f"{what} must be bytes or str, not {type(value).__name__}")


def _buildDispatch(cls: type) -> List[Optional[Callable[..., None]]]:
    """
    The handler of each packet type, called as C{handler(protocol, body)}.

    A class handles a packet type with C{packet_<NAME>(self, *arguments)},
    or with C{body_<NAME>(self, body)}, which splits the body itself (the
    hot packets: no argument list, no extra call). Of the two, the one the
    most derived class defines wins, so a subclass can override either.
    """
    table: List[Optional[Callable[..., None]]] = [None] * (MAX_TYPE + 1)
    for kind in PacketType:
        bodyName, packetName = "body_" + kind.name, "packet_" + kind.name
        for klass in cls.__mro__:
            if bodyName in vars(klass):
                table[kind] = getattr(cls, bodyName)
                break
            if packetName in vars(klass):
                table[kind] = _splitting(kind, getattr(cls, packetName))
                break
    return table


def _splitting(kind: int, handler: Callable[..., None]) -> Callable[..., None]:
    """A C{packet_<NAME>} handler as a C{(protocol, body)} one."""
    count = ARGUMENT_COUNTS[kind]
    if count == 1:
        return handler  # its one argument is the body

    if count == 0:
        def noArguments(self: Any, body: bytes) -> None:
            handler(self)
        return noArguments

    def split(self: Any, body: bytes) -> None:
        handler(self, *splitArguments(kind, body))
    return split


def missingArguments(kind: int, found: int) -> ProtocolError:
    """The error of a packet body with too few arguments (as L{splitArguments})."""
    return ProtocolError(f"packet type {kind} needs {ARGUMENT_COUNTS[kind]} arguments, "
                         f"body has {found}")


class GearmanPeerProtocol(Protocol):
    """
    Base class of the client and worker connections (the side that sends
    C{\\0REQ} packets and receives C{\\0RES} ones).

    Subclasses define C{packet_<NAME>(self, *arguments)} methods (or
    C{body_<NAME>(self, body)}, see L{_buildDispatch}); a packet type with
    no method is a protocol error. Bytes that are not valid framing abort
    the connection: nothing after them can be trusted.

    @ivar maxPacket: the largest packet body accepted from the server.
    @ivar adaptiveReads: on a plain TCP or UNIX connection, read no more at
        once than recent reads brought (from L{SMALL_READ}, doubled while
        reads fill it, up to L{LARGE_READ}; halved while they use less than
        a quarter), instead of always Twisted's 64 KiB. On PyPy (the
        default there) a read's whole buffer is allocated in the young
        generation, so 64 KiB reads of a few small packets fill it every few
        jobs, and each minor collection then moves every job in flight to
        the old generation, for major collections to free: most of a small
        job's cost. CPython's reads cost the same either way.
    """

    _log = logger()
    transport: Any  # a connected transport
    _dispatch: ClassVar[List[Optional[Callable[..., None]]]] = []
    maxPacket = DEFAULT_MAX_PACKET
    adaptiveReads = sys.implementation.name == "pypy"
    _sizeReads = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._dispatch = _buildDispatch(cls)

    def connectionMade(self) -> None:
        setNoDelay(self.transport)
        self._decoder = PacketDecoder(expectRequests=False, maxPacket=self.maxPacket)
        # Packets leave once per reactor turn (see txgear._turnwriter) on
        # plain TCP/UNIX connections, where the output can also hold a close
        # until it is sent, whoever closes; others are written at once.
        reactor = getattr(self.transport, "reactor", None)
        direct = directSocket(self.transport) is not None
        if direct and hasattr(reactor, "callLater"):
            output: Any = turnWriterFor(reactor).output(self.transport)
        else:
            output = self.transport
        self._write = output.write
        self._writeSequence = output.writeSequence
        if direct and self.adaptiveReads:
            # tcp.Connection.doRead reads up to its bufferSize.
            self._sizeReads = True
            self.transport.bufferSize = SMALL_READ

    def dataReceived(self, data: bytes) -> None:
        if self._sizeReads:
            sizeNextRead(self.transport, len(data))
        decoder = self._decoder
        dispatch = self._dispatch
        messages = iter(decoder.feedFlat(data))
        for kind, body in zip(messages, messages):
            if kind < 0:
                self._protocolViolation(f"request packet {-kind} sent to a client")
                return
            handler = dispatch[kind]
            if handler is None:
                self._protocolViolation(f"unexpected packet {PacketType(kind).name}")
                return
            try:
                handler(self, body)
            except ProtocolError as e:
                self._protocolViolation(str(e))
                return
            if self.transport is None or self.transport.disconnecting:
                return
        if decoder.error is not None:
            self._protocolViolation(str(decoder.error))

    def _protocolViolation(self, message: str) -> None:
        self._log.warn("Protocol error from {peer}: {message}; closing", peer=self._peerName(), message=message)
        if self.transport is not None:
            self.transport.abortConnection()

    def _peerName(self) -> str:
        try:
            return str(self.transport.getPeer())
        except Exception:
            return "?"

    def sendHandlePacket(self, kind: int, handle: bytes, data: bytes) -> None:
        """Write one request packet of two arguments, a job handle and data."""
        if len(data) >= _BIG_PAYLOAD:
            self._writeSequence(_sequence(requestHeader, kind, (handle, data)))
        else:
            self._write(b"".join((requestHeader(kind, len(handle) + 1 + len(data)), handle, b"\0",
                                  data)))

    def sendPacket(self, kind: int, *args: bytes) -> None:
        """Write one request packet."""
        if args and len(args[-1]) >= _BIG_PAYLOAD:
            self._writeSequence(_sequence(requestHeader, kind, args))
        else:
            self._write(encodeRequest(kind, *args))


def _sequence(header: Callable[[int, int], bytes], kind: int, args: tuple) -> list:
    """A packet as a list of buffers, so a large last argument is not copied."""
    head = b"\0".join(args[:-1])
    if len(args) > 1:
        head += b"\0"
    payload = args[-1]
    return [header(kind, len(head) + len(payload)) + head, payload]


def responseSequence(kind: int, args: tuple) -> list:
    """A response packet as a list of buffers (see L{_sequence})."""
    return _sequence(responseHeader, kind, args)


__all__ = ["GearmanPeerProtocol", "missingArguments", "responseSequence", "setNoDelay",
           "sizeNextRead"]

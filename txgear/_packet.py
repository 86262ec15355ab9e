# -*- test-case-name: tests.test_packet -*-
"""
The Gearman binary packet codec. Pure: no I/O, no Twisted.

A packet is a 12-byte header (magic C{\\0REQ} or C{\\0RES}, type and body size
as big-endian 32-bit integers) followed by the body, whose arguments are
separated by NUL bytes; the last argument runs to the end of the body and may
itself contain NULs.

L{PacketDecoder} turns a byte stream into C{(kind, body)} pairs, optionally
interleaved with admin text lines (the job server's port accepts both).
"""
from __future__ import annotations

import struct
import sys
from enum import IntEnum
from typing import Any, Iterable, List, Optional, Tuple

from txgear.errors import ProtocolError

REQ = b"\0REQ"
RES = b"\0RES"
HEADER = struct.Struct(">4sII")
HEADER_SIZE = 12

#: Default largest packet body accepted (16 MiB).
DEFAULT_MAX_PACKET = 16 * 1024 * 1024
#: Largest admin text line accepted (gearmand's receive buffer is 8 KiB).
DEFAULT_MAX_LINE = 8192

#: The C{kind} L{PacketDecoder} gives to an admin text line.
TEXT = 0

#: Bodies at least this large, of the kinds a L{PacketDecoder} is told, are
#: given as views of the read that holds them whole, not copied.
VIEW_SIZE = 64 * 1024


class PacketType(IntEnum):
    """Packet type numbers, as on the wire."""

    CAN_DO = 1
    CANT_DO = 2
    RESET_ABILITIES = 3
    PRE_SLEEP = 4
    UNUSED = 5
    NOOP = 6
    SUBMIT_JOB = 7
    JOB_CREATED = 8
    GRAB_JOB = 9
    NO_JOB = 10
    JOB_ASSIGN = 11
    WORK_STATUS = 12
    WORK_COMPLETE = 13
    WORK_FAIL = 14
    GET_STATUS = 15
    ECHO_REQ = 16
    ECHO_RES = 17
    SUBMIT_JOB_BG = 18
    ERROR = 19
    STATUS_RES = 20
    SUBMIT_JOB_HIGH = 21
    SET_CLIENT_ID = 22
    CAN_DO_TIMEOUT = 23
    ALL_YOURS = 24
    WORK_EXCEPTION = 25
    OPTION_REQ = 26
    OPTION_RES = 27
    WORK_DATA = 28
    WORK_WARNING = 29
    GRAB_JOB_UNIQ = 30
    JOB_ASSIGN_UNIQ = 31
    SUBMIT_JOB_HIGH_BG = 32
    SUBMIT_JOB_LOW = 33
    SUBMIT_JOB_LOW_BG = 34
    SUBMIT_JOB_SCHED = 35
    SUBMIT_JOB_EPOCH = 36
    SUBMIT_REDUCE_JOB = 37
    SUBMIT_REDUCE_JOB_BACKGROUND = 38
    GRAB_JOB_ALL = 39
    JOB_ASSIGN_ALL = 40
    GET_STATUS_UNIQUE = 41
    STATUS_RES_UNIQUE = 42


#: Highest packet type number that exists.
MAX_TYPE = 42

#: Number of arguments of each packet type, indexed by type number.
ARGUMENT_COUNTS: Tuple[int, ...] = (
    0,  # 0: text (not a binary type)
    1,  # CAN_DO: function
    1,  # CANT_DO: function
    0,  # RESET_ABILITIES
    0,  # PRE_SLEEP
    0,  # UNUSED
    0,  # NOOP
    3,  # SUBMIT_JOB: function, unique, payload
    1,  # JOB_CREATED: handle
    0,  # GRAB_JOB
    0,  # NO_JOB
    3,  # JOB_ASSIGN: handle, function, payload
    3,  # WORK_STATUS: handle, numerator, denominator
    2,  # WORK_COMPLETE: handle, result
    1,  # WORK_FAIL: handle
    1,  # GET_STATUS: handle
    1,  # ECHO_REQ: data
    1,  # ECHO_RES: data
    3,  # SUBMIT_JOB_BG
    2,  # ERROR: code, text
    5,  # STATUS_RES: handle, known, running, numerator, denominator
    3,  # SUBMIT_JOB_HIGH
    1,  # SET_CLIENT_ID: id
    2,  # CAN_DO_TIMEOUT: function, timeout
    0,  # ALL_YOURS
    2,  # WORK_EXCEPTION: handle, data
    1,  # OPTION_REQ: option
    1,  # OPTION_RES: option
    2,  # WORK_DATA: handle, data
    2,  # WORK_WARNING: handle, data
    0,  # GRAB_JOB_UNIQ
    4,  # JOB_ASSIGN_UNIQ: handle, function, unique, payload
    3,  # SUBMIT_JOB_HIGH_BG
    3,  # SUBMIT_JOB_LOW
    3,  # SUBMIT_JOB_LOW_BG
    8,  # SUBMIT_JOB_SCHED: function, unique, minute, hour, mday, month, wday, payload
    4,  # SUBMIT_JOB_EPOCH: function, unique, epoch, payload
    5,  # SUBMIT_REDUCE_JOB: function, unique, reducer, aggregator, payload
    5,  # SUBMIT_REDUCE_JOB_BACKGROUND
    0,  # GRAB_JOB_ALL
    5,  # JOB_ASSIGN_ALL: handle, function, unique, reducer, payload
    1,  # GET_STATUS_UNIQUE: unique
    6,  # STATUS_RES_UNIQUE: unique, known, running, numerator, denominator, clients
)

_SIZE = struct.Struct(">I")
_REQ_PREFIX = tuple(REQ + _SIZE.pack(kind) for kind in range(MAX_TYPE + 1))
_RES_PREFIX = tuple(RES + _SIZE.pack(kind) for kind in range(MAX_TYPE + 1))
_pack_size = _SIZE.pack


def encodeRequest(kind: int, *args: bytes) -> bytes:
    """Encode a request (C{\\0REQ}) packet with the given arguments."""
    body = b"\0".join(args)
    return _REQ_PREFIX[kind] + _pack_size(len(body)) + body


def encodeResponse(kind: int, *args: bytes) -> bytes:
    """Encode a response (C{\\0RES}) packet with the given arguments."""
    body = b"\0".join(args)
    return _RES_PREFIX[kind] + _pack_size(len(body)) + body


def responseHeader(kind: int, size: int) -> bytes:
    """The 12-byte header of a response packet whose body is C{size} bytes."""
    return _RES_PREFIX[kind] + _pack_size(size)


def requestHeader(kind: int, size: int) -> bytes:
    """The 12-byte header of a request packet whose body is C{size} bytes."""
    return _REQ_PREFIX[kind] + _pack_size(size)


def splitArguments(kind: int, body: bytes) -> List[bytes]:
    """
    Split a packet body into exactly the number of arguments its type has.

    The split never looks past the body, and the last argument keeps any NULs
    it contains.

    @raise ProtocolError: the body has fewer separators than the type needs.
    """
    count = ARGUMENT_COUNTS[kind]
    if count == 1:
        return [body]
    if count == 0:
        return []
    args = body.split(b"\0", count - 1)
    if len(args) != count:
        raise ProtocolError(
            f"packet type {kind} needs {count} arguments, body has {len(args)}"
        )
    return args


class PacketDecoder:
    """
    Incremental decoder of a Gearman byte stream.

    Give it whatever a read returned (L{add}) and take the complete messages
    one at a time (L{next}), as C{(kind, body)} pairs:
      - a binary packet whose magic is the expected one gives C{(type, body)};
      - one with the other valid magic gives C{(-type, body)}, so the caller can
        answer it (gearmand replies C{INVALID_MAGIC} and keeps the connection);
      - with C{allowText}, a line that starts with a byte other than NUL gives
        C{(TEXT, line)}, without its line ending (C{\\n} or C{\\r\\n}).
    L{feedFlat} does both at once and returns every complete message, the
    kinds and bodies alternating in one list (L{feed}: as pairs).

    Taking messages one at a time lets a server stop dispatching a
    connection's input midway (its output is over its limit) and resume
    later: what was not taken stays here, in order.

    A framing error (bad magic, type 0 or above L{MAX_TYPE}, a body larger than
    C{maxPacket}, a text line longer than C{maxLine}, text on a binary-only
    connection) stops decoding: the messages before it are returned and
    L{error} is set; nothing is returned after it.

    Buffering: messages wholly inside one read are sliced from that read's
    C{bytes}. Only a message split across reads is copied, into one growing
    C{bytearray} per connection (linear in its size however it is trickled),
    and only up to its own end: the rest of the read is decoded from the read.
    The C{bytearray} is trimmed at the front at most once per read, and
    emptied (its memory returned) when its last message is taken. One
    exception, the common case of large packets: a binary message whose
    header has arrived and that fills at least half of its read is first
    held as a view of that read; if the next read completes it, its body is
    joined from the two (one copy); otherwise it moves to the C{bytearray}.

    With C{viewKinds}, L{feedFlat} gives the body of a message of one of those
    types that is at least L{VIEW_SIZE} bytes, lies wholly inside one read and
    fills at least half of it as a C{memoryview} of that read (read-only,
    since the read is C{bytes}), not a copy: the caller must accept both. A
    view keeps its whole read alive, hence "at least half": never more than
    twice the body.

    @ivar error: the L{ProtocolError} that stopped decoding, or C{None}.
    @ivar partialSerial: incremented whenever a new unfinished message starts
        being held, so a caller can time how long one message takes to arrive
        without per-packet work.
    """

    __slots__ = ("_magic", "_otherMagic", "_allowText", "maxPacket", "maxLine", "_buf",
                 "_pos", "_data", "_off", "_need", "_kind", "_head", "error", "partialSerial",
                 "_views", "_viewAt")

    def __init__(
        self,
        expectRequests: bool = True,
        allowText: bool = False,
        maxPacket: int = DEFAULT_MAX_PACKET,
        maxLine: int = DEFAULT_MAX_LINE,
        viewKinds: Iterable[int] = (),
    ) -> None:
        self._magic = REQ if expectRequests else RES
        self._otherMagic = RES if expectRequests else REQ
        self._allowText = allowText
        self.maxPacket = maxPacket
        self.maxLine = maxLine
        # Bytes of a message split across reads, from _pos on.
        self._buf = bytearray()
        self._pos = 0
        # The latest read, decoded in place from _off on.
        self._data = b""
        self._off = 0
        # Size of the first unfinished message (header included) once known,
        # else 0; _kind: its kind, as L{next} would return it.
        self._need = 0
        self._kind = 0
        # Or the start of that message, header parsed, as a view of its read
        # (then nothing else is held).
        self._head: Optional[memoryview] = None
        self.error: Optional[ProtocolError] = None
        self.partialSerial = 0
        # Bodies of at least _viewAt bytes of these kinds, whole in one read,
        # are given as views of it: no copy.
        kinds = frozenset(viewKinds)
        self._views = tuple(kind in kinds for kind in range(MAX_TYPE + 1))
        self._viewAt = VIEW_SIZE if kinds else sys.maxsize

    def bufferedBytes(self) -> int:
        """How many received bytes have not been returned as messages yet."""
        held = len(self._buf) - self._pos + len(self._data) - self._off
        return held if self._head is None else held + len(self._head)

    def unfinishedSize(self) -> int:
        """
        The announced size (header included) of the message being received,
        if its header has arrived and the message is split across reads;
        otherwise how many of its bytes are held (a text line, a partial header).
        0 when no message is unfinished.
        """
        if self._head is not None:
            return self._need
        held = len(self._buf) - self._pos
        if not held:
            return 0
        return max(self._need, held)

    def add(self, data: bytes) -> None:
        """Append one read's bytes to the stream."""
        if self.error is not None:
            return
        if self._head is not None:
            self._keepHead()
        buf = self._buf
        if self._off < len(self._data):
            # The previous read was not decoded to its end (the caller
            # stopped taking messages): keep its rest, in order, before this one.
            if self._pos:
                del buf[:self._pos]
                self._pos = 0
            buf += memoryview(self._data)[self._off:]
            buf += data
            self._data = b""
            self._off = 0
            return
        if self._pos:
            del buf[:self._pos]
            self._pos = 0
        self._data = data
        self._off = 0

    def next(self) -> Optional[Tuple[int, bytes]]:
        """The next complete message, or C{None} until more bytes arrive."""
        if self._head is not None:
            self._keepHead()
        buf = self._buf
        while len(buf) > self._pos:
            found = self._parse(buf, self._pos, len(buf))
            if found is not None:
                kind, body, stop = found
                if stop >= len(buf):
                    buf.clear()
                    self._pos = 0
                else:
                    self._pos = stop
                    self.partialSerial += 1
                return kind, body
            if self.error is not None:
                return None
            # Complete the held message from the current read, and no further.
            data, off = self._data, self._off
            avail = len(data) - off
            if not avail:
                return None
            held = len(buf) - self._pos
            if self._need:
                take = self._need - held
            elif buf[self._pos] == 0:
                take = HEADER_SIZE - held
            else:
                newline = data.find(b"\n", off, off + self.maxLine + 1)
                take = newline + 1 - off if newline >= 0 else avail
            if take >= avail:
                take = avail
                buf += memoryview(data)[off:] if off else data
                self._data = b""
                self._off = 0
            else:
                buf += memoryview(data)[off:off + take]
                self._off = off + take
        data, off = self._data, self._off
        end = len(data)
        if off >= end:
            return None
        found = self._parse(data, off, end)
        if found is None:
            if self.error is None:
                # An unfinished message: hold its bytes until the rest arrives.
                buf += memoryview(data)[off:] if off else data
                self.partialSerial += 1
            self._data = b""
            self._off = 0
            return None
        kind, body, stop = found
        if stop == end:
            self._data = b""
            self._off = 0
        else:
            self._off = stop
        return kind, body

    def feed(self, data: bytes) -> List[Tuple[int, bytes]]:
        """L{feedFlat}'s messages as C{(kind, body)} pairs."""
        flat = iter(self.feedFlat(data))
        return list(zip(flat, flat))

    def feedFlat(self, data: bytes) -> List[Any]:
        """
        Add C{data} to the stream and return every message now complete, as
        C{[kind, body, kind, body, ...]} (the same as L{add} then L{next}
        until C{None}, in one tight loop: the server's per-packet path).

        Flat, not pairs: a read of small packets decodes into thousands of
        messages at once, and as many 2-tuples freed together would fill
        CPython's tuple free list, whose blocks then pin the memory pools of
        whatever memory the connection used meanwhile (see
        docs/reliability.md); iterate with C{zip(it, it)}, which makes none.
        """
        buf = self._buf
        held = self._head
        if held is not None:
            # The previous read ended inside a message: complete it from
            # this one (one copy), or keep both in the bytearray.
            self._head = None
            missing = self._need - len(held)
            if len(data) < missing:
                buf += held
                buf += data
                return []
            out: List[Any] = [
                self._kind, b"".join((held[HEADER_SIZE:], memoryview(data)[:missing]))]
            self._need = 0
            self._data = data
            offset = missing
            missing = 0
        else:
            # Bytes missing from a binary message held from earlier reads, its
            # helder parsed, nothing else held: then extend it, or complete
            # it, without parsing it again.
            # (_need is 0 when nothing is unfinished: the common case, no len().)
            need = self._need
            missing = need - len(buf) if need and not self._data and not self._pos else 0
        if missing > 0:
            if len(data) < missing:
                buf += data
                return []
            if missing == len(data):
                buf += data
            else:
                buf += memoryview(data)[:missing]
            del buf[:HEADER_SIZE]  # at the front: no copy
            out = [self._kind, bytes(buf)]
            buf.clear()
            self._need = 0
            self._data = data
            offset = missing
        elif held is None:
            if not self._data and not buf and self.error is None:
                # Nothing held: decode this read in place.
                self._data = data
                out = []
                offset = 0
            else:
                self.add(data)
                out = []
                while len(buf) > self._pos:
                    message = self.next()
                    if message is None:
                        return out
                    out += message
                data, offset = self._data, self._off
        end = len(data)
        magic = self._magic
        unpack = HEADER.unpack_from
        append = out.append
        viewAt = self._viewAt
        while offset < end:
            if data[offset] == 0 and end - offset >= HEADER_SIZE:
                head, kind, size = unpack(data, offset)
                stop = offset + HEADER_SIZE + size
                if head == magic and 0 < kind <= MAX_TYPE and size <= self.maxPacket:
                    if stop <= end:
                        append(kind)
                        if size < viewAt or not self._views[kind] or size + size < end:
                            append(data[offset + HEADER_SIZE:stop])
                        else:
                            append(memoryview(data)[offset + HEADER_SIZE:stop])
                        offset = stop
                        continue
                    # The start of a message that later reads complete: hold it.
                    if end - offset >= offset:
                        self._head = memoryview(data)[offset:]
                    else:
                        buf += memoryview(data)[offset:]
                    self._need = HEADER_SIZE + size
                    self._kind = kind
                    self.partialSerial += 1
                    self._data = b""
                    self._off = 0
                    return out
            # Anything else (text, other magic, errors, an unfinished message).
            self._off = offset
            message = self.next()
            if message is None:
                return out
            out += message
            if self._data is not data:
                return out
            offset = self._off
        self._data = b""
        self._off = 0
        return out

    def clear(self) -> None:
        """Drop every buffered byte (the connection is gone)."""
        self._head = None
        self._buf = bytearray()
        self._pos = 0
        self._data = b""
        self._off = 0
        self._need = 0

    def _keepHead(self) -> None:
        """Copy the held start of a message into the bytearray (empty then)."""
        assert self._head is not None
        self._buf += self._head
        self._head = None

    def _parse(self, data: Any, offset: int, end: int) -> Optional[Tuple[int, bytes, int]]:
        """
        The message at C{offset} of C{data} (C{bytes} or the C{bytearray}) as
        C{(kind, body, stop)}, or C{None} if it is unfinished (then C{_need}
        is its whole size, if known) or invalid (then L{error} is set).
        """
        if data[offset] == 0:
            if end - offset < HEADER_SIZE:
                self._need = 0
                return None
            head, kind, size = HEADER.unpack_from(data, offset)
            if head != self._magic:
                if head != self._otherMagic:
                    self._fail(f"bad magic {bytes(head)!r}")
                    return None
                kind = -kind
            if kind == 0 or kind > MAX_TYPE or kind < -MAX_TYPE:
                self._fail(f"unknown packet type {abs(kind)}")
                return None
            if size > self.maxPacket:
                self._fail(f"packet of {size} bytes exceeds the limit of {self.maxPacket}")
                return None
            stop = offset + HEADER_SIZE + size
            if stop > end:
                self._need = HEADER_SIZE + size
                self._kind = kind
                return None
            self._need = 0
            if type(data) is bytes:
                return kind, data[offset + HEADER_SIZE:stop], stop
            if offset == 0 and stop == end:
                # The held message is the whole buffer: one copy, not two.
                del data[:HEADER_SIZE]
                return kind, bytes(data), end
            return kind, bytes(data[offset + HEADER_SIZE:stop]), stop
        if not self._allowText:
            self._fail(f"expected a packet, got byte {data[offset]:#04x}")
            return None
        newline = data.find(b"\n", offset, offset + self.maxLine + 1)
        if newline < 0:
            if end - offset > self.maxLine:
                self._fail(f"text line longer than {self.maxLine} bytes")
            self._need = 0
            return None
        stop = newline
        if stop > offset and data[stop - 1] == 13:  # strip \r
            stop -= 1
        return TEXT, bytes(data[offset:stop]), newline + 1

    def _fail(self, message: str) -> None:
        self.error = ProtocolError(message)
        self.clear()

# -*- test-case-name: tests.test_turnwriter -*-
"""
Each connection's output: one send per connection per reactor turn, a
bounded hand-off to the transport, and an account of what the peer has not
taken yet.

A job server answers many small packets to many connections while it
processes one read. Twisted's transports buffer each C{write} and register
the socket with the poller until the buffer drains: two C{epoll_ctl} calls
per connection per turn, which cost as much as the C{send} itself. A
L{ConnectionOutput} gathers a connection's output during a turn and, once the
turn's events are processed (the L{TurnWriter}'s C{callLater(0)}), sends it.

Only public interfaces of the transport are used:
  - On a plain TCP (or UNIX) socket, the output registers itself as the
    transport's B{pull} producer (C{IPullProducer}). The transport then calls
    C{resumeProducing} each time its buffer is empty (and once at
    registration): only then does the output send straight to the socket
    (C{getHandle()}), so nothing it sends can overtake bytes the transport
    still holds. What the kernel does not take goes to C{transport.write}, at
    most L{PIECE} bytes at a time; the next piece follows the next
    C{resumeProducing}. A registered producer also holds a closing transport
    open until it unregisters (documented in C{IConsumer.registerProducer}),
    which is how output written in the same turn as a C{loseConnection}, by
    whoever calls it, still leaves first.
  - On any other transport (TLS, test transports) the output is a
    B{streaming} producer: pieces are written while the transport has not
    called C{pauseProducing}, and resume on C{resumeProducing}. Pull
    producers are not used there: TLS would poll them in a busy loop.
    Twisted's TLS transport does not close while a producer is registered:
    the server's TLS transport (L{txgear._tlsprotocol}) calls
    L{ConnectionOutput.transportClosing} from its C{loseConnection}, and the
    output unregisters once it has handed over everything.

One exception to "once per turn": a packet with a large buffer (at least 64
KiB), written while a pull-mode transport holds nothing, is sent at once,
after what the turn wrote before it, in one gathering C{sendmsg}: its
payload costs far more than a send, and it leaves a turn earlier.

Buffers are never joined across connections: a large buffer given to several
connections (one result relayed to every client attached to a job) is held
once, as the same C{bytes} or C{memoryview} in each connection's queue; only
the piece being handed to a transport is copied.

L{ConnectionOutput.queued} counts the bytes written and not yet taken by the
kernel (the transport's share is counted until it reports itself drained).
Past the soft limit the output tells its listener (C{outputFull}), which
stops producing for that peer; below half of it, C{outputDrained}; past the
hard limit, C{outputOverflow}, and everything queued is dropped.
"""
from __future__ import annotations

import sys
from collections import deque
from typing import Any, Deque, Dict, List, Optional

from twisted.internet import tcp
from twisted.internet.interfaces import IPullProducer, IPushProducer
from zope.interface import implementer

#: Largest piece handed to a transport at once (copied there if a view).
PIECE = 256 * 1024
#: Buffers at least this large are kept apart, not joined with small ones.
_LARGE = 64 * 1024
#: At most this many buffers per gathering send.
_IOV = 64
_UNLIMITED = sys.maxsize
#: PyPy's C{sendmsg} copies each C{memoryview} it is given into a new string
#: (a large allocation per large payload, which brings its major collections
#: sooner); its C{send} does not: there, buffers that hold a view leave one
#: C{send} each.
_GATHER_COPIES_VIEWS = sys.implementation.name == "pypy"


def directSocket(transport: Any) -> Optional[Any]:
    """The socket to send on directly, if C{transport} is a plain TCP/UNIX connection."""
    if isinstance(transport, tcp.Connection) and not getattr(transport, "TLS", False):
        return transport.getHandle()
    return None


@implementer(IPullProducer, IPushProducer)
class ConnectionOutput:
    """
    The output of one connection (see the module docstring).

    @ivar queued: bytes written and not yet taken by the kernel.
    @ivar softLimit: past this many queued bytes, the listener's
        C{outputFull} is called; once they fall to half of it, C{outputDrained}.
    @ivar hardLimit: past this many, C{outputOverflow}; the output then drops
        everything it holds and anything written later.
    """

    __slots__ = ("writer", "transport", "socket", "queued", "softLimit", "hardLimit",
                 "_listener", "_pending", "_large", "_backlog", "_inTransport", "_ready",
                 "_attached", "_full", "_pull")

    def __init__(self, writer: "TurnWriter", transport: Any, listener: Any = None,
                 softLimit: int = 0, hardLimit: int = 0) -> None:
        self.writer = writer
        self.transport = transport
        self.socket: Any = directSocket(transport)
        self.queued = 0
        self.softLimit = softLimit or _UNLIMITED
        self.hardLimit = hardLimit or _UNLIMITED
        self._listener = listener
        # Written this turn; _large: some of it is a buffer not to be joined.
        self._pending: Optional[List[Any]] = None
        self._large = False
        # Waiting for the transport to take it.
        self._backlog: Deque[Any] = deque()
        # Bytes handed to the transport that it has not reported drained.
        self._inTransport = 0
        self._pull = self.socket is not None
        # May the transport be given more now (pull: it holds nothing)?
        self._ready = not self._pull
        self._attached = True
        self._full = False
        transport.registerProducer(self, not self._pull)

    # -- writing -----------------------------------------------------------

    def write(self, data: Any) -> None:
        """Queue C{data} (bytes or a view of immutable bytes) for the end of the turn."""
        size = len(data)
        self.writer.written += size
        queued = self.queued = self.queued + size
        pending = self._pending
        if pending is None:
            self._pending = [data]
            self._startTurn()
        else:
            pending.append(data)
        if queued > self.softLimit:
            self._over()

    def writeSequence(self, data: List[Any]) -> None:
        """Queue several buffers; large ones are kept as they are, never joined."""
        size = 0
        large = False
        for piece in data:
            length = len(piece)
            if length >= _LARGE:
                large = True
            size += length
        self.writer.written += size
        self.queued += size
        pending = self._pending
        if large and self._ready and self._pull:
            # A large packet and the transport holds nothing: send it now,
            # after what this turn wrote before it, in one gathering send
            # (a second send in the turn costs little beside its payload,
            # and the peer gets it a turn earlier).
            chunks = list(data) if pending is None else pending + list(data)
            if len(chunks) <= _IOV:
                self._pending = None
                self._large = False
                rest = self._sendDirect(chunks)
                if rest:
                    self._backlog.extend(rest)
                    self._feed()
                if self.queued > self.softLimit:
                    self._over()
                elif self._full:
                    self._checkDrained()
                return
        if large:
            self._large = True
        if pending is None:
            self._pending = list(data)
            self._startTurn()
        else:
            pending.extend(data)
        if self.queued > self.softLimit:
            self._over()

    def _startTurn(self) -> None:
        """The first output of this turn: be flushed at its end."""
        writer = self.writer
        writer._dirty.append(self)
        if not writer._scheduled:
            writer._schedule()

    def isFull(self) -> bool:
        """Over the soft limit (and not yet drained to half of it), or discarded."""
        return self._full or self.softLimit < 0

    def _over(self) -> None:
        if self._listener is None:
            if not self._attached:
                # Dead: keep nothing.
                self._pending = None
                self.queued = 0
            return
        if self.queued > self.hardLimit:
            listener = self._listener
            self.discard()
            listener.outputOverflow()
        elif not self._full:
            self._full = True
            self._listener.outputFull()

    # -- sending -------------------------------------------------------------

    def flush(self) -> None:
        """Send, or hand to the transport, everything written so far."""
        pending = self._pending
        if pending is None:
            return
        self._pending = None
        if self._ready and self._pull:
            # The common cases: the transport holds nothing, so send now.
            if not self._large:
                # Small packets: joined, one send.
                data = pending[0] if len(pending) == 1 else b"".join(pending)
                try:
                    sent = self.socket.send(data)
                except OSError:
                    sent = 0  # EAGAIN, or an error the transport will meet itself
                self.queued -= sent
                if sent < len(data):
                    self._backlog.append(memoryview(data)[sent:] if sent else data)
                    self._feed()
                if self._full:
                    self._checkDrained()
                return
            if len(pending) <= _IOV:
                # Large buffers among them: one gathering send, nothing
                # copied; the backlog joins what is left in pieces.
                self._large = False
                rest = self._sendDirect(pending)
                if rest:
                    self._backlog.extend(rest)
                    self._feed()
                if self._full:
                    self._checkDrained()
                return
        if self._large:
            self._large = False
            chunks = _coalesce(pending)
        else:
            chunks = [pending[0] if len(pending) == 1 else b"".join(pending)]
        if not self._attached:
            # No longer a producer: the transport sends it before closing.
            for chunk in chunks:
                self.transport.write(bytes(chunk) if type(chunk) is not bytes else chunk)
            self.queued = 0
            return
        if not self._ready:
            self._backlog.extend(chunks)
            return
        if self._pull:
            chunks = self._sendDirect(chunks)
            if not chunks:
                self._checkDrained()
                return
        self._backlog.extend(chunks)
        self._feed()
        self._checkDrained()

    def _sendDirect(self, chunks: List[Any]) -> List[Any]:
        """Send on the socket (the transport holds nothing); return what is left."""
        try:
            if len(chunks) == 1:
                sent = self.socket.send(chunks[0])
            elif _GATHER_COPIES_VIEWS and memoryview in map(type, chunks):
                sent = self._sendEach(chunks)
            else:
                sent = self.socket.sendmsg(chunks[:_IOV])
        except OSError:
            # EAGAIN, or an error the transport will meet and report itself.
            return chunks
        self.queued -= sent
        for i, chunk in enumerate(chunks):
            size = len(chunk)
            if sent < size:
                if sent:
                    chunks[i] = memoryview(chunk)[sent:]
                return chunks[i:]
            sent -= size
        return []

    def _sendEach(self, chunks: List[Any]) -> int:
        """
        Send C{chunks} one C{send} each (PyPy: see L{_GATHER_COPIES_VIEWS}),
        until one is not taken whole; return the bytes sent.
        """
        send = self.socket.send
        sent = 0
        for chunk in chunks[:_IOV]:
            try:
                taken = send(chunk)
            except OSError:
                if sent:
                    return sent
                raise
            sent += taken
            if taken < len(chunk):
                break
        return sent

    def _feed(self) -> None:
        """Hand the transport pieces of the backlog while it may take them."""
        backlog = self._backlog
        transport = self.transport
        while self._ready and backlog:
            piece = _takePiece(backlog)
            size = len(piece)
            if self._pull:
                self._ready = False
                self._inTransport += size
                transport.write(piece)
            else:
                transport.write(piece)
                if self._ready:
                    self.queued -= size  # below the transport's high-water mark
                else:
                    self._inTransport += size

    def _checkDrained(self) -> None:
        if self._full and self.queued <= self.softLimit // 2:
            self._full = False
            if self._listener is not None:
                self._listener.outputDrained()

    # -- producer (called by the transport) ---------------------------------

    def resumeProducing(self) -> None:
        """The transport's buffer is empty (pull) or below its high-water mark (push)."""
        if not self._attached:
            return
        self.queued -= self._inTransport
        self._inTransport = 0
        self._ready = True
        transport = self.transport
        closing = transport.disconnecting
        if closing and self._pending is not None:
            # Closing: this turn's output goes first (nothing can follow it).
            pending, self._pending = self._pending, None
            self._large = False
            self._backlog.extend(_coalesce(pending))
        backlog = self._backlog
        if backlog:
            if self._pull:
                chunks = self._sendDirect(list(backlog) if len(backlog) <= _IOV
                                          else [backlog[i] for i in range(_IOV)])
                taken = min(len(backlog), _IOV) - len(chunks)
                for _ in range(taken):
                    backlog.popleft()
                if chunks:
                    backlog[0] = chunks[0]
            self._feed()
        if closing and not backlog and self._ready:
            self._release()
        self._checkDrained()

    def _release(self) -> None:
        # All given to a closing transport: let it close. Later output (if
        # any) goes through transport.write, whose drain is no longer reported.
        self._attached = False
        self._ready = False
        self.transport.unregisterProducer()

    def transportClosing(self) -> None:
        """
        The transport is closing (a streaming transport that waits for its
        producer to unregister before it closes, as TLS does, calls this
        after its C{loseConnection}): hand it what was written, this turn's
        output included, and unregister once all of it is handed.
        """
        if not self._attached:
            return
        pending = self._pending
        if pending is not None:
            self._pending = None
            self._large = False
            self._backlog.extend(_coalesce(pending))
        if self._pull:
            return  # the transport calls resumeProducing once it holds nothing
        self._feed()
        if not self._backlog and self._ready:
            self._release()

    def pauseProducing(self) -> None:
        """The transport's buffer is over its high-water mark (push mode only)."""
        self._ready = False

    def stopProducing(self) -> None:
        """The connection is gone: drop everything, keep no references."""
        self._attached = False
        self.discard()
        self.socket = None

    def discard(self) -> None:
        """
        Drop everything not yet handed to the transport, and anything written
        later; stop being the transport's producer (an abort follows, or the
        connection closes without it).
        """
        self._pending = None
        self._backlog.clear()
        self.queued = 0
        self._inTransport = 0
        self._listener = None
        self.softLimit = -1  # every later write lands in _over, which drops it
        self._ready = False
        if self._attached:
            self._attached = False
            self.transport.unregisterProducer()


def _coalesce(buffers: List[Any]) -> List[Any]:
    """Join runs of small buffers; keep large ones (possibly shared) apart."""
    out: List[Any] = []
    run: List[Any] = []
    for buffer in buffers:
        if len(buffer) >= _LARGE:
            if run:
                out.append(run[0] if len(run) == 1 else b"".join(run))
                run = []
            out.append(buffer)
        else:
            run.append(buffer)
    if run:
        out.append(run[0] if len(run) == 1 else b"".join(run))
    return out


def _takePiece(backlog: Deque[Any]) -> bytes:
    """Up to L{PIECE} bytes from the front of C{backlog}, as C{bytes}."""
    first = backlog[0]
    if len(first) > PIECE:
        view = memoryview(first)
        backlog[0] = view[PIECE:]
        return bytes(view[:PIECE])
    backlog.popleft()
    if type(first) is not bytes:
        first = bytes(first)
    if not backlog or len(first) + len(backlog[0]) > PIECE:
        return first
    parts = [first]
    size = len(first)
    while backlog and size + len(backlog[0]) <= PIECE:
        part = backlog.popleft()
        parts.append(part)
        size += len(part)
    return b"".join(parts)


_writers: Dict[int, "TurnWriter"] = {}


def turnWriterFor(reactor: Any) -> "TurnWriter":
    """The L{TurnWriter} shared by every connection of C{reactor}."""
    writer = _writers.get(id(reactor))
    if writer is None or writer._clock is not reactor:
        writer = _writers[id(reactor)] = TurnWriter(reactor)
    return writer


class TurnWriter:
    """
    Flushes every L{ConnectionOutput} written to during a reactor turn.

    @param clock: an C{IReactorTime}; the flush is a C{callLater(0)}, which the
        reactor runs after the current batch of I/O events.
    """

    def __init__(self, clock: Any) -> None:
        self._clock = clock
        #: Bytes written to all its outputs (queued for their peers) so far.
        self.written = 0
        self._dirty: List[ConnectionOutput] = []
        self._scheduled = False

    def output(self, transport: Any, listener: Any = None, softLimit: int = 0,
               hardLimit: int = 0) -> ConnectionOutput:
        """
        The output of one connection; it registers itself as C{transport}'s
        producer (see the module docstring).

        @param listener: told C{outputFull()}, C{outputDrained()} and
            C{outputOverflow()} (see L{ConnectionOutput}), or C{None}.
        @param softLimit: queued bytes past which C{outputFull} is called; 0: none.
        @param hardLimit: queued bytes past which C{outputOverflow} is called; 0: none.
        """
        return ConnectionOutput(self, transport, listener, softLimit, hardLimit)

    def _schedule(self) -> None:
        self._scheduled = True
        self._clock.callLater(0, self.flush)

    def flush(self) -> None:
        """Send everything written so far."""
        self._scheduled = False
        dirty, self._dirty = self._dirty, []
        for output in dirty:
            output.flush()

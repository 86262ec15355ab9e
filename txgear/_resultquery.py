# -*- test-case-name: tests.test_resultquery -*-
"""
Reading a kept result with the admin command C{show result}, on a
connection of its own.

The reply is framed, not line-based: C{OK <status> <size>\n}, then exactly
<size> raw bytes (NULs and newlines included), then C{\n}; or one C{ERR}
line (see docs/jobs.md). L{ShowResultReader} reads one such reply;
L{queryResult} connects, asks, reads and hangs up. The client library
(L{txgear.client}) and C{txgear-admin result} both use it.
"""
from __future__ import annotations

from typing import Any, List, Optional

from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure

from txgear._adminquery import queryAside
from txgear.errors import ProtocolError

#: The longest first line read (C{OK <status> <size>} or an C{ERR} line).
MAX_HEADER = 4096

#: The largest result read by default, in bytes (servers keep 1 MiB by default).
DEFAULT_MAX_RESULT = 64 * 1024 * 1024


class ShowResultReply:
    """
    One reply to C{show result}.

    @ivar error: the C{ERR} code (C{b"RUNNING"}, C{b"QUEUED"},
        C{b"UNKNOWN_JOB"}, C{b"NOT_KEPT"}, ...), or C{None} for a result.
    @ivar detail: the text after the C{ERR} code (C{complete+12} for
        C{NOT_KEPT}), or C{b""}.
    @ivar status: C{"complete"}, C{"fail"} or C{"exception"} for a result,
        else C{""}.
    @ivar data: the result bytes (the WORK_COMPLETE payload or the
        WORK_EXCEPTION data), else C{b""}.
    """

    __slots__ = ("error", "detail", "status", "data")

    def __init__(self, error: Optional[bytes] = None, detail: bytes = b"", status: str = "",
                 data: bytes = b"") -> None:
        self.error = error
        self.detail = detail
        self.status = status
        self.data = data

    @property
    def errorLine(self) -> str:
        """The C{ERR} line as the server sent it, without its line end."""
        words = [b"ERR", self.error or b""] + ([self.detail] if self.detail else [])
        return b" ".join(words).decode("utf-8", "replace")

    def __repr__(self) -> str:
        if self.error is not None:
            return f"ShowResultReply({self.errorLine!r})"
        return f"ShowResultReply({self.status!r}, {len(self.data)} bytes)"


def showResultCommand(handle: Optional[bytes] = None, function: Optional[bytes] = None,
                      unique: Optional[bytes] = None) -> bytes:
    """
    The command line (with its C{\n}) asking for a result by C{handle}, or
    by C{function} and C{unique}.
    """
    if handle is not None:
        words = [handle]
    else:
        if function is None or unique is None:
            raise ValueError("give a handle, or a function and a unique")
        words = [b"unique", function, unique]
    for word in words:
        if not word or any(c in word for c in b" \t\r\n\0"):
            raise ValueError(f"{word!r} cannot be named in an admin command "
                             "(empty, or holds a space, tab, NUL or line end)")
    return b"show result " + b" ".join(words) + b"\n"


class ShowResultReader(Protocol):
    """
    Sends one C{show result} command and reads its framed reply; the
    connection is closed once it is read (or is not valid).

    @ivar answer: fires with a L{ShowResultReply}, or fails with
        L{ProtocolError} (a malformed or oversized reply) or the reason the
        connection was lost.
    """

    def __init__(self, command: bytes, answer: Deferred, maxResult: int = DEFAULT_MAX_RESULT) -> None:
        self._command = command
        self.answer = answer
        self._maxResult = maxResult
        self._chunks: List[bytes] = []
        self._buffered = 0
        self._header: Optional[ShowResultReply] = None
        self._size = 0

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self._command)

    def dataReceived(self, data: bytes) -> None:
        if self.answer.called:
            return
        self._chunks.append(data)
        self._buffered += len(data)
        if self._header is None:
            buffered = b"".join(self._chunks)
            end = buffered.find(b"\n")
            if end < 0:
                if len(buffered) > MAX_HEADER:
                    self._finish(Failure(ProtocolError("show result: first line too long")))
                else:
                    self._chunks = [buffered]
                return
            line, rest = buffered[:end].rstrip(b"\r"), buffered[end + 1:]
            try:
                self._header = self._parseHeader(line)
            except ProtocolError as e:
                self._finish(Failure(e))
                return
            if self._header.error is not None:
                self._finish(self._header)
                return
            self._chunks, self._buffered = [rest], len(rest)
        # Exactly size bytes, then one "\n": never search the bytes themselves.
        if self._buffered < self._size + 1:
            return
        buffered = b"".join(self._chunks)
        if buffered[self._size:self._size + 1] != b"\n":
            self._finish(Failure(ProtocolError("show result: no line end after the bytes")))
            return
        self._header.data = buffered[:self._size]
        self._finish(self._header)

    def _parseHeader(self, line: bytes) -> ShowResultReply:
        words = line.split(b" ", 2)
        if words[0] == b"ERR" and len(words) >= 2:
            return ShowResultReply(words[1], words[2] if len(words) > 2 else b"")
        if words[0] == b"OK" and len(words) == 3 and words[2].isdigit():
            size = int(words[2])
            if size > self._maxResult:
                raise ProtocolError(f"show result: {size} bytes is more than the "
                                    f"{self._maxResult} read")
            self._size = size
            return ShowResultReply(status=words[1].decode("ascii", "replace"))
        raise ProtocolError(f"show result: unexpected reply {line[:80]!r}")

    def _finish(self, result: Any) -> None:
        self._chunks = []
        if not self.answer.called:
            if isinstance(result, Failure):
                self.answer.errback(result)
            else:
                self.answer.callback(result)
        if self.transport is not None:
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        if not self.answer.called:
            self.answer.errback(reason)


def queryResult(connect: Any, clock: Any, command: bytes, timeout: float = 10.0,
                maxResult: int = DEFAULT_MAX_RESULT) -> Deferred[ShowResultReply]:
    """
    Ask a server C{show result} on a connection of its own.

    @param connect: called with a protocol factory; returns the endpoint's
        connection L{Deferred} (e.g. L{txgear._pool.PoolServer.connectAside}).
    @param clock: bounds the whole query.
    @param command: from L{showResultCommand}.
    @param timeout: seconds before giving up (fails with C{TimeoutError}).
    @param maxResult: the largest result read, in bytes.
    @return: fires with a L{ShowResultReply} (a result or an C{ERR} line);
        cancelling it hangs up.
    """
    return queryAside(connect, clock,
                      lambda answer: ShowResultReader(command, answer, maxResult), timeout)


__all__ = ["DEFAULT_MAX_RESULT", "ShowResultReader", "ShowResultReply", "queryResult",
           "showResultCommand"]

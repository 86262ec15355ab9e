# -*- test-case-name: tests.test_packet -*-
"""
Exceptions raised by txgear.

Every error txgear raises derives from L{GearmanError}, so callers can catch
one class; the subclasses say what went wrong.
"""
from __future__ import annotations

from typing import Optional

from twisted.internet.defer import TimeoutError as _DeferredTimeout


class GearmanError(Exception):
    """Base class of every txgear error."""


class ProtocolError(GearmanError):
    """
    The peer sent bytes that are not valid Gearman framing (bad magic, an
    unknown packet type, an oversized packet or text line, a malformed body).
    The connection cannot be trusted any more and is closed.
    """


class ServerError(GearmanError):
    """
    The job server answered with an C{ERROR} packet.

    @ivar code: the error code, e.g. C{b"QUEUE_ERROR"}.
    @ivar text: the human-readable text.
    """

    def __init__(self, code: bytes, text: bytes) -> None:
        GearmanError.__init__(self, code, text)
        self.code = code
        self.text = text

    def __str__(self) -> str:
        return f"{self.code.decode('ascii', 'replace')}: {self.text.decode('utf-8', 'replace')}"


class JobFailed(GearmanError):
    """
    The job ended with C{WORK_FAIL}. Raise it from a worker function to make
    the job fail without an exception payload.
    """


class JobException(GearmanError):
    """
    The worker's function raised: the job ended with C{WORK_EXCEPTION}.

    @ivar data: the exception payload the worker sent.
    """

    def __init__(self, data: bytes) -> None:
        GearmanError.__init__(self, data)
        self.data = data

    def __str__(self) -> str:
        return self.data.decode("utf-8", "replace")


class ConnectionLost(GearmanError):
    """The connection to the job server was lost while the job was in flight."""


class NoServers(GearmanError):
    """No job server could be reached."""


class TLSConnectError(GearmanError):
    """
    A TLS connection to a job server failed before it could be used: the
    server's certificate was not verified (another CA, another name,
    expired), the server refused the client's certificate (or its absence),
    or the handshake failed. The text says which.
    """


class SubmitTimeout(_DeferredTimeout, GearmanError):
    """
    A submission's C{timeout} passed (a L{twisted.internet.defer.TimeoutError}).
    The text says what the server knew at that moment: e.g. that no worker
    is registered for the function.

    @ivar function: the function name.
    @ivar workers: how many workers the server had registered for it, or
        C{None} if it could not be asked.
    """

    def __init__(self, message: str, function: bytes = b"", workers: Optional[int] = None) -> None:
        _DeferredTimeout.__init__(self, message)
        self.message = message
        self.function = function
        self.workers = workers

    def __str__(self) -> str:
        return self.message


class StoreError(GearmanError):
    """A persistent job store failed to record, remove or load jobs."""


class StoreSchemaError(StoreError):
    """
    The store holds data in a schema this version does not understand (corrupt,
    or written by another version). Never wiped silently.
    """


class ResultNotKept(GearmanError):
    """
    A background job finished but its result was not kept: above the
    server's C{--keep-max-size}. Its status and size are known.

    @ivar status: C{"complete"}, C{"fail"} or C{"exception"}.
    @ivar size: the size of the result the server did not keep, in bytes.
    """

    def __init__(self, message: str, status: str = "", size: int = 0) -> None:
        GearmanError.__init__(self, message)
        self.message = message
        self.status = status
        self.size = size

    def __str__(self) -> str:
        return self.message


class ResultUnknown(GearmanError):
    """
    The server does not know the job and has no result for it: its function
    keeps no results (no C{keep:TTL} policy), the result expired, or the
    handle (or unique) never named a job there.
    """

# -*- test-case-name: tests.test_client_service -*-
"""
Asking a job server's admin protocol for its C{status} table, on a
connection of its own (servers tell binary and text connections apart by
their first byte).

The client uses it to explain a timeout: "no worker is registered for
C{resize}" says more than C{TimeoutError}.
"""
from __future__ import annotations

from typing import Any, Callable, List

from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory
from twisted.protocols.basic import LineOnlyReceiver
from twisted.python.failure import Failure

from txgear._admintext import StatusTable, parseStatus

#: Function -> (queued or running, running, workers), as C{status} lists it.

#: The most lines of a C{status} answer read (one per function).
MAX_STATUS_LINES = 100000


class _StatusProtocol(LineOnlyReceiver):
    """Sends C{status}, reads lines up to C{.}, then hangs up."""

    delimiter = b"\n"
    MAX_LENGTH = 4096

    def __init__(self, answer: Deferred) -> None:
        self._answer = answer
        self._lines: List[bytes] = []

    def connectionMade(self) -> None:
        self.sendLine(b"status")

    def lineReceived(self, line: bytes) -> None:
        line = line.rstrip(b"\r")
        if line == b".":
            self._finish(parseStatus(self._lines))
            return
        self._lines.append(line)
        if len(self._lines) > MAX_STATUS_LINES:
            self._finish(Failure(ValueError("status answer too long")))

    def lineLengthExceeded(self, line: bytes) -> None:
        self._finish(Failure(ValueError("status line too long")))

    def _finish(self, result: Any) -> None:
        self._lines = []
        if not self._answer.called:
            if isinstance(result, Failure):
                self._answer.errback(result)
            else:
                self._answer.callback(result)
        if self.transport is not None:
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        if not self._answer.called:
            self._answer.errback(reason)


def queryStatus(connect: Any, clock: Any, timeout: float = 2.0) -> Deferred[StatusTable]:
    """
    Read a server's C{status} table.

    @param connect: called with a protocol factory; returns the endpoint's
        connection L{Deferred} (e.g. L{txgear._pool.PoolServer.connectAside}).
    @param clock: bounds the whole query.
    @param timeout: seconds before giving up (fails with C{TimeoutError}).
    @return: fires with the table, by function name.
    """
    return queryAside(connect, clock, _StatusProtocol, timeout)


def queryAside(connect: Any, clock: Any, makeProtocol: Callable[[Deferred], Any],
               timeout: float) -> Deferred:
    """
    One admin query on a connection of its own: C{makeProtocol(answer)}
    builds the protocol that asks and fires C{answer}.

    @return: fires with what the protocol answered; fails with the
        connection's failure, or C{TimeoutError} after C{timeout} seconds;
        cancelling it (or the timeout) stops connecting, or hangs up.
    """
    answer: Deferred = Deferred()
    factory = Factory.forProtocol(lambda: makeProtocol(answer))
    factory.noisy = False
    attempt = connect(factory)
    attempt.addErrback(lambda f: None if answer.called else answer.errback(f))

    def giveUp(d: Deferred) -> None:
        if not attempt.called:
            attempt.cancel()

        def close(proto: Any) -> None:
            if proto is not None and proto.transport is not None:
                proto.transport.abortConnection()
        attempt.addCallback(close)

    result: Deferred = Deferred(giveUp)
    answer.chainDeferred(result)
    result.addTimeout(timeout, clock)
    return result


__all__ = ["StatusTable", "queryAside", "queryStatus"]

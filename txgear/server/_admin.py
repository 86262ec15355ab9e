# -*- test-case-name: tests.test_server_admin -*-
"""
The admin text commands of the job server (C{status}, C{workers}, ...), run
against a L{JobServerState}. Replies follow gearmand 1.1.20 byte for byte,
except where txgear deliberately differs (see docs/server.md):

  - C{create function NAME} creates C{NAME} (gearmand drops the last character);
  - C{drop function} also refuses a function that still has jobs, queued,
    scheduled or waiting for the store (gearmand drops them silently);
  - functions nothing uses are forgotten (see L{JobServerState.createFunction});
  - C{shutdown} and C{shutdown graceful} exist only when enabled.
"""
from __future__ import annotations

import os
from itertools import islice
from typing import Any, Callable, Iterator, List, Optional, Tuple, Union

from txgear import _admintext as text
from txgear._version import __version__
from txgear.server._names import DEFAULT_MAX_FUNCTION_NAME, functionNameProblem
from txgear.server._policy import DEFAULT_NAME, PolicyError
from txgear.server._state import JobServerState, Session

#: gearmand closes the connection on lines of more than this many tokens.
MAX_TOKENS = 8

#: Listings longer than this many rows are produced in pieces of that many.
LISTING_PIECE = 500

#: A reply: bytes, or the pieces of a long listing.
Reply = Union[bytes, Iterator[bytes]]

#: What the protocol must do after sending a reply.
CLOSE = "close"
SHUTDOWN = "shutdown"
GRACEFUL = "graceful"


class AdminCommands:
    """
    Runs admin text commands.

    @param state: the server state to report on and act upon.
    @param describe: returns C{(fd, ip)} for a session, for C{workers}.
    @param verbosity: the name C{verbose} reports (gearmand's log level name).
    @param allowShutdown: accept C{shutdown} / C{shutdown graceful}.
    @param maxFunctionName: the longest function name C{create function},
        C{drop function} and C{maxqueue} accept, in bytes.
    """

    def __init__(self, state: JobServerState, describe: Callable[[Session], Tuple[bytes, bytes]],
                 verbosity: Callable[[], str] = lambda: "INFO", allowShutdown: bool = False,
                 maxFunctionName: int = DEFAULT_MAX_FUNCTION_NAME) -> None:
        self.maxFunctionName = maxFunctionName
        self.state = state
        self.describe = describe
        self.verbosity = verbosity
        self.allowShutdown = allowShutdown

    def run(self, session: Session, line: bytes) -> Tuple[Reply, Optional[str]]:
        """
        Execute one command line; returns the reply and an optional action.
        A long listing's reply is an iterator of pieces, to be pulled as the
        peer reads them (see L{_inPieces}).
        """
        tokens = line.split()
        if len(tokens) > MAX_TOKENS:
            return b"", CLOSE
        if not tokens:
            return text.unknownCommand(b""), None
        command = tokens[0].lower()
        handler = getattr(self, "command_" + command.decode("ascii", "replace"), None)
        if handler is None or not command.isalpha():
            return text.unknownCommand(tokens[0]), None
        return handler(tokens[0], tokens[1:])

    def command_status(self, word: bytes, args: List[bytes]) -> Tuple[Reply, Optional[str]]:
        rows = ((f.name, f.total(), f.running, f.workers) for f in list(self.state.functions.values()))
        return _inPieces(rows, text.formatStatus), None

    def command_prioritystatus(self, word: bytes, args: List[bytes]) -> Tuple[Reply, Optional[str]]:
        rows = ((f.name, f.priorityCounts[0], f.priorityCounts[1], f.priorityCounts[2], f.workers)
                for f in list(self.state.functions.values()))
        return _inPieces(rows, text.formatPriorityStatus), None

    def command_workers(self, word: bytes, args: List[bytes]) -> Tuple[Reply, Optional[str]]:
        def row(session: Session) -> Tuple[bytes, bytes, bytes, List[bytes]]:
            fd, ip = self.describe(session)
            # Most recently registered first, as gearmand lists them.
            return fd, ip, session.clientId, [f.name for f in reversed(session.functions)]
        rows = (row(session) for session in list(self.state.sessions.values()))
        return _inPieces(rows, text.formatWorkers), None

    def command_show(self, word: bytes, args: List[bytes]) -> Tuple[Reply, Optional[str]]:
        if not args:
            return text.unknownCommand(word), None
        what = [a.lower() for a in args]
        if what == [b"jobs"]:
            rows = ((job.handle, job.attempts, 0, 1 if job.background else 0)
                    for job in list(self.state.jobs.values()))
            return _inPieces(rows, text.formatShowJobs), None
        if what[0] == b"dead" and len(args) <= 2:
            function = args[1] if len(args) == 2 else None
            deadRows = ((e.handle, e.function, e.unique, e.attempts, e.diedAt, e.lastError)
                        for e in self.state.dead.newest(function))
            return _inPieces(deadRows, text.formatDead), None
        if what[0] == b"result":
            return self.showResult(args[1:]), None
        if what == [b"servers"] or what == [b"cluster", b"status"]:
            cluster = self.state.cluster
            if cluster is None:
                return text.err(b"NOT_A_CLUSTER", b"This server is not a member of a cluster"), None
            if what == [b"servers"]:
                return cluster.showServers().addErrback(self._clusterFailed), None
            return cluster.clusterStatus().addCallbacks(
                text.formatClusterStatus, self._clusterFailed), None
        if what == [b"policies"]:
            return _inPieces(iter(list(self.state.policies.rows())), text.formatPolicies), None
        if what == [b"unique", b"jobs"]:
            return _inPieces((job.unique for job in list(self.state.jobs.values())),
                             text.formatLines), None
        return text.err(b"UNKNOWN_SHOW_ARGUMENTS"), None

    def showResult(self, args: List[bytes],
                   visible: Optional[Callable[[bytes], bool]] = None) -> Any:
        """
        C{show result HANDLE} or C{show result unique FUNCTION UNIQUE}: a
        kept result, C{OK <status> <size>\n}, exactly <size> bytes, C{\n}
        (a Deferred firing with those bytes: they are read from the store);
        or one C{ERR} line: C{RUNNING}, C{QUEUED}, C{UNKNOWN_JOB} (none kept,
        expired, or a function C{visible} refuses), C{NOT_KEPT
        <status>+<size>} (above C{--keep-max-size}).
        """
        if len(args) == 3 and args[0].lower() == b"unique":
            handle = self.state.handleOfUnique(args[1], args[2])
            if handle is None:
                return text.err(b"UNKNOWN_JOB")
        elif len(args) == 1:
            handle = args[0]
        else:
            return text.err(b"UNKNOWN_SHOW_ARGUMENTS")
        found = self.state.resultOf(handle, visible)
        if type(found) is bytes:
            return text.err(found)
        entry = found
        if not entry.kept:
            return text.err(b"NOT_KEPT", entry.status.encode("ascii") + b" %d" % entry.size)
        d = self.state.kept.fetch(entry)

        def framed(record: Any) -> bytes:
            if record is None or record.expiresAt <= self.state.kept.now():
                return text.err(b"UNKNOWN_JOB")
            return text.formatResult(record.status.encode("ascii"), record.result)

        def failed(failure: Any) -> bytes:
            self.state._log.failure("Reading the kept result of {handle!r}", failure,
                                    handle=handle)
            return text.err(b"STORE_ERROR")

        return d.addCallbacks(framed, failed)

    def _clusterFailed(self, failure: Any) -> bytes:
        self.state._log.warn("Admin query of the cluster failed: {error}",
                             error=failure.getErrorMessage())
        return text.err(b"STORE_ERROR")

    def command_cancel(self, word: bytes, args: List[bytes]) -> Tuple[bytes, Optional[str]]:
        if len(args) < 2:
            return text.unknownCommand(word), None
        if len(args) > 2 or args[0].lower() != b"job":
            return text.err(b"UNKNOWN_ERROR"), None
        if self.state.cancel(args[1]):
            return text.OK, None
        return text.err(b"UNKNOWN_JOB"), None

    def command_create(self, word: bytes, args: List[bytes]) -> Tuple[bytes, Optional[str]]:
        if len(args) < 2 or args[0].lower() != b"function":
            return text.incompleteArguments(b"create"), None
        refusal = self._refusedName(args[1])
        if refusal is not None:
            return refusal, None
        error = self.state.createFunction(args[1])
        if error is not None:
            return text.err(b"TOO_MANY_FUNCTIONS", error.encode("ascii")), None
        return text.OK, None

    def command_drop(self, word: bytes, args: List[bytes]) -> Tuple[bytes, Optional[str]]:
        if len(args) < 2 or args[0].lower() != b"function":
            return text.incompleteArguments(b"drop"), None
        refusal = self._refusedName(args[1])
        if refusal is not None:
            return refusal, None
        error = self.state.dropFunction(args[1])
        if error is None:
            return text.OK, None
        return b"ERR " + error.encode("ascii") + b"\r\n", None

    def command_maxqueue(self, word: bytes, args: List[bytes]) -> Tuple[bytes, Optional[str]]:
        if not args:
            return text.incompleteArguments(b"maxqueue"), None
        refusal = self._refusedName(args[0])
        if refusal is not None:
            return refusal, None
        sizes = [_int(a) for a in args[1:4]]
        if not sizes:
            limits = [0, 0, 0]
        elif len(sizes) < 3:
            limits = [sizes[0]] * 3
        else:
            limits = sizes
        self.state.setMaxQueue(args[0], limits)
        return text.OK, None

    def _refusedName(self, name: bytes) -> Optional[bytes]:
        """The C{ERR} reply refusing C{name} as a function name, or C{None}."""
        problem = functionNameProblem(name, self.maxFunctionName)
        if problem is None:
            return None
        return text.err(*problem)

    def command_policy(self, word: bytes, args: List[bytes]) -> Tuple[bytes, Optional[str]]:
        """C{policy FUNCTION SPEC} (C{*} for the default): set a retry policy."""
        if len(args) != 2:
            return text.incompleteArguments(b"policy"), None
        name, spec = args
        if name != DEFAULT_NAME:
            refusal = self._refusedName(name)
            if refusal is not None:
                return refusal, None
        try:
            self.state.policies.set(name, spec.decode("utf-8", "replace"))
        except PolicyError as e:
            return text.err(b"INVALID_POLICY", text.escape(str(e).encode("utf-8"))), None
        return text.OK, None

    def command_retry(self, word: bytes, args: List[bytes]) -> Tuple[bytes, Optional[str]]:
        """
        C{retry dead HANDLE}, C{retry dead function FUNCTION}: dead jobs back
        in the queue, with fresh attempts. C{OK <count>}; a dead job whose
        unique a live job of its function has stays dead (C{ERR
        UNIQUE_IN_USE} for one handle; left out of the count for a function).
        """
        if not args or args[0].lower() != b"dead" or len(args) not in (2, 3):
            return text.incompleteArguments(b"retry"), None
        if len(args) == 3:
            if args[1].lower() != b"function":
                return text.incompleteArguments(b"retry"), None
            count, _ = self.state.retryDeadFunction(args[2])
            return text.ok(b"%d" % count), None
        error = self.state.retryDeadJob(args[1])
        if error == b"UNIQUE_IN_USE":
            return text.err(error, b"a live job has its unique"), None
        if error is not None:
            return text.err(error), None
        return text.ok(b"1"), None

    def command_purge(self, word: bytes, args: List[bytes]) -> Tuple[bytes, Optional[str]]:
        """C{purge dead [FUNCTION]}: delete dead jobs; C{OK <count>}."""
        if not args or args[0].lower() != b"dead" or len(args) > 2:
            return text.incompleteArguments(b"purge"), None
        return text.ok(b"%d" % self.state.purgeDead(args[1] if len(args) == 2 else None)), None

    def command_acl(self, word: bytes, args: List[bytes]) -> Tuple[bytes, Optional[str]]:
        # Access control is off (with it, L{txgear.server._guard} answers).
        return text.ACL_DISABLED, None

    def command_getpid(self, word: bytes, args: List[bytes]) -> Tuple[bytes, Optional[str]]:
        return text.ok(b"%d" % os.getpid()), None

    def command_verbose(self, word: bytes, args: List[bytes]) -> Tuple[bytes, Optional[str]]:
        return text.ok(self.verbosity().encode("ascii")), None

    def command_version(self, word: bytes, args: List[bytes]) -> Tuple[bytes, Optional[str]]:
        return text.ok(__version__.encode("ascii")), None

    def command_shutdown(self, word: bytes, args: List[bytes]) -> Tuple[bytes, Optional[str]]:
        if not self.allowShutdown:
            return text.unknownCommand(word), None
        if not args:
            return b"OK\n", SHUTDOWN
        if [a.lower() for a in args] == [b"graceful"]:
            return b"OK\n", GRACEFUL
        return b"ERR unknown_args Unknown+arguments+to+server+command\r\n", None


def _inPieces(rows: Iterator[Any], format: Callable[[List[Any]], bytes]) -> Reply:
    """
    A listing: as one C{bytes} if it has fewer than L{LISTING_PIECE} rows,
    else as an iterator of pieces of that many rows, formatted only when
    pulled (the caller pulls while the peer's output has room). The rows
    come from a snapshot of the table taken now; their values are read when
    their piece is formatted.
    """
    first = list(islice(rows, LISTING_PIECE))
    if len(first) < LISTING_PIECE:
        return format(first)
    return _pieces(first, rows, format)


def _pieces(first: List[Any], rows: Iterator[Any],
            format: Callable[[List[Any]], bytes]) -> Iterator[bytes]:
    chunk = first
    while True:
        following = list(islice(rows, LISTING_PIECE))
        if not following:
            yield format(chunk)
            return
        yield format(chunk)[:-len(text.END)]  # the end marker only once, last
        chunk = following


def _int(value: bytes) -> int:
    """gearmand reads sizes with atoi: junk is 0, negatives mean unlimited."""
    digits = b""
    for i, c in enumerate(value):
        if 48 <= c <= 57 or (i == 0 and c in b"+-"):
            digits += bytes([c])
        else:
            break
    try:
        return max(0, int(digits))
    except ValueError:
        return 0


__all__ = ["AdminCommands", "CLOSE", "SHUTDOWN", "GRACEFUL"]

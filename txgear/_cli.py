# -*- test-case-name: tests.test_cli -*-
"""
Command-line tools built on the client and worker (console scripts):

  - C{txgear-submit}: submit a job and print its result; background jobs,
    priorities, unique ids, run-at times, status of a handle, and many jobs
    from a file with progress;
  - C{txgear-worker}: a worker that pipes each job's payload to a shell
    command and returns its output (as C{gearman -w} does);
  - C{txgear-admin}: the admin queries (status, workers, version, ...) with
    readable output.

Each also runs as C{python -m txgear._cli submit|worker|admin ...}.

Exit codes (also in each tool's C{--help}): 0 success; 1 the job failed (or
an admin command got an error reply); 2 a usage mistake, reported on one
line; 3 no server reachable, connection lost or timed out; 4 the server
refused the job (e.g. C{QUEUE_ERROR}: its queue for the function is full).
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import IO, Any, Dict, List, Optional, Sequence, Tuple, Union

from twisted.internet.defer import Deferred, DeferredSemaphore, gatherResults
from twisted.internet.protocol import Factory, ProcessProtocol
from twisted.protocols.basic import LineOnlyReceiver
from twisted.python.failure import Failure

from txgear._address import parseAddress
from txgear._admintext import parseWorkers
from txgear._resultquery import queryResult, showResultCommand
from txgear._version import __version__
from txgear.errors import GearmanError, JobException, JobFailed, ServerError, TLSConnectError
from txgear.jobs import Priority

#: Exit codes.
OK = 0
JOB_FAILED = 1
USAGE = 2
UNREACHABLE = 3
REFUSED = 4

_EXIT_CODES = ("exit status: 0 done; 1 the job failed; 2 usage mistake; 3 no server "
               "reachable, connection lost or timed out; 4 the server refused the job "
               "(e.g. its queue is full)")

#: gearmand stores at most 63 bytes of a unique id (64 and more: refused or cut).
MAX_UNIQUE = 63

def _servers(values: Optional[List[str]]) -> List[str]:
    source = "-s/--server" if values else "$GEARMAN_SERVER"
    servers = values or [os.environ.get("GEARMAN_SERVER", "localhost:4730")]
    for server in servers:
        try:
            parseAddress(server)
        except ValueError as e:
            raise ValueError(f"{source}: {e}; give host, host:port or an endpoint string")
    return servers


class _UsageMistake(Exception):
    """A command-line mistake, reported on one line."""


class _Parser(argparse.ArgumentParser):
    """An C{ArgumentParser} whose errors are one line, without the usage dump."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("epilog", _EXIT_CODES)
        argparse.ArgumentParser.__init__(self, **kwargs)
        self.add_argument("--version", action="version", version=f"%(prog)s (txgear) {__version__}")

    def error(self, message: str) -> Any:  # type: ignore[override]
        raise _UsageMistake(f"{message} (see {self.prog} --help)")


def _number(kind: type, minimum: float, what: str, exclusive: bool = False) -> Any:
    """An argparse C{type} for a number of C{kind} at least (or above) C{minimum}."""
    bound = f"more than {minimum:g}" if exclusive else f"{minimum:g} or more"

    def convert(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or value < minimum or (exclusive and value == minimum) \
                or value != value:
            raise argparse.ArgumentTypeError(f"give {what}, {bound}, not {text!r}")
        return value
    return convert


def _unique(text: str) -> str:
    size = len(text.encode("utf-8"))
    if size > MAX_UNIQUE:
        raise argparse.ArgumentTypeError(
            f"a unique id is at most {MAX_UNIQUE} bytes (gearmand's limit), this one has {size}")
    return text


def _addServerOption(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-s", "--server", action="append", metavar="ADDRESS",
                        help="job server: host, host:port, [v6]:port or an endpoint string "
                             "(repeatable; default $GEARMAN_SERVER or localhost:4730)")
    parser.add_argument("--tls-ca", metavar="PEM",
                        help="connect with TLS; verify servers' certificates against this CA "
                             "and the server's host name or IP address")
    parser.add_argument("--tls-cert", metavar="PEM",
                        help="connect with TLS; present this client certificate (the file may "
                             "also hold its key)")
    parser.add_argument("--tls-key", metavar="PEM", help="the private key of --tls-cert")


def _tls(args: argparse.Namespace, servers: List[str]) -> Any:
    """The L{TLSOptions} of the C{--tls-*} options, or C{None}; checked against C{servers}."""
    from txgear._tlsclient import tlsOptionsFrom

    tls = tlsOptionsFrom(args.tls_ca, args.tls_cert, args.tls_key)
    if tls is not None:
        for server in servers:
            parseAddress(server).checkEncrypts()
    return tls


def _write(stream: IO[Any], data: bytes) -> None:
    buffer = getattr(stream, "buffer", None)
    if buffer is not None:
        buffer.write(data)
        buffer.flush()
    else:
        stream.write(data.decode("utf-8", "replace"))
        stream.flush()


def _say(stream: IO[Any], text: str) -> None:
    stream.write(text + "\n")
    stream.flush()


# txgear-submit


def submitParser() -> argparse.ArgumentParser:
    parser = _Parser(prog="txgear-submit", description=(
        "Submit a Gearman job and print its result (foreground), or its handle "
        "(background). The payload is the argument, or standard input."))
    _addServerOption(parser)
    parser.add_argument("function", nargs="?", help="function name")
    parser.add_argument("payload", nargs="?", help="payload (default: read standard input)")
    parser.add_argument("-b", "--background", action="store_true", help="submit in the background")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--high", action="store_true", help="high priority")
    group.add_argument("--low", action="store_true", help="low priority")
    parser.add_argument("-u", "--unique", type=_unique,
                        help=f"unique id, at most {MAX_UNIQUE} bytes "
                             "(jobs with the same unique coalesce)")
    parser.add_argument("--at", type=_number(float, 0, "a Unix time"), metavar="EPOCH",
                        help="background job not to run before this Unix time")
    parser.add_argument("-t", "--timeout", type=_number(float, 0, "a number of seconds"),
                        help="seconds to wait for the result")
    parser.add_argument("-f", "--file", metavar="PATH",
                        help="submit one job per line of PATH ('-' for standard input); "
                             "prints one result per line and progress on standard error")
    parser.add_argument("--window", type=_number(int, 1, "a whole number of jobs"), default=500,
                        help="most jobs in flight at once with --file [default: 500]")
    parser.add_argument("--status", metavar="HANDLE",
                        help="print the status of a job handle instead of submitting "
                             "(give --server for the server that holds it)")
    parser.add_argument("--status-unique", metavar="UNIQUE", type=_unique,
                        help="print the status of a unique id")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="print WORK_STATUS and WORK_WARNING updates on standard error")
    return parser


def _priority(args: argparse.Namespace) -> Priority:
    return Priority.HIGH if args.high else Priority.LOW if args.low else Priority.NORMAL


def _formatStatus(status: Any) -> str:
    what = (status.handle or status.unique or b"").decode("utf-8", "replace")
    if not status.known:
        return f"{what}: unknown (finished, or never existed) on {status.server or '?'}"
    state = "running" if status.running else "queued"
    text = f"{what}: {state}, progress {status.numerator}/{status.denominator}"
    if status.waiting is not None:
        text += f", {status.waiting} client(s) waiting"
    return text + f" on {status.server or '?'}"


def _parse(parser: argparse.ArgumentParser, argv: Sequence[str],
           stderr: IO[Any]) -> Union[int, Tuple[argparse.Namespace, List[str]]]:
    """Parse a command line: the options and servers, or the exit code to return."""
    try:
        args = parser.parse_args(argv)
        servers = _servers(args.server)
        args.tls = _tls(args, servers)
        return args, servers
    except SystemExit as e:  # --help, --version
        return int(e.code or 0)
    except (_UsageMistake, ValueError) as e:
        _say(stderr, f"{parser.prog}: {e}")
        return USAGE


async def runSubmit(reactor: Any, argv: Sequence[str], stdin: IO[Any] = sys.stdin,
                    stdout: IO[Any] = sys.stdout, stderr: IO[Any] = sys.stderr) -> int:
    """The body of C{txgear-submit}; returns the exit code."""
    from txgear.client import GearmanClient

    parsed = _parse(submitParser(), argv, stderr)
    if isinstance(parsed, int):
        return parsed
    args, servers = parsed
    if not (args.status or args.status_unique or args.function):
        _say(stderr, "txgear-submit: a function name is needed")
        return USAGE
    if args.at is not None and not args.background:
        _say(stderr, "txgear-submit: --at needs --background")
        return USAGE
    client = GearmanClient(servers, reactor=reactor, tls=args.tls)
    try:
        await client.connect()
    except GearmanError as e:
        _say(stderr, f"txgear-submit: {e}")
        return UNREACHABLE
    try:
        if args.status:
            _say(stdout, _formatStatus(await client.getStatus(args.status, server=(
                args.server[0] if args.server and len(args.server) == 1 else None))))
            return OK
        if args.status_unique:
            _say(stdout, _formatStatus(await client.getStatusUnique(args.status_unique)))
            return OK
        if args.file:
            return await _submitMany(reactor, client, args, stdin, stdout, stderr)
        if args.payload is not None:
            payload = args.payload.encode("utf-8")
        else:
            payload = getattr(stdin, "buffer", stdin).read()
            if isinstance(payload, str):
                payload = payload.encode("utf-8")
        return await _submitOne(client, args, payload, stdout, stderr)
    finally:
        await client.close()


async def _submitOne(client: Any, args: argparse.Namespace, payload: bytes,
                     stdout: IO[Any], stderr: IO[Any]) -> int:
    try:
        if args.background:
            job = await client.submitBackground(args.function, payload, unique=args.unique,
                                                priority=_priority(args), when=args.at,
                                                timeout=args.timeout)
            _say(stdout, f"{job.handle.decode('utf-8', 'replace')} {job.server}")
            return OK
        onStatus = onWarning = None
        if args.verbose:
            def onStatus(n: int, d: int) -> None:
                _say(stderr, f"status: {n}/{d}")

            def onWarning(data: bytes) -> None:
                _say(stderr, "warning: " + data.decode("utf-8", "replace"))
        result = await client.submit(args.function, payload, unique=args.unique,
                                     priority=_priority(args), timeout=args.timeout,
                                     onData=lambda data: _write(stdout, data),
                                     onStatus=onStatus, onWarning=onWarning)
        _write(stdout, result)
        if result and not result.endswith(b"\n"):
            _write(stdout, b"\n")
        return OK
    except Exception:
        reason = Failure()
        _say(stderr, f"txgear-submit: {_failureReason(reason, args.timeout)}")
        return _exitCode(reason)


def _failureReason(failure: Failure, timeout: Optional[float]) -> str:
    """Why a submission failed, in words."""
    from twisted.internet.defer import TimeoutError

    error = failure.value
    if isinstance(error, JobException):
        return "job raised: " + error.data.decode("utf-8", "replace")
    if isinstance(error, JobFailed):
        return "job failed"
    if isinstance(error, ServerError):
        return f"the server refused the job: {error}"
    if isinstance(error, TimeoutError):
        return f"no result within {timeout:g} s (-t/--timeout)"
    return f"{type(error).__name__}: {error}"


def _exitCode(failure: Failure) -> int:
    """The exit code for a failed submission."""
    if failure.check(JobException, JobFailed):
        return JOB_FAILED
    if failure.check(ServerError):
        return REFUSED
    return UNREACHABLE


class _Progress:
    """Progress of many jobs on standard error: a line per 10 %, or live on a terminal."""

    def __init__(self, total: int, stream: IO[Any], clock: Any) -> None:
        self.total = total
        self.done = 0
        self.failed = 0
        self.stream = stream
        self.clock = clock
        self.started = clock.seconds()
        self.live = hasattr(stream, "isatty") and stream.isatty()
        self._lastStep = -1

    def line(self) -> str:
        elapsed = max(self.clock.seconds() - self.started, 1e-9)
        pct = 100.0 * self.done / self.total if self.total else 100.0
        return (f"{self.done}/{self.total} done ({pct:.0f}%), {self.failed} failed, "
                f"{self.done / elapsed:.0f} jobs/s")

    def update(self, failed: bool) -> None:
        self.done += 1
        self.failed += failed
        if self.live:
            self.stream.write("\r" + self.line())
            self.stream.flush()
            return
        step = (10 * self.done) // self.total if self.total else 10
        if step != self._lastStep and step < 10:
            self._lastStep = step
            _say(self.stream, self.line())

    def finish(self) -> None:
        if self.live:
            self.stream.write("\r")
        _say(self.stream, self.line())


async def _submitMany(reactor: Any, client: Any, args: argparse.Namespace, stdin: IO[Any],
                      stdout: IO[Any], stderr: IO[Any]) -> int:
    if args.file == "-":
        raw = getattr(stdin, "buffer", stdin).read()
        raw = raw.encode("utf-8") if isinstance(raw, str) else raw
    else:
        with open(args.file, "rb") as f:
            raw = f.read()
    payloads = raw.splitlines()
    progress = _Progress(len(payloads), stderr, reactor)
    window = DeferredSemaphore(max(1, args.window))
    results: List[Optional[bytes]] = [None] * len(payloads)

    def one(i: int, payload: bytes) -> Deferred:
        if args.background:
            d = client.submitBackground(args.function, payload, unique=None,
                                        priority=_priority(args), when=args.at, timeout=args.timeout)
            d.addCallback(lambda job: job.handle)
        else:
            d = client.submit(args.function, payload, priority=_priority(args), timeout=args.timeout)

        def ok(result: bytes) -> None:
            results[i] = result
            progress.update(False)

        def bad(f: Failure) -> None:
            results[i] = None
            failures[i] = f
            progress.update(True)
        return d.addCallbacks(ok, bad)

    failures: Dict[int, Failure] = {}
    await gatherResults([window.run(one, i, p) for i, p in enumerate(payloads)])
    progress.finish()
    for i, result in enumerate(results):
        if result is None:
            reason = _failureReason(failures[i], args.timeout).replace("\n", " ")
            result = f"<failed: {reason}>".encode("utf-8")
        _write(stdout, result + b"\n")
    if not failures:
        return OK
    # The most telling code: a failed job before server trouble.
    return min(_exitCode(f) for f in failures.values())


# txgear-worker


def workerParser() -> argparse.ArgumentParser:
    parser = _Parser(prog="txgear-worker", description=(
        "Run a Gearman worker that pipes each job's payload to COMMAND's standard input "
        "and returns its standard output (without COMMAND: echo the payload). A non-zero "
        "exit status fails the job; standard error is sent as a warning."),
        epilog="exit status: 0 done (after --count jobs, or stopped); 2 usage mistake "
               "(including a COMMAND that cannot be found); 3 every server refused TLS "
               "(certificate not verified, or ours refused); an unreachable server is "
               "retried")
    _addServerOption(parser)
    parser.add_argument("-f", "--function", action="append", required=True,
                        help="function name to register (repeatable)")
    parser.add_argument("-c", "--concurrency", type=_number(int, 1, "a whole number of commands"),
                        default=1, help="commands run at once [default: 1]")
    parser.add_argument("-t", "--timeout", type=_number(float, 0, "a number of seconds",
                                                        exclusive=True),
                        help="seconds a job may run")
    parser.add_argument("-n", "--count", type=_number(int, 1, "a whole number of jobs"),
                        help="exit after this many jobs")
    parser.add_argument("--grace", type=_number(float, 0, "a number of seconds"), default=30.0,
                        help="seconds running jobs get to finish on exit [default: 30]")
    parser.add_argument("--client-id", help="name shown by the server's 'workers' listing")
    parser.add_argument("command", nargs=argparse.REMAINDER,
                        help="command and arguments (after --)")
    return parser


class _CommandProtocol(ProcessProtocol):
    """Feeds the payload to a command and collects its output."""

    transport: Any  # an IProcessTransport once started

    def __init__(self, payload: bytes, job: Any) -> None:
        self.payload = payload
        self.job = job
        self.out: List[bytes] = []
        self.err: List[bytes] = []
        self.done: Deferred = Deferred(self._kill)

    def _kill(self, d: Deferred) -> None:
        try:
            self.transport.signalProcess("KILL")
        except Exception:
            pass

    def connectionMade(self) -> None:
        self.transport.write(self.payload)
        self.transport.closeStdin()

    def outReceived(self, data: bytes) -> None:
        self.out.append(data)

    def errReceived(self, data: bytes) -> None:
        self.err.append(data)

    def processEnded(self, reason: Failure) -> None:
        if self.done.called:
            return
        err = b"".join(self.err)
        if err:
            self.job.sendWarning(err)
        code = getattr(reason.value, "exitCode", None)
        if code == 0:
            self.done.callback(b"".join(self.out))
        else:
            self.done.errback(JobFailed(f"command exited with {code}"
                                        if code is not None else f"command died: {reason.value}"))


def findExecutable(name: str) -> str:
    """
    The path of the program C{name} (searched on C{PATH} unless it holds a
    directory), checked now rather than at each job.

    @raise ValueError: it does not exist or cannot be run, with what to do.
    """
    if os.sep not in name:
        from twisted.python.procutils import which

        found = which(name)
        if not found:
            raise ValueError(f"command {name!r} not found on PATH; give an installed program "
                             f"or its path after --")
        return found[0]
    if not os.path.isfile(name):
        raise ValueError(f"command {name!r} does not exist; give an installed program "
                         f"or its path after --")
    if not os.access(name, os.X_OK):
        raise ValueError(f"command {name!r} is not executable (chmod +x it)")
    return name


def commandFunction(reactor: Any, command: List[str]) -> Any:
    """
    A job function that runs C{command} with the payload on its standard input.

    @raise ValueError: the command's program cannot be found or run.
    """
    if not command:
        return lambda job: job.payload
    executable = findExecutable(command[0])

    def run(job: Any) -> Deferred:
        proto = _CommandProtocol(job.payload, job)
        env = dict(os.environ)
        env.update({"GEARMAN_FUNCTION": job.function.decode("utf-8", "replace"),
                    "GEARMAN_HANDLE": job.handle.decode("utf-8", "replace"),
                    "GEARMAN_UNIQUE": job.unique.decode("utf-8", "replace")})
        reactor.spawnProcess(proto, executable, command, env=env)
        return proto.done

    return run


def _parseWorker(argv: Sequence[str], stderr: IO[Any]) -> Union[int, Tuple[argparse.Namespace,
                                                                          List[str], List[str]]]:
    """The worker's options, servers and command, or the exit code to return."""
    parsed = _parse(workerParser(), argv, stderr)
    if isinstance(parsed, int):
        return parsed
    args, servers = parsed
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if command:
        try:
            findExecutable(command[0])
        except ValueError as e:
            _say(stderr, f"txgear-worker: {e}")
            return USAGE
    return args, servers, command


async def runWorker(reactor: Any, argv: Sequence[str], stderr: IO[Any] = sys.stderr) -> int:
    """The body of C{txgear-worker}; returns the exit code."""
    from txgear.worker import GearmanWorker

    parsed = _parseWorker(argv, stderr)
    if isinstance(parsed, int):
        return parsed
    args, servers, command = parsed
    run = commandFunction(reactor, command)
    worker = GearmanWorker(servers, concurrency=args.concurrency, clientId=args.client_id,
                           grace=args.grace, reactor=reactor, tls=args.tls)
    finished: Deferred = Deferred()
    state: Dict[str, int] = {"jobs": 0}

    def counted(job: Any) -> Any:
        from twisted.internet.defer import maybeDeferred

        d = maybeDeferred(run, job)

        def count(result: Any) -> Any:
            state["jobs"] += 1
            if args.count and state["jobs"] >= args.count and not finished.called:
                worker.factory.stopGrabbing()
                reactor.callLater(0, finished.callback, None)
            return result
        return d.addBoth(count)

    for name in args.function:
        worker.register(name, counted, args.timeout)
    shutdownTrigger = reactor.addSystemEventTrigger("before", "shutdown", worker.close)
    try:
        await worker.connect()
    except GearmanError as e:
        if all(s.lastError is not None and s.lastError.check(TLSConnectError)
               for s in worker.pool.servers):
            # A certificate problem is a setup mistake: retrying will not fix it.
            _say(stderr, f"txgear-worker: {e}")
            reactor.removeSystemEventTrigger(shutdownTrigger)
            await worker.close()
            return UNREACHABLE
        _say(stderr, f"txgear-worker: {e} (still retrying)")
    await finished
    reactor.removeSystemEventTrigger(shutdownTrigger)
    await worker.close()
    return OK


# txgear-admin


class _AdminProtocol(LineOnlyReceiver):
    """Sends admin text commands and collects their replies."""

    delimiter = b"\n"
    MAX_LENGTH = 1024 * 1024

    def __init__(self) -> None:
        self._waiting: List[Any] = []  # (deferred, multiline, lines)

    def command(self, line: str, multiline: bool) -> Deferred:
        d: Deferred = Deferred()
        self._waiting.append((d, multiline, []))
        self.sendLine(line.encode("utf-8"))
        return d

    def lineReceived(self, line: bytes) -> None:
        line = line.rstrip(b"\r")
        if not self._waiting:
            return
        d, multiline, lines = self._waiting[0]
        if multiline and line != b"." and not (not lines and _isAdminError(line)):
            lines.append(line)
            return
        if multiline and line != b".":
            lines.append(line)  # a listing refused: one ERR line, no "."
        self._waiting.pop(0)
        d.callback(lines if multiline else [line])

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        waiting, self._waiting = self._waiting, []
        for d, _, _ in waiting:
            d.errback(reason)


def _isAdminError(line: bytes) -> bool:
    """An ERR reply (no listing line starts so: listing lines hold tabs or are uniques)."""
    return line.startswith(b"ERR ") and b"\t" not in line


#: Admin command -> (text sent, multi-line reply, column headers)
ADMIN_COMMANDS: Dict[str, Any] = {
    "status": ("status", True, ["FUNCTION", "TOTAL", "RUNNING", "WORKERS"]),
    "prioritystatus": ("prioritystatus", True, ["FUNCTION", "HIGH", "NORMAL", "LOW", "WORKERS"]),
    "workers": ("workers", True, None),
    "jobs": ("show jobs", True, ["HANDLE", "RETRIES", "IGNORED", "PERSISTED"]),
    "unique-jobs": ("show unique jobs", True, ["UNIQUE"]),
    "version": ("version", False, None),
    "getpid": ("getpid", False, None),
    "verbose": ("verbose", False, None),
    "cancel": ("cancel job {0}", False, None),
    "maxqueue": ("maxqueue {0}", False, None),
    "policies": ("show policies", True, ["FUNCTION", "POLICY"]),
    "policy": ("policy {0}", False, None),
    "dead": ("show dead {0}", True, ["HANDLE", "FUNCTION", "UNIQUE", "ATTEMPTS", "DIED-AT",
                                     "LAST-ERROR"]),
    "retry-dead": ("retry dead {0}", False, None),
    "purge-dead": ("purge dead {0}", False, None),
    "result": ("show result {0}", False, None),
}


#: Admin command -> (fewest, most) arguments; the others take none.
_ADMIN_ARGUMENTS = {"cancel": (1, 1), "maxqueue": (1, 4), "policy": (2, 2), "dead": (0, 1),
                    "retry-dead": (1, 2), "purge-dead": (0, 1), "result": (1, 3)}
_ADMIN_USAGE = {"cancel": "cancel HANDLE", "maxqueue": "maxqueue FUNCTION [N | HIGH NORMAL LOW]",
                "policy": "policy FUNCTION SPEC  (FUNCTION '*' for the default)",
                "dead": "dead [FUNCTION]",
                "retry-dead": "retry-dead HANDLE | retry-dead function FUNCTION",
                "purge-dead": "purge-dead [FUNCTION]",
                "result": "result HANDLE | result unique FUNCTION UNIQUE"}

#: What a count answering these commands means.
_COUNTED = {"retry-dead": "retried {0} dead jobs", "purge-dead": "purged {0} dead jobs"}


def _argumentCountMistake(command: str, arguments: List[str]) -> str:
    if command not in _ADMIN_ARGUMENTS:
        return (f"{command} takes no arguments, got {' '.join(arguments)!r} "
                f"(see txgear-admin --help)")
    return f"{command}: wrong number of arguments; use: txgear-admin {_ADMIN_USAGE[command]}"


def table(headers: List[str], rows: List[List[str]]) -> List[str]:
    """Rows aligned in columns under C{headers}."""
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row[:len(widths)]):
            widths[i] = max(widths[i], len(cell))
    out = []
    for row in [headers] + rows:
        cells = list(row[:len(widths) - 1]) + [" ".join(row[len(widths) - 1:])]
        out.append("  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip())
    return out


def formatAdmin(name: str, lines: List[bytes]) -> List[str]:
    """Readable output for the reply of admin command C{name}."""
    text = [line.decode("utf-8", "replace") for line in lines]
    spec = ADMIN_COMMANDS[name]
    if name == "workers":
        rows = [[w.fd, w.ip, w.clientId, " ".join(w.functions)] for w in parseWorkers(lines)]
        return table(["FD", "ADDRESS", "CLIENT-ID", "FUNCTIONS"], rows)
    if spec[2] is not None:
        rows = [line.split("\t") for line in text]
        if name in ("status", "prioritystatus"):
            rows.sort(key=lambda r: r[0])
        return table(spec[2], rows)
    reply = text[0] if text else ""
    if reply.startswith("OK "):
        if name in _COUNTED:
            return [_COUNTED[name].format(reply[3:])]
        return [reply[3:]]
    return [reply]


def adminParser() -> argparse.ArgumentParser:
    parser = _Parser(prog="txgear-admin", description=(
        "Query Gearman job servers with the admin text protocol."),
        epilog="exit status: 0 done; 1 the server answered with an error; 2 usage mistake; "
               "3 a server could not be reached or did not answer")
    _addServerOption(parser)
    parser.add_argument("--raw", action="store_true", help="print the server's reply unchanged")
    parser.add_argument("command", choices=sorted(ADMIN_COMMANDS),
                        help="status, workers, version, ... (cancel HANDLE, maxqueue FUNCTION "
                             "[N], policy FUNCTION SPEC, dead [FUNCTION], retry-dead HANDLE, "
                             "retry-dead function FUNCTION, purge-dead [FUNCTION], result HANDLE, "
                             "result unique FUNCTION UNIQUE: a kept result's bytes, raw)")
    parser.add_argument("arguments", nargs="*",
                        help="arguments of cancel/maxqueue/policy/dead/retry-dead/purge-dead")
    return parser


async def runAdmin(reactor: Any, argv: Sequence[str], stdout: IO[Any] = sys.stdout,
                   stderr: IO[Any] = sys.stderr) -> int:
    """The body of C{txgear-admin}; returns the exit code."""
    parsed = _parse(adminParser(), argv, stderr)
    if isinstance(parsed, int):
        return parsed
    args, servers = parsed
    line, multiline, _ = ADMIN_COMMANDS[args.command]
    fewest, most = _ADMIN_ARGUMENTS.get(args.command, (0, 0))
    if not fewest <= len(args.arguments) <= most or (
            args.command == "retry-dead" and len(args.arguments) == 2
            and args.arguments[0] != "function"):
        _say(stderr, f"txgear-admin: {_argumentCountMistake(args.command, args.arguments)}")
        return USAGE
    if args.command == "result":
        return await _adminResult(reactor, args, servers, stdout, stderr)
    if "{0}" in line:
        line = line.format(" ".join(args.arguments))
    code = OK
    for server in servers:
        endpoint = parseAddress(server).endpoint(reactor, timeout=10, tls=args.tls)
        try:
            proto: Any = await endpoint.connect(Factory.forProtocol(_AdminProtocol))
        except Exception as e:
            _say(stderr, f"txgear-admin: cannot connect to {server}: {e}")
            code = UNREACHABLE
            continue
        try:
            lines = await proto.command(line, multiline).addTimeout(10, reactor)
        except Exception as e:
            _say(stderr, f"txgear-admin: {server}: {e}")
            code = UNREACHABLE
            continue
        finally:
            proto.transport.loseConnection()
        if len(servers) > 1:
            _say(stdout, f"== {server}")
        if lines and _isAdminError(lines[0]) and not args.raw:
            _say(stderr, f"txgear-admin: {server}: {lines[0].decode('utf-8', 'replace')}")
            code = JOB_FAILED
            continue
        if args.raw:
            for raw in lines:
                _write(stdout, raw + b"\n")
            if multiline and not (lines and _isAdminError(lines[0])):
                _write(stdout, b".\n")
        else:
            for text in formatAdmin(args.command, lines):
                _say(stdout, text)
        if lines and _isAdminError(lines[0]):
            code = JOB_FAILED
    return code


async def _adminResult(reactor: Any, args: Any, servers: List[str], stdout: IO[Any],
                       stderr: IO[Any]) -> int:
    """
    C{txgear-admin result}: the framed C{show result} reply read by size
    (not by lines), the bytes written raw to stdout. A handle names one
    server: with several, the first that knows the job answers.
    """
    words = args.arguments
    try:
        if len(words) == 1:
            command = showResultCommand(handle=words[0].encode("utf-8"))
        elif len(words) == 3 and words[0] == "unique":
            command = showResultCommand(function=words[1].encode("utf-8"),
                                        unique=words[2].encode("utf-8"))
        else:
            raise ValueError(f"use: txgear-admin {_ADMIN_USAGE['result']}")
    except ValueError as e:
        _say(stderr, f"txgear-admin: result: {e}")
        return USAGE
    errors: List[Tuple[str, str]] = []
    for server in servers:
        endpoint = parseAddress(server).endpoint(reactor, timeout=10, tls=args.tls)
        try:
            reply = await queryResult(endpoint.connect, reactor, command, timeout=30)
        except Exception as e:
            _say(stderr, f"txgear-admin: {server}: {e}")
            continue
        if reply.error is None:
            _write(stdout, reply.data)
            if reply.status != "complete":
                _say(stderr, f"txgear-admin: {server}: the job ended with {reply.status}")
                return JOB_FAILED
            return OK
        errors.append((server, reply.errorLine))
        if reply.error != b"UNKNOWN_JOB":
            break  # the server that holds the job answered
    if not errors:
        return UNREACHABLE
    server, line = next((e for e in errors if not e[1].startswith("ERR UNKNOWN_JOB")), errors[0])
    _say(stderr, f"txgear-admin: {server}: {line}")
    return JOB_FAILED


# Entry points


def _react(body: Any, argv: Optional[Sequence[str]]) -> None:
    from twisted.internet.task import react

    arguments = list(sys.argv[1:] if argv is None else argv)

    async def main(reactor: Any) -> None:
        code = await body(reactor, arguments)
        if code:
            raise SystemExit(code)

    def run(reactor: Any) -> Deferred:
        return Deferred.fromCoroutine(main(reactor))

    react(run)


def submitMain(argv: Optional[Sequence[str]] = None) -> None:
    """Console script C{txgear-submit}."""
    _react(runSubmit, argv)


def workerMain(argv: Optional[Sequence[str]] = None) -> None:
    """Console script C{txgear-worker}."""
    from twisted.logger import globalLogBeginner, textFileLogObserver, FilteringLogObserver, \
        LogLevelFilterPredicate, LogLevel

    argv = list(sys.argv[1:] if argv is None else argv)
    # Mistakes are reported before logging starts: one line, nothing else.
    parsed = _parseWorker(argv, sys.stderr)
    if isinstance(parsed, int):
        raise SystemExit(parsed)
    predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.info)
    globalLogBeginner.beginLoggingTo([FilteringLogObserver(textFileLogObserver(sys.stderr), [predicate])],
                                     redirectStandardIO=False)
    _react(runWorker, argv)


def adminMain(argv: Optional[Sequence[str]] = None) -> None:
    """Console script C{txgear-admin}."""
    _react(runAdmin, argv)


def main(argv: Optional[Sequence[str]] = None) -> None:
    """C{python -m txgear._cli submit|worker|admin ...}"""
    arguments = list(sys.argv[1:] if argv is None else argv)
    tools = {"submit": submitMain, "worker": workerMain, "admin": adminMain}
    if not arguments or arguments[0] not in tools:
        sys.stderr.write("usage: python -m txgear._cli submit|worker|admin [options]\n")
        raise SystemExit(USAGE)
    tools[arguments[0]](arguments[1:])


if __name__ == "__main__":
    main()

__all__ = ["submitMain", "workerMain", "adminMain", "runSubmit", "runWorker", "runAdmin",
           "formatAdmin", "table"]

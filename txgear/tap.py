# -*- test-case-name: tests.test_tap -*-
"""
The C{twistd gearman} plugin: command-line options and service construction.
"""
from __future__ import annotations

import gc
import signal
import sys
from typing import Any, List, Optional

from twisted.application.service import IService
from twisted.logger import LogLevel
from twisted.python import usage

from txgear._log import logger, logLevel, setLogLevel
from txgear._packet import DEFAULT_MAX_PACKET
from txgear._pluginoptions import PluginOptions, namedCoercions
from txgear._tls import DEFAULT_HANDSHAKE_DEADLINE
from txgear.web._limits import (DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_WAIT,
                                DEFAULT_MAX_WAITING)
from txgear.server import GearmanServerFactory, GearmanServerService, JobServerState
from txgear.server._names import DEFAULT_MAX_FUNCTION_NAME, functionNameProblem
from txgear.server._policy import DEFAULT_NAME, PolicyError, PolicyTable, RetryPolicy
from txgear.server.service import DEFAULT_SHUTDOWN_GRACE
from txgear.server._reclaim import reclaimer, tuneAllocator
from txgear.server._deadset import DEFAULT_DEAD_MAX_AGE, DEFAULT_DEAD_MAX_JOBS
from txgear.server._kept import DEFAULT_KEEP_MAX_RESULTS, DEFAULT_KEEP_MAX_SIZE
from txgear.server._state import DEFAULT_MAX_FUNCTIONS
from txgear.server._protocol import (
    ARGUMENT_ALLOWANCE,
    DEFAULT_OUTPUT_SOFT_LIMIT,
    DEFAULT_PACKET_DEADLINE,
    DEFAULT_PARTIAL_BUDGET,
)

_LEVELS = {"debug": LogLevel.debug, "info": LogLevel.info, "warn": LogLevel.warn,
           "warning": LogLevel.warn, "error": LogLevel.error, "critical": LogLevel.critical,
           # gearmand's --verbose names
           "fatal": LogLevel.critical, "alert": LogLevel.critical, "crit": LogLevel.critical,
           "notice": LogLevel.info}
# gearmand's names for the `verbose` admin command.
_GEARMAND_LEVEL_NAMES = {LogLevel.debug: "DEBUG", LogLevel.info: "INFO", LogLevel.warn: "WARNING",
                         LogLevel.error: "ERROR", LogLevel.critical: "FATAL"}


_log = logger()


def _nonNegative(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = -1
    if number < 0:
        raise ValueError(f"give a whole number, 0 or more, not {value!r}")
    return number


_DAY_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _deadAge(value: str) -> float:
    """A duration such as C{90s}, C{12h}, C{30d}, or a number of seconds."""
    text = value.strip().lower()
    unit = 1
    if text and text[-1] in _DAY_UNITS:
        unit = _DAY_UNITS[text[-1]]
        text = text[:-1]
    try:
        seconds = float(text) * unit
    except ValueError:
        seconds = -1.0
    if not seconds >= 0 or seconds == float("inf"):
        raise ValueError(f"give a duration such as 90s, 12h or 30d (or seconds), not {value!r}")
    return seconds


class Options(PluginOptions):
    """Options of C{twistd gearman}."""

    command = "twistd gearman"
    synopsis = "[options]"
    longdesc = (
        "Run a Gearman job server, a drop-in replacement for gearmand: any Gearman "
        "client, worker or admin tool can use it. Listens on tcp:4730 (every interface) "
        "unless --port is given. Exit status: 2 for a mistake in these options, 1 if the "
        "server cannot start (e.g. its port is in use)."
    )

    optFlags = [
        ["round-robin", "R", "Alternate between a worker's functions on each grab, instead of "
                             "serving strictly by priority then submission order."],
        ["exceptions", None, "Forward WORK_EXCEPTION to every client, as if each had sent "
                             "OPTION_REQ exceptions (gearmand's --exceptions)."],
        ["enable-shutdown-command", None, "Accept the admin commands 'shutdown' and "
                                          "'shutdown graceful' (off by default: anyone who "
                                          "reaches the port could stop the server)."],
    ]
    optParameters = namedCoercions([
        ["job-retries", "j", 0, "Fail a job (WORK_FAIL to its clients) after its worker was lost "
                                "or its CAN_DO_TIMEOUT expired this many times; 0 retries a lost "
                                "worker's job forever and fails a timed-out job at once.",
         _nonNegative],
        ["max-functions", None, DEFAULT_MAX_FUNCTIONS, "Most functions known at once; past it a "
                                                       "CAN_DO of a new name is ignored and a "
                                                       "submission gets ERROR QUEUE_ERROR.",
         _nonNegative],
        ["dead-max-jobs", None, DEFAULT_DEAD_MAX_JOBS,
         "Most jobs the dead set keeps (background jobs that used up their attempts); "
         "past it the oldest are dropped. 0: no limit.", _nonNegative],
        ["dead-max-age", None, DEFAULT_DEAD_MAX_AGE,
         "Longest a job stays in the dead set, a duration (90s, 12h, 30d) or seconds; "
         "older ones are dropped. 0: no limit [default: 30d].", _deadAge],
        ["keep-max-size", None, DEFAULT_KEEP_MAX_SIZE,
         "Largest result kept by a keep:TTL policy, in bytes; a larger one is recorded as "
         "not kept (its status and size only) [default: 1048576].", int],
        ["keep-max-results", None, DEFAULT_KEEP_MAX_RESULTS,
         "Most kept results at once; past it the oldest are dropped. 0: no limit "
         "[default: 100000].", int],
        ["worker-wakeup", "w", 1, "Sleeping workers woken (NOOP) per newly runnable job; 0 wakes "
                                  "every sleeping worker of the function, as gearmand's default.",
         _nonNegative],
        ["job-handle-prefix", None, None, "Job handles are PREFIX:N [default: H:<hostname>]."],
        ["max-packet-size", None, DEFAULT_MAX_PACKET, "Largest workload or result accepted, in "
                                                      "bytes (the packet may hold 64 KiB more "
                                                      "for its other arguments); a larger packet "
                                                      "gets ERROR ARGUMENT_TOO_LARGE and the "
                                                      "connection is closed.", int],
        ["max-function-name", None, DEFAULT_MAX_FUNCTION_NAME,
         "Longest function name accepted, in bytes (CAN_DO, SUBMIT_*, create function, "
         "maxqueue...); a longer one gets ERROR ARGUMENT_TOO_LARGE (admin: ERR), the "
         "connection is kept. libgearman refuses names over 512 bytes.", int],
        ["shutdown-grace", None, DEFAULT_SHUTDOWN_GRACE,
         "On SIGTERM/SIGINT, seconds the server waits for workers to finish the jobs they "
         "hold and for peers to read their replies before it closes the connections (then "
         "the store).", float],
        ["output-soft-limit", None, DEFAULT_OUTPUT_SOFT_LIMIT,
         "Bytes of replies a connection may leave unread before its own requests wait (and "
         "it is not read) until half of them have drained.", _nonNegative],
        ["output-hard-limit", None, 0,
         "Bytes of output a connection may leave unread before it is closed (a client's "
         "foreground jobs are then handled as on any client loss); must exceed "
         "--max-packet-size + 64 KiB + --output-soft-limit [default: the larger of 64 MiB "
         "and twice --max-packet-size + 64 KiB, plus the soft limit].", _nonNegative],
        ["partial-packet-budget", None, DEFAULT_PARTIAL_BUDGET,
         "Bytes all connections' unfinished packets of 64 KiB or more may hold together "
         "(their announced sizes); a connection whose packet does not fit is not read "
         "until there is room (one connection alone may always finish one packet).",
         _nonNegative],
        ["packet-deadline", None, DEFAULT_PACKET_DEADLINE,
         "Seconds a packet or admin line may take from its first byte to its last; a "
         "connection past it is closed.", float],
        ["log-level", None, "info", "Log level for txgear's messages: debug, info, warn, error "
                                    "(gearmand's --verbose names work too: DEBUG, INFO, "
                                    "WARNING, ERROR, FATAL...)."],
        ["listen", "L", None, "Address that port numbers given to --port listen on, as "
                              "gearmand's --listen [default: all interfaces]."],
        ["threads", "t", None, "Accepted for gearmand command lines and ignored: txgear runs one "
                               "reactor thread."],
        ["acl", None, None, "Access control list: an INI file of rights per identity (a client "
                            "certificate's name, or anonymous on a plain port), gear's format plus "
                            "an admin right; deny by default. Read again on SIGHUP. See "
                            "docs/security.md."],
        ["tls-cert", None, None, "PEM file with the server certificate for --tls-port, "
                                 "optionally followed by its chain (and its key)."],
        ["tls-key", None, None, "PEM file with the server's private key, unencrypted "
                                "[default: the key in --tls-cert]."],
        ["tls-ca", None, None, "PEM file with the CA certificate(s) that client certificates "
                               "must be signed by: with it, a TLS client must present a valid "
                               "certificate; without it, none is asked for (peers are "
                               "anonymous)."],
        ["tls-handshake-deadline", None, DEFAULT_HANDSHAKE_DEADLINE,
         "Seconds a peer of a --tls-port has to finish its TLS handshake; one that has not "
         "is closed.", float],
        ["http-max-wait", None, DEFAULT_MAX_WAIT,
         "Seconds an HTTP submission waits for its job at most (and by default; the "
         "JSON API's wait= asks for less): past it, 504 and the job is left to run.", float],
        ["http-max-waiting", None, DEFAULT_MAX_WAITING,
         "HTTP requests that may wait on jobs at once (submissions, event streams); "
         "past it, 429.", int],
        ["http-idle-timeout", None, DEFAULT_IDLE_TIMEOUT,
         "Seconds an HTTP connection with no request under way stays open.", float],
        ["http-max-connections", None, DEFAULT_MAX_CONNECTIONS,
         "Open HTTP connections at most; past it a new one gets 503 and is closed.", int],
        ["queue", "q", None, "Where background jobs are kept: sqlite:PATH (a file, relative to the "
                             "working directory), postgresql:<dsn>, redis:<url>, or memory (lost on "
                             "restart). [default: sqlite:txgear-queue.sqlite]"],
        ["cluster", None, None, "Share the background jobs of --queue postgresql:<dsn> with the "
                                "other servers of the cluster NAME (see docs/cluster.md)."],
        ["cluster-id", None, None, "This server's stable id in its cluster "
                                   "[default: <hostname>:<first port>]."],
        ["cluster-lease", None, 6.0, "Seconds a server's lease lasts; a dead server's jobs run "
                                     "elsewhere within about this plus --cluster-poll.", float],
        ["cluster-poll", None, 1.0, "Seconds between claim and reclaim polls of a cluster "
                                    "member.", float],
    ])

    def __init__(self) -> None:
        usage.Options.__init__(self)
        self["ports"] = []
        self["http"] = []
        self["https"] = []
        self["tls-ports"] = []
        self["tls"] = None
        self["policy"] = []

    def opt_port(self, value: str) -> None:
        """Where to listen (repeatable): a port number (tcp:N) or any Twisted server endpoint, e.g. tcp:4730:interface=127.0.0.1, unix:/run/gearman.sock, ssl:4730:privateKey=key.pem [default: tcp:4730]"""
        self["ports"].append(value)

    opt_p = opt_port

    def opt_tls_port(self, value: str) -> None:
        """Where to listen with TLS (repeatable; needs --tls-cert): a port number (on --listen's address, as --port) or a tcp:, tcp6: or unix: server endpoint. Alongside --port's listeners; with only --tls-port, no plain port is opened."""
        self["tls-ports"].append(value)

    def opt_http(self, value: str) -> None:
        """Serve Prometheus metrics, the JSON API and the dashboard over HTTP at this endpoint (repeatable), e.g. tcp:8080:interface=127.0.0.1 (a bare port number takes --listen's address) [default: no HTTP port]"""
        self["http"].append(value)

    def opt_https(self, value: str) -> None:
        """As --http, with TLS: the certificates of --tls-cert/--tls-key, and with --tls-ca a client certificate is required and names the requester for --acl (repeatable)"""
        self["https"].append(value)

    def opt_policy(self, value: str) -> None:
        """Retry policy of a function (repeatable), FUNCTION=SPEC; * for the default. SPEC: comma-separated attempts:N (runs in all; 0 = no limit), backoff:MIN[..MAX] (500ms, 2s, 10m, 1h; exponential with jitter), on:lost+timeout+fail+exception. Fields left out keep the default's. Without it the default is --job-retries'. See docs/jobs.md."""
        self["policy"].append(value)

    def opt_verbose(self, value: str) -> None:
        """gearmand's name for --log-level."""
        self["log-level"] = value

    def postOptions(self) -> None:
        ports = self["ports"] or ([] if self["tls-ports"] else ["4730"])
        # Colons (IPv6) are escaped in endpoint strings.
        listen = (self["listen"] or "").replace(":", "\\:")
        interface = f":interface={listen}" if listen else ""
        # A bare number is a TCP port, as for gearmand; anything else an endpoint.
        self["ports"] = [f"tcp:{p}{interface}" if p.isdigit() else p for p in ports]
        for description in self["ports"]:
            _checkEndpoint(description)
        self["tls-ports"] = [f"tcp:{p}{interface}" if p.isdigit() else p
                             for p in self["tls-ports"]]
        for description in self["tls-ports"]:
            _checkEndpoint(description, "--tls-port")
        self["https"] = [f"tcp:{p}{interface}" if p.isdigit() else p for p in self["https"]]
        for description in self["https"]:
            _checkEndpoint(description, "--https")
        self._checkTLS()
        self["http"] = [f"tcp:{p}{interface}" if p.isdigit() else p for p in self["http"]]
        for description in self["http"]:
            _checkEndpoint(description, "--http")
        if self["http-max-wait"] <= 0:
            raise usage.UsageError("--http-max-wait must be positive")
        if self["http-max-waiting"] < 1:
            raise usage.UsageError("--http-max-waiting must be at least 1")
        if self["http-idle-timeout"] <= 0:
            raise usage.UsageError("--http-idle-timeout must be positive")
        if self["http-max-connections"] < 1:
            raise usage.UsageError("--http-max-connections must be at least 1")
        level = _LEVELS.get(str(self["log-level"]).lower())
        if level is None:
            raise usage.UsageError(f"--log-level: unknown level {self['log-level']!r}; give "
                                   f"debug, info, warn, error or critical")
        self["log-level"] = level
        if self["max-packet-size"] < 1024:
            raise usage.UsageError("--max-packet-size must be at least 1024")
        if self["shutdown-grace"] < 0:
            raise usage.UsageError("--shutdown-grace must not be negative")
        if self["max-function-name"] < 1:
            raise usage.UsageError("--max-function-name must be at least 1")
        if self["queue"] is not None:
            _checkQueue(self["queue"])
        if self["cluster"] is not None:
            from txgear.cluster._setup import clusterProblem, defaultServerId
            problem = clusterProblem(self["cluster"], self["queue"], self["cluster-lease"],
                                     self["cluster-poll"])
            if problem:
                raise usage.UsageError(problem)
            if not self["cluster-id"]:
                self["cluster-id"] = defaultServerId(self["ports"])
            elif len(self["cluster-id"]) > 200 or not self["cluster-id"].isprintable():
                raise usage.UsageError("--cluster-id: at most 200 printable characters")
        if self["output-soft-limit"] < 4096:
            raise usage.UsageError("--output-soft-limit must be at least 4096")
        room = self["max-packet-size"] + ARGUMENT_ALLOWANCE + self["output-soft-limit"]
        if self["output-hard-limit"] and self["output-hard-limit"] <= room:
            raise usage.UsageError("--output-hard-limit must exceed --max-packet-size + 64 KiB "
                                   "+ --output-soft-limit, so that the largest result still "
                                   "reaches a client that reads")
        if self["keep-max-size"] < 0 or self["keep-max-results"] < 0:
            raise usage.UsageError("--keep-max-size and --keep-max-results must be 0 or more")
        if self["packet-deadline"] <= 0:
            raise usage.UsageError("--packet-deadline must be positive")
        self["policies"] = self._policies()
        self["access"] = None
        if self["acl"] is not None:
            from txgear.server._access import AccessControl, AccessFileError

            try:
                self["access"] = AccessControl.fromFile(self["acl"])
            except AccessFileError as e:
                raise usage.UsageError(f"--acl: {e}")

    def _policies(self) -> PolicyTable:
        """The retry policies: --job-retries' default, then --policy * specs, then functions'."""
        table = PolicyTable(RetryPolicy.fromJobRetries(self["job-retries"]))
        given = []
        for value in self["policy"]:
            name, equals, spec = value.rpartition("=")
            if not equals or not name:
                raise usage.UsageError(f"--policy {value!r}: write FUNCTION=SPEC (* for the "
                                       f"default), e.g. resize=attempts:5,backoff:2s..10m")
            raw = name.encode("utf-8")
            if raw != DEFAULT_NAME and functionNameProblem(raw, self["max-function-name"]):
                raise usage.UsageError(f"--policy {value!r}: {name!r} is not a valid function name")
            given.append((raw != DEFAULT_NAME, raw, spec, value))
        # The default first, so that functions' policies build on it whatever the order.
        for _, raw, spec, value in sorted(given, key=lambda item: item[0]):
            try:
                table.set(raw, spec)
            except PolicyError as e:
                raise usage.UsageError(f"--policy {value!r}: {e}") from e
        return table

    def _checkTLS(self) -> None:
        """Read the TLS files now: a mistake in them is a usage error."""
        files = {"tls-cert": self["tls-cert"], "tls-key": self["tls-key"],
                 "tls-ca": self["tls-ca"]}
        if not self["tls-ports"] and not self["https"]:
            given = [f"--{name}" for name, path in files.items() if path]
            if given:
                raise usage.UsageError(f"{' and '.join(given)} without --tls-port: give "
                                       f"--tls-port PORT to listen with TLS")
            return
        option = "--tls-port" if self["tls-ports"] else "--https"
        if not self["tls-cert"]:
            raise usage.UsageError(f"{option} needs --tls-cert FILE (the server certificate, "
                                   "and its key unless --tls-key is given)")
        if self["tls-handshake-deadline"] <= 0:
            raise usage.UsageError("--tls-handshake-deadline must be positive")
        try:
            from txgear._tls import ServerTLS, TLSFileError
        except ImportError as e:
            raise usage.UsageError(f"{option} needs pyOpenSSL and service_identity "
                                   f"(pip install 'txgear[tls]'): {e}")
        try:
            self["tls"] = ServerTLS(self["tls-cert"], self["tls-key"], self["tls-ca"],
                                    handshakeDeadline=self["tls-handshake-deadline"])
        except TLSFileError as e:
            option = next((name for name, path in files.items() if path == e.path), "tls-cert")
            raise usage.UsageError(f"--{option}: {e}")


def makeService(options: Any, reactor: Any = None) -> IService:
    """Build the job server service from parsed L{Options}."""
    if reactor is None:
        from twisted.internet import reactor  # type: ignore[no-redef]
    setLogLevel(options["log-level"])
    _tuneGarbageCollector()
    checkPyPyNursery()
    tuneAllocator()
    prefix: Optional[bytes] = None
    if options["job-handle-prefix"]:
        prefix = options["job-handle-prefix"].encode("utf-8")
    cluster = options.get("cluster")
    if cluster:
        from txgear.cluster._setup import makeClusterStore
        from txgear.cluster._setup import defaultServerId
        store, _ = makeClusterStore(options["queue"], cluster, options["cluster-id"], reactor,
                                    lease=options["cluster-lease"],
                                    address=defaultServerId(options["ports"]))
        if prefix is None:
            prefix = b"H:" + cluster.encode("ascii")
    else:
        store = _makeStore(options["queue"], reactor)
    state = JobServerState(clock=reactor, handlePrefix=prefix, jobRetries=options["job-retries"],
                           roundRobin=options["round-robin"], workerWakeup=options["worker-wakeup"],
                           store=store, onEmptied=reclaimer(),
                           maxFunctions=options["max-functions"], policies=options["policies"],
                           deadMaxJobs=options["dead-max-jobs"],
                           deadMaxAge=options["dead-max-age"],
                           keepMaxSize=options["keep-max-size"],
                           keepMaxResults=options["keep-max-results"])
    if cluster:
        from txgear.cluster._setup import joinCluster
        joinCluster(state, store, clock=reactor, poll=options["cluster-poll"])
    if store is None:
        _log.warn("The queue is memory: background jobs are lost when the server stops "
                  "(--queue sqlite:PATH keeps them)")
        reactor.addSystemEventTrigger("before", "shutdown", warnDroppedJobs, state)
    factory = GearmanServerFactory(state, maxPacket=options["max-packet-size"],
                                   allowShutdown=options["enable-shutdown-command"],
                                   verbosity=lambda: _GEARMAND_LEVEL_NAMES.get(logLevel(), "INFO"),
                                   exceptions=options["exceptions"],
                                   maxFunctionName=options["max-function-name"],
                                   outputSoftLimit=options["output-soft-limit"],
                                   outputHardLimit=options["output-hard-limit"] or None,
                                   partialBudget=options["partial-packet-budget"],
                                   packetDeadline=options["packet-deadline"],
                                   access=options.get("access"))
    service = GearmanServerService(options["ports"], state, factory, reactor=reactor,
                                   shutdownGrace=options["shutdown-grace"],
                                   tlsEndpoints=options.get("tls-ports", []),
                                   tls=options.get("tls"),
                                   httpEndpoints=options.get("http", []),
                                   httpsEndpoints=options.get("https", []),
                                   httpFactory=_makeSite(options, state, factory, reactor))
    service.started.addErrback(_fatal, reactor)
    reactor.callWhenRunning(_installGracefulSignal, service, reactor)
    reactor.callWhenRunning(_installReloadSignal, service, reactor)
    return service


def _makeSite(options: Any, state: JobServerState, factory: GearmanServerFactory,
              reactor: Any) -> Any:
    """The HTTP site, when --http is given."""
    if not options.get("http") and not options.get("https"):
        return None
    from txgear.web import makeSite

    return makeSite(state, factory, reactor, maxWait=options.get("http-max-wait", DEFAULT_MAX_WAIT),
                    maxWaiting=options.get("http-max-waiting", DEFAULT_MAX_WAITING),
                    idleTimeout=options.get("http-idle-timeout", DEFAULT_IDLE_TIMEOUT),
                    maxConnections=options.get("http-max-connections", DEFAULT_MAX_CONNECTIONS))


def _tuneGarbageCollector() -> None:
    """
    The server keeps up to millions of small job objects alive; with the
    default thresholds the cyclic collector rescans them over and over while
    a burst arrives. Collect young objects less often; nothing the server
    makes relies on cycle collection to be freed promptly.
    """
    if hasattr(gc, "set_threshold"):  # CPython; PyPy's collector is incremental
        gc.set_threshold(20000, 50, 100)


#: PyPy's nursery above this size is out of proportion for a server (see L{checkPyPyNursery}).
PYPY_NURSERY_WARN = 16 * 2**20


def checkPyPyNursery(getStats: Any = None) -> Optional[int]:
    """
    On PyPy, warn when the nursery (the young generation, allocated whole
    and collected each time it fills) is larger than L{PYPY_NURSERY_WARN};
    return its size in bytes, or C{None} elsewhere.

    PyPy sizes it at half the "cache size" C{/proc/cpuinfo} reports, which
    on some processors is the whole last-level cache (300 MB on recent
    Xeons: a 150 MB nursery, resident in full, and more between collections
    of what passed through it). The environment variable C{PYPY_GC_NURSERY}
    sets it, read only when the interpreter starts.
    """
    if getStats is None:
        if sys.implementation.name != "pypy":
            return None
        getStats = getattr(gc, "get_stats", None)
        if getStats is None:
            return None
    try:
        shown = str(getStats().nursery_size)  # "150.0MB"
        size = int(float(shown[:-2]) * 2**20) if shown.endswith("MB") else int(shown)
    except (AttributeError, TypeError, ValueError):
        return None
    if size > PYPY_NURSERY_WARN:
        _log.warn("PyPy's nursery is {size} MiB (half the cache size /proc/cpuinfo reports): "
                  "the server holds that much memory more, and more between collections; "
                  "PYPY_GC_NURSERY (for example 1MB) bounds it (docs/server.md)",
                  size=size // 2**20)
    return size


def _makeStore(description: Optional[str], reactor: Any) -> Any:
    """The store a --queue description names, or None for memory (no store at all)."""
    from txgear.errors import StoreError
    from txgear.store import DEFAULT_QUEUE, storeFromString

    description = description or DEFAULT_QUEUE
    if description.strip().lower() == "memory":
        return None
    try:
        return storeFromString(description, reactor=reactor)
    except (ValueError, StoreError) as e:
        raise usage.UsageError(str(e))


def warnDroppedJobs(state: JobServerState) -> int:
    """
    Warn, when a server without a store stops, about the background jobs
    it drops.

    @return: how many it drops.
    """
    dropped = sum(1 for job in state.jobs.values() if job.background)
    if dropped:
        _log.warn("Stopping with the memory queue: {count} background job(s), queued or "
                  "running, are dropped (--queue sqlite:PATH keeps them across restarts)",
                  count=dropped)
    return dropped


def _checkEndpoint(description: str, option: str = "--port") -> None:
    """Refuse a C{--port} (or C{--tls-port}) that twistd could not listen on whatever the machine."""
    from twisted.internet.endpoints import serverFromString

    hint = "give a port number, or an endpoint such as tcp:4730:interface=127.0.0.1"
    kind, _, rest = description.partition(":")
    port = rest.split(":", 1)[0]
    if option in ("--tls-port", "--https") and kind not in _TLS_CARRIERS:
        raise usage.UsageError(f"{option}: {description!r}: give a port number or a "
                               f"tcp:, tcp6: or unix: endpoint (TLS is added to it)")
    if kind in ("tcp", "tcp6", "ssl") and "=" not in port and not (
            port.isdigit() and int(port) <= 65535):
        raise usage.UsageError(f"{option}: {port!r} in {description!r} is not a port number "
                               f"(0-65535); {hint}")
    try:
        # Parsing only: the endpoint is not used, so it needs no reactor.
        serverFromString(None, description)
    except Exception as e:
        raise usage.UsageError(f"{option}: {description!r} is not a server endpoint ({e}); "
                               f"{hint}")


#: The endpoints --tls-port accepts (TLS goes on top of them).
_TLS_CARRIERS = ("tcp", "tcp6", "unix")


def _checkQueue(description: str) -> None:
    from txgear.errors import StoreError
    from txgear.store import checkQueue

    try:
        checkQueue(description)
    except (ValueError, StoreError) as e:
        raise usage.UsageError(f"--queue: {e}")


def startFailureMessage(failure: Any) -> str:
    """One line saying why the server could not start, and what to do."""
    from twisted.internet.error import CannotListenError

    error = failure.value
    if isinstance(error, CannotListenError):
        reason = getattr(error.socketError, "strerror", None) or str(error.socketError)
        where = f"{error.interface or '*'}:{error.port}"
        return (f"twistd gearman: cannot listen on {where}: {reason}; is another job server "
                f"running there? Choose another address with --port")
    return f"twistd gearman: cannot start: {failure.getErrorMessage()}"


def _fatal(failure: Any, reactor: Any) -> None:
    # Logged by the service; a server that cannot start must not linger.
    # twistd sends sys.stderr to the log: the person at the terminal reads the
    # process's own standard error.
    import os
    import sys

    from twisted.internet.defer import CancelledError

    if failure.check(CancelledError):
        return  # stopped before it listened: the reactor is stopping anyway

    stream = sys.__stderr__ or sys.stderr
    stream.write(startFailureMessage(failure) + "\n")
    stream.flush()
    os._exit(1)


def _installGracefulSignal(service: GearmanServerService, reactor: Any) -> None:
    """SIGUSR1 stops gracefully, as with gearmand."""
    if not hasattr(signal, "SIGUSR1"):
        return

    def onSignal(signum: int, frame: Any) -> None:
        reactor.callFromThread(service.shutdown, True)

    try:
        signal.signal(signal.SIGUSR1, onSignal)
    except ValueError:  # not the main thread (embedded use)
        pass


def _installReloadSignal(service: GearmanServerService, reactor: Any) -> None:
    """SIGHUP reloads the TLS certificates (and the access list)."""
    if not hasattr(signal, "SIGHUP"):
        return

    def onSignal(signum: int, frame: Any) -> None:
        reactor.callFromThread(service.reload)

    try:
        signal.signal(signal.SIGHUP, onSignal)
    except ValueError:  # not the main thread (embedded use)
        pass


__all__: List[str] = ["Options", "makeService", "warnDroppedJobs", "startFailureMessage"]

"""
The common harness of benchmarks/hostile.py and benchmarks/soak.py: raw
Gearman connections, job server processes, and the instruments (a resident
memory sampler and a bystander connection pinging with ECHO_REQ).

Stdlib only, and independent of the txgear package, so the same script can
measure any source tree (C{--source}) and gearmand.  Everything happens on
127.0.0.1; every process started here is recorded and killed by its PID at
exit (L{killStarted}), also after Ctrl-C or an exception.
"""
from __future__ import annotations

import atexit
import os
import resource
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from typing import Callable, Dict, List, Optional, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
GEARMAND = shutil.which("gearmand") or "/usr/sbin/gearmand"
PAGE = os.sysconf("SC_PAGE_SIZE")
MiB = 1 << 20

# Packet types (PROTOCOL.md section 2).
CAN_DO, CANT_DO, RESET_ABILITIES, PRE_SLEEP = 1, 2, 3, 4
NOOP, SUBMIT_JOB, JOB_CREATED, GRAB_JOB, NO_JOB, JOB_ASSIGN = 6, 7, 8, 9, 10, 11
WORK_STATUS, WORK_COMPLETE, WORK_FAIL, GET_STATUS, ECHO_REQ, ECHO_RES = 12, 13, 14, 15, 16, 17
SUBMIT_JOB_BG, ERROR, STATUS_RES, SET_CLIENT_ID, CAN_DO_TIMEOUT = 18, 19, 20, 22, 23
WORK_EXCEPTION, WORK_DATA, GRAB_JOB_UNIQ, JOB_ASSIGN_UNIQ, SUBMIT_JOB_EPOCH = 25, 28, 30, 31, 36

_HEADER = struct.Struct(">4sII")
#: Number of arguments of the responses read here (the last one may hold NUL).
_RESPONSE_ARGS = {NOOP: 0, JOB_CREATED: 1, NO_JOB: 0, JOB_ASSIGN: 3, WORK_STATUS: 3,
                  WORK_COMPLETE: 2, WORK_FAIL: 1, ECHO_RES: 1, ERROR: 2, STATUS_RES: 5,
                  WORK_EXCEPTION: 2, WORK_DATA: 2, JOB_ASSIGN_UNIQ: 4, 29: 2}


def packet(kind: int, *args: bytes) -> bytes:
    """One request packet."""
    body = b"\0".join(args)
    return _HEADER.pack(b"\0REQ", kind, len(body)) + body


def header(kind: int, size: int) -> bytes:
    """A request header announcing a body of C{size} bytes."""
    return _HEADER.pack(b"\0REQ", kind, size)


def log(message: str) -> None:
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


class Closed(Exception):
    """The server closed the connection."""


class Conn:
    """
    One blocking TCP connection to the server under test.  Every wait has a
    deadline, so nothing here can hang.
    """

    def __init__(self, port: int, timeout: float = 10.0, rcvbuf: Optional[int] = None) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:  # before connect, so the window is small from the start
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.settimeout(timeout)
        sock.connect(("127.0.0.1", port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = sock
        self.timeout = timeout
        self._buf = bytearray()
        self.closed = False

    def send(self, kind: int, *args: bytes) -> None:
        self.sock.sendall(packet(kind, *args))

    def sendRaw(self, data: bytes, deadline: Optional[float] = None) -> int:
        """
        Send C{data}; with a C{deadline}, stop when the server has not taken
        it all by then (it stopped reading).  Returns the bytes sent.
        """
        if deadline is None:
            self.sock.sendall(data)
            return len(data)
        sent = 0
        view = memoryview(data)
        try:
            while sent < len(data):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self.sock.settimeout(remaining)
                try:
                    sent += self.sock.send(view[sent:])
                except socket.timeout:
                    break
                except OSError:
                    self.closed = True
                    break
        finally:
            view.release()
            self.sock.settimeout(self.timeout)
        return sent

    def recv(self, timeout: Optional[float] = None) -> Tuple[int, List[bytes]]:
        """The next response packet as C{(type, arguments)}."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            if len(self._buf) >= 12:
                magic, kind, size = _HEADER.unpack_from(self._buf, 0)
                if magic != b"\0RES":
                    raise AssertionError(f"bad magic {magic!r}")
                if len(self._buf) >= 12 + size:
                    body = bytes(self._buf[12:12 + size])
                    del self._buf[:12 + size]
                    count = _RESPONSE_ARGS.get(kind, 1)
                    args = body.split(b"\0", count - 1) if count else []
                    return kind, args
            self._fill(deadline)

    def expect(self, kind: int, timeout: Optional[float] = None) -> List[bytes]:
        got, args = self.recv(timeout)
        if got != kind:
            raise AssertionError(f"expected packet {kind}, got {got} {args!r:.200}")
        return args

    def _fill(self, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise socket.timeout("deadline passed")
        self.sock.settimeout(remaining)
        try:
            data = self.sock.recv(1 << 20)
        except (ConnectionResetError, BrokenPipeError):
            data = b""
        finally:
            if not self.closed:
                self.sock.settimeout(self.timeout)
        if not data:
            self.closed = True
            raise Closed()
        self._buf += data

    def echo(self, data: bytes = b"barrier", timeout: Optional[float] = None) -> None:
        """A round trip: everything sent before has been handled."""
        self.send(ECHO_REQ, data)
        while True:
            kind, args = self.recv(timeout)
            if kind == ECHO_RES and args == [data]:
                return

    def admin(self, line: str, timeout: Optional[float] = None) -> bytes:
        """An admin command whose reply is a listing ending with a dot line."""
        self.sock.sendall(line.encode() + b"\n")
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while not (self._buf == b".\n" or self._buf.endswith(b"\n.\n") or self._buf.startswith(b"ERR")
                   and self._buf.endswith(b"\n")):
            self._fill(deadline)
        reply = bytes(self._buf)
        self._buf.clear()
        return reply

    def closedByPeer(self) -> bool:
        """Without blocking: has the server closed (or reset) the connection?"""
        if self.closed:
            return True
        try:
            readable, _, _ = select.select([self.sock], [], [], 0)
            if readable:
                data = self.sock.recv(65536, socket.MSG_PEEK)
                if not data:
                    self.closed = True
                    return True
        except OSError:
            self.closed = True
            return True
        return False

    def close(self, reset: bool = False) -> None:
        """Close; with C{reset}, as a killed process would (RST)."""
        if reset:
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
        try:
            self.sock.close()
        except OSError:
            pass
        self.closed = True


# ---------------------------------------------------------------- processes

_started: Dict[int, subprocess.Popen] = {}


def killStarted() -> None:
    """Kill (by PID) every process started here that still runs."""
    for pid, process in list(_started.items()):
        if process.poll() is None:
            try:
                process.kill()
                process.wait(10)
            except (OSError, subprocess.TimeoutExpired):
                pass
        _started.pop(pid, None)


atexit.register(killStarted)


def _onSigterm(signum: int, frame: object) -> None:
    killStarted()
    raise SystemExit(128 + signum)


def installSignalHandlers() -> None:
    """Ctrl-C raises KeyboardInterrupt (cleanup runs); SIGTERM kills children too."""
    signal.signal(signal.SIGTERM, _onSigterm)


def raiseNofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 65536
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def freePort() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def procStatus(pid: int) -> Dict[str, int]:
    """The C{Vm*} lines of /proc/PID/status, in bytes."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Vm"):
                key, value = line.split(":", 1)
                out[key] = int(value.split()[0]) * 1024
    return out


class Server:
    """
    A job server process on a free loopback port: txgear under
    C{twistd -n gearman} from a source tree, or gearmand.

    @ivar name: C{"txgear"} or C{"gearmand"}.
    @ivar storePath: the SQLite file of txgear's store, or C{None}.
    @ivar logPath: where the server's log goes.
    """

    def __init__(self, name: str, source: str = ROOT, store: bool = False,
                 python: str = sys.executable, extra: Optional[List[str]] = None) -> None:
        self.name = name
        self.port = freePort()
        self.tmpdir = tempfile.mkdtemp(prefix=f"hostile-{name}-")
        self.logPath = os.path.join(self.tmpdir, "server.log")
        self.storePath: Optional[str] = None
        env = dict(os.environ)
        if name == "txgear":
            if store:
                self.storePath = os.path.join(self.tmpdir, "queue.sqlite")
                queue = f"sqlite:{self.storePath}"
            else:
                queue = "memory"
            argv = [python, "-c", "import sys; sys.argv[0] = 'twistd'; "
                    "from twisted.scripts.twistd import run; run()",
                    "-n", "--pidfile=", f"--logfile={self.logPath}", "gearman",
                    f"--port=tcp:{self.port}:interface=127.0.0.1", "--queue", queue]
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [source, env.get("PYTHONPATH")]))
        elif name == "gearmand":
            argv = [GEARMAND, "--listen=127.0.0.1", f"--port={self.port}", "--threads=0",
                    f"--log-file={self.logPath}", "--verbose=INFO",
                    f"--pid-file={os.path.join(self.tmpdir, 'gearmand.pid')}"]
        else:
            raise ValueError(f"unknown server {name!r} (txgear, gearmand)")
        argv += extra or []
        self._out = open(os.path.join(self.tmpdir, "stdout.log"), "wb")
        self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self._out,
                                        stderr=subprocess.STDOUT, env=env, cwd=self.tmpdir,
                                        preexec_fn=raiseNofile)
        _started[self.process.pid] = self.process
        self.pid = self.process.pid
        try:
            self._waitReady()
        except BaseException:
            self.stop()
            raise

    def _waitReady(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited at start-up: {self.outputTail()}")
            try:
                conn = Conn(self.port, timeout=2)
                try:
                    conn.echo(b"ready")
                    return
                finally:
                    conn.close()
            except (OSError, Closed, AssertionError):
                time.sleep(0.1)
        raise RuntimeError(f"{self.name} did not answer ECHO_REQ within {timeout} s")

    def alive(self) -> bool:
        return self.process.poll() is None

    def rss(self) -> int:
        return procStatus(self.pid)["VmRSS"]

    def resetPeak(self) -> bool:
        """Reset VmHWM (Linux 4.0+), so it holds the peak from now on."""
        try:
            with open(f"/proc/{self.pid}/clear_refs", "w") as f:
                f.write("5")
            return True
        except OSError:
            return False

    def peak(self) -> int:
        return procStatus(self.pid).get("VmHWM", 0)

    def logSize(self) -> int:
        try:
            return os.path.getsize(self.logPath)
        except OSError:
            return 0

    def storeSize(self) -> int:
        """Bytes of the SQLite store (with its journal files), 0 without one."""
        if self.storePath is None:
            return 0
        total = 0
        for suffix in ("", "-wal", "-journal", "-shm"):
            try:
                total += os.path.getsize(self.storePath + suffix)
            except OSError:
                pass
        return total

    def outputTail(self) -> str:
        chunks = []
        for path in (os.path.join(self.tmpdir, "stdout.log"), self.logPath):
            try:
                with open(path, "rb") as f:
                    chunks.append(f.read()[-1500:].decode("utf-8", "replace"))
            except OSError:
                pass
        return "\n".join(chunks).strip() or "(no output)"

    def stop(self) -> None:
        """SIGTERM, SIGKILL after 10 s; then remove the temporary directory."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        _started.pop(self.pid, None)
        self._out.close()
        shutil.rmtree(self.tmpdir, ignore_errors=True)


# ---------------------------------------------------------------- instruments


class RssSampler(threading.Thread):
    """Polls the server's VmRSS every C{interval} seconds; keeps the peak."""

    def __init__(self, server: Server, interval: float = 0.01) -> None:
        super().__init__(daemon=True)
        self.server = server
        self.interval = interval
        self.peak = 0
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                self.peak = max(self.peak, self.server.rss())
            except (OSError, KeyError):
                return  # the server is gone
            self._halt.wait(self.interval)

    def stop(self) -> int:
        self._halt.set()
        self.join(5)
        return self.peak


class Bystander(threading.Thread):
    """
    An innocent connection sending ECHO_REQ every C{interval} seconds and
    timing each answer.  A ping still unanswered when it is stopped counts
    with the time it has waited so far, so a server that never answers shows
    as a long round trip, not as none.

    @ivar worst: the longest round trip seen, in seconds.
    @ivar lost: the server closed the bystander's connection.
    """

    def __init__(self, port: int, interval: float = 0.01) -> None:
        super().__init__(daemon=True)
        self.conn = Conn(port, timeout=5)
        self.interval = interval
        self.worst = 0.0
        self.count = 0
        self.unanswered = False
        self.lost = False
        self._halt = threading.Event()

    def run(self) -> None:
        sequence = 0
        try:
            while not self._halt.is_set():
                sequence += 1
                token = b"ping%d" % sequence
                sent = time.monotonic()
                self.conn.send(ECHO_REQ, token)
                while True:
                    try:
                        kind, args = self.conn.recv(0.05)
                    except socket.timeout:
                        self.worst = max(self.worst, time.monotonic() - sent)
                        if self._halt.is_set():
                            self.unanswered = True
                            return
                        continue
                    if kind == ECHO_RES and args == [token]:
                        break
                self.worst = max(self.worst, time.monotonic() - sent)
                self.count += 1
                self._halt.wait(self.interval)
        except (OSError, Closed):
            self.lost = True

    def stop(self) -> float:
        self._halt.set()
        self.join(10)
        self.conn.close()
        return self.worst


def waitUntil(predicate: Callable[[], bool], timeout: float, interval: float = 0.02) -> bool:
    """Poll C{predicate} until true (returns C{True}) or C{timeout} passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def settle(server: Server, maxSeconds: float, window: float = 1.0, interval: float = 0.2) -> int:
    """
    Wait until the server's RSS has been steady (within 1%) for C{window}
    seconds, or C{maxSeconds} passed; return the last RSS.  The server is
    not asked to collect garbage.
    """
    samples: List[int] = []
    deadline = time.monotonic() + maxSeconds
    need = max(2, int(window / interval) + 1)
    while True:
        samples.append(server.rss())
        recent = samples[-need:]
        if len(recent) == need and max(recent) - min(recent) <= 0.01 * max(recent):
            return samples[-1]
        if time.monotonic() >= deadline:
            return samples[-1]
        time.sleep(interval)


def mib(n: float) -> str:
    return f"{n / MiB:.1f}"

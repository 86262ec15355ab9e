"""
Starting and finding the real third-party peers the integration tests use:
gearmand, the gearman/gearadmin tools, and txgear's own server as a process.

Tests call L{requirePeer} for anything that may be missing: it skips the test
with a clear reason, or fails it when C{TXGEAR_REQUIRE_PEERS=1} (as CI sets).
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from typing import List, Optional

import pytest

SOURCE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: Runs twistd with this interpreter (the C{twistd} script need not be on PATH).
TWISTD = [sys.executable, "-c", "import sys; sys.argv[0] = 'twistd'; "
          "from twisted.scripts.twistd import run; run()"]
REQUIRE_PEERS = os.environ.get("TXGEAR_REQUIRE_PEERS") == "1"


def requirePeer(available: bool, what: str) -> None:
    """Skip (or, under C{TXGEAR_REQUIRE_PEERS=1}, fail) unless C{available}."""
    if available:
        return
    message = f"{what} is not available"
    if REQUIRE_PEERS:
        pytest.fail(message + " and TXGEAR_REQUIRE_PEERS=1", pytrace=False)
    pytest.skip(message)


def requireProgram(name: str) -> str:
    """The path of an installed program, or skip/fail as L{requirePeer}."""
    path = shutil.which(name) or (f"/usr/sbin/{name}" if os.path.exists(f"/usr/sbin/{name}") else None)
    requirePeer(path is not None, f"the program {name!r}")
    assert path is not None
    return path


def freePort(host: str = "127.0.0.1") -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def waitForPort(port: int, host: str = "127.0.0.1", timeout: float = 15.0,
                process: Optional[subprocess.Popen] = None) -> None:
    """Block until something accepts connections on C{host:port}."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before listening")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout}s")


class ServerProcess:
    """
    A job server run as a child process on a loopback port; stopped by its PID.

    @ivar port: the TCP port it listens on.
    @ivar name: C{"gearmand"} or C{"txgear"}.
    """

    def __init__(self, name: str, argv: List[str], port: int, logPath: str,
                 cwd: Optional[str] = None, env: Optional[dict] = None) -> None:
        self.name = name
        self.env = env
        self.argv = argv
        self.port = port
        self.logPath = logPath
        self.cwd = cwd
        self.process: Optional[subprocess.Popen] = None

    def start(self, timeout: float = 20.0) -> "ServerProcess":
        self._log = open(self.logPath, "ab")
        self.process = subprocess.Popen(self.argv, stdout=self._log, stderr=subprocess.STDOUT,
                                        cwd=self.cwd, env=self.env)
        try:
            waitForPort(self.port, timeout=timeout, process=self.process)
        except Exception:
            self.stop()
            raise RuntimeError(f"{self.name} did not start; log:\n{self.log()}")
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def log(self) -> str:
        try:
            with open(self.logPath, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after C{timeout}."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        if getattr(self, "_log", None) is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> "ServerProcess":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def gearmandProcess(port: Optional[int] = None, extra: Optional[List[str]] = None) -> ServerProcess:
    """A gearmand 1.1.x on loopback (not started), with no persistent queue."""
    path = requireProgram("gearmand")
    port = port or freePort()
    logdir = tempfile.mkdtemp(prefix="gearmand-")
    argv = [path, "--listen=127.0.0.1", f"--port={port}", "--threads=0",
            f"--log-file={logdir}/gearmand.log", "--verbose=INFO"] + (extra or [])
    return ServerProcess("gearmand", argv, port, os.path.join(logdir, "stdout.log"))


def txgearProcess(port: Optional[int] = None, extra: Optional[List[str]] = None,
                  cwd: Optional[str] = None) -> ServerProcess:
    """
    txgear's server under twistd (C{twistd -n gearman}) on loopback,
    not started. Runs in a fresh temporary directory unless C{cwd} is given.
    """
    port = port or freePort()
    cwd = cwd or tempfile.mkdtemp(prefix="txgear-")
    argv = TWISTD + ["--nodaemon", "--pidfile=", "--logfile=-", "gearman", f"--port=tcp:{port}:interface=127.0.0.1"] + (extra or [])
    env = dict(os.environ)
    # The source tree first, so its twisted/plugins/ and txgear/ are the ones found.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [SOURCE_ROOT, env.get("PYTHONPATH")]))
    return ServerProcess("txgear", argv, port, os.path.join(cwd, "server.log"), cwd=cwd, env=env)


class TcpProxy:
    """
    A loopback TCP proxy in a thread, to cut a server's connection to its
    database and restore it: C{cut()} closes every proxied connection and
    stops listening (new connections are refused); C{restore()} listens again
    on the same port.
    """

    def __init__(self, targetPort: int, host: str = "127.0.0.1") -> None:
        import threading

        self.host = host
        self.targetPort = targetPort
        self.port = freePort(host)
        self._lock = threading.Lock()
        self._sockets: List[socket.socket] = []
        self._listener: Optional[socket.socket] = None
        self._threads: List[threading.Thread] = []

    def start(self) -> "TcpProxy":
        import threading

        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.host, self.port))
        listener.listen(64)
        self._listener = listener
        thread = threading.Thread(target=self._accept, args=(listener,), daemon=True)
        thread.start()
        self._threads.append(thread)
        return self

    def _accept(self, listener: socket.socket) -> None:
        import threading

        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection((self.host, self.targetPort), timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                sink.sendall(data)
        except OSError:
            pass
        for s in (source, sink):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self) -> None:
        if self._listener is not None:
            # shutdown() wakes the thread blocked in accept(); close() alone would not.
            try:
                self._listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._listener.close()
            self._listener = None
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for s in sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def restore(self) -> None:
        self.start()

    def stop(self) -> None:
        self.cut()


def txgearServer(extra: Optional[List[str]] = None):
    """A generator for module fixtures: a started txgear process, stopped after."""
    proc = txgearProcess(extra=extra)
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()

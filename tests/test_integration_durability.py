"""
Crash tests of durable background jobs with the real server process.

Several clients submit background jobs as fast as they can; the server is
killed with SIGKILL in the middle of the burst, then restarted on the same
store. A worker then drains the queue: every job whose submitter got
JOB_CREATED must run, and the jobs completed before the crash must not run
again. The same for a clean ``shutdown graceful``.
"""
from __future__ import annotations

import socket
import threading
import time
import uuid
from typing import Dict, List, Set

import pytest

from tests._peers import freePort, requirePeer, txgearProcess
from tests._rawclient import RawClient
from txgear._packet import PacketDecoder, PacketType, encodeRequest

P = PacketType
FUNCTION = b"durable"
#: Acknowledged submissions before the server is killed.
BURST = 20000


def _postgresAvailable() -> bool:
    try:
        import psycopg

        with psycopg.connect("host=127.0.0.1 port=5432 dbname=test user=postgres", connect_timeout=3):
            return True
    except Exception:
        return False


def _redisAvailable() -> bool:
    try:
        import redis

        return bool(redis.Redis(host="127.0.0.1", port=6379, socket_timeout=3).ping())
    except Exception:
        return False


@pytest.fixture(params=["sqlite", "postgresql", "redis"])
def queue(request, tmp_path):
    """A --queue description of a fresh, empty store; cleaned up afterwards."""
    tag = "t" + uuid.uuid4().hex[:12]
    if request.param == "sqlite":
        yield f"sqlite:{tmp_path / 'queue.sqlite'}"
        return
    if request.param == "postgresql":
        requirePeer(_postgresAvailable(), "PostgreSQL at 127.0.0.1:5432 (database test)")
        import psycopg

        yield f"postgresql:host=127.0.0.1 port=5432 dbname=test user=postgres schema={tag}"
        with psycopg.connect("host=127.0.0.1 port=5432 dbname=test user=postgres", autocommit=True) as c:
            c.execute(f'DROP SCHEMA IF EXISTS "{tag}" CASCADE')
        return
    requirePeer(_redisAvailable(), "Redis at 127.0.0.1:6379")
    import redis

    prefix = f"{tag}:"
    yield f"redis:redis://127.0.0.1:6379/0?prefix={prefix}"
    client = redis.Redis(host="127.0.0.1", port=6379)
    keys = list(client.scan_iter(match=prefix + "*"))
    if keys:
        client.delete(*keys)


class Submitter(threading.Thread):
    """Pipelines SUBMIT_JOB_BG until told to stop or the connection dies."""

    def __init__(self, port: int, name: str, window: int = 50) -> None:
        threading.Thread.__init__(self, daemon=True)
        self.port = port
        self.tag = name
        self.window = window
        self.sent: List[bytes] = []
        self.acknowledged: List[bytes] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        try:
            sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        except OSError:
            return
        decoder = PacketDecoder(expectRequests=False)
        unanswered: List[bytes] = []
        n = 0
        try:
            while not self.stopping.is_set() and n < 100000:
                batch = []
                while len(unanswered) < self.window:
                    payload = b"%s-%d" % (self.tag.encode(), n)
                    n += 1
                    unanswered.append(payload)
                    self.sent.append(payload)
                    batch.append(encodeRequest(P.SUBMIT_JOB_BG, FUNCTION, b"", payload))
                sock.sendall(b"".join(batch))
                data = sock.recv(65536)
                if not data:
                    return
                for kind, body in decoder.feed(data):
                    payload = unanswered.pop(0)
                    if kind == P.JOB_CREATED:
                        self.acknowledged.append(payload)
        except OSError:
            return
        finally:
            sock.close()


def drain(port: int, deadline: float = 60.0) -> Dict[bytes, int]:
    """Run every queued job once with a raw worker; returns payload -> times run."""
    runs: Dict[bytes, int] = {}
    with RawClient(port, timeout=10) as worker:
        worker.register(FUNCTION)
        stop = time.monotonic() + deadline
        while time.monotonic() < stop:
            kind, args = worker.grab(P.GRAB_JOB_UNIQ)
            if kind == P.NO_JOB:
                break
            assert kind == P.JOB_ASSIGN_UNIQ
            handle, payload = args[0], args[3]
            runs[payload] = runs.get(payload, 0) + 1
            worker.send(P.WORK_COMPLETE, handle, b"done")
        else:
            pytest.fail("the queue did not drain in time")
    return runs


def startServer(queue: str, cwd: str, port: int, extra: List[str] = ()):
    server = txgearProcess(port=port, extra=["--queue", queue] + list(extra), cwd=cwd)
    return server.start(timeout=30)


def test_killDuringABurstLosesNothingAcknowledged(queue, tmp_path):
    port = freePort()
    server = startServer(queue, str(tmp_path), port)
    try:
        # Jobs completed before the crash must not come back.
        with RawClient(port) as client:
            for i in range(50):
                client.submit(FUNCTION, b"before-%d" % i, kind=P.SUBMIT_JOB_BG)
        before = drain(port)
        assert sorted(before) == sorted(b"before-%d" % i for i in range(50))
        submitters = [Submitter(port, f"c{i}") for i in range(4)]
        for s in submitters:
            s.start()
        deadline = time.monotonic() + 30
        while sum(len(s.acknowledged) for s in submitters) < BURST and time.monotonic() < deadline:
            time.sleep(0.01)
        server.kill()  # SIGKILL in the middle of the burst
        for s in submitters:
            s.stopping.set()
            s.join(10)
    finally:
        server.stop()
    acknowledged: Set[bytes] = set()
    sent = 0
    for s in submitters:
        acknowledged.update(s.acknowledged)
        sent += len(s.sent)
    assert len(acknowledged) >= BURST

    server = startServer(queue, str(tmp_path), port)
    try:
        after = drain(port)
    finally:
        server.stop()
    lost = acknowledged - set(after)
    twice = [p for p, n in after.items() if n > 1]
    rerun = [p for p in after if p.startswith(b"before-")]
    print(f"{queue.split(':')[0]}: submitted {sent}, acknowledged {len(acknowledged)}, "
          f"run after restart {len(after)}, lost {len(lost)}, run twice {len(twice)}, "
          f"completed-before-crash run again {len(rerun)}")
    assert not lost
    assert not twice
    assert not rerun
    # Whatever ran that was never acknowledged was sent and stored just before the kill.
    assert set(after) - acknowledged <= set().union(*(s.sent for s in submitters))


def test_gracefulShutdownKeepsQueuedJobsForTheNextStart(queue, tmp_path):
    port = freePort()
    server = startServer(queue, str(tmp_path), port, ["--enable-shutdown-command"])
    try:
        with RawClient(port) as client:
            for i in range(200):
                client.submit(FUNCTION, b"job-%d" % i, unique=b"u%d" % i, kind=P.SUBMIT_JOB_BG)
            assert client.admin(b"shutdown graceful") == b"OK\n"
        server.process.wait(30)
        assert server.process.returncode == 0
    finally:
        server.stop()
    server = startServer(queue, str(tmp_path), port)
    try:
        with RawClient(port) as client:
            # Unique ids still coalesce after the restart.
            client.submit(FUNCTION, b"job-0", unique=b"u0", kind=P.SUBMIT_JOB_BG)
            status = client.admin(b"status")
            assert status.startswith(FUNCTION + b"\t200\t0\t0\n")
        after = drain(port)
    finally:
        server.stop()
    assert sorted(after) == sorted(b"job-%d" % i for i in range(200))
    assert set(after.values()) == {1}


def _number(handle: bytes) -> int:
    return int(handle.rsplit(b":", 1)[1])


def test_handlesSurviveARestartAndAreNeverReused(queue, tmp_path):
    """
    A job's handle is its store key: after a restart a queued job keeps its
    handle, GET_STATUS on it still answers, and new jobs get numbers the
    store never used.
    """
    port = freePort()
    server = startServer(queue, str(tmp_path), port, ["--enable-shutdown-command"])
    try:
        with RawClient(port) as client:
            handles = [client.submit(FUNCTION, b"job-%d" % i, kind=P.SUBMIT_JOB_BG)
                       for i in range(5)]
            client.submit(b"other", b"memory", kind=P.SUBMIT_JOB)  # a foreground job
        runs = {}
        with RawClient(port) as worker:  # run the first two
            worker.register(FUNCTION)
            for _ in range(2):
                kind, args = worker.grab()
                runs[args[0]] = args[3]
                worker.send(P.WORK_COMPLETE, args[0], b"done")
            worker.echo()
        assert sorted(runs) == sorted(handles[:2])
        with RawClient(port) as admin:
            assert admin.admin(b"shutdown graceful") == b"OK\n"
        server.process.wait(30)
    finally:
        server.stop()
    server = startServer(queue, str(tmp_path), port)
    try:
        with RawClient(port) as client:
            for handle in handles[2:]:
                assert client.call(P.GET_STATUS, handle, reply=P.STATUS_RES)[:2] == [handle, b"1"]
            for handle in handles[:2]:
                assert client.call(P.GET_STATUS, handle, reply=P.STATUS_RES)[:2] == [handle, b"0"]
            fresh = client.submit(FUNCTION, b"new", kind=P.SUBMIT_JOB_BG)
            assert _number(fresh) > max(_number(h) for h in handles)
        with RawClient(port) as worker:
            worker.register(FUNCTION)
            assigned = {}
            for _ in range(4):
                kind, args = worker.grab()
                assigned[args[0]] = args[3]
                worker.send(P.WORK_COMPLETE, args[0], b"done")
        assert assigned == {handles[2]: b"job-2", handles[3]: b"job-3", handles[4]: b"job-4",
                            fresh: b"new"}
    finally:
        server.stop()


def _failsToStart(queue: str, cwd: str) -> str:
    server = txgearProcess(extra=["--queue", queue], cwd=cwd)
    with pytest.raises(RuntimeError):
        server.start(timeout=30)
    assert server.process.returncode not in (None, 0)
    return server.log()


def _importable(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


@pytest.mark.parametrize("kind", ["postgresql", "redis"])
def test_unreachableDatabaseAtStartIsAClearErrorAndExit(kind, tmp_path):
    driver = {"postgresql": "psycopg", "redis": "redis"}[kind]
    requirePeer(_importable(driver), f"the {driver} driver")
    closed = freePort()
    queue = (f"postgresql:host=127.0.0.1 port={closed} dbname=test connect_timeout=3"
             if kind == "postgresql" else f"redis:redis://127.0.0.1:{closed}/0")
    log = _failsToStart(queue, str(tmp_path))
    assert "cannot start" in log and str(closed) in log


def test_corruptStoreFileIsAClearErrorAndIsNotWiped(tmp_path):
    path = tmp_path / "queue.sqlite"
    garbage = b"this is not a SQLite database\n" * 100
    path.write_bytes(garbage)
    log = _failsToStart(f"sqlite:{path}", str(tmp_path))
    assert "cannot start" in log
    assert path.read_bytes() == garbage


def test_databaseOutageWhileRunning(tmp_path):
    """
    Redis goes away under a running server: background submits get an ERROR
    packet (no JOB_CREATED), foreground jobs keep flowing, and background
    submits work again once Redis is back.
    """
    requirePeer(_redisAvailable(), "Redis at 127.0.0.1:6379")
    import redis

    from tests._peers import TcpProxy

    proxy = TcpProxy(6379).start()
    prefix = "t" + uuid.uuid4().hex[:12] + ":"
    port = freePort()
    server = startServer(f"redis:redis://127.0.0.1:{proxy.port}/0?prefix={prefix}&socket_timeout=3",
                         str(tmp_path), port)
    try:
        with RawClient(port, timeout=15) as client, RawClient(port, timeout=15) as worker:
            worker.register(b"fg")
            client.submit(FUNCTION, b"before", kind=P.SUBMIT_JOB_BG)
            proxy.cut()
            code, text = client.call(P.SUBMIT_JOB_BG, FUNCTION, b"", b"during",
                                     reply=P.ERROR, timeout=15)
            assert code == b"QUEUE_ERROR", text
            # Foreground work does not need the store.
            handle = client.submit(b"fg", b"ping")
            assert worker.grab()[1][0] == handle
            worker.send(P.WORK_COMPLETE, handle, b"pong")
            assert client.expect(P.WORK_COMPLETE) == [handle, b"pong"]
            proxy.restore()
            deadline = time.monotonic() + 20
            while True:
                client.send(P.SUBMIT_JOB_BG, FUNCTION, b"", b"after")
                kind, args = client.recv(timeout=15)
                if kind == P.JOB_CREATED:
                    break
                assert kind == P.ERROR and time.monotonic() < deadline, (kind, args)
                time.sleep(0.5)
        runs = drain(port)
        assert b"before" in runs and b"after" in runs and b"during" not in runs
    finally:
        server.stop()
        proxy.stop()
        client = redis.Redis(host="127.0.0.1", port=6379)
        keys = list(client.scan_iter(match=prefix + "*"))
        if keys:
            client.delete(*keys)


@pytest.fixture
def smallDisk(tmp_path):
    """A 512 KiB tmpfs mounted for this test (root only), unmounted afterwards."""
    import os
    import subprocess

    mountPoint = tmp_path / "small-disk"
    mountPoint.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mountPoint)],
                             capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode(errors='replace')}")
    try:
        yield mountPoint
    finally:
        subprocess.run(["umount", "-l", str(mountPoint)], capture_output=True)


def _fill(directory, leave: int = 0) -> None:
    """Fill the file system of C{directory} up to C{leave} free bytes."""
    import os

    with open(directory / "filler", "wb") as f:
        while True:
            free = os.statvfs(str(directory)).f_bavail * os.statvfs(str(directory)).f_frsize
            if free <= leave:
                break
            try:
                f.write(b"\0" * min(4096, free - leave))
                f.flush()
            except OSError:
                break


def test_fullDiskAtStartIsAClearErrorAndExit(smallDisk, tmp_path):
    _fill(smallDisk)
    log = _failsToStart(f"sqlite:{smallDisk / 'queue.sqlite'}", str(tmp_path))
    assert "cannot start" in log and "full" in log.lower()


def test_diskFullWhileRunningThenRecovers(smallDisk, tmp_path):
    port = freePort()
    server = startServer(f"sqlite:{smallDisk / 'queue.sqlite'}", str(tmp_path), port)
    try:
        with RawClient(port, timeout=15) as client, RawClient(port, timeout=15) as worker:
            worker.register(b"fg")
            client.submit(FUNCTION, b"before", kind=P.SUBMIT_JOB_BG)
            _fill(smallDisk)
            for i in range(200):  # the WAL may still have room for a few
                client.send(P.SUBMIT_JOB_BG, FUNCTION, b"", b"x" * 4000)
                kind, args = client.recv(timeout=15)
                if kind == P.ERROR:
                    break
                assert kind == P.JOB_CREATED
            else:
                pytest.fail("the full disk was never reported")
            assert args[0] == b"QUEUE_ERROR"
            handle = client.submit(b"fg", b"ping")  # foreground work goes on
            assert worker.grab()[1][0] == handle
            worker.send(P.WORK_COMPLETE, handle, b"pong")
            assert client.expect(P.WORK_COMPLETE) == [handle, b"pong"]
            (smallDisk / "filler").unlink()
            client.submit(FUNCTION, b"after", kind=P.SUBMIT_JOB_BG)
        runs = drain(port)
        assert b"before" in runs and b"after" in runs
    finally:
        server.stop()

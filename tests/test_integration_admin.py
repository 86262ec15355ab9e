"""
Differential tests of the admin text protocol: the same state is built on
gearmand 1.1.20 and on txgear (under twistd) with raw sockets, and every admin
command's reply is compared, directly and through C{gearadmin}.

gearmand lists in hash/thread order and numbers connections by fd, so
listings are compared after normalising (sorted lines, fd column masked,
handle prefixes masked). Where txgear deliberately differs, the test builds
the situation on both servers and asserts the difference explicitly.
"""
from __future__ import annotations

import itertools
import re
from typing import Any, Dict, Iterator, List, Tuple

import pytest

from tests._peers import gearmandProcess, requireProgram, txgearProcess
from tests._rawclient import RawClient, adminOnce, listing, runTool, statusOf, waitFor
from txgear._packet import PacketType as P, encodeRequest

_names = itertools.count(1)


def _start(proc: Any) -> Any:
    proc.start()
    return proc


def _pair() -> Iterator[Dict[str, Any]]:
    """A gearmand and a txgear, both fresh, stopped afterwards."""
    gearmand = gearmandProcess()
    txgear = txgearProcess()
    started = []
    try:
        for proc in (gearmand, txgear):
            started.append(_start(proc))
        yield {"gearmand": gearmand, "txgear": txgear}
    finally:
        for proc in started:
            proc.stop()


@pytest.fixture(scope="module")
def servers() -> Iterator[Dict[str, Any]]:
    """A pair for the whole module."""
    yield from _pair()


@pytest.fixture
def fresh() -> Iterator[Dict[str, Any]]:
    """A fresh pair, for comparing whole listings."""
    yield from _pair()


def normWorkers(reply: bytes) -> List[bytes]:
    return sorted(re.sub(rb"^\d+ ", b"FD ", line) for line in listing(reply))


def normHandles(reply: bytes) -> List[bytes]:
    return sorted(re.sub(rb"^[^\t]*:(\d+)\t", rb"H:*:\1\t", line) for line in listing(reply))


def buildState(port: int) -> Tuple[List[RawClient], List[bytes]]:
    """
    PROTOCOL.md section 5.2's state: worker A (img-worker-1; thumb, resize)
    holds a foreground C{thumb} job; worker B can do C{resize}; three
    background C{resize} jobs, one per priority; one idle client. The
    C{thumb} job is grabbed before the C{resize} jobs exist, so both servers
    assign the same job (their cross-function order differs).
    """
    a, b, client, idle = (RawClient(port) for _ in range(4))
    a.send(P.SET_CLIENT_ID, b"img-worker-1")
    a.register(b"resize", b"thumb")
    b.register(b"resize")
    handles = [client.submit(b"thumb", b"t", b"t1")]
    assert a.grab() == (P.JOB_ASSIGN_UNIQ, [handles[0], b"thumb", b"t1", b"t"])
    for kind, unique in ((P.SUBMIT_JOB_HIGH_BG, b"r1"), (P.SUBMIT_JOB_BG, b"r2"),
                         (P.SUBMIT_JOB_LOW_BG, b"r3")):
        handles.append(client.submit(b"resize", b"img", unique, kind))
    idle.echo()
    return [a, b, client, idle], handles


def test_listingsMatchGearmand(fresh: Dict[str, Any]) -> None:
    """status, prioritystatus, workers, show jobs, show unique jobs: same content."""
    replies: Dict[str, Dict[str, bytes]] = {}
    peers: List[RawClient] = []
    try:
        for name, proc in fresh.items():
            conns, _ = buildState(proc.port)
            peers += conns
            admin = conns[3]
            replies[name] = {cmd: admin.admin(cmd) for cmd in (
                "status", "prioritystatus", "workers", "show jobs", "show unique jobs",
                "STATUS", "Show Jobs")}
        g, t = replies["gearmand"], replies["txgear"]
        for cmd in ("status", "prioritystatus", "show unique jobs", "STATUS"):
            assert sorted(listing(t[cmd])) == sorted(listing(g[cmd])), cmd
        assert sorted(listing(t["status"])) == [b"resize\t3\t0\t2", b"thumb\t1\t1\t1"]
        assert sorted(listing(t["prioritystatus"])) == [b"resize\t1\t1\t1\t2", b"thumb\t0\t0\t0\t1"]
        # gearmand lists a connection's functions most recent registration first
        assert b"FD 127.0.0.1 img-worker-1 : thumb resize" in normWorkers(g["workers"])
        assert normWorkers(t["workers"]) == normWorkers(g["workers"])
        assert normHandles(t["show jobs"]) == normHandles(g["show jobs"])
        assert normHandles(t["Show Jobs"]) == normHandles(g["Show Jobs"])
        assert normHandles(t["show jobs"]) == [b"H:*:1\t0\t0\t0", b"H:*:2\t0\t0\t1",
                                               b"H:*:3\t0\t0\t1", b"H:*:4\t0\t0\t1"]
    finally:
        for p in peers:
            p.close()


def test_gearadminMatchesGearmand(fresh: Dict[str, Any]) -> None:
    """Every gearadmin option prints the same (normalised) output on both servers."""
    tool = requireProgram("gearadmin")
    outputs: Dict[str, Dict[str, bytes]] = {}
    peers: List[RawClient] = []
    try:
        for name, proc in fresh.items():
            conns, handles = buildState(proc.port)
            peers += conns

            def run(*args: str) -> bytes:
                r = runTool([tool, "-p", str(proc.port), *args])
                assert r.returncode == 0, (name, args, r.stderr)
                return r.stdout
            out = outputs[name] = {}
            for option in ("--status", "--priority-status", "--workers", "--show-jobs",
                           "--show-unique-jobs", "--server-verbose"):
                out[option] = run(option)
            out["--server-version"] = run("--server-version")
            out["--getpid"] = run("--getpid")
            out["--create-function"] = run("--create-function", "newfunc")
            out["--drop-function missing"] = run("--drop-function", "nosuchfunction")
            out["--drop-function busy"] = run("--drop-function", "thumb")
            out["--cancel-job"] = run("--cancel-job", handles[3].decode())
            out["--cancel-job missing"] = run("--cancel-job", "H:nosuch:999")
            out["status after"] = run("--status")
        g, t = outputs["gearmand"], outputs["txgear"]
        for option in ("--status", "--priority-status", "--show-unique-jobs"):
            assert sorted(t[option].splitlines()) == sorted(g[option].splitlines()), option
        assert normHandles(t["--show-jobs"]) == normHandles(g["--show-jobs"])
        assert t["--server-verbose"] == g["--server-verbose"] == b"INFO\n"
        assert re.fullmatch(rb"\S+\n", t["--server-version"]), t["--server-version"]
        assert t["--getpid"] == b"%d\n" % fresh["txgear"].pid
        assert g["--getpid"] == b"%d\n" % fresh["gearmand"].pid
        for option in ("--create-function", "--drop-function missing", "--drop-function busy",
                       "--cancel-job", "--cancel-job missing"):
            assert t[option] == g[option], (option, t[option], g[option])
        # gearadmin ends lines with CRLF: gearmand's dropped last character is
        # the CR, so both create the whole name (see test_createFunctionKeepsWholeName)
        assert b"newfunc\t0\t0\t0" in g["status after"].splitlines()
        assert b"newfunc\t0\t0\t0" in t["status after"].splitlines()
        assert normWorkers(t["--workers"]) == normWorkers(g["--workers"])
    finally:
        for p in peers:
            p.close()


@pytest.mark.parametrize("line", [
    "", "nosuchcommand", "NoSuchCommand arg", "show", "show foo", "show jobs extra",
    "cancel", "cancel job", "cancel job a b", "cancel foo bar", "cancel foo", "create function", "create",
    "drop function", "drop function nosuch", "maxqueue", "maxqueue nosuchfunc 5",
    "maxqueue nosuchfunc", "shutdown", "shutdown graceful", "status extra tokens",
    "STATUS", "VERSION", "verbose", "1234", "\r",
])
def test_simpleRepliesMatchGearmand(servers: Dict[str, Any], line: str) -> None:
    """Replies that do not depend on state are byte for byte gearmand's."""
    replies = {}
    for name, proc in servers.items():
        with RawClient(proc.port) as c:
            reply = c.admin(line)
            c.echo()  # the connection stays open
            replies[name] = reply
    g, t = replies["gearmand"], replies["txgear"]
    if line.lower().split()[:1] in (["version"],):
        assert re.fullmatch(rb"OK \S+\n", t), t
    elif line.lower().split()[:1] in (["status"],):
        assert t.endswith(b".\n") and g.endswith(b".\n")
    else:
        assert t == g, (line, t, g)


def test_okValueFormats(servers: Dict[str, Any]) -> None:
    """version / getpid / verbose: C{OK <something>\\n}; getpid is the real pid."""
    for name, proc in servers.items():
        with RawClient(proc.port) as c:
            assert re.fullmatch(rb"OK \S+\n", c.admin("version"))
            assert c.admin("getpid") == b"OK %d\n" % proc.pid
            assert c.admin("verbose") == b"OK INFO\n"


def test_cancelJob(servers: Dict[str, Any]) -> None:
    """
    cancel job: OK and WORK_FAIL (bare handle) to the client. DIFFERENCE:
    gearmand keeps the cancelled job in memory (still counted by status, and
    a second cancel says OK again) until a worker's grab skips it; txgear
    forgets it at once, and its function too once nothing uses it.
    """
    after = {}
    for name, proc in servers.items():
        f = b"cancel-%d" % next(_names)
        with RawClient(proc.port) as c, RawClient(proc.port) as a:
            h = c.submit(f, b"x")
            assert a.admin(b"cancel job " + h) == b"OK\r\n", name
            assert c.expect(P.WORK_FAIL) == [h], name
            after[name] = (a.admin(b"cancel job " + h), statusOf(proc.port, f))
            assert a.admin("cancel job H:nosuch:1") == b"ERR UNKNOWN_JOB\r\n"
    assert after["gearmand"] == (b"OK\r\n", (1, 0, 0))
    assert after["txgear"] == (b"ERR UNKNOWN_JOB\r\n", None)


def test_maxqueueEnforced(servers: Dict[str, Any]) -> None:
    """maxqueue F 2: the third new job gets ERROR QUEUE_ERROR; coalescing still works."""
    for name, proc in servers.items():
        f = b"mq-%d" % next(_names)
        with RawClient(proc.port) as c:
            c.submit(f, b"1", b"u1", P.SUBMIT_JOB_BG)  # the function exists now
            assert c.admin(b"maxqueue " + f + b" 2") == b"OK\r\n"
            c.submit(f, b"2", b"u2", P.SUBMIT_JOB_BG)
            assert c.call(P.SUBMIT_JOB_BG, f, b"u3", b"3", reply=P.ERROR) == \
                [b"QUEUE_ERROR", b"Job queue is full"], name
            c.submit(f, b"1", b"u1", P.SUBMIT_JOB_BG)  # coalesces: accepted
            assert c.admin(b"maxqueue " + f) == b"OK\r\n"  # reset to unlimited
            c.submit(f, b"3", b"u3", P.SUBMIT_JOB_BG)
            # three sizes: per priority (high normal low)
            assert c.admin(b"maxqueue " + f + b" 9 9 3") == b"OK\r\n"
            assert c.call(P.SUBMIT_JOB_LOW_BG, f, b"u4", b"4", reply=P.ERROR)[0] == b"QUEUE_ERROR"
            c.submit(f, b"5", b"u5", P.SUBMIT_JOB_HIGH_BG)
            assert statusOf(proc.port, f) == (4, 0, 0), name


def test_maxqueueEnforcedOnABurstWithAStore(servers: Dict[str, Any]) -> None:
    """
    maxqueue F 10, then 100 background submissions in one write: txgear
    (with its default SQLite store, so the jobs wait for it together)
    accepts exactly 10, as gearmand, and status counts them.
    """
    for name, proc in servers.items():
        f = b"mqb-%d" % next(_names)
        with RawClient(proc.port) as c:
            assert c.admin(b"create function " + f + b"\r") == b"OK\r\n"
            assert c.admin(b"maxqueue " + f + b" 10") == b"OK\r\n"
            c.sendRaw(b"".join(encodeRequest(P.SUBMIT_JOB_BG, f, b"", b"%d" % i)
                               for i in range(100)))
            kinds = [kind for kind, _ in c.recvAll(100, timeout=10)]
            assert (kinds.count(P.JOB_CREATED), kinds.count(P.ERROR)) == (10, 90), name
            assert statusOf(proc.port, f) == (10, 0, 0), name


def test_repeatedCanDoIsOneRegistration(servers: Dict[str, Any]) -> None:
    """
    DIFFERENCE: gearmand registers a repeated CAN_DO again (C{workers}
    lists C{f f}, C{status} counts the connection twice); txgear keeps one
    registration per function per connection.
    """
    seen = {}
    for name, proc in servers.items():
        f = b"dup-%d" % next(_names)
        with RawClient(proc.port) as w, RawClient(proc.port) as a:
            w.send(P.SET_CLIENT_ID, f)
            for _ in range(3):
                w.send(P.CAN_DO, f)
            w.echo()
            line = [l for l in listing(a.admin("workers")) if b" " + f + b" :" in l]
            seen[name] = (line[0].split(b" : ")[1].split(b" ").count(f), statusOf(proc.port, f))
    assert seen["gearmand"] == (3, (0, 0, 3))
    assert seen["txgear"] == (1, (0, 0, 1))


def test_dropFunction(servers: Dict[str, Any]) -> None:
    """
    drop function: OK for an idle function (case-insensitive), ERR while a
    worker is registered; DIFFERENCE: txgear refuses a function with queued
    jobs, gearmand drops it and loses the jobs. DIFFERENCE: a function made
    by a worker that left is forgotten at once by txgear (gearmand keeps it
    until dropped); one made by C{create function} stays.
    """
    results = {}
    for name, proc in servers.items():
        f = b"Drop-%d" % next(_names)
        with RawClient(proc.port) as a, RawClient(proc.port) as w:
            with RawClient(proc.port) as gone:  # the function exists, nobody can do it
                gone.register(f + b"x")
            idle = (0, 0, 0) if name == "gearmand" else None
            waitFor(lambda: statusOf(proc.port, f + b"x") == idle, what="worker gone")
            if name == "txgear":
                assert a.admin(b"drop function " + f + b"x") == b"ERR function not found\r\n"
                assert a.admin(b"create function " + f + b"x") == b"OK\r\n"
                assert statusOf(proc.port, f + b"x") == (0, 0, 0)
            assert a.admin(b"drop function " + f.lower() + b"X") == b"OK\r\n", name
            assert statusOf(proc.port, f + b"x") is None
            w.register(f + b"w")
            assert a.admin(b"drop function " + f + b"w") == \
                b"ERR there are still connected workers or executing clients\r\n"
            a.submit(f + b"q", b"queued", kind=P.SUBMIT_JOB_BG)
            results[name] = a.admin(b"drop function " + f + b"q")
            results[name + " status"] = statusOf(proc.port, f + b"q")
    assert results["gearmand"] == b"OK\r\n"
    assert results["gearmand status"] is None  # the queued job is lost
    assert results["txgear"] == b"ERR there are still connected workers or executing clients\r\n"
    assert results["txgear status"] == (1, 0, 0)


def test_createFunctionKeepsWholeName(servers: Dict[str, Any]) -> None:
    """DIFFERENCE: gearmand's create function drops the last character; txgear does not."""
    made = {}
    for name, proc in servers.items():
        f = b"made%d" % next(_names)
        assert adminOnce(proc.port, b"create function " + f) == b"OK\r\n"
        made[name] = (statusOf(proc.port, f), statusOf(proc.port, f[:-1]))
    assert made["gearmand"] == (None, (0, 0, 0))
    assert made["txgear"] == ((0, 0, 0), None)


def test_workExceptionToPlainClient(servers: Dict[str, Any]) -> None:
    """DIFFERENCE: the WORK_FAIL gearmand substitutes for WORK_EXCEPTION has a stray NUL."""
    bodies = {}
    for name, proc in servers.items():
        f = b"exc-%d" % next(_names)
        with RawClient(proc.port) as c, RawClient(proc.port) as w:
            h = c.submit(f, b"x")
            w.register(f)
            assert w.grab()[1][0] == h
            w.send(P.WORK_EXCEPTION, h, b"boom")
            c.sock.settimeout(5)
            raw = b""
            while len(raw) < 12 or len(raw) < 12 + int.from_bytes(raw[8:12], "big"):
                chunk = c.sock.recv(4096)
                assert chunk, name
                raw += chunk
            assert raw[:8] == b"\0RES" + P.WORK_FAIL.to_bytes(4, "big"), (name, raw)
            bodies[name] = (h, raw[12:])
    h, body = bodies["gearmand"]
    assert body == h + b"\0"
    h, body = bodies["txgear"]
    assert body == h


def test_priorityIsGlobalAcrossFunctions(servers: Dict[str, Any]) -> None:
    """
    DIFFERENCE: a worker registered for fa then fb, HIGH jobs for fa and LOW
    jobs for fb queued: gearmand serves fb (registered last) first; txgear
    serves by priority across functions.
    """
    order = {}
    for name, proc in servers.items():
        n = next(_names)
        fa, fb = b"fa-%d" % n, b"fb-%d" % n
        with RawClient(proc.port) as c, RawClient(proc.port) as w:
            c.submit(fa, b"a1", kind=P.SUBMIT_JOB_HIGH_BG)
            c.submit(fb, b"b1", kind=P.SUBMIT_JOB_LOW_BG)
            c.submit(fa, b"a2", kind=P.SUBMIT_JOB_HIGH_BG)
            c.submit(fb, b"b2", kind=P.SUBMIT_JOB_LOW_BG)
            w.register(fa, fb)
            got = []
            for _ in range(4):
                kind, args = w.grab()
                got.append(args[-1])
                w.send(P.WORK_COMPLETE, args[0], b"")
            order[name] = got
    assert order["gearmand"] == [b"b1", b"b2", b"a1", b"a2"]
    assert order["txgear"] == [b"a1", b"a2", b"b1", b"b2"]


def test_binaryAndTextOnOneConnection(servers: Dict[str, Any]) -> None:
    """ECHO, then text, then ECHO on one socket, on both servers."""
    for name, proc in servers.items():
        with RawClient(proc.port) as c:
            c.echo(b"one")
            assert c.admin("version").startswith(b"OK ")
            assert c.admin("status").endswith(b".\n")
            c.echo(b"two")
            assert c.admin("getpid\r") == b"OK %d\n" % proc.pid  # CRLF line ending


def test_forgedWorkersLineIsEscaped(fresh: Dict[str, Any]) -> None:
    """
    A client id and function names holding newlines, tabs and spaces cannot
    add a worker to C{workers} as C{gearadmin --workers} and C{txgear-admin
    workers} show it (gearmand prints the fake line; txgear drops control
    characters from client ids, refuses them in function names and escapes
    spaces).
    """
    import subprocess
    import sys

    from tests._peers import SOURCE_ROOT

    tool = requireProgram("gearadmin")
    port = fresh["txgear"].port
    with RawClient(port) as forger, RawClient(port) as honest:
        forger.send(P.SET_CLIENT_ID, b"x : real\n99 6.6.6.6 fake-worker : stolen\tjob")
        forger.register(b"real fn")
        forger.send(P.CAN_DO, b"bad\nname")
        assert forger.expect(P.ERROR) == [b"INVALID_ARGUMENT",
                                          b"Function name contains control characters"]
        honest.send(P.SET_CLIENT_ID, b"honest")
        honest.register(b"plain")
        honest.echo()
        gear = runTool([tool, "-p", str(port), "--workers"])
        assert gear.returncode == 0, gear.stderr
        ours = subprocess.run([sys.executable, "-m", "txgear._cli", "admin", "-s",
                               f"127.0.0.1:{port}", "workers"], cwd=SOURCE_ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
        assert ours.returncode == 0, ours.stderr
    # The forger, the honest worker, and gearadmin's own connection.
    lines = [line for line in gear.stdout.splitlines() if line.strip() not in (b"", b".")]
    assert len(lines) == 3, gear.stdout
    assert not any(line.split(b" ")[1] == b"6.6.6.6" for line in lines), gear.stdout
    assert any(line.endswith(b" honest : plain") for line in lines), lines
    assert any(b" x\\x20:\\x20real99\\x206.6.6.6" in line and line.endswith(b" : real\\x20fn")
               for line in lines), lines
    table = [line for line in ours.stdout.splitlines()[1:] if line.strip()]
    assert len(table) == 3, ours.stdout
    assert not any(line.split()[1] == b"6.6.6.6" for line in table), ours.stdout

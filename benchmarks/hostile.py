#!/usr/bin/env python3
"""
The hostile-peer suite: replay each attack of issue 8 against a fresh job
server process and measure what it costs the server and its other peers.

    python3 benchmarks/hostile.py                               # txgear (this tree) and gearmand
    python3 benchmarks/hostile.py --servers txgear --source ../txgear-other --scale 0.25
    python3 benchmarks/hostile.py --quick --attacks forged-lines,status-flood
    python3 benchmarks/hostile.py --list                        # the attacks and their budgets
    python3 benchmarks/hostile.py --markdown table.md

For each attack and server: start the server (txgear: C{twistd -n gearman}
from C{--source}, C{--queue memory} unless the attack needs the SQLite
store; gearmand from /usr/sbin/gearmand), build the legitimate state the
attack needs, warm up, then measure the server's RSS before, its peak growth
during the attack (VmRSS polled every 10 ms, and VmHWM reset before the
attack), its RSS once the attackers have left and memory has settled (the
server is never asked to collect garbage), and the worst ECHO_REQ round trip
of a bystander connection pinging every 10 ms throughout; plus facts of the
attack (jobs served, forged lines seen, refusals, ...).

Verdict: PASS when the RSS growth is within the attack's budget (derived
from the limits below), the RSS after is within 10% of before, the
bystander was always answered within 100 ms, and the attack's own checks
hold.  Stdlib only; see docs/reliability.md.
"""
from __future__ import annotations

import argparse
import datetime
import os
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Tuple

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _hostilekit import (  # noqa: E402
    CAN_DO, ECHO_REQ, ECHO_RES, GET_STATUS, GRAB_JOB, JOB_ASSIGN,
    JOB_CREATED, MiB, NO_JOB, NOOP, PRE_SLEEP, ROOT, SET_CLIENT_ID, SUBMIT_JOB,
    SUBMIT_JOB_BG, SUBMIT_JOB_EPOCH, WORK_COMPLETE, WORK_DATA, WORK_FAIL, WORK_STATUS, Bystander,
    Closed, Conn, RssSampler, Server, header, installSignalHandlers, killStarted, log, mib, packet,
    settle, waitUntil)

#: The server limits the budgets derive from (override with --limit NAME=VALUE),
#: txgear's defaults as docs/server.md "Limits" lists them: maxPacket is
#: --max-packet-size, output the per-connection --output-hard-limit,
#: partial the --partial-packet-budget (all in MiB); functions is
#: --max-functions (a count); slack (MiB) covers the interpreter, allocator
#: pools and the legitimate state.
DEFAULT_LIMITS = {"maxPacket": 16.0, "output": 64.0, "partial": 256.0, "functions": 100000.0,
                  "slack": 32.0}
RSS_AFTER_TOLERANCE = 0.10      # RSS after within 10% of before
RTT_BUDGET = 0.100              # the bystander answered within 100 ms


@dataclass
class Limits:
    maxPacket: int
    output: int
    partial: int
    functions: int
    slack: int


@dataclass
class Attack:
    name: str
    items: str
    what: str
    run: Callable[["Context"], None]
    budget: Callable[[Limits, float], int]
    budgetText: str
    store: bool = False


@dataclass
class Row:
    attack: str
    server: str
    before: int = 0
    growth: int = 0
    after: int = 0
    budget: int = 0
    worstRtt: float = 0.0
    bystanderLost: bool = False
    facts: List[str] = field(default_factory=list)
    failed: List[str] = field(default_factory=list)
    error: Optional[str] = None

    @property
    def verdict(self) -> str:
        if self.error is not None:
            return "ERROR"
        return "FAIL" if self.failed else "PASS"


ATTACKS: List[Attack] = []


def attack(name: str, items: str, budget: Callable[[Limits, float], int], budgetText: str,
           store: bool = False) -> Callable[[Callable[["Context"], None]], Callable[["Context"], None]]:
    """Register an attack: C{run(ctx)} attacks, and its attackers leave before it returns."""
    def register(run: Callable[["Context"], None]) -> Callable[["Context"], None]:
        ATTACKS.append(Attack(name, items, " ".join((run.__doc__ or "").split("\n\n")[0].split()),
                              run, budget, budgetText, store))
        return run
    return register


class Context:
    """
    What an attack works with: the server, the scale, its connections
    (closed when the attack ends, whatever happens) and its results.
    """

    def __init__(self, server: Server, scale: float, limits: Limits) -> None:
        self.server = server
        self.port = server.port
        self.scale = scale
        self.limits = limits
        self.facts: List[str] = []
        self.failed: List[str] = []
        self._conns: List[Conn] = []
        self._threads: List[threading.Thread] = []
        self.stopping = threading.Event()

    def n(self, full: int, minimum: int = 1) -> int:
        """C{full} scaled, at least C{minimum}."""
        return max(minimum, int(full * self.scale))

    def conn(self, timeout: float = 10.0, rcvbuf: Optional[int] = None) -> Conn:
        c = Conn(self.port, timeout=timeout, rcvbuf=rcvbuf)
        self._conns.append(c)
        return c

    def thread(self, target: Callable[[], None]) -> threading.Thread:
        t = threading.Thread(target=target, daemon=True)
        self._threads.append(t)
        t.start()
        return t

    def fact(self, text: str) -> None:
        self.facts.append(text)

    def check(self, ok: bool, failure: str) -> None:
        """An attack-specific condition of the verdict."""
        if not ok:
            self.failed.append(failure)

    def quiesce(self, timeout: float = 60.0) -> float:
        """Wait (bounded) until a fresh connection gets an ECHO back: seconds waited."""
        start = time.monotonic()
        try:
            c = Conn(self.port, timeout=timeout)
            try:
                c.echo(b"quiesce", timeout)
            finally:
                c.close()
        except (OSError, Closed):
            pass
        return time.monotonic() - start

    def leave(self) -> None:
        """The attackers leave: every connection closed, every helper thread ended."""
        self.stopping.set()
        for c in self._conns:
            c.close()
        self._conns.clear()
        for t in self._threads:
            t.join(10)
        self._threads.clear()


class Worker:
    """
    A raw worker in a thread: grabs jobs of C{function} and answers each with
    C{handler(conn, handle, payload)} (which sends the result), sleeping with
    PRE_SLEEP when there is nothing; ends when C{ctx.stopping} is set.

    @ivar done: handles the handler finished.
    @ivar blocked: a send to the server could not complete in time.
    """

    def __init__(self, ctx: Context, function: bytes,
                 handler: Callable[[Conn, bytes, bytes], None]) -> None:
        self.ctx = ctx
        self.conn = ctx.conn()
        self.conn.send(CAN_DO, function)
        self.conn.echo()
        self.handler = handler
        self.done: List[bytes] = []
        self.blocked = False
        ctx.thread(self._loop)

    def _loop(self) -> None:
        c = self.conn
        try:
            while not self.ctx.stopping.is_set():
                c.send(GRAB_JOB)
                kind, args = self._recvUntil(lambda k: k in (JOB_ASSIGN, NO_JOB))
                if kind == NO_JOB:
                    c.send(PRE_SLEEP)
                    self._recvUntil(lambda k: k == NOOP)
                    continue
                handle, _function, payload = args
                self.handler(c, handle, payload)
                self.done.append(handle)
        except socket.timeout:
            self.blocked = True
        except (OSError, Closed, AssertionError):
            pass

    def _recvUntil(self, wanted: Callable[[int], bool]) -> Tuple[int, List[bytes]]:
        while True:
            try:
                kind, args = self.conn.recv(0.1)
            except socket.timeout:
                if self.ctx.stopping.is_set():
                    raise Closed()
                continue
            if wanted(kind):
                return kind, args


def complete(c: Conn, handle: bytes, payload: bytes) -> None:
    c.send(WORK_COMPLETE, handle, payload)


def drain(ctx: Context, function: bytes, timeout: float = 30.0) -> int:
    """A legitimate worker runs every queued job of C{function}: their count."""
    c = Conn(ctx.port, timeout=timeout)
    count = 0
    try:
        c.send(CAN_DO, function)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            c.send(GRAB_JOB)
            kind, args = c.recv()
            while kind not in (JOB_ASSIGN, NO_JOB):
                kind, args = c.recv()
            if kind == NO_JOB:
                break
            c.send(WORK_COMPLETE, args[0], b"")
            count += 1
        c.echo()
    except (OSError, Closed):
        pass
    finally:
        c.close()
    return count


def sendWhileReading(c: Conn, data: bytes, deadline: float) -> int:
    """Send C{data} while reading and discarding replies, until sent or C{deadline}: bytes sent."""
    import select
    sent = 0
    c.sock.setblocking(False)
    view = memoryview(data)
    try:
        while sent < len(data) and time.monotonic() < deadline:
            readable, writable, _ = select.select([c.sock], [c.sock], [], 0.05)
            if readable:
                try:
                    if not c.sock.recv(1 << 20):
                        break
                except BlockingIOError:
                    pass
            if writable:
                try:
                    sent += c.sock.send(view[sent:sent + (1 << 20)])
                except BlockingIOError:
                    pass
    except OSError:
        pass
    finally:
        view.release()
        c.sock.setblocking(True)
        c.sock.settimeout(c.timeout)
    return sent


# ---------------------------------------------------------------- the attacks


@attack("status-flood", "1", lambda L, s: L.output + L.slack,
        "one output limit + slack")
def statusFlood(ctx: Context) -> None:
    """
    With 2,000 functions registered, 64 KiB of C{status} lines on a
    connection that never reads.
    """
    functions = ctx.n(2000, 20)
    worker = ctx.conn()
    worker.sendRaw(b"".join(packet(CAN_DO, b"function-%06d" % i) for i in range(functions)))
    worker.echo(timeout=60)
    ctx.fact(f"{functions} functions")
    reader = ctx.conn(rcvbuf=4096)
    sent = reader.sendRaw(b"status\n" * (65536 // 7), deadline=time.monotonic() + 10)
    ctx.fact(f"{sent // 1024} KiB sent")
    ctx.fact(f"caught up after {ctx.quiesce():.1f} s")
    time.sleep(1)


@attack("getstatus-flood", "1", lambda L, s: int(MiB * s) + L.output + L.slack,
        "the numerator + one output limit + slack")
def getStatusFlood(ctx: Context) -> None:
    """
    A worker sets a 1 MiB WORK_STATUS numerator, then a connection that
    never reads sends 27 KB of GET_STATUS for that job.
    """
    client = ctx.conn()
    client.send(SUBMIT_JOB_BG, b"gs", b"", b"x")
    handle = client.expect(JOB_CREATED)[0]
    worker = ctx.conn()
    worker.send(CAN_DO, b"gs")
    worker.send(GRAB_JOB)
    worker.expect(JOB_ASSIGN)
    numerator = ctx.n(MiB, 1024)
    try:
        worker.send(WORK_STATUS, handle, b"9" * numerator, b"1")
        worker.echo()
    except (OSError, Closed):
        ctx.fact(f"{numerator // 1024} KiB numerator: the server closed the worker")
        return
    flood = packet(GET_STATUS, handle) * (27000 // (12 + len(handle)))
    reader = ctx.conn(rcvbuf=4096)
    sent = reader.sendRaw(flood, deadline=time.monotonic() + 10)
    ctx.fact(f"{numerator // 1024} KiB numerator, {sent // 1024} KiB of GET_STATUS")
    ctx.fact(f"caught up after {ctx.quiesce():.1f} s")
    time.sleep(1)
    ctx.leave()
    drain(ctx, b"gs")


@attack("partial-close", "2, 3", lambda L, s: min(int(200 * s) * 4 * MiB, L.partial) + L.slack,
        "min(connections x 4 MiB, partial budget) + slack")
def partialClose(ctx: Context) -> None:
    """
    Three rounds of 200 connections each sending 4 MiB of an announced
    16 MiB packet, then closing.
    """
    count = ctx.n(200, 4)
    chunk = header(SUBMIT_JOB_BG, 16 * MiB) + b"pc\0\0" + b"x" * (4 * MiB - 16)
    rounds = []
    sent = 0
    for _ in range(3):
        conns = []
        deadline = time.monotonic() + 10  # for the round: a server may stop reading
        for _ in range(count):
            c = Conn(ctx.port)
            sent += c.sendRaw(chunk, deadline=deadline)
            conns.append(c)
        ctx.quiesce()
        for c in conns:
            c.close()
        ctx.quiesce()
        time.sleep(0.5)
        rounds.append(mib(ctx.server.rss()))
    ctx.fact(f"{count} conns x 3 rounds, {mib(sent)} MiB sent; RSS after each: {' -> '.join(rounds)} MiB")


@attack("open-close", "2", lambda L, s: L.slack, "slack")
def openClose(ctx: Context) -> None:
    """20,000 plain open/close cycles."""
    cycles = ctx.n(20000, 200)
    start = time.monotonic()
    done = 0
    for _ in range(cycles):
        if time.monotonic() - start > 120:
            break
        try:
            Conn(ctx.port, timeout=5).close()
            done += 1
        except OSError:
            time.sleep(0.01)
    ctx.fact(f"{done} cycles")
    ctx.quiesce()


@attack("partial-hold", "3", lambda L, s: min(int(500 * s) * 4 * MiB, L.partial) + L.slack,
        "min(connections x 4 MiB, partial budget) + slack")
def partialHold(ctx: Context) -> None:
    """
    500 connections each holding 4 MiB of an announced 16 MiB body, held
    open for 10 s: how many does the server close?
    """
    count = ctx.n(500, 4)
    chunk = header(SUBMIT_JOB_BG, 16 * MiB) + b"ph\0\0" + b"x" * (4 * MiB - 16)
    conns = [ctx.conn() for _ in range(count)]
    deadline = time.monotonic() + 10  # for all: a server may stop reading
    sent = sum(c.sendRaw(chunk, deadline=deadline) for c in conns)
    ctx.quiesce()
    hold = 10.0
    waitUntil(lambda: all(c.closedByPeer() for c in conns), hold, interval=0.2)
    closed = sum(c.closedByPeer() for c in conns)
    ctx.fact(f"{count} conns, {mib(sent)} MiB sent; server closed {closed} within {hold:.0f} s")


@attack("trickle", "3", lambda L, s: 2 * int(50 * s) * 20000 + L.slack,
        "2 x the bytes trickled + slack")
def trickle(ctx: Context) -> None:
    """
    50 connections trickle one byte per TCP segment of a packet body that
    never completes, round-robin: server memory per byte held.
    """
    count = ctx.n(50, 2)
    perConn = 20000
    conns = [ctx.conn() for _ in range(count)]
    for c in conns:
        c.sendRaw(header(SUBMIT_JOB_BG, perConn + 100) + b"tr\0\0")
    ctx.quiesce()
    before = ctx.server.rss()
    sent = 0
    deadline = time.monotonic() + 60
    for _ in range(perConn):
        if time.monotonic() > deadline:
            break
        for c in conns:
            if c.sendRaw(b"x", deadline=time.monotonic() + 1) == 1:
                sent += 1
    ctx.quiesce()
    held = ctx.server.rss() - before
    ctx.fact(f"{sent} bytes trickled; server holds {held / max(sent, 1):.0f} B per byte")


@attack("slow-client", "4", lambda L, s: L.output + 2 * L.maxPacket + L.slack,
        "one output limit + 2 packets + slack")
def slowClient(ctx: Context) -> None:
    """
    A client that never reads gets a large result from a worker shared with
    a healthy client: is the healthy client still served?
    """
    total = ctx.n(64 * MiB, 4 * MiB)
    piece = b"d" * MiB

    def handler(c: Conn, handle: bytes, payload: bytes) -> None:
        if payload == b"big":
            deadline = time.monotonic() + 20
            for _ in range(total // MiB):
                data = packet(WORK_DATA, handle, piece)
                if c.sendRaw(data, deadline=deadline) < len(data):
                    raise socket.timeout("the server stopped reading the worker")
        c.send(WORK_COMPLETE, handle, payload)

    worker = Worker(ctx, b"shared", handler)
    slow = ctx.conn(rcvbuf=4096)
    slow.send(SUBMIT_JOB, b"shared", b"", b"big")
    slow.expect(JOB_CREATED)
    time.sleep(1)
    healthy = ctx.conn()
    served, worst, jobs = 0, 0.0, 5
    for i in range(jobs):
        start = time.monotonic()
        healthy.send(SUBMIT_JOB, b"shared", b"", b"small%d" % i)
        try:
            healthy.expect(JOB_CREATED, 3)
            while healthy.recv(3)[0] != WORK_COMPLETE:
                pass
            served += 1
            worst = max(worst, time.monotonic() - start)
        except (socket.timeout, Closed):
            worst = max(worst, time.monotonic() - start)
            break
    ctx.fact(f"{total // MiB} MiB to the slow client; healthy client served {served}/{jobs}, "
             f"worst {worst * 1000:.0f} ms" + ("; worker blocked" if worker.blocked else ""))
    ctx.check(served == jobs and worst <= 1.0, "healthy client not served within 1 s")


@attack("shared-result", "5", lambda L, s: 3 * L.maxPacket + L.slack,
        "3 x the result (worker's packet, one shared copy, slack for parsing) + slack")
def sharedResult(ctx: Context) -> None:
    """
    50 clients that never read wait on one unique; the worker sends one
    16 MiB WORK_DATA.
    """
    count = ctx.n(50, 3)
    for _ in range(count):
        c = ctx.conn(rcvbuf=4096)
        c.send(SUBMIT_JOB, b"sr", b"one-unique", b"x")
        c.expect(JOB_CREATED)
    size = 16 * MiB - 64
    sentAt: List[float] = []

    def handler(c: Conn, handle: bytes, payload: bytes) -> None:
        data = packet(WORK_DATA, handle, b"r" * size)
        start = time.monotonic()
        if c.sendRaw(data, deadline=start + 20) == len(data):
            sentAt.append(time.monotonic() - start)
        c.send(WORK_COMPLETE, handle, b"")

    worker = Worker(ctx, b"sr", handler)
    waitUntil(lambda: bool(worker.done), 30)
    ctx.fact(f"{count} clients; 16 MiB result sent in "
             + (f"{sentAt[0]:.1f} s" if sentAt else "(not sent within 20 s)"))
    ctx.quiesce()
    time.sleep(1)


@attack("pause-churn", "6", lambda L, s: L.output + 2 * L.maxPacket + L.slack,
        "one output limit + 2 packets + slack")
def pauseChurn(ctx: Context) -> None:
    """
    Pause/resume churn: one connection alternates sending 64 KiB ECHO_REQs
    without reading with reading everything back, 20 times, then an ECHO;
    then 20 workers send results one by one to a client that reads only
    after 2 s, then sends an ECHO.
    """
    import select
    c = ctx.conn()
    echo = packet(ECHO_REQ, b"e" * 65536)
    replyBytes = len(echo)
    cycles = ctx.n(20, 3)
    completed = 0
    for _ in range(cycles):
        c.sock.setblocking(False)
        sent = expected = received = 0
        burst = echo * 32
        end = time.monotonic() + 0.2
        while time.monotonic() < end and sent < len(burst):
            try:
                sent += c.sock.send(burst[sent:])
            except BlockingIOError:
                select.select([], [c.sock], [], 0.02)
        # The rest of a partly sent packet must go too, while reading.
        whole = -(-sent // len(echo)) * len(echo)
        expected = whole // len(echo) * replyBytes
        deadline = time.monotonic() + 5
        while (received < expected or sent < whole) and time.monotonic() < deadline:
            readable, writable, _ = select.select([c.sock], [c.sock] if sent < whole else [], [], 0.05)
            if writable:
                try:
                    sent += c.sock.send(burst[sent:whole])
                except BlockingIOError:
                    pass
            if readable:
                try:
                    data = c.sock.recv(1 << 20)
                except BlockingIOError:
                    continue
                if not data:
                    break
                received += len(data)
        c.sock.setblocking(True)
        c.sock.settimeout(c.timeout)
        if received < expected:
            break
        completed += 1
    answered = False
    try:
        c.echo(b"last", 3)
        answered = True
    except (socket.timeout, Closed, AssertionError):
        pass
    ctx.fact(f"echo bursts: {completed}/{cycles} read back, final ECHO "
             + ("answered" if answered else "NOT answered in 3 s"))
    ctx.check(answered and completed == cycles, "a connection stopped being served")
    forwardedChurn(ctx)


def forwardedChurn(ctx: Context) -> None:
    """
    Writes from other connections, in separate reactor turns, to a client
    whose buffer is full: the client submits 20 jobs and does not read for
    2 s while 20 workers join one by one, each sending one 512 KiB result;
    then the client reads them all and sends an ECHO.
    """
    jobs = 20
    piece = b"w" * (512 * 1024)

    def handler(c: Conn, handle: bytes, payload: bytes) -> None:
        data = packet(WORK_DATA, handle, piece)
        if c.sendRaw(data, deadline=time.monotonic() + 10) < len(data):
            raise socket.timeout("the server stopped reading the worker")
        c.send(WORK_COMPLETE, handle, b"")

    client = ctx.conn(rcvbuf=4096)
    client.sendRaw(b"".join(packet(SUBMIT_JOB, b"churn", b"", b"%d" % i) for i in range(jobs)))
    for _ in range(jobs):
        client.expect(JOB_CREATED)
    started = time.monotonic()
    for _ in range(jobs):  # one worker at a time: each result is written in its own turn
        Worker(ctx, b"churn", handler)
        time.sleep(0.05)
    time.sleep(max(0.0, 2.0 - (time.monotonic() - started)))
    completed = 0
    answered = False
    try:
        while completed < jobs:
            if client.recv(10)[0] == WORK_COMPLETE:
                completed += 1
        client.echo(b"after", 3)
        answered = True
    except (socket.timeout, Closed, AssertionError):
        pass
    ctx.fact(f"streamed results: {completed}/{jobs} received, then ECHO "
             + ("answered" if answered else "NOT answered"))
    ctx.check(answered, "a client stopped being served after results from several workers")


@attack("client-id", "7", lambda L, s: 2 * int(MiB * s) + L.slack,
        "2 x the id packet + slack; store grows at most 1 KiB per job", store=True)
def clientId(ctx: Context) -> None:
    """A 1 MiB SET_CLIENT_ID, then 1,000 small background submits (SQLite store)."""
    c = ctx.conn()
    size = ctx.n(MiB, 4096)
    storeBefore = ctx.server.storeSize()
    jobs = ctx.n(1000, 20)
    accepted, closed = 0, False
    try:
        c.send(SET_CLIENT_ID, b"i" * size)
        c.sendRaw(b"".join(packet(SUBMIT_JOB_BG, b"cid", b"", b"%d" % i) for i in range(jobs)))
        for _ in range(jobs):
            if c.recv(30)[0] == JOB_CREATED:
                accepted += 1
    except (Closed, OSError):
        closed = True
    stored = ctx.server.storeSize() - storeBefore
    ctx.leave()
    drained = drain(ctx, b"cid")
    ctx.fact(f"{size // 1024} KiB id, {accepted}/{jobs} accepted"
             + (" (connection closed by the server)" if closed else "") + f", {drained} run; "
             + (f"store grew {mib(stored)} MiB" if ctx.server.storePath else "no store"))
    ctx.check(stored <= jobs * 1024 + MiB, "the store grew by more than 1 KiB per job")


@attack("many-functions", "8", lambda L, s: min(int(300000 * s), L.functions) * 1024 + L.slack,
        "1 KiB per name, at most functions names + slack")
def manyFunctions(ctx: Context) -> None:
    """300,000 distinct function names (CAN_DO over 10 connections), then the workers leave."""
    names = ctx.n(300000, 1000)
    perConn = names // 10
    for k in range(10):
        c = ctx.conn(timeout=120)
        c.sendRaw(b"".join(packet(CAN_DO, b"fn-%02d-%07d" % (k, i)) for i in range(perConn)))
        c.echo(timeout=120)
    ctx.fact(f"{perConn * 10} names")


@attack("cando-repeat", "9", lambda L, s: int(1000000 * s) * 20 + L.slack,
        "the input (20 B per CAN_DO) + slack")
def canDoRepeat(ctx: Context) -> None:
    """One CAN_DO sent 1M times on one connection, then GRAB_JOB timed."""
    count = ctx.n(1000000, 10000)
    worker = ctx.conn(timeout=120)
    worker.sendRaw(packet(CAN_DO, b"same") * count)
    worker.echo(timeout=120)
    client = ctx.conn()
    client.send(SUBMIT_JOB_BG, b"same", b"", b"x")
    client.expect(JOB_CREATED)
    times = []
    for _ in range(20):
        start = time.monotonic()
        worker.send(GRAB_JOB)
        kind, args = worker.recv(60)
        times.append(time.monotonic() - start)
        if kind == JOB_ASSIGN:
            worker.send(WORK_COMPLETE, args[0], b"")
    worst = max(times)
    ctx.fact(f"{count} CAN_DO; worst GRAB {worst * 1000:.1f} ms")
    ctx.check(worst <= RTT_BUDGET, "a GRAB_JOB took over 100 ms")


FORGED = (b"99 6.6.6.6 forged-worker : forged", b"forged-function\t7\t7\t7", b"forged-unique")
#: A listing line starting with one of these was written by the attacker.
FORGED_PREFIXES = (b"99 6.6.6.6", b"forged-function", b"forged-unique")


@attack("forged-lines", "10", lambda L, s: L.slack, "slack")
def forgedLines(ctx: Context) -> None:
    """
    Newlines and tabs in a client id, a function name and a unique: do they
    forge lines of C{workers}, C{status} and C{show unique jobs}?
    """
    evil = ctx.conn()
    function = b"fx\n" + FORGED[1]
    evil.send(SET_CLIENT_ID, b"evil\n" + FORGED[0])
    evil.send(CAN_DO, function)
    evil.send(SUBMIT_JOB_BG, function, b"u\n" + FORGED[2], b"x")
    try:
        answer = evil.recv(5)
        ctx.fact("submit " + ("accepted" if answer[0] == JOB_CREATED else f"refused {answer[1][:1]!r}"))
    except (socket.timeout, Closed):
        ctx.fact("submit unanswered")
    admin = Conn(ctx.port)
    forged = []
    try:
        for command in ("workers", "status", "show unique jobs"):
            reply = admin.admin(command)
            if any(row.startswith(prefix) for row in reply.split(b"\n") for prefix in FORGED_PREFIXES):
                forged.append(command)
    finally:
        admin.close()
    ctx.fact("forged lines in: " + (", ".join(forged) if forged else "none"))
    ctx.check(not forged, "a peer forged admin lines")
    ctx.leave()
    drain(ctx, function)


@attack("epoch-batch", "11", lambda L, s: L.slack, "slack", store=True)
def epochBatch(ctx: Context) -> None:
    """
    SUBMIT_JOB_EPOCH with epoch 2^63 sent among 500 other background
    submits (SQLite store): are the others refused, does the error leak a path?
    """
    total = ctx.n(500, 20)
    conns = [ctx.conn() for _ in range(10)]
    bad = ctx.conn()
    perConn = total // 10
    batches = [b"".join(packet(SUBMIT_JOB_BG, b"ep", b"", b"%d-%d" % (k, i)) for i in range(perConn))
               for k in range(10)]
    for k, c in enumerate(conns):
        c.sendRaw(batches[k][:len(batches[k]) // 2])
    bad.send(SUBMIT_JOB_EPOCH, b"ep", b"", str(2 ** 63).encode(), b"bad")
    for k, c in enumerate(conns):
        c.sendRaw(batches[k][len(batches[k]) // 2:])
    refused = 0
    for c in conns:
        for _ in range(perConn):
            try:
                if c.recv(30)[0] != JOB_CREATED:
                    refused += 1
            except (socket.timeout, Closed):
                refused += 1
    try:
        kind, args = bad.recv(5)
        answer = "JOB_CREATED" if kind == JOB_CREATED else " ".join(
            a.decode("utf-8", "replace") for a in args)
    except (socket.timeout, Closed):
        answer = "no answer in 5 s"
    leaked = "/" in answer or "sqlite" in answer.lower() or "Traceback" in answer
    ctx.fact(f"{refused}/{perConn * 10} good submits refused; bad epoch: {answer[:60]}")
    ctx.check(refused == 0, "good submits refused")
    ctx.check(not leaked, "the error shows internals")
    ctx.leave()
    drain(ctx, b"ep")


@attack("log-flood", "12", lambda L, s: L.slack, "slack; log grows less than the input")
def logFlood(ctx: Context) -> None:
    """
    10,000 refused packets (response-only types, long unknown handles):
    log bytes written per byte received.
    """
    count = ctx.n(10000, 200)
    c = ctx.conn()
    data = b"".join(packet(NOOP) + packet(WORK_FAIL, b"H:" + b"h" * 60 + b"%05d" % i)
                    for i in range(count))
    before = ctx.server.logSize()
    sent = sendWhileReading(c, data, time.monotonic() + 60)
    ctx.quiesce()
    time.sleep(0.5)
    written = ctx.server.logSize() - before
    ctx.fact(f"{sent // 1024} KiB in, {written // 1024} KiB logged ({written / max(sent, 1):.1f}x)")
    ctx.check(written <= sent, "the log grows faster than the input")


@attack("wake-one", "21", lambda L, s: L.slack, "slack; each job done within 2 s")
def wakeOne(ctx: Context) -> None:
    """
    A sleeping worker that never reads, plus a healthy sleeping worker: are
    foreground jobs run, or stranded on the hung one?
    """
    hung = ctx.conn()
    hung.send(CAN_DO, b"wake")
    hung.send(PRE_SLEEP)
    hung.send(ECHO_REQ, b"x")
    hung.expect(ECHO_RES)  #: registered and asleep; it never reads again
    Worker(ctx, b"wake", complete)
    time.sleep(0.3)  # the healthy worker is asleep too
    client = ctx.conn()
    done, worst = 0, 0.0
    jobs = 3
    for i in range(jobs):
        start = time.monotonic()
        client.send(SUBMIT_JOB, b"wake", b"", b"%d" % i)
        try:
            # A stranded earlier job may complete now, before this JOB_CREATED.
            while True:
                kind, args = client.recv(5)
                if kind == JOB_CREATED:
                    break
            handle = args[0]
            while True:
                kind, args = client.recv(5)
                if kind == WORK_COMPLETE and args[0] == handle:
                    break
            done += 1
        except (socket.timeout, Closed):
            pass
        worst = max(worst, time.monotonic() - start)
        time.sleep(0.2)  # let the healthy worker fall asleep again
    ctx.fact(f"{done}/{jobs} jobs done, worst {worst * 1000:.0f} ms"
             + ("" if done == jobs else " (stranded, 5 s timeout)"))
    ctx.check(done == jobs and worst <= 2.0, "a job was stranded")


# ---------------------------------------------------------------- the harness


def measure(attackDef: Attack, serverName: str, source: str, scale: float, limits: Limits,
            settleSeconds: float, python: str) -> Row:
    """One attack against one fresh server: the table row."""
    row = Row(attackDef.name, serverName)
    row.budget = attackDef.budget(limits, scale)
    server = Server(serverName, source=source, store=attackDef.store, python=python)
    ctx = Context(server, scale, limits)
    bystander: Optional[Bystander] = None
    sampler: Optional[RssSampler] = None
    try:
        # Warm-up: the server has served a little and its allocator has settled.
        warm = Conn(server.port)
        for i in range(50):
            warm.echo(b"warm%d" % i)
        warm.close()
        bystander = Bystander(server.port)
        bystander.start()
        time.sleep(0.5)
        row.before = settle(server, 3)
        sampler = RssSampler(server)
        server.resetPeak()
        sampler.start()
        try:
            attackDef.run(ctx)
        finally:
            ctx.leave()
        ctx.quiesce()
        row.after = settle(server, settleSeconds)
        peak = max(sampler.stop(), server.peak())
        sampler = None
        row.growth = max(0, peak - row.before)
        row.worstRtt = bystander.stop()
        row.bystanderLost = bystander.lost
        bystander = None
        if not server.alive():
            raise RuntimeError(f"the server died: {server.outputTail()}")
        row.facts = ctx.facts
        row.failed = list(ctx.failed)
        judge(row)
    except Exception as e:  # a row with the error, and the suite goes on
        row.error = f"{type(e).__name__}: {e}"[:300]
        row.facts = ctx.facts
        if not server.alive():
            row.error += " (server died)"
    finally:
        ctx.leave()
        if sampler is not None:
            sampler.stop()
        if bystander is not None:
            bystander.stop()
        server.stop()
    return row


def judge(row: Row) -> None:
    """Add the common budgets' failures to C{row.failed}, from its measured numbers."""
    if row.growth > row.budget:
        row.failed.insert(0, f"RSS growth {mib(row.growth)} > budget {mib(row.budget)} MiB")
    if row.after > row.before * (1 + RSS_AFTER_TOLERANCE):
        row.failed.insert(0, f"RSS after {afterVsBefore(row)} of before")
    if row.worstRtt > RTT_BUDGET or row.bystanderLost:
        row.failed.insert(0, "bystander " + ("disconnected" if row.bystanderLost else
                                             f"waited {row.worstRtt * 1000:.0f} ms"))


def afterVsBefore(row: Row) -> str:
    return f"{100.0 * (row.after - row.before) / row.before:+.0f}%" if row.before else "?"


COLUMNS = ["attack", "server", "RSS growth (budget), MiB", "RSS after vs before",
           "worst bystander RTT", "facts", "verdict"]


def cells(row: Row) -> List[str]:
    if row.error is not None:
        return [row.attack, row.server, "", "", "", "; ".join(row.facts + [row.error]), "ERROR"]
    return [row.attack, row.server, f"{mib(row.growth)} ({mib(row.budget)})",
            f"{mib(row.before)} -> {mib(row.after)} ({afterVsBefore(row)})",
            f"{row.worstRtt * 1000:.0f} ms" + (" (lost)" if row.bystanderLost else ""),
            "; ".join(row.facts),
            row.verdict + ("" if not row.failed else ": " + "; ".join(row.failed))]


def markdown(rows: List[Row]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells(row)) + " |")
    return "\n".join(lines) + "\n"


def plain(rows: List[Row]) -> str:
    table = [COLUMNS] + [cells(r) for r in rows]
    widths = [min(60, max(len(r[i]) for r in table)) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in table) + "\n"


def parseLimits(pairs: List[str]) -> Limits:
    values = dict(DEFAULT_LIMITS)
    for pair in pairs:
        name, _, value = pair.partition("=")
        if name not in values:
            raise SystemExit(f"unknown limit {name!r} ({', '.join(values)})")
        values[name] = float(value)
    return Limits(**{k: int(v) if k == "functions" else int(v * MiB) for k, v in values.items()})


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--servers", default="txgear,gearmand", help="comma-separated: txgear, gearmand")
    parser.add_argument("--source", default=ROOT, help="txgear source tree to run [default: this repository]")
    parser.add_argument("--attacks", default="", help="comma-separated attack names [default: all]")
    parser.add_argument("--scale", type=float, default=1.0,
                        help="multiply the attacks' counts and sizes by this [default: 1, the issue's figures]")
    parser.add_argument("--quick", action="store_true", help="tiny attacks, short settling (a smoke test)")
    parser.add_argument("--settle", type=float, default=10.0,
                        help="most seconds to wait for RSS to settle after an attack [default: 10]")
    parser.add_argument("--limit", action="append", default=[], metavar="NAME=MIB",
                        help=f"a limit the budgets derive from; defaults {DEFAULT_LIMITS}")
    parser.add_argument("--python", default=sys.executable, help="interpreter that runs txgear's twistd")
    parser.add_argument("--markdown", metavar="FILE", help="also write the table as Markdown")
    parser.add_argument("--list", action="store_true", help="list the attacks and their budgets")
    args = parser.parse_args(argv)
    installSignalHandlers()
    limits = parseLimits(args.limit)
    if args.quick:
        args.scale = min(args.scale, 0.01)
        args.settle = min(args.settle, 2.0)
    chosen = ATTACKS
    if args.attacks:
        byName = {a.name: a for a in ATTACKS}
        unknown = [n for n in args.attacks.split(",") if n not in byName]
        if unknown:
            raise SystemExit(f"unknown attacks {unknown}; --list shows them")
        chosen = [byName[n] for n in args.attacks.split(",")]
    if args.list:
        for a in chosen:
            print(f"{a.name:16} item {a.items:6} {a.what}\n{'':24}budget: {a.budgetText}"
                  f" = {mib(a.budget(limits, args.scale))} MiB at scale {args.scale}")
        return 0
    servers = [s for s in args.servers.split(",") if s]
    commit = subprocess.run(["git", "-C", args.source, "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip() or "(not a git checkout)"
    log(f"hostile suite: servers {servers}, txgear source {args.source} ({commit}), scale {args.scale}")
    rows: List[Row] = []
    try:
        for a in chosen:
            for name in servers:
                log(f"-- {a.name} against {name}")
                row = measure(a, name, args.source, args.scale, limits, args.settle, args.python)
                log("   " + " | ".join(cells(row)[2:]))
                rows.append(row)
    finally:
        killStarted()
    print(plain(rows), end="")
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(f"Measured {datetime.datetime.utcnow():%Y-%m-%d %H:%M} UTC; txgear source "
                    f"{args.source} at {commit}; scale {args.scale}; "
                    f"`{' '.join(['benchmarks/hostile.py'] + (argv if argv is not None else sys.argv[1:]))}`\n\n")
            f.write(markdown(rows))
    return 0 if all(r.error is None for r in rows) else 2


if __name__ == "__main__":
    sys.exit(main())

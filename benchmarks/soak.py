#!/usr/bin/env python3
"""
The soak run: one txgear server with its SQLite store, under churning
clients, workers and attackers for a while; then check that no acknowledged
job was lost, that no job is stuck, and that memory stayed flat.

    python3 benchmarks/soak.py --minutes 10                  # the full run
    python3 benchmarks/soak.py --minutes 1                   # to try it
    python3 benchmarks/soak.py --minutes 10 --source ../txgear-other

Load (all on 127.0.0.1, raw Gearman connections in threads):
  - background submitters: SUBMIT_JOB_BG with uniques; every second job
    reuses the unique of the one before, so some coalesce (one handle);
  - foreground clients: SUBMIT_JOB with a unique, waiting for the result;
  - workers joining and leaving: each lives 1-8 s; a third of them are
    killed mid-job (they grab a job and reset the connection without
    reporting, as a killed process does);
  - attackers: open/close bursts, partial packets then close, C{status} on
    a connection that never reads, forged names, a client that submits and
    leaves.

The guarantee checked is at-least-once: every background job the server
acknowledged with JOB_CREATED completes at least once.  Exactly-once is not
what the design promises (a worker killed after doing the work but before
its WORK_COMPLETE arrived has its job run again); duplicates are counted
and printed.  RSS is sampled every second and printed per minute (per 15 s
for runs of 2 minutes or less); "flat" means the median RSS of the last
fifth of the run is within 10% (+ 8 MiB) of the median RSS of the fifth
right after warm-up (warm-up: the first fifth, at most 2 minutes); medians,
because an attacker's packet in flight is a spike, not growth.
"""
from __future__ import annotations

import argparse
import collections
import os
import random
import socket
import statistics
import sys
import threading
import time
from typing import Counter, List, Optional, Set

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _hostilekit import (  # noqa: E402
    CAN_DO, GRAB_JOB_UNIQ, JOB_ASSIGN_UNIQ, JOB_CREATED, MiB, NO_JOB, NOOP, PRE_SLEEP, ROOT,
    SET_CLIENT_ID, SUBMIT_JOB, SUBMIT_JOB_BG, WORK_COMPLETE, WORK_DATA, WORK_FAIL, Closed, Conn,
    Server, header, installSignalHandlers, killStarted, log, mib, packet)

FUNCTION = b"soak"


class Ledger:
    """What was acknowledged and what was done; shared by the threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.acked: Set[bytes] = set()
        self.completions: Counter[bytes] = collections.Counter()
        self.fgSubmitted = self.fgCompleted = self.fgFailed = self.fgTimedOut = 0
        self.workersStarted = self.workersKilled = 0
        self.attacks = 0
        self.errors: List[str] = []

    def error(self, text: str) -> None:
        with self.lock:
            if len(self.errors) < 20:
                self.errors.append(text)


class Soak:
    def __init__(self, server: Server, seconds: float, ledger: Ledger) -> None:
        self.server = server
        self.port = server.port
        self.seconds = seconds
        self.ledger = ledger
        self.stopLoad = threading.Event()     # submitters, clients, attackers
        self.stopKilling = threading.Event()  # workers: no more kills, drain
        self.stopWorkers = threading.Event()
        self.threads: List[threading.Thread] = []

    def start(self, target, *args) -> None:
        t = threading.Thread(target=target, args=args, daemon=True)
        self.threads.append(t)
        t.start()

    # -- clients -----------------------------------------------------------

    def backgroundSubmitter(self, k: int) -> None:
        n = 0
        while not self.stopLoad.is_set():
            try:
                c = Conn(self.port, timeout=30)
                try:
                    for _ in range(200):  # a fresh connection now and then
                        if self.stopLoad.is_set():
                            break
                        batch = []
                        for _ in range(10):
                            batch.append(packet(SUBMIT_JOB_BG, FUNCTION, b"b%d-%d" % (k, n // 2), b"%d" % n))
                            n += 1
                        c.sendRaw(b"".join(batch))
                        for _ in batch:
                            kind, args = c.recv(30)
                            if kind != JOB_CREATED:
                                self.ledger.error(f"background submit answered {kind} {args!r:.80}")
                                continue
                            with self.ledger.lock:
                                self.ledger.acked.add(args[0])
                        time.sleep(0.1)  # about 100 jobs/s per submitter
                finally:
                    c.close()
            except (OSError, Closed, AssertionError) as e:
                self.ledger.error(f"background submitter: {e!r:.100}")
                time.sleep(0.5)

    def foregroundClient(self, k: int) -> None:
        n = 0
        while not self.stopLoad.is_set():
            try:
                c = Conn(self.port, timeout=60)
                try:
                    for _ in range(100):
                        if self.stopLoad.is_set():
                            break
                        n += 1
                        with self.ledger.lock:
                            self.ledger.fgSubmitted += 1
                        c.send(SUBMIT_JOB, FUNCTION, b"f%d-%d" % (k, n), b"fg%d" % n)
                        try:
                            kind, args = c.recv(60)
                            if kind != JOB_CREATED:
                                self.ledger.error(f"foreground submit answered {kind}")
                                continue
                            handle = args[0]
                            while True:
                                kind, args = c.recv(60)
                                if args and args[0] == handle and kind in (WORK_COMPLETE, WORK_FAIL):
                                    break
                            with self.ledger.lock:
                                if kind == WORK_COMPLETE:
                                    self.ledger.fgCompleted += 1
                                else:
                                    self.ledger.fgFailed += 1
                        except socket.timeout:
                            with self.ledger.lock:
                                self.ledger.fgTimedOut += 1
                            break  # the connection's replies are out of step now
                        time.sleep(0.02)  # churn, not a benchmark: about 50 jobs/s per client
                finally:
                    c.close()
            except (OSError, Closed, AssertionError) as e:
                self.ledger.error(f"foreground client: {e!r:.100}")
                time.sleep(0.5)

    # -- workers -----------------------------------------------------------

    def workerPool(self, size: int) -> None:
        """Keeps C{size} workers alive; each lives 1-8 s, then leaves or is killed."""
        live: List[threading.Thread] = []
        rng = random.Random(8)
        while not self.stopWorkers.is_set():
            live = [t for t in live if t.is_alive()]
            while len(live) < size:
                kill = not self.stopKilling.is_set() and rng.random() < 1 / 3
                t = threading.Thread(target=self.worker, args=(rng.uniform(1, 8), kill), daemon=True)
                t.start()
                live.append(t)
                with self.ledger.lock:
                    self.ledger.workersStarted += 1
            time.sleep(0.1)
        for t in live:
            t.join(10)

    def worker(self, lifetime: float, killMidJob: bool) -> None:
        end = time.monotonic() + lifetime
        try:
            c = Conn(self.port, timeout=10)
        except OSError as e:
            self.ledger.error(f"worker connect: {e!r}")
            return
        try:
            c.send(CAN_DO, FUNCTION)
            while not self.stopWorkers.is_set():
                c.send(GRAB_JOB_UNIQ)
                kind, args = c.recv(30)
                while kind not in (JOB_ASSIGN_UNIQ, NO_JOB):
                    kind, args = c.recv(30)
                if kind == NO_JOB:
                    if time.monotonic() > end and not self.stopKilling.is_set():
                        return
                    c.send(PRE_SLEEP)
                    try:
                        while c.recv(5)[0] != NOOP:
                            pass
                    except socket.timeout:
                        pass  # grab again anyway, as worker libraries poll
                    continue
                handle, payload = args[0], args[3]
                if killMidJob and time.monotonic() > end and not self.stopKilling.is_set():
                    c.close(reset=True)  # killed holding the job
                    with self.ledger.lock:
                        self.ledger.workersKilled += 1
                    return
                if payload.endswith(b"7"):
                    c.send(WORK_DATA, handle, b"partial")
                c.send(WORK_COMPLETE, handle, payload)
                with self.ledger.lock:
                    self.ledger.completions[handle] += 1
                if time.monotonic() > end and not killMidJob and not self.stopKilling.is_set():
                    return
        except (OSError, Closed, AssertionError) as e:
            if not self.stopWorkers.is_set():
                self.ledger.error(f"worker: {e!r:.100}")
        finally:
            c.close()

    # -- attackers ---------------------------------------------------------

    def attacker(self) -> None:
        rng = random.Random(21)
        attacks = [self._openClose, self._partialThenClose, self._statusNotRead, self._forged,
                   self._submitAndLeave]
        while not self.stopLoad.is_set():
            try:
                rng.choice(attacks)()
                with self.ledger.lock:
                    self.ledger.attacks += 1
            except (OSError, Closed, AssertionError):
                pass
            self.stopLoad.wait(0.5)

    def _openClose(self) -> None:
        for _ in range(200):
            Conn(self.port, timeout=5).close()

    def _partialThenClose(self) -> None:
        conns = [Conn(self.port, timeout=5) for _ in range(5)]
        for c in conns:
            c.sendRaw(header(SUBMIT_JOB_BG, 16 * MiB) + b"x\0\0" + b"p" * MiB, deadline=time.monotonic() + 2)
        time.sleep(0.5)
        for c in conns:
            c.close()

    def _statusNotRead(self) -> None:
        c = Conn(self.port, timeout=5, rcvbuf=4096)
        c.sendRaw(b"status\n" * 300 + b"workers\n" * 300, deadline=time.monotonic() + 2)
        time.sleep(1)
        c.close()

    def _forged(self) -> None:
        c = Conn(self.port, timeout=5)
        c.send(SET_CLIENT_ID, b"evil\n1 2.3.4.5 forged : x")
        c.send(CAN_DO, b"evil\nforged\t1\t1\t1")
        c.echo()
        c.close()

    def _submitAndLeave(self) -> None:
        c = Conn(self.port, timeout=5)
        c.send(SUBMIT_JOB, FUNCTION, b"", b"left")
        c.expect(JOB_CREATED)
        c.close()


def statusOf(port: int, function: bytes) -> Optional[List[int]]:
    c = Conn(port, timeout=10)
    try:
        for line in c.admin("status").split(b"\n"):
            fields = line.split(b"\t")
            if fields[0] == function and len(fields) >= 4:
                return [int(f) for f in fields[1:4]]
    finally:
        c.close()
    return None


def perInterval(samples: List[tuple], interval: float) -> List[int]:
    """The first RSS sample at or after each multiple of C{interval}, and the last one."""
    out, mark = [], interval
    for t, rss in samples:
        if t >= mark:
            out.append(rss)
            mark += interval
    if samples and (not out or out[-1] is not samples[-1][1]):
        out.append(samples[-1][1])
    return out


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--source", default=ROOT, help="txgear source tree [default: this repository]")
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--workers", type=int, default=4)
    args = parser.parse_args(argv)
    installSignalHandlers()
    seconds = args.minutes * 60
    interval = 15.0 if seconds <= 120 else 60.0
    warmup = min(seconds / 5, 120.0)
    ledger = Ledger()
    server = Server("txgear", source=args.source, store=True, python=args.python)
    log(f"soak: txgear from {args.source}, pid {server.pid}, port {server.port}, SQLite store, "
        f"{args.minutes:g} min")
    soak = Soak(server, seconds, ledger)
    samples: List[tuple] = []
    ok = True
    try:
        soak.start(soak.workerPool, args.workers)
        for k in range(2):
            soak.start(soak.backgroundSubmitter, k)
            soak.start(soak.foregroundClient, k)
        soak.start(soak.attacker)
        start = time.monotonic()
        nextPrint = interval
        while time.monotonic() - start < seconds:
            time.sleep(1)
            if not server.alive():
                raise RuntimeError(f"the server died: {server.outputTail()}")
            elapsed = time.monotonic() - start
            samples.append((elapsed, server.rss()))
            if elapsed >= nextPrint:
                nextPrint += interval
                with ledger.lock:
                    log(f"  {elapsed:5.0f} s  RSS {mib(samples[-1][1])} MiB  bg acked {len(ledger.acked)}"
                        f"  done {len(ledger.completions)}  fg {ledger.fgCompleted}/{ledger.fgSubmitted}"
                        f"  workers {ledger.workersStarted} ({ledger.workersKilled} killed)"
                        f"  attacks {ledger.attacks}")
        # The load stops; workers keep going without kills until every acknowledged job is done.
        soak.stopLoad.set()
        soak.stopKilling.set()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with ledger.lock:
                missing = ledger.acked - set(ledger.completions)
            if not missing:
                break
            time.sleep(0.5)
        time.sleep(1)
        status = statusOf(server.port, FUNCTION)
        soak.stopWorkers.set()
        for t in soak.threads:
            t.join(30)
        with ledger.lock:
            lost = ledger.acked - set(ledger.completions)
            duplicates = sum(1 for h in ledger.acked if ledger.completions[h] > 1)
            acked = len(ledger.acked)
        # Medians: an attacker's packet in flight is a spike, not growth.
        fifth = seconds / 5
        warm = [rss for t, rss in samples if warmup <= t <= warmup + fifth] or [samples[0][1]]
        tail = [rss for t, rss in samples if t >= seconds - fifth] or [samples[-1][1]]
        warmRss = statistics.median(warm)
        tailRss = statistics.median(tail)
        flat = tailRss <= warmRss * 1.10 + 8 * MiB
        stuck = status is not None and (status[0] != 0 or status[1] != 0)
        print(f"soak {args.minutes:g} min against txgear from {args.source}")
        print("RSS per " + ("15 s" if interval == 15 else "minute") + ": "
              + " ".join(mib(rss) for rss in perInterval(samples, interval)) + " MiB")
        print(f"background jobs acknowledged {acked}, lost {len(lost)}, run more than once {duplicates}")
        print(f"foreground jobs submitted {ledger.fgSubmitted}, completed {ledger.fgCompleted}, "
              f"failed {ledger.fgFailed}, timed out {ledger.fgTimedOut}")
        print(f"workers started {ledger.workersStarted}, killed mid-job {ledger.workersKilled}; "
              f"attack rounds {ledger.attacks}")
        print(f"status of {FUNCTION.decode()} at the end (total running workers): {status}")
        print(f"RSS median just after warm-up {mib(warmRss)} MiB, in the last fifth {mib(tailRss)} MiB "
              f"(highest {mib(max(tail))}): "
              + ("flat" if flat else "GROWING"))
        for e in ledger.errors:
            print("  error: " + e)
        ok = not lost and not stuck and flat and ledger.fgTimedOut == 0
        print("verdict: " + ("PASS" if ok else "FAIL")
              + ("" if not lost else f" (lost: {sorted(lost)[:5]!r})"))
    finally:
        soak.stopLoad.set()
        soak.stopKilling.set()
        soak.stopWorkers.set()
        server.stop()
        killStarted()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

"""
The job server's per-packet Python path, driven in-process: no sockets, no
reactor, so a run is repeatable and its instruction count (cachegrind) is
noise-free.

    python benchmarks/server_inproc.py bg --jobs 200000         # scenario 1's shape
    python benchmarks/server_inproc.py unique --rounds 2000     # scenario 6's shape
    valgrind --tool=cachegrind --cache-sim=no --cachegrind-out-file=/dev/null \\
        python benchmarks/server_inproc.py bg --jobs 20000

C{bg}: C{--conns} connections each send reads of C{--depth} pipelined
SUBMIT_JOB_BG packets (100 B payloads, no unique, no workers), answered
once per "turn" (L{GearmanServerFactory.flush}). C{unique}: C{--clients}
clients each submit the same unique per round, one worker grabs it, its
WORK_COMPLETE reaches every client. Prints the seconds per job (or per
submission); with C{--baseline} it only sets up (the reads too), so that an
instruction count can subtract the start-up.
"""
from __future__ import annotations

import argparse
import gc
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet.task import Clock  # noqa: E402
from twisted.internet.testing import StringTransport  # noqa: E402

from txgear._packet import PacketType, encodeRequest  # noqa: E402
from txgear.server._protocol import GearmanServerFactory  # noqa: E402
from txgear.server._state import JobServerState  # noqa: E402


def connect(factory: GearmanServerFactory) -> tuple:
    protocol = factory.buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    return protocol, transport


def runBackground(args: argparse.Namespace) -> float:
    state = JobServerState(clock=Clock(), handlePrefix=b"H:bench")
    factory = GearmanServerFactory(state)
    conns = [connect(factory) for _ in range(args.conns)]
    payload = b"x" * args.size
    # The same few reads over and over: the harness allocates nothing while
    # it runs (on PyPy, reads kept alive would be marked by every major
    # collection).
    reads = [b"".join(encodeRequest(PacketType.SUBMIT_JOB_BG, b"bench_bg", b"",
                                    b"%08d" % i + payload[8:]) for i in range(count))
             for count in (args.depth, args.jobs % args.depth)]
    total = args.jobs
    if args.baseline:
        return 0.0
    started = time.perf_counter()
    full, rest = reads
    for index in range(total // args.depth + (1 if rest else 0)):
        protocol, transport = conns[index % len(conns)]
        protocol.dataReceived(full if (index + 1) * args.depth <= total else rest)
        if index % len(conns) == len(conns) - 1:
            state.clock.advance(0)  # the end of a reactor turn: the replies leave
            for _, t in conns:
                t.clear()
    state.clock.advance(0)
    elapsed = time.perf_counter() - started
    assert len(state.jobs) == total, len(state.jobs)
    return elapsed / max(total, 1)


def runUnique(args: argparse.Namespace) -> float:
    clock = Clock()
    state = JobServerState(clock=clock, handlePrefix=b"H:bench")
    factory = GearmanServerFactory(state)
    clients = [connect(factory) for _ in range(args.clients)]
    worker, workerTransport = connect(factory)
    worker.dataReceived(encodeRequest(PacketType.CAN_DO, b"bench_unique"))
    payload = b"x" * args.size
    rounds = 0 if args.baseline else args.rounds
    grab = encodeRequest(PacketType.GRAB_JOB_UNIQ)
    started = time.perf_counter()
    for number in range(rounds):
        submit = encodeRequest(PacketType.SUBMIT_JOB, b"bench_unique", b"storm-%d" % number, payload)
        for protocol, _ in clients:
            protocol.dataReceived(submit)
        clock.advance(0)
        worker.dataReceived(grab)
        clock.advance(0)
        assigned = workerTransport.value()
        workerTransport.clear()
        handle = assigned[12:].split(b"\0", 1)[0]
        worker.dataReceived(encodeRequest(PacketType.WORK_COMPLETE, handle, payload))
        clock.advance(0)
        for _, transport in clients:
            transport.clear()
    elapsed = time.perf_counter() - started
    assert not state.jobs
    return elapsed / max(rounds * args.clients, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("mode", choices=["bg", "unique"])
    ap.add_argument("--jobs", type=int, default=200000)
    ap.add_argument("--conns", type=int, default=4)
    ap.add_argument("--depth", type=int, default=100)
    ap.add_argument("--size", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=2000)
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=1, help="runs (fresh state each); prints each")
    ap.add_argument("--baseline", action="store_true", help="set up only (for instruction counts)")
    ap.add_argument("--no-gc", action="store_true", help="cyclic collector off (to see its share)")
    args = ap.parse_args()
    if hasattr(gc, "set_threshold"):
        gc.set_threshold(20000, 50, 100)  # as twistd gearman (txgear/tap.py)
    if args.no_gc:
        gc.disable()
    run = runBackground if args.mode == "bg" else runUnique
    jobs = args.jobs if args.mode == "bg" else args.rounds * args.clients
    for _ in range(args.repeat):
        collections = _PyPyCollections()
        perJob = run(args)
        print(f"{args.mode}: {perJob * 1e6:.3f} us per job{collections.report(jobs)}")


class _PyPyCollections:
    """On PyPy, the time its collector took (minor collections, major steps)."""

    def __init__(self) -> None:
        self.minor = [0, 0.0]
        self.major = [0, 0.0]
        hooks = getattr(gc, "hooks", None)
        if hooks is not None:
            hooks.on_gc_minor = self._minor
            hooks.on_gc_collect_step = self._major

    def _minor(self, stats: object) -> None:
        self.minor[0] += stats.count  # type: ignore[attr-defined]
        self.minor[1] += stats.duration  # type: ignore[attr-defined]

    def _major(self, stats: object) -> None:
        self.major[0] += stats.count  # type: ignore[attr-defined]
        self.major[1] += stats.duration  # type: ignore[attr-defined]

    def report(self, jobs: int) -> str:
        if not hasattr(gc, "hooks"):
            return ""
        return (f" (collector: {self.minor[0]} minor, {self.minor[1] * 1e6 / jobs:.3f} us per job;"
                f" {self.major[0]} major steps, {self.major[1] * 1e6 / jobs:.3f} us per job)")


if __name__ == "__main__":
    main()

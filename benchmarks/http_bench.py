#!/usr/bin/env python3
"""
HTTP submit throughput of txgear's job server, as a ratio to the binary
protocol in the same run against the same server process (one Gearman
--port, one --http port, --queue memory):

  - foreground: --clients clients at once, each submitting one job at a
    time and waiting for its result (binary: SUBMIT_JOB on one connection;
    HTTP: POST /v1/functions/bench/jobs on one keep-alive connection), run
    by --workers raw-socket workers that echo the payload;
  - background: the same clients submitting background jobs (binary:
    SUBMIT_JOB_BG until JOB_CREATED; HTTP: POST ...?background=true until
    202), no worker (the jobs stay queued, in memory).

Payloads are --size bytes (100). Clients and workers are threads of this
process (Python sockets and http.client), so they share its CPU: the
figures are of the whole loop, as a user of each protocol from Python
would see it. Run from the source tree:

    PYTHONPATH=. python benchmarks/http_bench.py [--seconds 5] [--clients 4]

Prints one line per measurement and a JSON summary line.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import struct
import sys
import tempfile
import threading
import time
from typing import Callable, Dict, List, Tuple

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests._peers import freePort, txgearProcess, waitForPort  # noqa: E402

SUBMIT_JOB, SUBMIT_JOB_BG, JOB_CREATED = 7, 18, 8
CAN_DO, PRE_SLEEP, NOOP, NO_JOB = 1, 4, 6, 10
GRAB_JOB_UNIQ, JOB_ASSIGN_UNIQ, WORK_COMPLETE = 30, 31, 13


def packet(kind: int, *args: bytes) -> bytes:
    body = b"\0".join(args)
    return b"\0REQ" + struct.pack(">II", kind, len(body)) + body


class Connection:
    """A blocking binary-protocol connection."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = b""

    def read(self) -> Tuple[int, bytes]:
        while True:
            if len(self.buffer) >= 12:
                kind, size = struct.unpack(">II", self.buffer[4:12])
                if len(self.buffer) >= 12 + size:
                    body = self.buffer[12:12 + size]
                    self.buffer = self.buffer[12 + size:]
                    return kind, body
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("server closed the connection")
            self.buffer += data

    def close(self) -> None:
        self.sock.close()


def worker(port: int, stop: threading.Event) -> None:
    """Echo every job of 'bench' until C{stop}."""
    connection = Connection(port)
    connection.sock.settimeout(0.5)
    connection.sock.sendall(packet(CAN_DO, b"bench"))
    grab = packet(GRAB_JOB_UNIQ)
    connection.sock.sendall(grab)
    while not stop.is_set():
        try:
            kind, body = connection.read()
        except socket.timeout:
            continue
        if kind == JOB_ASSIGN_UNIQ:
            handle, _, _, payload = body.split(b"\0", 3)
            connection.sock.sendall(packet(WORK_COMPLETE, handle, payload) + grab)
        elif kind == NO_JOB:
            connection.sock.sendall(packet(PRE_SLEEP))
        elif kind == NOOP:
            connection.sock.sendall(grab)
    connection.close()


def binaryClient(port: int, background: bool, payload: bytes) -> Callable[[], None]:
    connection = Connection(port)
    request = packet(SUBMIT_JOB_BG if background else SUBMIT_JOB, b"bench", b"", payload)

    def one() -> None:
        connection.sock.sendall(request)
        kind, _ = connection.read()
        assert kind == JOB_CREATED, kind
        if not background:
            kind, body = connection.read()
            assert kind == WORK_COMPLETE and body.endswith(payload), kind
    return one


def httpClient(port: int, background: bool, payload: bytes) -> Callable[[], None]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    path = "/v1/functions/bench/jobs" + ("?background=true" if background else "?wait=30")

    def one() -> None:
        connection.request("POST", path, body=payload)
        response = connection.getresponse()
        body = response.read()
        expected = 202 if background else 200
        assert response.status == expected, (response.status, body)
        assert background or body == payload
    return one


def measure(makeClient: Callable[[], Callable[[], None]], clients: int,
            seconds: float) -> float:
    """Jobs per second of C{clients} threads looping for C{seconds}."""
    calls = [makeClient() for _ in range(clients)]
    counts = [0] * clients
    errors: List[BaseException] = []
    start = threading.Barrier(clients + 1)
    deadline = [0.0]

    def loop(index: int) -> None:
        start.wait()
        one = calls[index]
        try:
            while time.monotonic() < deadline[0]:
                one()
                counts[index] += 1
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    began = time.monotonic()
    deadline[0] = began + seconds
    start.wait()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return sum(counts) / (time.monotonic() - began)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--size", type=int, default=100)
    args = parser.parse_args()
    payload = os.urandom(args.size // 2).hex().encode()[:args.size].ljust(args.size, b"x")
    httpPort = freePort()
    server = txgearProcess(extra=["--queue", "memory", "--http",
                                  f"tcp:{httpPort}:interface=127.0.0.1"],
                           cwd=tempfile.mkdtemp(prefix="http-bench-"))
    server.start()
    results: Dict[str, float] = {}
    stop = threading.Event()
    workers = [threading.Thread(target=worker, args=(server.port, stop))
               for _ in range(args.workers)]
    try:
        waitForPort(httpPort)
        for thread in workers:
            thread.start()
        for mode, background in (("foreground", False), ("background", True)):
            if background:
                stop.set()
                for thread in workers:
                    thread.join()
            binary = measure(lambda: binaryClient(server.port, background, payload),
                             args.clients, args.seconds)
            overHttp = measure(lambda: httpClient(httpPort, background, payload),
                               args.clients, args.seconds)
            results[f"{mode}_binary_jobs_per_s"] = round(binary)
            results[f"{mode}_http_jobs_per_s"] = round(overHttp)
            results[f"{mode}_http_ratio"] = round(overHttp / binary, 2)
            print(f"{mode}: binary {binary:,.0f} jobs/s, HTTP {overHttp:,.0f} jobs/s, "
                  f"HTTP/binary {overHttp / binary:.2f}", flush=True)
    finally:
        stop.set()
        server.stop()
    print(json.dumps(results))


if __name__ == "__main__":
    main()

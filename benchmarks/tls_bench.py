#!/usr/bin/env python3
"""
The cost of TLS on txgear's job server, as ratios to plain TCP in the same
run against the same server process (one plain --port, one --tls-port with
client certificates required, made by a throwaway CA):

  - connections/s: connect (+ TLS handshake, mutual), one ECHO round trip,
    close; --threads clients at once;
  - echo throughput with 100 B and 64 KiB payloads: one connection, ECHO
    requests pipelined in batches (--depth requests, at most 512 KiB), in MB/s
    of payload (the server reads, decodes, answers, writes: everything but
    the job queue).

Run from the source tree:

    PYTHONPATH=. python benchmarks/tls_bench.py [--seconds 5] [--threads 2]

Prints one line per measurement and a JSON summary line.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import ssl
import struct
import sys
import tempfile
import threading
import time
from typing import Any, Callable, Dict, List, Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests._peers import freePort, txgearProcess, waitForPort  # noqa: E402
from tests._certs import Authority  # noqa: E402

ECHO_REQ, ECHO_RES = 16, 17


def echoRequest(payload: bytes) -> bytes:
    return b"\0REQ" + struct.pack(">II", ECHO_REQ, len(payload)) + payload


def connect(port: int, context: Optional[ssl.SSLContext]) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if context is not None:
        sock = context.wrap_socket(sock, server_hostname="localhost")
    return sock


def readExactly(sock: socket.socket, count: int) -> None:
    """Read C{count} bytes (the replies' length is known: no decoding needed)."""
    view = memoryview(bytearray(min(count, 1 << 20)))
    while count:
        got = sock.recv_into(view, min(count, len(view)))
        if not got:
            raise ConnectionError("server closed the connection")
        count -= got


def connectionsPerSecond(port: int, context: Optional[ssl.SSLContext], seconds: float,
                         threads: int) -> float:
    request = echoRequest(b"ping")
    counts = [0] * threads
    stop = time.monotonic() + seconds

    def run(index: int) -> None:
        while time.monotonic() < stop:
            with connect(port, context) as sock:
                sock.sendall(request)
                readExactly(sock, len(request))
            counts[index] += 1

    workers = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    started = time.monotonic()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return sum(counts) / (time.monotonic() - started)


def echoThroughput(port: int, context: Optional[ssl.SSLContext], size: int, seconds: float,
                   depth: int) -> float:
    """
    Payload MB/s echoed through one pipelined connection: a batch of
    C{depth} requests (at most 512 KiB, so that the batch fits in the
    buffers between the two sides) is sent, then its replies are read. One
    thread: an SSL socket must not be read and written at once.
    """
    depth = max(1, min(depth, (512 * 1024) // size))
    payload = os.urandom(size)
    batch = echoRequest(payload) * depth
    done = 0
    with connect(port, context) as sock:
        stop = time.monotonic() + seconds
        started = time.monotonic()
        while time.monotonic() < stop:
            sock.sendall(batch)
            readExactly(sock, len(batch))
            done += depth
        elapsed = time.monotonic() - started
    return done * size / elapsed / 1e6


def measure(name: str, plain: Callable[[], float], tls: Callable[[], float],
            unit: str, results: Dict[str, Any]) -> None:
    p, t = plain(), tls()
    results[name] = {"plain": round(p, 1), "tls": round(t, 1), "ratio": round(t / p, 3)}
    print(f"{name:24} plain {p:10.1f} {unit:8} TLS {t:10.1f} {unit:8} TLS/plain {t / p:.2f}",
          flush=True)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="per measurement")
    parser.add_argument("--threads", type=int, default=2, help="clients connecting at once")
    parser.add_argument("--depth", type=int, default=64, help="pipelined echoes per batch")
    args = parser.parse_args(argv)

    directory = tempfile.mkdtemp(prefix="txgear-tls-bench-")
    ca = Authority(os.path.join(directory, "ca"))
    server, client = ca.serverCertificate(), ca.issue("client-app")
    plainPort, tlsPort = freePort(), freePort()
    process = txgearProcess(plainPort, cwd=directory, extra=[
        "--queue", "memory", "--log-level", "warn",
        "--tls-port", f"tcp:{tlsPort}:interface=127.0.0.1", "--tls-cert", server.certPath,
        "--tls-key", server.keyPath, "--tls-ca", ca.certPath])
    process.start()
    try:
        waitForPort(tlsPort)
        context = ssl.create_default_context(cafile=ca.certPath)
        context.load_cert_chain(client.certPath, client.keyPath)
        results: Dict[str, Any] = {}
        seconds, threads, depth = args.seconds, args.threads, args.depth
        measure("connections (+ECHO)",
                lambda: connectionsPerSecond(plainPort, None, seconds, threads),
                lambda: connectionsPerSecond(tlsPort, context, seconds, threads),
                "conn/s", results)
        for size, label in ((100, "echo 100 B"), (64 * 1024, "echo 64 KiB")):
            measure(label,
                    lambda: echoThroughput(plainPort, None, size, seconds, depth),
                    lambda: echoThroughput(tlsPort, context, size, seconds, depth),
                    "MB/s", results)
        print(json.dumps({"tls_bench": results, "tls_version": _version(tlsPort, context)}))
    finally:
        process.stop()
    return 0


def _version(port: int, context: ssl.SSLContext) -> Optional[str]:
    with connect(port, context) as sock:
        return sock.version()  # type: ignore[attr-defined,no-any-return]


if __name__ == "__main__":
    sys.exit(main())

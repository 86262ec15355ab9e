#!/usr/bin/env python3
"""
Self-test of loadgen's correctness checks: run it through a fault-injecting
proxy in front of gearmand and require it to notice each fault (exit status 2
with a clear message), and to pass (exit 0) through a clean proxy.

    python3 benchmarks/selftest.py

Stdlib only. Faults (each applied once, to one server->peer packet):
corrupt a result byte, duplicate a WORK_COMPLETE, drop a WORK_COMPLETE,
duplicate a JOB_ASSIGN_UNIQ during a drain, hand the unique-storm clients
two different handles.
"""
from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import threading
import time
from typing import Callable, List, Optional, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import run as bench  # noqa: E402  (build helpers, free ports)

HEADER = struct.Struct(">4sII")
JOB_CREATED, WORK_COMPLETE, JOB_ASSIGN_UNIQ = 8, 13, 31

# A fault: (packet type, function(body) -> list of bodies to send instead)
Fault = Tuple[int, Callable[[bytes], List[bytes]]]


class FaultProxy:
    """Forward 127.0.0.1:port -> upstream; apply the fault to the Nth matching packet."""

    def __init__(self, upstream: int, fault: Optional[Fault], nth: int = 50):
        self.upstream = upstream
        self.fault = fault
        self.nth = nth
        self.seen = 0
        self.applied = False
        self.lock = threading.Lock()
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(512)
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                down, _ = self.listener.accept()
            except OSError:
                return
            try:
                up = socket.create_connection(("127.0.0.1", self.upstream))
            except OSError:
                down.close()
                continue
            for s in (up, down):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=self._raw, args=(down, up), daemon=True).start()
            threading.Thread(target=self._packets, args=(up, down), daemon=True).start()

    @staticmethod
    def _raw(src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def _mangle(self, kind: int, body: bytes) -> List[bytes]:
        if self.fault is None or kind != self.fault[0]:
            return [body]
        with self.lock:
            self.seen += 1
            if self.applied or self.seen < self.nth:
                return [body]
            self.applied = True
        return self.fault[1](body)

    def _packets(self, src: socket.socket, dst: socket.socket) -> None:
        buf = bytearray()
        try:
            first = src.recv(65536)
            if not first:
                return
            if first[:1] != b"\0":          # admin text: pass through untouched
                dst.sendall(first)
                return self._raw(src, dst)
            buf += first
            while True:
                out = []
                off = 0
                while len(buf) - off >= 12:
                    magic, kind, size = HEADER.unpack_from(buf, off)
                    if len(buf) - off - 12 < size:
                        break
                    body = bytes(buf[off + 12:off + 12 + size])
                    off += 12 + size
                    for b in self._mangle(kind, body):
                        out.append(HEADER.pack(magic, kind, len(b)) + b)
                del buf[:off]
                if out:
                    dst.sendall(b"".join(out))
                data = src.recv(65536)
                if not data:
                    break
                buf += data
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


def flipLastByte(body: bytes) -> List[bytes]:
    return [body[:-1] + bytes([body[-1] ^ 0x55])]


def otherHandle(body: bytes) -> List[bytes]:
    return [body + b"x"]


CASES = [
    # name, loadgen mode+args, fault, expected text in stderr (None: must pass)
    ("clean echo", ["echo", "--jobs", "3000"], None, None),
    ("clean drain", ["drain", "--jobs", "3000"], None, None),
    ("clean unique", ["unique", "--rounds", "100", "--clients", "20"], None, None),
    ("clean bgsubmit", ["bgsubmit", "--jobs", "3000"], None, None),
    ("corrupted result", ["echo", "--jobs", "3000"], (WORK_COMPLETE, flipLastByte), "corrupted result"),
    ("duplicated completion", ["echo", "--jobs", "3000"], (WORK_COMPLETE, lambda b: [b, b]), "duplicate completion"),
    ("lost completion", ["echo", "--jobs", "3000", "--timeout", "3"], (WORK_COMPLETE, lambda b: []), "stalled"),
    ("duplicated assignment", ["drain", "--jobs", "3000"], (JOB_ASSIGN_UNIQ, lambda b: [b, b]), "delivered twice"),
    ("corrupted workload", ["drain", "--jobs", "3000"], (JOB_ASSIGN_UNIQ, flipLastByte), "corrupted"),
    ("duplicated handle", ["bgsubmit", "--jobs", "3000"], (JOB_CREATED, lambda b: [b, b]), "duplicate job handle"),
    ("uncoalesced unique", ["unique", "--rounds", "100", "--clients", "20"], (JOB_CREATED, otherHandle), "not coalesced"),
]


def main() -> int:
    bench.buildLoadgen(os.environ.get("CC", "cc"))
    failures = 0
    for name, args, fault, expect in CASES:
        port = bench.freePort()
        gm = subprocess.Popen([bench.GEARMAND, "--listen=127.0.0.1", f"--port={port}", "--threads=0",
                               "--log-file=none", f"--pid-file=/tmp/selftest-gearmand-{port}.pid"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        proxy = None
        try:
            for _ in range(100):
                try:
                    socket.create_connection(("127.0.0.1", port)).close()
                    break
                except OSError:
                    time.sleep(0.05)
            proxy = FaultProxy(port, fault)
            # distinct function per case so leftovers of one case never matter
            fn = "selftest_" + name.replace(" ", "_")
            p = subprocess.run([bench.LOADGEN] + args + ["--port", str(proxy.port), "--function", fn],
                               capture_output=True, text=True, timeout=120)
            err = p.stderr.strip()
            if expect is None:
                ok = p.returncode == 0
            else:
                ok = p.returncode == 2 and expect in err
            print(f"{'ok  ' if ok else 'FAIL'} {name}: exit {p.returncode} {err or p.stdout.strip()}")
            failures += not ok
        finally:
            if proxy is not None:
                proxy.listener.close()
            gm.terminate()
            gm.wait()
    print("all loadgen checks behave" if not failures else f"{failures} case(s) misbehaved")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

"""Tests of L{txgear.server._reclaim}: the server gives memory back to the system."""
from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from txgear.server import _reclaim

_glibcCPython = (platform.python_implementation() == "CPython" and sys.platform.startswith("linux")
                 and platform.libc_ver()[0] == "glibc")


@pytest.mark.skipif(not _glibcCPython, reason="tunes glibc's malloc under CPython only")
def test_largeBuffersAreMappedOnTheirOwnOnceTuned():
    """
    Untuned, glibc raises its mmap threshold each time a large block is freed,
    so after a burst of large packets later ones come from the heap, which
    keeps their memory once freed; tuned, a 1 MiB buffer is still mapped on
    its own (and unmapped when freed). Asked of glibc itself (mallinfo2), in a
    fresh interpreter: the tuning is per process.
    """
    script = """
import ctypes, sys
sys.path.insert(0, %r)
from txgear.server._reclaim import tuneAllocator

class Info(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Info
if sys.argv[1] == "tuned":
    assert tuneAllocator()
burst = [bytearray(4 << 20) for _ in range(4)]
del burst  # raises the untuned threshold above 4 MiB
mapped = libc.mallinfo2().hblkhd
buffer = bytearray(1 << 20)
print(libc.mallinfo2().hblkhd - mapped)
""" % (os.path.dirname(os.path.dirname(os.path.abspath(__file__))),)
    mapped = {}
    for mode in ("plain", "tuned"):
        out = subprocess.run([sys.executable, "-c", script, mode], capture_output=True, text=True,
                             timeout=60, check=True)
        mapped[mode] = int(out.stdout.strip())
    assert mapped["plain"] == 0 and mapped["tuned"] >= 1 << 20, mapped


def test_reclaimerFitsTheInterpreter():
    reclaim = _reclaim.reclaimer()
    if platform.python_implementation() == "PyPy" or _glibcCPython:
        assert reclaim is not None
        reclaim()  # callable with no argument, returns nothing
    else:
        assert reclaim is None

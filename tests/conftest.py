"""pytest configuration shared by every test module."""
from __future__ import annotations

import os
import sys

# PyPy sizes its nursery at half the "cache size" /proc/cpuinfo reports, on
# some processors the whole last-level cache (a 150 MB nursery for 300 MB):
# the servers the tests start on PyPy then hold that much more, which the
# memory bounds of the hostile tests would measure instead of the server.
# Set as docs/server.md advises, for every PyPy process the tests start.
if sys.implementation.name == "pypy":
    os.environ.setdefault("PYPY_GC_NURSERY", "1MB")

# The tests import the package from the source tree, installed or not.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

"""
A fixture giving each store a real server can keep its jobs in: SQLite, and
PostgreSQL and Redis on loopback (skipped, or failed under
C{TXGEAR_REQUIRE_PEERS=1}, when absent), each fresh and removed afterwards.
The store descriptions come from the chaos harness (benchmarks/_chaoskit.py),
so that there is one copy.
"""
from __future__ import annotations

import os
import sys
from typing import Any, Iterator

import pytest

from tests._peers import SOURCE_ROOT, requirePeer
from tests.test_integration_durability import _postgresAvailable, _redisAvailable

sys.path.append(os.path.join(SOURCE_ROOT, "benchmarks"))

import _chaoskit  # noqa: E402

STORES = ["sqlite", "postgresql", "redis"]


@pytest.fixture(params=STORES)
def queue(request: Any, tmp_path: Any) -> Iterator[str]:
    """A C{--queue} value for a fresh store of each kind."""
    if request.param == "postgresql":
        requirePeer(_postgresAvailable(), "PostgreSQL at 127.0.0.1:5432 (database test)")
    elif request.param == "redis":
        requirePeer(_redisAvailable(), "Redis at 127.0.0.1:6379")
    description, remove = _chaoskit.storeSpec(request.param, str(tmp_path))
    try:
        yield description
    finally:
        remove()


__all__ = ["STORES", "queue"]

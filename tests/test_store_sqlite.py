"""
The SQLite store's log layout (schema version 3): one row per batch, replay,
compaction, crashes and refused files. The behaviour every store shares is in
L{tests.test_store_contract}.
"""
from __future__ import annotations

import os
import random
import sqlite3
import subprocess
import sys
import textwrap
from typing import Any, Dict, List, Tuple

import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.logger import capturedLogs

from tests.test_store_contract import (SQLiteBackend, _digest, job, noThreadLeft,  # noqa: F401
                                       reload, sqliteBackend, wait)
from txgear.errors import StoreSchemaError
from txgear.jobs import Priority, StoredJob
from txgear.store import _sqlite
from txgear.store._record import packBatch, packKeys, recordOf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def rows(path: str) -> List[Tuple[int, int]]:
    """The log of a closed store: (kind, entries) per row, in order."""
    with sqlite3.connect(path) as connection:
        found = []
        for kind, data in connection.execute("SELECT kind, data FROM log ORDER BY seq"):
            if kind == _sqlite.REMOVES:
                found.append((kind, len(data) // 8))
            else:
                found.append((kind, len(_sqlite.unpackBatch(0, data))))
    connection.close()
    return found


def liveRows(store: Any) -> defer.Deferred:
    """The log of an open store, (kind, bytes) per row, read in its own thread."""
    return store._callInThread(lambda: store._connection.execute(
        "SELECT kind, length(data) FROM log ORDER BY seq").fetchall())


# One row per batch ------------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_burstInOneTurnIsOneRow(sqliteBackend: SQLiteBackend) -> Any:
    """
    A burst of adds issued in one turn is one transaction of one row; the
    next turn's writes are the next row(s): removes apart from adds.
    """
    store = sqliteBackend.make()
    yield wait(store.open())
    yield wait(defer.gatherResults([store.add(job(n)) for n in range(1, 5001)]))
    yield wait(defer.gatherResults([store.addMany([job(n) for n in range(5001, 5401)]),
                                    store.add(job(5401)),
                                    store.remove(job(3)), store.remove(job(4))]))
    yield wait(store.addMany([job(n) for n in range(5402, 5802)]))
    yield wait(store.close())
    assert rows(sqliteBackend.path) == [(0, 5000), (1, 2), (0, 401), (0, 400)]
    loaded = yield reload(sqliteBackend)
    assert [j.key for j in loaded] == [n for n in range(1, 5802) if n not in (3, 4)]


@pytest_twisted.inlineCallbacks
def test_emptyBatchWritesNothing(sqliteBackend: SQLiteBackend) -> Any:
    store = sqliteBackend.make()
    yield wait(store.open())
    yield wait(store.addMany([]))
    yield wait(store.close())
    assert rows(sqliteBackend.path) == []


@pytest_twisted.inlineCallbacks
def test_largeBatchIsSplitIntoRows(sqliteBackend: SQLiteBackend, monkeypatch: Any) -> Any:
    """Adds that pack to more than the row bound go in several rows of one batch."""
    monkeypatch.setattr(_sqlite, "_BATCH_ROW_BYTES", 10000)
    store = sqliteBackend.make()
    yield wait(store.open())
    jobs = [job(n, payload=os.urandom(3000)) for n in range(1, 11)]
    yield wait(store.addMany(jobs + [job(4, payload=b"last wins")]))
    yield wait(store.close())
    found = rows(sqliteBackend.path)
    assert len(found) > 1 and sum(count for _, count in found) == 11
    assert (yield reload(sqliteBackend)) == jobs[:3] + [job(4, payload=b"last wins")] + jobs[4:]


# Replay ---------------------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_replayOfInterleavedWrites(sqliteBackend: SQLiteBackend) -> Any:
    """
    Adds, removes and re-adds of the same keys, within one batch and across
    batches, replay to what was written last.
    """
    store = sqliteBackend.make()
    yield wait(store.open())
    turns: List[List[Tuple[str, StoredJob]]] = [
        [("add", job(1)), ("add", job(2)), ("add", job(3)), ("add", job(7))],
        # Removed then re-added in one batch: stored, with the new record.
        [("remove", job(2)), ("add", job(2, payload=b"two again"))],
        # Added then removed in one batch: gone.
        [("add", job(4)), ("remove", job(4))],
        # Removed in one batch, re-added in a later one.
        [("remove", job(1))],
        [("add", job(1, Priority.HIGH, payload=b"one again"))],
        # Add, remove, add, remove: gone, though stored before the batch.
        [("add", job(3, payload=b"x")), ("remove", job(3)), ("add", job(3)), ("remove", job(3))],
        # Twice in a batch without removes: the later record.
        [("add", job(5)), ("add", job(5, payload=b"five again"))],
        # Removing an unknown key, then adding it.
        [("remove", job(6)), ("add", job(6))],
        # Removed across batches, then re-added in the batch that removes another.
        [("remove", job(7))],
        [("add", job(7, Priority.LOW)), ("remove", job(5))],
    ]
    for writes in turns:
        yield wait(defer.gatherResults([
            store.add(j) if what == "add" else store.remove(j) for what, j in writes]))
    yield wait(store.close())
    expected = [job(1, Priority.HIGH, payload=b"one again"), job(2, payload=b"two again"),
                job(6), job(7, Priority.LOW)]
    assert (yield reload(sqliteBackend)) == expected
    # The same after compaction (at open, with a threshold of 0).
    store = sqliteBackend.make(compactThreshold=0)
    assert (yield wait(store.open())) == expected
    yield wait(store.close())
    assert rows(sqliteBackend.path) == [(0, 4)]
    assert (yield reload(sqliteBackend)) == expected


@pytest_twisted.inlineCallbacks
def test_randomInterleavingsMatchAModel(sqliteBackend: SQLiteBackend) -> Any:
    """
    Random adds and removes over a few keys, in batches of random sizes, with
    compaction on, reload to what a dict says, at every reopen.
    """
    rng = random.Random(20261126)
    model: Dict[int, StoredJob] = {}
    version = 0
    for reopen in range(4):
        store = sqliteBackend.make(compactThreshold=rng.choice([0, 10, 50]))
        loaded = yield wait(store.open())
        assert loaded == sorted(model.values(), key=lambda j: (j.priority, j.key))
        for batch in range(30):
            results = []
            for _ in range(rng.randint(1, 40)):
                key = rng.randint(1, 25)
                if rng.random() < 0.55:
                    version += 1
                    j = job(key, rng.choice(list(Priority)), payload=b"v%d" % version)
                    model[key] = j
                    results.append(store.add(j) if rng.random() < 0.5 else store.addMany([j]))
                else:
                    model.pop(key, None)
                    results.append(store.remove(job(key)))
            yield wait(defer.gatherResults(results))
        yield wait(store.close())
    assert (yield reload(sqliteBackend)) == sorted(model.values(), key=lambda j: (j.priority, j.key))


# Compaction -----------------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_compactionAtOpen(sqliteBackend: SQLiteBackend) -> Any:
    """
    Opening a log with more dead entries than live ones and than the
    threshold rewrites it as the live jobs, in rows of at most 1,000, in load
    order; what loads is the same before and after.
    """
    store = sqliteBackend.make()
    yield wait(store.open())
    jobs = [job(n, (Priority.LOW, Priority.HIGH, Priority.NORMAL)[n % 3]) for n in range(1, 3001)]
    yield wait(store.addMany(jobs))
    for start in range(1, 3001, 500):
        yield wait(defer.gatherResults([store.remove(job(n)) for n in range(start, start + 500)
                                        if n % 5]))
    yield wait(store.close())
    before = rows(sqliteBackend.path)
    assert sum(count for _, count in before) == 3000 + 2400
    expected = yield reload(sqliteBackend)
    assert len(expected) == 600 and rows(sqliteBackend.path) == before
    # Not worthwhile below the threshold.
    store = sqliteBackend.make(compactThreshold=5000)
    yield wait(store.open())
    yield wait(store.close())
    assert rows(sqliteBackend.path) == before
    store = sqliteBackend.make(compactThreshold=1000)
    assert (yield wait(store.open())) == expected
    yield wait(store.close())
    assert rows(sqliteBackend.path) == [(0, 600)]
    assert (yield reload(sqliteBackend)) == expected
    with sqlite3.connect(sqliteBackend.path) as connection:
        data = b"".join(row[0] for row in connection.execute("SELECT data FROM log ORDER BY seq"))
    connection.close()
    assert data == packBatch([recordOf(j) for j in expected])


@pytest_twisted.inlineCallbacks
def test_compactionWhileRunning(sqliteBackend: SQLiteBackend) -> Any:
    """
    A write that leaves more dead entries than live ones (and than the
    threshold) is followed, before the next batch, by a compaction; the
    store keeps working and reloads the same jobs.
    """
    store = sqliteBackend.make(compactThreshold=500)
    yield wait(store.open())
    jobs = [job(n) for n in range(1, 2501)]
    yield wait(store.addMany(jobs[:1500]))
    yield wait(store.addMany(jobs[1500:]))
    # 2,500 live: removing 800 leaves 1,700 live, 1,600 dead: not yet.
    yield wait(defer.gatherResults([store.remove(j) for j in jobs[:800]]))
    assert len((yield liveRows(store))) == 3
    # 1,000 live, 3,000 dead: compacted, in rows of at most 1,000 records.
    yield wait(defer.gatherResults([store.remove(j) for j in jobs[800:1500]]))
    assert [kind for kind, _ in (yield liveRows(store))] == [0]
    assert (store._logged, store._live) == (1000, 1000)
    # The next batches append after the compacted rows.
    yield wait(store.add(job(5000)))
    yield wait(store.remove(jobs[1500]))
    assert [kind for kind, _ in (yield liveRows(store))] == [0, 0, 1]
    yield wait(store.close())
    assert (yield reload(sqliteBackend)) == jobs[1501:] + [job(5000)]


@pytest_twisted.inlineCallbacks
def test_compactionFailureIsLoggedAndHarmless(sqliteBackend: SQLiteBackend,
                                              monkeypatch: Any) -> Any:
    """
    A compaction that fails (here: the disk fills up while it writes) rolls
    back, logs a warning, leaves the writes alone and waits for more entries
    before trying again.
    """
    def full(*args: Any) -> Any:
        raise sqlite3.OperationalError("database or disk is full")
        yield b""

    store = sqliteBackend.make(compactThreshold=100)
    yield wait(store.open())
    yield wait(store.addMany([job(n) for n in range(1, 301)]))
    monkeypatch.setattr(_sqlite, "packBatches", full)
    with capturedLogs() as events:
        yield wait(defer.gatherResults([store.remove(job(n)) for n in range(1, 201)]))
        yield wait(store.add(job(1000)))
    warnings = [e for e in events if "Compacting" in e.get("log_format", "")]
    assert len(warnings) == 1 and "disk is full" in warnings[0]["error"]
    assert len((yield liveRows(store))) == 3
    # Not retried at once: only after another threshold's worth of entries.
    with capturedLogs() as events:
        yield wait(store.remove(job(201)))
    assert not [e for e in events if "Compacting" in e.get("log_format", "")]
    monkeypatch.undo()
    yield wait(defer.gatherResults([store.remove(job(n)) for n in range(202, 302)]))
    yield wait(store.add(job(1001)))
    assert [kind for kind, _ in (yield liveRows(store))] == [0, 0]
    yield wait(store.close())
    assert [j.key for j in (yield reload(sqliteBackend))] == [1000, 1001]


_CRASH = textwrap.dedent("""
    import os, sys
    sys.path.insert(0, {root!r})
    from txgear.jobs import StoredJob
    from txgear.store import _sqlite

    def record(key, payload=b"p"):
        return (key, 1, b"f", b"u%d" % key, payload, 0, b"", b"", 0, 0, b"")

    store = _sqlite.SQLiteJobStore({path!r}, reactor=object(), compactThreshold=100)
    store._openInThread()
    store._writeInThread([(True, [record(n) for n in range(1, 4001)])])
    store._writeInThread([(False, n) for n in range(1, 1401)])
    assert store._compactionDue
    if {midway!r}:
        real = _sqlite.packBatches
        def dieMidway(*args):
            for count, data in enumerate(real(*args)):
                if count == 1:
                    os._exit(3)  # after DELETE and one INSERT, before COMMIT
                yield data
        _sqlite.packBatches = dieMidway
    store._compactInThread()
    store._writeInThread([(True, [record(5000, b"after")]), (False, 3000)])
    os._exit(0)  # no close: as if killed
""")


@pytest.mark.parametrize("midway", [False, True])
@pytest_twisted.inlineCallbacks
def test_crashDuringOrAfterCompaction(sqliteBackend: SQLiteBackend, midway: bool) -> Any:
    """
    A process that dies after a compaction (without closing the store) or
    in the middle of one leaves a file that reloads every acknowledged write.
    """
    script = _CRASH.format(root=ROOT, path=sqliteBackend.path, midway=midway)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60)
    assert result.returncode == (3 if midway else 0), result.stderr.decode()
    if midway:
        # Rolled back: the log as it was before the compaction.
        assert rows(sqliteBackend.path) == [(0, 4000), (1, 1400)]
        expected = list(range(1401, 4001))
    else:
        assert rows(sqliteBackend.path) == [(0, 1000), (0, 1000), (0, 600), (1, 1), (0, 1)]
        expected = [n for n in range(1401, 4001) if n != 3000] + [5000]
    loaded = yield reload(sqliteBackend)
    assert [j.key for j in loaded] == expected


# Refused files ----------------------------------------------------------------


@defer.inlineCallbacks
def _refusedUntouched(backend: SQLiteBackend, message: str) -> Any:
    before = _digest(backend.path)
    with pytest.raises(StoreSchemaError, match=message):
        yield wait(backend.make().open())
    assert _digest(backend.path) == before


@pytest_twisted.inlineCallbacks
def test_version2FileIsRefusedUntouched(sqliteBackend: SQLiteBackend) -> Any:
    """A queue of schema version 2 (one row per job) is refused, unchanged."""
    with sqlite3.connect(sqliteBackend.path) as connection:
        connection.execute("PRAGMA journal_mode = WAL").fetchall()
        connection.execute("CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)")
        connection.execute("CREATE TABLE jobs (key INTEGER PRIMARY KEY, priority INTEGER NOT NULL,"
                           " data BLOB NOT NULL)")
        connection.executemany("INSERT INTO meta VALUES (?, ?)",
                               [("schema", "txgear-queue"), ("version", "2")])
        connection.execute("INSERT INTO jobs VALUES (1, 1, ?)",
                           (_sqlite.packBatch([(1, 1, b"f", b"", b"p", 0, b"", b"", 0, 0, b"")])[13:],))
    connection.close()
    yield _refusedUntouched(sqliteBackend, "schema version 2, this txgear reads version 6")


@pytest.mark.parametrize("kind, data, message", [
    (0, packBatch([(1, 1, b"f", b"", b"payload", 0, b"", b"", 0, 0, b"")])[:-3],
     "log row 2: job 1: truncated entry"),
    (1, packKeys([1])[:5], "log row 2: a removes batch of 5 bytes"),
    (7, b"", "log row 2: unknown kind 7"),
    (0, "text", "log row 2: the batch is str, not binary"),
])
@pytest_twisted.inlineCallbacks
def test_damagedLogRowIsRefusedUntouched(sqliteBackend: SQLiteBackend, kind: int, data: Any,
                                         message: str) -> Any:
    store = sqliteBackend.make()
    yield wait(store.open())
    yield wait(store.add(job(1)))
    yield wait(store.close())
    with sqlite3.connect(sqliteBackend.path) as connection:
        connection.execute("INSERT INTO log (kind, data) VALUES (?, ?)", (kind, data))
    connection.close()
    yield _refusedUntouched(sqliteBackend, message)


@pytest_twisted.inlineCallbacks
def test_missingLogTableIsRefusedUntouched(sqliteBackend: SQLiteBackend) -> Any:
    with sqlite3.connect(sqliteBackend.path) as connection:
        connection.execute("CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)")
        connection.executemany("INSERT INTO meta VALUES (?, ?)",
                               [("schema", "txgear-queue"), ("version", "3")])
    connection.close()
    yield _refusedUntouched(sqliteBackend, "no log table")

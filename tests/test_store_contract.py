"""
One contract for every L{IJobStore}: memory, SQLite, PostgreSQL and Redis, the
last two against real servers (never mocked), each test in a schema or key
prefix of its own that is removed afterwards. Then the failure behaviour of
each real store: corrupt or foreign data, an unreachable server, an outage
while running (a TCP proxy in front of the real server, cut and restored).

PostgreSQL and Redis are found at C{TXGEAR_TEST_POSTGRESQL} (a libpq string,
default C{host=127.0.0.1 dbname=test user=postgres}) and C{TXGEAR_TEST_REDIS}
(default C{redis://127.0.0.1:6379/0}); where they are absent the tests skip
(or fail under C{TXGEAR_REQUIRE_PEERS=1}).
"""
from __future__ import annotations

import hashlib
import os
import sqlite3
import struct
import threading
import uuid
from typing import Any, Callable, Dict, List, Set, Tuple

import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.internet.task import deferLater
from twisted.protocols import portforward
from zope.interface.verify import verifyObject

from tests._peers import freePort, requirePeer
from txgear.errors import StoreError, StoreSchemaError
from txgear.interfaces import IJobStore
from txgear.jobs import DeadJob, KeptResult, Priority, StoredJob
from txgear.store import (MemoryJobStore, PostgresJobStore, RedisJobStore, SQLiteJobStore,
                          _batch, storeFromString)

POSTGRESQL = os.environ.get("TXGEAR_TEST_POSTGRESQL", "host=127.0.0.1 dbname=test user=postgres")
REDIS = os.environ.get("TXGEAR_TEST_REDIS", "redis://127.0.0.1:6379/0")
TIMEOUT = 60


try:
    import psycopg as _psycopg  # noqa: F401
    HAVE_PSYCOPG = True
except ImportError:  # PyPy: psycopg has no build for it
    HAVE_PSYCOPG = False

#: Marks tests (or modules, as C{pytestmark}) that need psycopg even to
#: parse a DSN: skipped where it is not installed (PyPy).
needsPsycopg = pytest.mark.skipif(not HAVE_PSYCOPG, reason="psycopg is not installed")


def _reactor() -> Any:
    from twisted.internet import reactor
    return reactor


def wait(d: defer.Deferred) -> defer.Deferred:
    """Bound a Deferred, so a broken store fails the test instead of hanging it."""
    return d.addTimeout(TIMEOUT, _reactor())


def turn() -> defer.Deferred:
    """Let the reactor run one more iteration."""
    return deferLater(_reactor(), 0, lambda: None)


_availability: Dict[str, bool] = {}


def postgresAvailable() -> bool:
    if "postgresql" not in _availability:
        try:
            import psycopg
            psycopg.connect(POSTGRESQL, connect_timeout=3).close()
            _availability["postgresql"] = True
        except Exception:
            _availability["postgresql"] = False
    return _availability["postgresql"]


def redisAvailable() -> bool:
    if "redis" not in _availability:
        try:
            import redis
            client = redis.Redis.from_url(REDIS, socket_connect_timeout=3)
            client.ping()
            client.close()
            _availability["redis"] = True
        except Exception:
            _availability["redis"] = False
    return _availability["redis"]


class Backend:
    """
    Makes stores of one kind over the same backing data (so a second store is
    the first one after a restart), closes them and removes the data.
    """

    name = "?"

    def __init__(self) -> None:
        self.stores: List[Any] = []

    def make(self, **kwargs: Any) -> Any:
        store = self._make(**kwargs)
        self.stores.append(store)
        return store

    def _make(self, **kwargs: Any) -> Any:
        raise NotImplementedError()

    def cleanup(self) -> None:
        for store in self.stores:
            pytest_twisted.blockon(wait(store.close()))
        self._drop()

    def _drop(self) -> None:
        pass


class MemoryBackend(Backend):
    name = "memory"

    def __init__(self) -> None:
        Backend.__init__(self)
        self.jobs: Dict[int, StoredJob] = {}
        self.dead: Dict[int, DeadJob] = {}
        self.kept: Dict[int, KeptResult] = {}

    def _make(self, **kwargs: Any) -> Any:
        return MemoryJobStore(self.jobs, self.dead, self.kept)


class SQLiteBackend(Backend):
    name = "sqlite"

    def __init__(self, directory: str) -> None:
        Backend.__init__(self)
        self.path = os.path.join(directory, "queue.sqlite")

    def _make(self, **kwargs: Any) -> Any:
        return SQLiteJobStore(kwargs.pop("path", self.path), reactor=_reactor(), **kwargs)


class PostgresBackend(Backend):
    name = "postgresql"

    def __init__(self) -> None:
        Backend.__init__(self)
        requirePeer(postgresAvailable(), f"PostgreSQL at {POSTGRESQL!r}")
        self.schema = "txgear_test_" + uuid.uuid4().hex[:12]

    def _make(self, **kwargs: Any) -> Any:
        return PostgresJobStore(kwargs.pop("conninfo", POSTGRESQL), reactor=_reactor(),
                                schema=self.schema, **kwargs)

    def execute(self, statement: str) -> None:
        import psycopg
        with psycopg.connect(POSTGRESQL, autocommit=True) as connection:
            connection.execute(statement)

    def _drop(self) -> None:
        self.execute(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')


class RedisBackend(Backend):
    name = "redis"

    def __init__(self) -> None:
        Backend.__init__(self)
        requirePeer(redisAvailable(), f"Redis at {REDIS!r}")
        self.prefix = "txgear-test:" + uuid.uuid4().hex[:12] + ":"

    def _make(self, **kwargs: Any) -> Any:
        return RedisJobStore(kwargs.pop("url", REDIS), reactor=_reactor(), prefix=self.prefix,
                             **kwargs)

    def client(self) -> Any:
        import redis
        return redis.Redis.from_url(REDIS)

    def _drop(self) -> None:
        client = self.client()
        keys = list(client.scan_iter(match=self.prefix + "*"))
        if keys:
            client.delete(*keys)
        client.close()


def _makeBackend(name: str, tmp_path: Any) -> Backend:
    if name == "memory":
        return MemoryBackend()
    if name == "sqlite":
        return SQLiteBackend(str(tmp_path))
    if name == "postgresql":
        return PostgresBackend()
    return RedisBackend()


@pytest.fixture(autouse=True)
def noThreadLeft() -> Any:
    """Every store releases its thread (and shutdown trigger) once closed."""
    yield
    left = [t.name for t in threading.enumerate() if "txgear-store" in t.name]
    assert left == []


@pytest.fixture(params=["memory", "sqlite", "postgresql", "redis"])
def backend(request: Any, tmp_path: Any) -> Any:
    made = _makeBackend(request.param, tmp_path)
    yield made
    made.cleanup()


def _realBackend(name: str) -> Callable[..., Any]:
    @pytest.fixture
    def fixture(tmp_path: Any) -> Any:
        made = _makeBackend(name, tmp_path)
        yield made
        made.cleanup()
    return fixture


sqliteBackend = _realBackend("sqlite")
postgresBackend = _realBackend("postgresql")
redisBackend = _realBackend("redis")


def job(n: int, priority: int = Priority.NORMAL, **kwargs: Any) -> StoredJob:
    fields: Dict[str, Any] = dict(key=n, function=b"f", unique=b"u%d" % n,
                                  payload=b"payload %d" % n, priority=priority)
    fields.update(kwargs)
    return StoredJob(**fields)


@defer.inlineCallbacks
def reload(backend: Backend) -> Any:
    """Open a fresh store on the same data, return its jobs, close it."""
    store = backend.make()
    jobs = yield wait(store.open())
    yield wait(store.close())
    return jobs


# The contract ---------------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_providesInterface(backend: Backend) -> Any:
    store = backend.make()
    assert verifyObject(IJobStore, store)
    assert isinstance(store.description, str) and store.description
    yield wait(store.close())


@pytest_twisted.inlineCallbacks
def test_emptyAtFirst(backend: Backend) -> Any:
    store = backend.make()
    assert (yield wait(store.open())) == []
    yield wait(store.close())
    assert (yield reload(backend)) == []


@pytest_twisted.inlineCallbacks
def test_reloadInPriorityThenKeyOrder(backend: Backend) -> Any:
    store = backend.make()
    yield wait(store.open())
    added = [job(1, Priority.LOW), job(2, Priority.NORMAL), job(3, Priority.HIGH),
             job(4, Priority.LOW), job(5, Priority.HIGH), job(6, Priority.NORMAL)]
    # Over several turns and batches, not only one.
    for j in added[:3]:
        yield wait(store.add(j))
    yield wait(defer.gatherResults([store.add(j) for j in added[3:]]))
    yield wait(store.close())
    loaded = yield reload(backend)
    assert [j.key for j in loaded] == [3, 5, 2, 6, 1, 4]
    assert sorted(loaded, key=lambda j: j.key) == sorted(added, key=lambda j: j.key)
    assert all(type(j) is StoredJob for j in loaded)
    assert all(type(j.key) is int and type(j.priority) is int for j in loaded)


@pytest_twisted.inlineCallbacks
def test_orderWithinPriorityIsByKeyNotByAdd(backend: Backend) -> Any:
    """
    Within a priority, jobs come back by key, whatever the order of the
    calls that added them; keys beyond 32 bits compare as integers.
    """
    store = backend.make()
    yield wait(store.open())
    big, bigger = 2 ** 33, 2 ** 50 + 7
    yield wait(store.addMany([job(bigger), job(9, Priority.HIGH), job(10)]))
    yield wait(store.add(job(big)))
    yield wait(defer.gatherResults([store.add(job(2, Priority.HIGH)), store.add(job(300))]))
    yield wait(store.addMany([job(1, Priority.LOW), job(8)]))
    yield wait(store.close())
    loaded = yield reload(backend)
    assert [j.key for j in loaded] == [2, 9, 8, 10, 300, big, bigger, 1]


@pytest_twisted.inlineCallbacks
def test_remove(backend: Backend) -> Any:
    store = backend.make()
    yield wait(store.open())
    jobs = [job(n) for n in range(1, 6)]
    yield wait(defer.gatherResults([store.add(j) for j in jobs]))
    result = yield wait(store.remove(jobs[1]))
    assert result is None
    yield wait(store.remove(StoredJob.fromJob(jobs[3])))
    yield wait(store.close())
    loaded = yield reload(backend)
    assert loaded == [jobs[0], jobs[2], jobs[4]]


@pytest_twisted.inlineCallbacks
def test_removeUnknownKeyIsNoOp(backend: Backend) -> Any:
    store = backend.make()
    yield wait(store.open())
    yield wait(store.add(job(1)))
    assert (yield wait(store.remove(job(99)))) is None
    yield wait(store.remove(job(1)))
    assert (yield wait(store.remove(job(1)))) is None
    yield wait(store.close())
    assert (yield reload(backend)) == []


@pytest_twisted.inlineCallbacks
def test_addSameKeyReplacesInPlace(backend: Backend) -> Any:
    """
    Adding a key again replaces the record and keeps the job's place: adds
    are idempotent, retrying one is safe.
    """
    store = backend.make()
    yield wait(store.open())
    yield wait(store.add(job(1, payload=b"first")))
    yield wait(store.add(job(2)))
    yield wait(store.add(job(1, payload=b"second")))
    # And twice in one batch.
    yield wait(defer.gatherResults([store.add(job(3, payload=b"a")), store.add(job(3, payload=b"b"))]))
    yield wait(store.close())
    loaded = yield reload(backend)
    assert loaded == [job(1, payload=b"second"), job(2), job(3, payload=b"b")]


@pytest_twisted.inlineCallbacks
def test_emptyUniquesStayDistinct(backend: Backend) -> Any:
    """
    gearmand keys its queue by (unique, function), so background jobs with an
    empty unique overwrite each other. Stores key by the server's key.
    """
    store = backend.make()
    yield wait(store.open())
    jobs = [job(n, unique=b"", payload=b"same") for n in range(1, 4)]
    yield wait(defer.gatherResults([store.add(j) for j in jobs]))
    yield wait(store.close())
    assert (yield reload(backend)) == jobs


@pytest_twisted.inlineCallbacks
def test_uniquesRoundTripForCoalescing(backend: Backend) -> Any:
    """
    The reloaded jobs carry function and unique, so the server can coalesce
    a new submit with a stored job after a restart.
    """
    store = backend.make()
    yield wait(store.open())
    yield wait(store.add(job(1, function=b"resize", unique=b"img-42")))
    yield wait(store.add(job(2, function=b"thumb", unique=b"img-42")))
    yield wait(store.close())
    loaded = yield reload(backend)
    byUnique = {(j.function, j.unique): j.key for j in loaded}
    assert byUnique == {(b"resize", b"img-42"): 1, (b"thumb", b"img-42"): 2}


@pytest_twisted.inlineCallbacks
def test_binaryFieldsAndLargePayload(backend: Backend) -> Any:
    store = backend.make()
    yield wait(store.open())
    big = os.urandom(1024 * 1024)
    jobs = [
        StoredJob(3, b"f\x00n", b"\x00u\x00", b"\x00\x00a\x00b\x00", Priority.HIGH,
                  reducer=b"\x00", clientId=b"c\x00"),
        StoredJob(1, b"big", b"", big, Priority.LOW),
        StoredJob(2, b"f", b"", b"", Priority.NORMAL),
    ]
    yield wait(defer.gatherResults([store.add(j) for j in jobs]))
    yield wait(store.close())
    loaded = yield reload(backend)
    assert loaded == [jobs[0], jobs[2], jobs[1]]
    assert loaded[2].payload == big


@pytest_twisted.inlineCallbacks
def test_whenReducerAndClientIdRoundTrip(backend: Backend) -> Any:
    store = backend.make()
    yield wait(store.open())
    scheduled = job(1, when=4102444800, reducer=b"sum", clientId=b"web-7")
    yield wait(store.add(scheduled))
    yield wait(store.add(job(2, when=0)))
    yield wait(store.close())
    loaded = yield reload(backend)
    assert loaded == [scheduled, job(2)]
    assert (loaded[0].when, loaded[0].reducer, loaded[0].clientId) == (4102444800, b"sum", b"web-7")
    assert isinstance(loaded[0].when, int) and isinstance(loaded[0].priority, int)


@pytest_twisted.inlineCallbacks
def test_closeFlushesPendingWrites(backend: Backend) -> Any:
    store = backend.make()
    yield wait(store.open())
    jobs = [job(n) for n in range(1, 2001)]
    fired: List[int] = []
    for j in jobs:
        store.add(j).addCallback(lambda _: fired.append(1))
    store.remove(jobs[0])
    yield wait(store.close())
    assert len(fired) == len(jobs)
    assert (yield reload(backend)) == jobs[1:]


@pytest_twisted.inlineCallbacks
def test_mixedBurstInOneTurn(backend: Backend) -> Any:
    """
    Adds and removes issued in one turn apply in order: add-remove-add of one
    key leaves it stored, add-remove leaves it gone.
    """
    store = backend.make()
    yield wait(store.open())
    jobs = [job(n) for n in range(1, 3001)]
    results = [store.add(j) for j in jobs]
    results += [store.remove(j) for j in jobs[::2]]
    results += [store.add(job(5000)), store.remove(job(5000)), store.add(job(5000, payload=b"again"))]
    results += [store.add(job(6000)), store.remove(job(6000))]
    yield wait(defer.gatherResults(results))
    yield wait(store.close())
    loaded = yield reload(backend)
    assert loaded == jobs[1::2] + [job(5000, payload=b"again")]


@pytest_twisted.inlineCallbacks
def test_reopenKeepsOrderingByKey(backend: Backend) -> Any:
    """
    A restarted store keeps the jobs it reloaded and orders new ones among
    them by key (the server continues after the largest loaded key).
    """
    store = backend.make()
    yield wait(store.open())
    yield wait(store.addMany([job(1), job(2)]))
    yield wait(store.close())
    store = backend.make()
    assert (yield wait(store.open())) == [job(1), job(2)]
    yield wait(store.add(job(4)))
    yield wait(store.add(job(3)))
    yield wait(store.remove(job(1)))
    yield wait(store.close())
    assert (yield reload(backend)) == [job(2), job(3), job(4)]


@pytest_twisted.inlineCallbacks
def test_unstorableRecordFailsOnlyItsOwnCall(backend: Backend) -> Any:
    """
    A record no store can hold (a run time beyond signed 64 bits, or
    negative) fails its own C{add}/C{addMany} with L{StoreError}; the other
    writes of the same batch are stored.
    """
    store = backend.make()
    yield wait(store.open())
    good = store.addMany([job(1), job(2)])
    bad = store.add(job(3, when=2 ** 63))
    negative = store.addMany([job(4), job(5, when=-1)])
    after = store.add(job(6))
    removal = store.remove(job(2))
    assert (yield wait(good)) is None
    with pytest.raises(StoreError, match="out of range"):
        yield wait(bad)
    with pytest.raises(StoreError, match="out of range"):
        yield wait(negative)
    assert (yield wait(after)) is None and (yield wait(removal)) is None
    yield wait(store.close())
    assert (yield reload(backend)) == [job(1), job(6)]


# addMany ---------------------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_addManyOneDeferredForAll(backend: Backend) -> Any:
    store = backend.make()
    yield wait(store.open())
    jobs = [job(n, (Priority.HIGH, Priority.NORMAL, Priority.LOW)[n % 3]) for n in range(1, 401)]
    d = store.addMany(jobs)
    assert isinstance(d, defer.Deferred)
    assert (yield wait(d)) is None
    assert (yield wait(store.addMany([]))) is None
    yield wait(store.close())
    loaded = yield reload(backend)
    assert loaded == sorted(jobs, key=lambda j: (j.priority, j.key))


@pytest_twisted.inlineCallbacks
def test_addManyInterleavedWithAddAndRemove(backend: Backend) -> Any:
    """
    C{addMany}, C{add} and C{remove} issued in one turn apply in the order
    they were issued, also on the same keys.
    """
    store = backend.make()
    yield wait(store.open())
    results = [
        store.add(job(1)),
        store.addMany([job(2), job(3), job(4, Priority.HIGH)]),
        store.remove(job(3)),
        store.addMany([job(3, payload=b"again"), job(5), job(6)]),
        store.remove(job(5)),
        store.add(job(6, payload=b"replaced")),
        store.addMany([job(7), job(7, payload=b"twice")]),
        store.remove(job(1)),
    ]
    yield wait(defer.gatherResults(results))
    yield wait(store.close())
    loaded = yield reload(backend)
    assert loaded == [job(4, Priority.HIGH), job(2), job(3, payload=b"again"),
                      job(6, payload=b"replaced"), job(7, payload=b"twice")]


@pytest_twisted.inlineCallbacks
def test_addManyOddSizesAndRepeatedKeys(backend: Backend) -> Any:
    """
    Batches of every size write every row (stores may split them into
    statements of fixed sizes); a key given twice in one C{addMany} keeps its
    last record.
    """
    store = backend.make()
    yield wait(store.open())
    jobs = [job(n) for n in range(1, 342)]
    yield wait(store.addMany(jobs[:10] + [job(5, payload=b"twice")] + jobs[10:]))
    yield wait(defer.gatherResults([store.remove(job(n)) for n in range(1, 300) if n != 5]))
    yield wait(store.addMany([job(n) for n in range(342, 342 + 87)]))
    yield wait(store.close())
    loaded = yield reload(backend)
    assert loaded == [job(5, payload=b"twice")] + [job(n) for n in range(300, 342 + 87)]


@pytest_twisted.inlineCallbacks
def test_addManyTakesASnapshot(backend: Backend) -> Any:
    """Changing a job object after C{addMany} does not change what is stored."""
    store = backend.make()
    yield wait(store.open())
    mutable = job(1)
    d = store.addMany([mutable])
    mutable.payload = b"changed later"
    yield wait(d)
    yield wait(store.close())
    assert (yield reload(backend)) == [job(1)]


# Batching (the threaded stores) -----------------------------------------------


def heldFirstBatch(store: Any) -> Tuple[List[List[Any]], threading.Event, threading.Event]:
    """
    Record every batch C{store} writes, and hold the first one in the
    store's thread until C{gate} is set (C{entered} is set once it waits).
    """
    batches: List[List[Any]] = []
    entered, gate = threading.Event(), threading.Event()
    original = store._writeInThread

    def spy(operations: List[Any]) -> None:
        batches.append(operations)
        if len(batches) == 1:
            entered.set()
            gate.wait(TIMEOUT)
        original(operations)

    store._writeInThread = spy
    return batches, entered, gate


@pytest_twisted.inlineCallbacks
def test_oneTransactionPerTurnAndWritesQueueBehind(sqliteBackend: SQLiteBackend) -> Any:
    """
    Every write of one turn goes in one batch; writes issued while a batch is
    being written wait and form the next batch, in order.
    """
    store = sqliteBackend.make()
    yield wait(store.open())
    batches, entered, gate = heldFirstBatch(store)
    try:
        first = [store.add(job(n)) for n in range(1, 101)]
        while not entered.is_set():
            yield deferLater(_reactor(), 0.01, lambda: None)
        second = [store.add(job(n)) for n in range(101, 151)]
        yield turn()
        second += [store.remove(job(1))]
        yield turn()
        assert len(batches) == 1 and not any(d.called for d in first)
    finally:
        gate.set()
    yield wait(defer.gatherResults(first + second))
    assert [len(b) for b in batches] == [100, 51]
    yield wait(store.close())
    assert [j.key for j in (yield reload(sqliteBackend))] == list(range(2, 151))


@pytest_twisted.inlineCallbacks
def test_nextBatchStartsBeforeCallbacks(sqliteBackend: SQLiteBackend) -> Any:
    """
    When a batch is written, the store's thread takes the writes that waited
    behind it before the batch's callbacks run (so the store writes while the
    reactor answers); what those callbacks issue goes to the batch after, in
    order.
    """
    store = sqliteBackend.make()
    yield wait(store.open())
    batches, entered, gate = heldFirstBatch(store)
    seen: List[Any] = []
    issued: List[defer.Deferred] = []

    def firstWritten(_: Any) -> None:
        seen.append((store._writing, len(store._pending)))
        issued.append(store.remove(job(2)))

    try:
        first = store.add(job(1)).addCallback(firstWritten)
        while not entered.is_set():
            yield deferLater(_reactor(), 0.01, lambda: None)
        second = store.add(job(2))
        yield turn()
    finally:
        gate.set()
    yield wait(defer.gatherResults([first, second]))
    yield wait(defer.gatherResults(issued))
    assert seen == [(True, 0)]
    assert [[(isAdd, len(items) if isAdd else items) for isAdd, items in b] for b in batches] == [
        [(True, 1)], [(True, 1)], [(False, 2)]]
    yield wait(store.close())
    assert [j.key for j in (yield reload(sqliteBackend))] == [1]


def recordedBatches(store: Any) -> List[List[Any]]:
    """Record the operations of every batch C{store} writes."""
    batches: List[List[Any]] = []
    original = store._writeInThread

    def spy(operations: List[Any]) -> None:
        batches.append(operations)
        original(operations)

    store._writeInThread = spy
    return batches


@pytest_twisted.inlineCallbacks
def test_removalsAloneWaitForAnAdd(sqliteBackend: SQLiteBackend, monkeypatch: Any) -> Any:
    """
    Removals issued over several turns, with nothing else pending, wait
    (up to REMOVE_LINGER); an add then takes them along in its batch, in
    order.
    """
    monkeypatch.setattr(_batch, "REMOVE_LINGER", TIMEOUT * 2)
    store = sqliteBackend.make()
    yield wait(store.open())
    yield wait(store.addMany([job(n) for n in range(1, 11)]))
    batches = recordedBatches(store)
    removed = []
    for n in range(1, 6):
        removed.append(store.remove(job(n)))
        yield turn()
    yield turn()
    assert batches == [] and not any(d.called for d in removed)
    added = store.add(job(11))
    yield wait(defer.gatherResults(removed + [added]))
    assert [[(isAdd, len(items) if isAdd is True else items) for isAdd, items in b] for b in batches] == [
        [(False, 1), (False, 2), (False, 3), (False, 4), (False, 5), (True, 1)]]
    yield wait(store.close())
    assert [j.key for j in (yield reload(sqliteBackend))] == list(range(6, 12))


@pytest_twisted.inlineCallbacks
def test_removalsAloneAreWrittenAfterTheLinger(sqliteBackend: SQLiteBackend, monkeypatch: Any) -> Any:
    """Removals alone are written in one batch once REMOVE_LINGER has passed."""
    monkeypatch.setattr(_batch, "REMOVE_LINGER", 0.2)
    store = sqliteBackend.make()
    yield wait(store.open())
    yield wait(store.addMany([job(n) for n in range(1, 4)]))
    batches = recordedBatches(store)
    removed = [store.remove(job(1)), store.remove(job(2))]
    yield turn()
    assert batches == []
    yield wait(defer.gatherResults(removed))
    assert batches == [[(False, 1), (False, 2)]]
    yield wait(store.close())
    assert [j.key for j in (yield reload(sqliteBackend))] == [3]


@pytest_twisted.inlineCallbacks
def test_enoughRemovalsAreWrittenAtOnce(sqliteBackend: SQLiteBackend, monkeypatch: Any) -> Any:
    """
    REMOVE_BATCH pending removals are written at the end of the turn, and
    the store's thread takes that many behind a batch without waiting.
    """
    monkeypatch.setattr(_batch, "REMOVE_LINGER", TIMEOUT * 2)
    monkeypatch.setattr(_batch, "REMOVE_BATCH", 4)
    store = sqliteBackend.make()
    yield wait(store.open())
    yield wait(store.addMany([job(n) for n in range(1, 21)]))
    batches, entered, gate = heldFirstBatch(store)
    try:
        first = [store.remove(job(n)) for n in range(1, 5)]
        while not entered.is_set():
            yield deferLater(_reactor(), 0.01, lambda: None)
        second = [store.remove(job(n)) for n in range(5, 9)]
        yield turn()
    finally:
        gate.set()
    yield wait(defer.gatherResults(first + second))
    assert [[key for _, key in b] for b in batches] == [[1, 2, 3, 4], [5, 6, 7, 8]]
    yield wait(store.close())
    assert [j.key for j in (yield reload(sqliteBackend))] == list(range(9, 21))


@pytest_twisted.inlineCallbacks
def test_closeWritesLingeringRemovals(sqliteBackend: SQLiteBackend, monkeypatch: Any) -> Any:
    """C{close} writes the removals that were waiting for more, at once."""
    monkeypatch.setattr(_batch, "REMOVE_LINGER", TIMEOUT * 2)
    store = sqliteBackend.make()
    yield wait(store.open())
    yield wait(store.addMany([job(n) for n in range(1, 4)]))
    removed = store.remove(job(2))
    yield wait(store.close())
    assert removed.called
    assert [j.key for j in (yield reload(sqliteBackend))] == [1, 3]


@needsPsycopg
def test_postgresDumpsByteaAsBytes(postgresBackend: PostgresBackend) -> None:
    """
    The PostgreSQL store's connection dumps C{bytea} values looked up by type
    (its COPY) with its C{bytes} dumper, not psycopg's DB-API C{Binary} one.
    """
    from psycopg.adapt import PyFormat
    from psycopg.pq import Format

    store = postgresBackend.make()
    connection = store._connect()
    try:
        bytea = connection.adapters.types["bytea"].oid
        byType = connection.adapters.get_dumper_by_oid(bytea, Format.BINARY)
        assert byType is connection.adapters.get_dumper(bytes, PyFormat.BINARY)
    finally:
        connection.close()


@pytest_twisted.inlineCallbacks
def test_addManyIsOnePendingEntry(sqliteBackend: SQLiteBackend) -> Any:
    """
    C{addMany} queues one entry (one list of records, one Deferred), not one
    per job; the batch holding it and other writes is one transaction.
    """
    store = sqliteBackend.make()
    yield wait(store.open())
    batches = recordedBatches(store)
    many = store.addMany([job(n) for n in range(1, 401)])
    assert len(store._pending) == 1
    one = store.add(job(401))
    gone = store.remove(job(7))
    assert len(store._pending) == 3
    yield wait(defer.gatherResults([many, one, gone]))
    assert [[(isAdd, len(items) if isAdd else items) for isAdd, items in b] for b in batches] == [
        [(True, 400), (True, 1), (False, 7)]]
    yield wait(store.close())
    assert [j.key for j in (yield reload(sqliteBackend))] == [n for n in range(1, 402) if n != 7]



@pytest_twisted.inlineCallbacks
def test_useAfterCloseFails(sqliteBackend: SQLiteBackend) -> Any:
    store = sqliteBackend.make()
    yield wait(store.open())
    yield wait(store.close())
    assert store._shutdownTrigger is None and store._pool is None
    with pytest.raises(StoreError):
        yield store.add(job(1))
    assert (yield wait(store.close())) is None


# SQLite failures ----------------------------------------------------------------


def _digest(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


@pytest_twisted.inlineCallbacks
def test_sqliteCorruptFileIsNotWiped(sqliteBackend: SQLiteBackend) -> Any:
    with open(sqliteBackend.path, "wb") as f:
        f.write(b"this is not a database\n" * 200)
    before = _digest(sqliteBackend.path)
    with pytest.raises(StoreSchemaError, match="corrupt|not a"):
        yield wait(sqliteBackend.make().open())
    assert _digest(sqliteBackend.path) == before


@pytest_twisted.inlineCallbacks
def test_sqliteDamagedPagesAreReported(sqliteBackend: SQLiteBackend) -> Any:
    store = sqliteBackend.make()
    yield wait(store.open())
    yield wait(store.addMany([job(n, payload=os.urandom(3000)) for n in range(1, 301)]))
    yield wait(store.close())
    size = os.path.getsize(sqliteBackend.path)
    with open(sqliteBackend.path, "r+b") as f:
        f.seek(size // 2)
        f.write(b"\xde\xad\xbe\xef" * 2048)
    before = _digest(sqliteBackend.path)
    with pytest.raises(StoreSchemaError):
        yield wait(sqliteBackend.make().open())
    assert _digest(sqliteBackend.path) == before


@pytest_twisted.inlineCallbacks
def test_sqliteOtherSchemaVersionIsNotWiped(sqliteBackend: SQLiteBackend) -> Any:
    store = sqliteBackend.make()
    yield wait(store.open())
    yield wait(store.add(job(1)))
    yield wait(store.close())
    with sqlite3.connect(sqliteBackend.path) as connection:
        connection.execute("UPDATE meta SET value = '99' WHERE name = 'version'")
    connection.close()
    before = _digest(sqliteBackend.path)
    with pytest.raises(StoreSchemaError, match="version 99"):
        yield wait(sqliteBackend.make().open())
    assert _digest(sqliteBackend.path) == before


@pytest_twisted.inlineCallbacks
def test_sqliteVersion1FileIsNotWiped(sqliteBackend: SQLiteBackend) -> Any:
    """
    A queue of schema version 1 (bytes keys, one column per field) is
    refused with the versions named, and left as it is.
    """
    with sqlite3.connect(sqliteBackend.path) as connection:
        connection.execute("CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)")
        connection.execute(
            "CREATE TABLE jobs (seq INTEGER PRIMARY KEY, key BLOB NOT NULL UNIQUE,"
            " function BLOB NOT NULL, uniq BLOB NOT NULL, payload BLOB NOT NULL,"
            " priority INTEGER NOT NULL, run_at INTEGER NOT NULL, reducer BLOB NOT NULL,"
            " client_id BLOB NOT NULL)")
        connection.executemany("INSERT INTO meta VALUES (?, ?)",
                               [("schema", "txgear-queue"), ("version", "1")])
        connection.execute("INSERT INTO jobs (key, function, uniq, payload, priority, run_at,"
                           " reducer, client_id) VALUES (x'483a31', x'66', x'', x'', 1, 0, x'', x'')")
    connection.close()
    before = _digest(sqliteBackend.path)
    with pytest.raises(StoreSchemaError, match="schema version 1, this txgear reads version 6"):
        yield wait(sqliteBackend.make().open())
    assert _digest(sqliteBackend.path) == before


@pytest_twisted.inlineCallbacks
def test_sqliteUnknownRecordFormatIsReported(sqliteBackend: SQLiteBackend) -> Any:
    store = sqliteBackend.make()
    yield wait(store.open())
    yield wait(store.add(job(1)))
    yield wait(store.close())
    with sqlite3.connect(sqliteBackend.path) as connection:
        # The record's version byte follows the log entry's 13-byte frame.
        seq, data = connection.execute("SELECT seq, data FROM log WHERE kind = 0").fetchone()
        connection.execute("UPDATE log SET data = ? WHERE seq = ?",
                           (data[:13] + b"\x09" + data[14:], seq))
    connection.close()
    before = _digest(sqliteBackend.path)
    with pytest.raises(StoreSchemaError, match="log row 1: job 1: record format 9 is unknown"):
        yield wait(sqliteBackend.make().open())
    assert _digest(sqliteBackend.path) == before


@pytest_twisted.inlineCallbacks
def test_sqliteForeignDatabaseIsNotTouched(sqliteBackend: SQLiteBackend) -> Any:
    with sqlite3.connect(sqliteBackend.path) as connection:
        connection.execute("CREATE TABLE gearman_queue (unique_key TEXT, data BLOB)")
    connection.close()
    before = _digest(sqliteBackend.path)
    with pytest.raises(StoreSchemaError, match="not a txgear queue"):
        yield wait(sqliteBackend.make().open())
    assert _digest(sqliteBackend.path) == before


@pytest_twisted.inlineCallbacks
def test_sqliteMissingDirectory(sqliteBackend: SQLiteBackend, tmp_path: Any) -> Any:
    store = sqliteBackend.make(path=str(tmp_path / "nowhere" / "queue.sqlite"))
    with pytest.raises(StoreError, match="does not exist"):
        yield wait(store.open())


@pytest_twisted.inlineCallbacks
def test_sqliteSecondServerOnSameFileIsRefused(sqliteBackend: SQLiteBackend) -> Any:
    store = sqliteBackend.make()
    yield wait(store.open())
    other = sqliteBackend.make(busyTimeout=0.2)
    with pytest.raises(StoreError, match="in use"):
        yield wait(other.open())
    yield wait(store.add(job(1)))
    yield wait(store.close())


@pytest_twisted.inlineCallbacks
def test_sqliteFullWhileRunningThenRecovers(sqliteBackend: SQLiteBackend) -> Any:
    """
    A full disk fails the batch with L{StoreError}; once there is room the
    store writes again. (The file's page limit stands in for the disk.)
    """
    store = sqliteBackend.make()
    yield wait(store.open())
    yield wait(store.add(job(1)))

    def limit(pages: int) -> Callable[[], None]:
        return lambda: store._connection.execute(f"PRAGMA max_page_count = {pages}")
    pageCount = yield store._callInThread(lambda: store._connection.execute(
        "PRAGMA page_count").fetchone()[0])
    yield store._callInThread(limit(pageCount))
    with pytest.raises(StoreError, match="full"):
        yield wait(store.add(job(2, payload=b"x" * 200000)))
    # All or nothing: a batch that does not fit stores none of its jobs, and
    # every Deferred of the batch fails.
    small = store.addMany([job(n) for n in range(10, 20)])
    big = store.addMany([job(20), job(21, payload=b"x" * 200000), job(22)])
    removal = store.remove(job(1))
    for d in (small, big, removal):
        with pytest.raises(StoreError, match="full"):
            yield wait(d)
    yield store._callInThread(limit(1 << 30))
    yield wait(store.add(job(3, payload=b"x" * 200000)))
    yield wait(store.close())
    assert [j.key for j in (yield reload(sqliteBackend))] == [1, 3]


# PostgreSQL and Redis failures -------------------------------------------------------


class _TrackingProxyServer(portforward.ProxyServer):
    def connectionMade(self) -> None:
        self.factory.live.add(self)
        portforward.ProxyServer.connectionMade(self)

    def connectionLost(self, reason: Any) -> None:
        self.factory.live.discard(self)
        portforward.ProxyServer.connectionLost(self, reason)


class TCPProxy:
    """
    A loopback TCP proxy in front of a real server, that a test can cut (stop
    listening, abort every connection) and restore on the same port.
    """

    def __init__(self, targetPort: int) -> None:
        self.factory = portforward.ProxyFactory("127.0.0.1", targetPort)
        self.factory.protocol = _TrackingProxyServer
        self.factory.live: Set[Any] = set()
        self.port = freePort()
        self.listening: Any = None

    def start(self) -> "TCPProxy":
        self.listening = _reactor().listenTCP(self.port, self.factory, interface="127.0.0.1")
        return self

    @defer.inlineCallbacks
    def cut(self) -> Any:
        yield self.listening.stopListening()
        for server in list(self.factory.live):
            server.transport.abortConnection()
            if server.peer is not None:
                server.peer.transport.abortConnection()
        yield turn()

    def restore(self) -> None:
        self.start()

    @defer.inlineCallbacks
    def stop(self) -> Any:
        if self.listening is not None and self.listening.connected:
            yield self.cut()


@pytest_twisted.inlineCallbacks
def test_postgresUnreachable(postgresBackend: PostgresBackend) -> Any:
    store = postgresBackend.make(conninfo=f"host=127.0.0.1 port={freePort()} dbname=test",
                                 connectTimeout=3)
    with pytest.raises(StoreError, match="cannot connect"):
        yield wait(store.open())


@pytest_twisted.inlineCallbacks
def test_postgresOtherSchemaVersionIsNotWiped(postgresBackend: PostgresBackend) -> Any:
    store = postgresBackend.make()
    yield wait(store.open())
    yield wait(store.add(job(1)))
    yield wait(store.close())
    postgresBackend.execute(
        f"UPDATE \"{postgresBackend.schema}\".txgear_meta SET value = '0' WHERE name = 'version'")
    with pytest.raises(StoreSchemaError, match="version 0"):
        yield wait(postgresBackend.make().open())
    postgresBackend.execute(
        f"UPDATE \"{postgresBackend.schema}\".txgear_meta SET value = '2' WHERE name = 'version'")
    assert (yield reload(postgresBackend)) == [job(1)]


@pytest_twisted.inlineCallbacks
def test_postgresSeparatePrefixesAreSeparateQueues(postgresBackend: PostgresBackend) -> Any:
    one, two = postgresBackend.make(prefix="one_"), postgresBackend.make(prefix="two_")
    yield wait(one.open())
    yield wait(two.open())
    yield wait(one.add(job(1)))
    yield wait(two.add(job(2)))
    yield wait(one.close())
    yield wait(two.close())
    again = postgresBackend.make(prefix="two_")
    assert (yield wait(again.open())) == [job(2)]


def _postgresPort() -> int:
    import psycopg.conninfo
    return int(psycopg.conninfo.conninfo_to_dict(POSTGRESQL).get("port") or 5432)


@pytest_twisted.inlineCallbacks
def test_postgresOutageFailsWritesThenRecovers(postgresBackend: PostgresBackend) -> Any:
    import psycopg.conninfo
    proxy = TCPProxy(_postgresPort()).start()
    try:
        params = psycopg.conninfo.conninfo_to_dict(POSTGRESQL)
        params.update(host="127.0.0.1", port=str(proxy.port))
        store = postgresBackend.make(conninfo=psycopg.conninfo.make_conninfo(**params),
                                     connectTimeout=3)
        yield wait(store.open())
        yield wait(store.add(job(1)))
        yield proxy.cut()
        # The whole batch fails: neither addMany nor add stores anything.
        many, one = store.addMany([job(2), job(5), job(6)]), store.add(job(7))
        for d in (many, one):
            with pytest.raises(StoreError):
                yield wait(d)
        # Still down: reconnecting fails too, quickly.
        with pytest.raises(StoreError, match="cannot connect"):
            yield wait(store.add(job(3)))
        proxy.restore()
        yield wait(store.add(job(4)))
        yield wait(store.remove(job(1)))
        yield wait(store.close())
    finally:
        yield proxy.stop()
    assert (yield reload(postgresBackend)) == [job(4)]


@pytest_twisted.inlineCallbacks
def test_postgresOneStatementBatchesLeaveTransactionsOn(postgresBackend: PostgresBackend) -> Any:
    """
    A batch of adds only, or of removes only, is written in autocommit mode;
    the connection is back to transactions afterwards, also after an add of a
    stored key (written again with its replacement), so that a mixed batch
    stays one transaction.
    """
    store = postgresBackend.make()
    yield wait(store.open())
    modes: List[bool] = []
    original = store._writeBatch

    def spy(connection: Any, *args: Any, **kwargs: Any) -> None:
        modes.append(connection.autocommit)
        original(connection, *args, **kwargs)

    store._writeBatch = spy
    yield wait(store.addMany([job(1), job(2), job(3)]))
    yield wait(store.remove(job(2)))
    yield wait(store.add(job(1, payload=b"again")))
    yield wait(defer.gatherResults([store.remove(job(3)), store.add(job(4))]))
    assert modes == [True, True, True, False, False]
    assert store._connection.autocommit is False
    yield wait(store.close())
    assert (yield reload(postgresBackend)) == [job(1, payload=b"again"), job(4)]


@pytest_twisted.inlineCallbacks
def test_redisUnreachable(redisBackend: RedisBackend) -> Any:
    store = redisBackend.make(url=f"redis://127.0.0.1:{freePort()}/0", connectTimeout=3)
    with pytest.raises(StoreError, match="onnect"):
        yield wait(store.open())


@pytest_twisted.inlineCallbacks
def test_redisOtherSchemaVersionIsNotWiped(redisBackend: RedisBackend) -> Any:
    store = redisBackend.make()
    yield wait(store.open())
    yield wait(store.add(job(1)))
    yield wait(store.close())
    client = redisBackend.client()
    client.hset(redisBackend.prefix + "meta", "version", "7")
    with pytest.raises(StoreSchemaError, match="version b'7'"):
        yield wait(redisBackend.make().open())
    assert client.hlen(redisBackend.prefix + "jobs") == 1
    client.hset(redisBackend.prefix + "meta", "version", "2")
    client.close()
    assert (yield reload(redisBackend)) == [job(1)]


@pytest_twisted.inlineCallbacks
def test_redisKeyBeyondScoreRangeFailsTheBatch(redisBackend: RedisBackend) -> Any:
    """
    Scores are doubles: keys of 2**51 and more cannot be ordered exactly, so
    their batch fails instead of storing them out of order.
    """
    store = redisBackend.make()
    yield wait(store.open())
    with pytest.raises(StoreError, match="out of range"):
        yield wait(store.addMany([job(1), job(2 ** 51)]))
    yield wait(store.add(job(2 ** 51 - 1)))
    yield wait(store.close())
    assert (yield reload(redisBackend)) == [job(2 ** 51 - 1)]


@pytest_twisted.inlineCallbacks
def test_redisForeignKeysAreNotTouched(redisBackend: RedisBackend) -> Any:
    client = redisBackend.client()
    client.set(redisBackend.prefix + "jobs", "something else")
    with pytest.raises(StoreSchemaError, match="not a txgear queue"):
        yield wait(redisBackend.make().open())
    assert client.get(redisBackend.prefix + "jobs") == b"something else"
    client.close()


@pytest_twisted.inlineCallbacks
def test_redisOutageFailsWritesThenRecovers(redisBackend: RedisBackend) -> Any:
    from urllib.parse import urlsplit
    target = urlsplit(REDIS)
    proxy = TCPProxy(target.port or 6379).start()
    try:
        store = redisBackend.make(url=target._replace(netloc=f"127.0.0.1:{proxy.port}").geturl(),
                                  connectTimeout=3)
        yield wait(store.open())
        yield wait(store.add(job(1)))
        yield proxy.cut()
        # The whole batch fails: neither addMany nor add stores anything.
        many, one = store.addMany([job(2), job(5), job(6)]), store.add(job(7))
        for d in (many, one):
            with pytest.raises(StoreError):
                yield wait(d)
        proxy.restore()
        yield wait(store.add(job(3)))
        yield wait(store.remove(job(1)))
        yield wait(store.close())
    finally:
        yield proxy.stop()
    assert (yield reload(redisBackend)) == [job(3)]


# storeFromString --------------------------------------------------------------


def test_storeFromStringMakesEachKind(tmp_path: Any) -> None:
    assert isinstance(storeFromString("memory"), MemoryJobStore)
    store = storeFromString(f"sqlite:{tmp_path}/q.sqlite?synchronous=full")
    assert isinstance(store, SQLiteJobStore) and store.description == f"sqlite:{tmp_path}/q.sqlite"
    try:
        import psycopg  # noqa: F401
    except ImportError:  # e.g. on PyPy: a clear error naming the package to install
        with pytest.raises(StoreError, match="psycopg"):
            storeFromString("postgresql:host=127.0.0.1 dbname=test")
    else:
        assert isinstance(storeFromString("postgresql:host=127.0.0.1 dbname=test"), PostgresJobStore)
    assert isinstance(storeFromString("redis://127.0.0.1:6379/0"), RedisJobStore)


# Retry state and schema migrations --------------------------------------------


@pytest_twisted.inlineCallbacks
def test_retryStateSurvivesARestart(backend: Backend) -> Any:
    """
    Attempts, last error and retry time survive close/open, and a job added
    again under its key (a retry recorded) replaces the stored one.
    """
    store = backend.make()
    yield wait(store.open())
    yield wait(store.addMany([job(1), job(2, when=1700000000)]))
    yield wait(store.add(job(1, attempts=3, retryAt=1700000012345,
                             lastError=b"\x00Traceback\n" + b"e" * 1000)))
    yield wait(store.close())
    loaded = yield reload(backend)
    assert loaded == [job(1, attempts=3, retryAt=1700000012345,
                          lastError=b"\x00Traceback\n" + b"e" * 1000),
                      job(2, when=1700000000)]
    assert all(type(j.attempts) is int and type(j.retryAt) is int and type(j.lastError) is bytes
               for j in loaded)


@pytest_twisted.inlineCallbacks
def test_sqliteVersion3FileIsMigrated(sqliteBackend: SQLiteBackend) -> Any:
    """
    A queue of schema version 3 (format 1 records) opens with its jobs,
    becomes version 5, and keeps both old and new records across restarts.
    """
    from txgear.store._record import packRecordV1
    old = (1, 1, b"f", b"u1", b"payload 1", 0, b"", b"", 0, 0, b"")
    entry = struct.pack(">QBI", 1, 1, len(packRecordV1(old))) + packRecordV1(old)
    with sqlite3.connect(sqliteBackend.path) as connection:
        connection.execute("CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)")
        connection.execute("CREATE TABLE log (seq INTEGER PRIMARY KEY, kind INTEGER NOT NULL,"
                           " data BLOB NOT NULL)")
        connection.executemany("INSERT INTO meta VALUES (?, ?)",
                               [("schema", "txgear-queue"), ("version", "3")])
        connection.execute("INSERT INTO log (kind, data) VALUES (0, ?)", (entry,))
    connection.close()
    store = sqliteBackend.make()
    assert (yield wait(store.open())) == [job(1)]
    yield wait(store.add(job(2, attempts=1, lastError=b"worker lost")))
    yield wait(store.close())
    with sqlite3.connect(sqliteBackend.path) as connection:
        assert connection.execute("SELECT value FROM meta WHERE name = 'version'").fetchone() == ("6",)
    connection.close()
    assert (yield reload(sqliteBackend)) == [job(1), job(2, attempts=1, lastError=b"worker lost")]


@pytest_twisted.inlineCallbacks
def test_postgresVersion2TableIsMigrated(postgresBackend: PostgresBackend) -> Any:
    schema = postgresBackend.schema
    postgresBackend.execute(f'CREATE SCHEMA "{schema}"')
    postgresBackend.execute(f'CREATE TABLE "{schema}".txgear_meta (name text PRIMARY KEY, value text NOT NULL)')
    postgresBackend.execute(
        f'CREATE TABLE "{schema}".txgear_jobs (key bigint PRIMARY KEY, priority smallint NOT NULL,'
        f' function bytea NOT NULL, uniq bytea NOT NULL, payload bytea NOT NULL,'
        f' run_at bigint NOT NULL, reducer bytea NOT NULL, client_id bytea NOT NULL)')
    postgresBackend.execute(f"INSERT INTO \"{schema}\".txgear_meta VALUES ('schema', 'txgear-queue'),"
                            f" ('version', '2')")
    postgresBackend.execute(f"INSERT INTO \"{schema}\".txgear_jobs VALUES (1, 1, 'f', 'u1',"
                            f" 'payload 1', 0, '', '')")
    store = postgresBackend.make()
    assert (yield wait(store.open())) == [job(1)]
    yield wait(store.add(job(2, attempts=2, retryAt=5, lastError=b"timeout")))
    yield wait(store.close())
    assert (yield reload(postgresBackend)) == [job(1), job(2, attempts=2, retryAt=5,
                                                           lastError=b"timeout")]
    import psycopg
    with psycopg.connect(POSTGRESQL) as connection:
        version = connection.execute(
            f"SELECT value FROM \"{schema}\".txgear_meta WHERE name = 'version'").fetchone()
    assert version == ("5",)


@pytest_twisted.inlineCallbacks
def test_redisVersion2QueueIsMigrated(redisBackend: RedisBackend) -> Any:
    from txgear.store._record import packRecordV1
    client = redisBackend.client()
    prefix = redisBackend.prefix
    client.hset(prefix + "meta", mapping={"schema": "txgear-queue", "version": "2"})
    client.hset(prefix + "jobs", "1", packRecordV1((1, 1, b"f", b"u1", b"payload 1", 0, b"", b"")))
    client.zadd(prefix + "order", {"1": 1 * 2 ** 51 + 1})
    store = redisBackend.make()
    assert (yield wait(store.open())) == [job(1)]
    yield wait(store.add(job(2, attempts=1, lastError=b"WORK_FAIL")))
    yield wait(store.close())
    assert client.hget(prefix + "meta", "version") == b"5"
    client.close()
    assert (yield reload(redisBackend)) == [job(1), job(2, attempts=1, lastError=b"WORK_FAIL")]


# The dead set -------------------------------------------------------------------


def dead(n: int, diedAt: int, **kwargs: Any) -> DeadJob:
    """The listing entry of C{job(n, **kwargs)} dead at C{diedAt} (no payload)."""
    return DeadJob.fromJob(job(n, **kwargs), diedAt).withoutPayload()


@defer.inlineCallbacks
def reloadDead(backend: Backend) -> Any:
    """Open a fresh store on the same data: its jobs and its dead set; close it."""
    store = backend.make()
    jobs = yield wait(store.open())
    listed = yield wait(store.listDead())
    count = yield wait(store.countDead())
    yield wait(store.close())
    assert count == len(listed)
    return jobs, listed


@pytest_twisted.inlineCallbacks
def test_deadSetSurvivesARestart(backend: Backend) -> Any:
    """
    C{addDead} takes a job from the queue to the dead set, with its
    attempts, last error and time of death; the dead set survives
    close/open and lists newest first, per function and with a limit,
    without payloads but with their sizes.
    """
    store = backend.make()
    yield wait(store.open())
    yield wait(store.addMany([job(1), job(2, function=b"g"), job(3), job(4)]))
    error = b"\x00Traceback\n\tline" + b"e" * 1000
    yield wait(defer.gatherResults([
        store.addDead(job(1, attempts=3, lastError=error), 1700000000000),
        store.addDead(job(2, function=b"g", attempts=1, lastError=b"timeout"), 1700000005000),
        store.addDead(job(4, attempts=2, lastError=b"WORK_FAIL"), 1700000005000)]))
    yield wait(store.close())
    jobs, listed = yield reloadDead(backend)
    assert jobs == [job(3)]
    newest = [dead(4, 1700000005000, attempts=2, lastError=b"WORK_FAIL"),
              dead(2, 1700000005000, function=b"g", attempts=1, lastError=b"timeout"),
              dead(1, 1700000000000, attempts=3, lastError=error)]
    assert listed == newest
    assert [d.payloadSize for d in listed] == [9, 9, 9] and {d.payload for d in listed} == {b""}
    store = backend.make()
    yield wait(store.open())
    assert (yield wait(store.listDead(b"f"))) == [newest[0], newest[2]]
    assert (yield wait(store.listDead(b"f", 1))) == [newest[0]]
    assert (yield wait(store.listDead(None, 2))) == newest[:2]
    assert (yield wait(store.listDead(b"nothing"))) == []
    yield wait(store.close())


@pytest_twisted.inlineCallbacks
def test_addDeadInTheBatchOfItsAdd(backend: Backend) -> Any:
    """
    An C{addDead} issued in the turn of the job's C{add} leaves it dead
    only; a job never queued goes to the dead set all the same.
    """
    store = backend.make()
    yield wait(store.open())
    results = [store.add(job(5)), store.addDead(job(5, attempts=1), 10),
               store.addDead(job(6), 11), store.add(job(7))]
    yield wait(defer.gatherResults(results))
    # Read after write: a listing sees every write issued before it.
    store.addDead(job(7), 12)
    assert [d.key for d in (yield wait(store.listDead()))] == [7, 6, 5]
    yield wait(store.close())
    jobs, listed = yield reloadDead(backend)
    assert jobs == []
    assert listed == [dead(7, 12), dead(6, 11), dead(5, 10, attempts=1)]


@pytest_twisted.inlineCallbacks
def test_retryDeadIsDurable(backend: Backend) -> Any:
    """
    C{retryDead} queues dead jobs again under their keys, with their
    payloads, priority and unique, fresh attempts and no last error;
    unknown keys are skipped. Survives a restart.
    """
    store = backend.make()
    yield wait(store.open())
    big = os.urandom(256 * 1024)
    yield wait(store.addMany([job(1, Priority.HIGH, payload=big, reducer=b"r", clientId=b"c"),
                              job(2)]))
    yield wait(store.addDead(job(1, Priority.HIGH, payload=big, reducer=b"r", clientId=b"c",
                                 attempts=4, retryAt=99, lastError=b"boom"), 1000))
    yield wait(store.addDead(job(2, attempts=1), 2000))
    revived = yield wait(store.retryDead([1, 99]))
    fresh = job(1, Priority.HIGH, payload=big, reducer=b"r", clientId=b"c")
    assert revived == [fresh]
    assert (yield wait(store.retryDead([1]))) == []
    yield wait(store.close())
    jobs, listed = yield reloadDead(backend)
    assert jobs == [fresh]
    assert listed == [dead(2, 2000, attempts=1)]


@pytest_twisted.inlineCallbacks
def test_purgeDeadIsDurable(backend: Backend) -> Any:
    store = backend.make()
    yield wait(store.open())
    for n in range(1, 6):
        store.addDead(job(n), 1000 + n)
    assert (yield wait(store.purgeDead([2, 4, 99]))) == 2
    assert (yield wait(store.purgeDead([]))) == 0
    assert (yield wait(store.countDead())) == 3
    yield wait(store.close())
    jobs, listed = yield reloadDead(backend)
    assert jobs == []
    assert [d.key for d in listed] == [5, 3, 1]


@pytest_twisted.inlineCallbacks
def test_sqliteVersion4FileIsMigrated(sqliteBackend: SQLiteBackend) -> Any:
    """
    A queue of schema version 4 (no dead set) opens with its jobs, gets the
    dead table and version 5; its jobs can then die and be retried.
    """
    from txgear.store._record import packBatch, recordOf
    with sqlite3.connect(sqliteBackend.path) as connection:
        connection.execute("CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)")
        connection.execute("CREATE TABLE log (seq INTEGER PRIMARY KEY, kind INTEGER NOT NULL,"
                           " data BLOB NOT NULL)")
        connection.executemany("INSERT INTO meta VALUES (?, ?)",
                               [("schema", "txgear-queue"), ("version", "4")])
        connection.execute("INSERT INTO log (kind, data) VALUES (0, ?)",
                           (packBatch([recordOf(job(1)), recordOf(job(2, attempts=1))]),))
    connection.close()
    store = sqliteBackend.make()
    assert (yield wait(store.open())) == [job(1), job(2, attempts=1)]
    yield wait(store.addDead(job(2, attempts=2), 5))
    yield wait(store.close())
    with sqlite3.connect(sqliteBackend.path) as connection:
        assert connection.execute("SELECT value FROM meta WHERE name = 'version'").fetchone() == ("6",)
    connection.close()
    assert (yield reloadDead(sqliteBackend)) == ([job(1)], [dead(2, 5, attempts=2)])
    store = sqliteBackend.make()
    yield wait(store.open())
    assert (yield wait(store.retryDead([2]))) == [job(2)]
    yield wait(store.close())
    assert (yield reloadDead(sqliteBackend)) == ([job(1), job(2)], [])


@pytest_twisted.inlineCallbacks
def test_sqliteCurrentVersionWithoutDeadTableIsRefused(sqliteBackend: SQLiteBackend) -> Any:
    with sqlite3.connect(sqliteBackend.path) as connection:
        connection.execute("CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)")
        connection.execute("CREATE TABLE log (seq INTEGER PRIMARY KEY, kind INTEGER NOT NULL,"
                           " data BLOB NOT NULL)")
        connection.executemany("INSERT INTO meta VALUES (?, ?)",
                               [("schema", "txgear-queue"), ("version", "6")])
    connection.close()
    store = sqliteBackend.make()
    with pytest.raises(StoreSchemaError, match="no dead table"):
        yield wait(store.open())


@pytest_twisted.inlineCallbacks
def test_postgresVersion3TableIsMigrated(postgresBackend: PostgresBackend) -> Any:
    schema = postgresBackend.schema
    postgresBackend.execute(f'CREATE SCHEMA "{schema}"')
    postgresBackend.execute(f'CREATE TABLE "{schema}".txgear_meta (name text PRIMARY KEY, value text NOT NULL)')
    postgresBackend.execute(
        f'CREATE TABLE "{schema}".txgear_jobs (key bigint PRIMARY KEY, priority smallint NOT NULL,'
        f' function bytea NOT NULL, uniq bytea NOT NULL, payload bytea NOT NULL,'
        f' run_at bigint NOT NULL, reducer bytea NOT NULL, client_id bytea NOT NULL,'
        f' attempts integer NOT NULL DEFAULT 0, retry_at bigint NOT NULL DEFAULT 0,'
        f" last_error bytea NOT NULL DEFAULT ''::bytea)")
    postgresBackend.execute(f"INSERT INTO \"{schema}\".txgear_meta VALUES ('schema', 'txgear-queue'),"
                            f" ('version', '3')")
    postgresBackend.execute(f"INSERT INTO \"{schema}\".txgear_jobs VALUES (1, 1, 'f', 'u1',"
                            f" 'payload 1', 0, '', '', 2, 0, 'timeout')")
    store = postgresBackend.make()
    assert (yield wait(store.open())) == [job(1, attempts=2, lastError=b"timeout")]
    yield wait(store.addDead(job(1, attempts=3, lastError=b"timeout"), 7))
    yield wait(store.close())
    assert (yield reloadDead(postgresBackend)) == ([], [dead(1, 7, attempts=3,
                                                             lastError=b"timeout")])
    import psycopg
    with psycopg.connect(POSTGRESQL) as connection:
        version = connection.execute(
            f"SELECT value FROM \"{schema}\".txgear_meta WHERE name = 'version'").fetchone()
    assert version == ("5",)


@pytest_twisted.inlineCallbacks
def test_redisVersion3QueueIsMigrated(redisBackend: RedisBackend) -> Any:
    from txgear.store._record import packRecord, recordOf
    client = redisBackend.client()
    prefix = redisBackend.prefix
    client.hset(prefix + "meta", mapping={"schema": "txgear-queue", "version": "3"})
    client.hset(prefix + "jobs", "1", packRecord(recordOf(job(1, attempts=1))))
    client.zadd(prefix + "order", {"1": 1 * 2 ** 51 + 1})
    store = redisBackend.make()
    assert (yield wait(store.open())) == [job(1, attempts=1)]
    yield wait(store.addDead(job(1, attempts=2), 9))
    yield wait(store.close())
    assert client.hget(prefix + "meta", "version") == b"5"
    client.close()
    assert (yield reloadDead(redisBackend)) == ([], [dead(1, 9, attempts=2)])


# Kept results -------------------------------------------------------------------


def kept(n: int, status: str = "complete", result: bytes = b"", finishedAt: int = 1000,
         expiresAt: int = 5000, **kwargs: Any) -> KeptResult:
    return KeptResult(n, kwargs.pop("function", b"f"), kwargs.pop("unique", b"u%d" % n), status,
                      result, finishedAt, expiresAt, **kwargs)


@defer.inlineCallbacks
def reloadKept(backend: Backend) -> Any:
    """Open a fresh store on the same data: its jobs and its kept results; close it."""
    store = backend.make()
    jobs = yield wait(store.open())
    listed = yield wait(store.listKept())
    yield wait(store.close())
    return jobs, listed


@pytest_twisted.inlineCallbacks
def test_keptResultsSurviveARestart(backend: Backend) -> Any:
    """
    C{addKept} takes a job from the queue and keeps its result (binary
    bytes intact, status, size, times); kept results survive close/open,
    list newest first without their bytes, and are read by key.
    """
    store = backend.make()
    yield wait(store.open())
    yield wait(store.addMany([job(1), job(2, function=b"g"), job(3), job(4)]))
    binary = b"\x00\n\r\nOK 5\n" + os.urandom(70000) + b"\n"
    yield wait(defer.gatherResults([
        store.addKept(kept(1, result=binary, finishedAt=3000, expiresAt=9000)),
        store.addKept(kept(2, "exception", b"Traceback\x00", 2000, 8000, function=b"g")),
        store.addKept(kept(3, "fail", b"", 4000, 7000, kept=False, size=5 << 20))]))
    yield wait(store.close())
    jobs, listed = yield reloadKept(backend)
    assert jobs == [job(4)]
    assert listed == [kept(3, "fail", b"", 4000, 7000, kept=False, size=5 << 20),
                      kept(1, finishedAt=3000, expiresAt=9000, size=len(binary)),
                      kept(2, "exception", b"", 2000, 8000, function=b"g", size=10)]
    store = backend.make()
    yield wait(store.open())
    assert (yield wait(store.getKept(1))) == kept(1, result=binary, finishedAt=3000,
                                                  expiresAt=9000)
    assert (yield wait(store.getKept(2))).result == b"Traceback\x00"
    assert (yield wait(store.getKept(99))) is None
    assert (yield wait(store.listKept(1))) == listed[:1]
    yield wait(store.close())


@pytest_twisted.inlineCallbacks
def test_addKeptInTheBatchOfItsAdd(backend: Backend) -> Any:
    """An C{addKept} in the turn of the job's C{add} leaves it kept only, read after write."""
    store = backend.make()
    yield wait(store.open())
    store.add(job(5))
    store.addKept(kept(5, result=b"r"))
    assert (yield wait(store.getKept(5))) == kept(5, result=b"r")
    yield wait(store.close())
    assert (yield reloadKept(backend)) == ([], [kept(5, size=1)])


@pytest_twisted.inlineCallbacks
def test_expireKeptDeletesAnExpiryRange(backend: Backend) -> Any:
    """
    C{expireKept(now)} deletes the results expired at C{now} (expiry at
    most C{now}) and only those, durably; a replaced result expires at its
    new time.
    """
    store = backend.make()
    yield wait(store.open())
    for n, expiresAt in ((1, 30), (2, 10), (3, 20), (4, 40)):
        store.addKept(kept(n, result=b"x", expiresAt=expiresAt))
    store.addKept(kept(4, result=b"y", expiresAt=15))
    assert (yield wait(store.expireKept(9))) == 0
    assert (yield wait(store.expireKept(20))) == 3
    assert (yield wait(store.expireKept(20))) == 0
    yield wait(store.close())
    jobs, listed = yield reloadKept(backend)
    assert [k.key for k in listed] == [1]
    store = backend.make()
    yield wait(store.open())
    assert (yield wait(store.purgeKept([1, 99]))) == 1
    assert (yield wait(store.purgeKept([]))) == 0
    yield wait(store.close())
    assert (yield reloadKept(backend)) == ([], [])


@pytest_twisted.inlineCallbacks
def test_sqliteVersion5FileIsMigrated(sqliteBackend: SQLiteBackend) -> Any:
    """A version 5 file (no kept table) opens with its jobs and dead set, gets the kept table."""
    store = sqliteBackend.make()
    yield wait(store.open())
    yield wait(store.addMany([job(1), job(2)]))
    yield wait(store.addDead(job(2, attempts=1), 5))
    yield wait(store.close())
    with sqlite3.connect(sqliteBackend.path) as connection:
        connection.execute("DROP TABLE kept")
        connection.execute("UPDATE meta SET value = '5' WHERE name = 'version'")
    connection.close()
    assert (yield reloadDead(sqliteBackend)) == ([job(1)], [dead(2, 5, attempts=1)])
    store = sqliteBackend.make()
    yield wait(store.open())
    yield wait(store.addKept(kept(1, result=b"r")))
    yield wait(store.close())
    assert (yield reloadKept(sqliteBackend)) == ([], [kept(1, size=1)])
    with sqlite3.connect(sqliteBackend.path) as connection:
        assert connection.execute("SELECT value FROM meta WHERE name = 'version'").fetchone() == ("6",)
    connection.close()


@pytest_twisted.inlineCallbacks
def test_postgresVersion4TableIsMigrated(postgresBackend: PostgresBackend) -> Any:
    store = postgresBackend.make()
    yield wait(store.open())
    yield wait(store.add(job(1)))
    yield wait(store.close())
    schema = postgresBackend.schema
    postgresBackend.execute(f'DROP TABLE "{schema}".txgear_kept')
    postgresBackend.execute(f"UPDATE \"{schema}\".txgear_meta SET value = '4' WHERE name = 'version'")
    store = postgresBackend.make()
    assert (yield wait(store.open())) == [job(1)]
    yield wait(store.addKept(kept(1, result=b"r")))
    yield wait(store.close())
    assert (yield reloadKept(postgresBackend)) == ([], [kept(1, size=1)])


@pytest_twisted.inlineCallbacks
def test_redisVersion4QueueIsMigrated(redisBackend: RedisBackend) -> Any:
    store = redisBackend.make()
    yield wait(store.open())
    yield wait(store.add(job(1)))
    yield wait(store.close())
    client = redisBackend.client()
    client.hset(redisBackend.prefix + "meta", "version", "4")
    store = redisBackend.make()
    assert (yield wait(store.open())) == [job(1)]
    yield wait(store.addKept(kept(1, result=b"r")))
    yield wait(store.close())
    assert client.hget(redisBackend.prefix + "meta", "version") == b"5"
    client.close()
    assert (yield reloadKept(redisBackend)) == ([], [kept(1, size=1)])

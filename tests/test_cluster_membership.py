"""
The cluster membership (L{txgear.cluster.Membership}) against a real
PostgreSQL (C{TXGEAR_TEST_POSTGRESQL}, as the store contract), each test in a
schema of its own, dropped afterwards. Renewals are driven by an injected
L{Clock}; leases are judged by the database's clock, so a test ages a lease by
moving its row's timestamps back in SQL, never by sleeping.
"""
from __future__ import annotations

import threading
import uuid
from typing import Any, List

import pytest
import pytest_twisted
from twisted.internet.task import Clock

from tests._peers import freePort, requirePeer
from tests.test_store_contract import POSTGRESQL, _reactor, needsPsycopg, postgresAvailable, wait
from txgear.cluster import (DEFAULT_LEASE, Fence, LeaseLost, Membership, ServerIdInUse,
                            ServerInfo, fenceCondition, formatShowServers)
from txgear.errors import StoreError

# Every test here needs psycopg (even to parse a DSN); a CPython test run has it.
pytestmark = needsPsycopg


class Database:
    """A schema of one test's own, and plain SQL on it."""

    def __init__(self) -> None:
        requirePeer(postgresAvailable(), f"PostgreSQL at {POSTGRESQL!r}")
        self.schema = "txgear_cluster_test_" + uuid.uuid4().hex[:12]
        self.members: List[Membership] = []

    def member(self, serverId: str = "s1", address: str = "tcp:host=10.0.0.1:port=4730",
               cluster: str = "c1", clock: Any = None, **kwargs: Any) -> Membership:
        member = Membership(POSTGRESQL, cluster, serverId, address, reactor=_reactor(),
                            clock=clock if clock is not None else Clock(), schema=self.schema,
                            **kwargs)
        self.members.append(member)
        return member

    def execute(self, statement: str, params: Any = None) -> Any:
        import psycopg
        with psycopg.connect(POSTGRESQL, autocommit=True) as connection:
            cursor = connection.execute(statement, params)
            return cursor.fetchall() if cursor.description else cursor.rowcount

    def age(self, serverId: str, seconds: float, expired: bool = False) -> None:
        """Move a lease's renewal back by C{seconds}; end it now if C{expired}."""
        self.execute(
            f'UPDATE "{self.schema}".txgear_servers SET renewed_at = now() - make_interval('
            f'secs => %s), lease_expires = CASE WHEN %s THEN now() - interval \'1 ms\''
            f' ELSE lease_expires END WHERE id = %s', (seconds, expired, serverId))

    def cleanup(self) -> None:
        for member in self.members:
            pytest_twisted.blockon(wait(member.stopService()))
        self.execute(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')


@pytest.fixture
def db() -> Any:
    database = Database()
    yield database
    database.cleanup()
    left = [t.name for t in threading.enumerate() if t.name.startswith("txgear-cluster")]
    assert left == []


def ages(rows: List[ServerInfo]) -> List[float]:
    return [row.leaseAge for row in rows]


@pytest_twisted.ensureDeferred
async def test_joinListsTheServer(db: Database) -> None:
    member = db.member("s1", "tcp:host=10.0.0.1:port=4730")
    generation = await wait(member.join())
    assert member.generation == generation
    [row] = await wait(member.listServers())
    assert (row.id, row.address, row.generation, row.expired, row.jobsHeld) == (
        "s1", "tcp:host=10.0.0.1:port=4730", generation, False, 0)
    assert 0 <= row.leaseAge < DEFAULT_LEASE
    assert member.fence() == Fence("c1", "s1", generation)


@pytest_twisted.ensureDeferred
async def test_rejoinTakesANewGeneration(db: Database) -> None:
    """A restart (same id, same address) takes over its row with a new generation."""
    first = db.member("s1")
    g1 = await wait(first.join())
    restarted = db.member("s1")
    g2 = await wait(restarted.join())
    assert g2 > g1
    rows = await wait(restarted.listServers())
    assert [(r.id, r.generation) for r in rows] == [("s1", g2)]
    with pytest.raises(LeaseLost):
        await wait(first.renew())
    assert first.generation is None


@pytest_twisted.ensureDeferred
async def test_generationsNeverRepeatAfterLeave(db: Database) -> None:
    member = db.member("s1")
    g1 = await wait(member.join())
    await wait(member.leave())
    assert await wait(member.listServers()) == []
    g2 = await wait(member.join())
    assert g2 > g1


@pytest_twisted.ensureDeferred
async def test_renewRestartsTheLeaseByDatabaseTime(db: Database) -> None:
    member = db.member("s1")
    await wait(member.join())
    db.age("s1", 4.0)
    [before] = await wait(member.listServers())
    assert before.leaseAge >= 4.0
    await wait(member.renew())
    [after] = await wait(member.listServers())
    assert after.leaseAge < 4.0
    [[length]] = db.execute(f'SELECT extract(epoch FROM lease_expires - renewed_at)::float8'
                            f' FROM "{db.schema}".txgear_servers')
    assert length == DEFAULT_LEASE


@pytest_twisted.ensureDeferred
async def test_theInjectedClockDrivesRenewals(db: Database) -> None:
    clock = Clock()
    member = db.member("s1", clock=clock, lease=6.0, renewInterval=2.0)
    await wait(member.startService())
    db.age("s1", 3.0)
    clock.advance(1.9)
    await wait(member.lastRenewal)
    [notYet] = await wait(member.listServers())
    assert notYet.leaseAge >= 3.0
    clock.advance(0.1)
    await wait(member.lastRenewal)
    [renewed] = await wait(member.listServers())
    assert renewed.leaseAge < 3.0


@pytest_twisted.ensureDeferred
async def test_leasesAreJudgedByTheDatabaseClock(db: Database) -> None:
    """
    Local time running far ahead (a skewed or jumping clock) expires nothing
    in the database; only the lease's own timestamps do. Locally, the server
    stops trusting a lease it could not renew in time.
    """
    clock = Clock()
    member = db.member("s1", clock=clock)
    peer = db.member("s2", address="tcp:host=10.0.0.2:port=4730")
    await wait(member.join())
    await wait(peer.join())
    assert member.leaseValid()
    fence = member.fence()
    clock.advance(10 ** 6)
    assert not member.leaseValid()
    assert await wait(peer.expiredPeers()) == []
    assert await wait(member.holdsLease(fence))
    db.age("s1", DEFAULT_LEASE + 1, expired=True)
    [expired] = await wait(peer.expiredPeers())
    assert (expired.id, expired.expired) == ("s1", True)
    assert expired.leaseAge >= DEFAULT_LEASE + 1


@pytest_twisted.ensureDeferred
async def test_anExpiredLeaseIsFenced(db: Database) -> None:
    """
    Once its lease expired, a server cannot renew its old generation nor pass
    the fence with it; it rejoins with a new generation, and only that one
    writes.
    """
    member = db.member("s1")
    g1 = await wait(member.join())
    table = f'"{db.schema}".claimed'
    db.execute(f"CREATE TABLE {table} (key int PRIMARY KEY, claimed_by text,"
               f" claim_generation bigint, done boolean NOT NULL DEFAULT false)")
    db.execute(f"INSERT INTO {table} VALUES (1, 's1', %s)", (g1,))
    import psycopg
    from psycopg import sql
    update = sql.SQL("UPDATE {table} SET done = true WHERE key = 1 AND claimed_by ="
                     " %(fence_server)s AND claim_generation = %(fence_generation)s AND ").format(
                         table=sql.Identifier(db.schema, "claimed")) + fenceCondition(db.schema)

    def finish(fence: Fence) -> int:
        with psycopg.connect(POSTGRESQL, autocommit=True) as connection:
            return connection.execute(update, fence.params()).rowcount

    stale = member.fence()
    db.age("s1", DEFAULT_LEASE + 1, expired=True)
    assert finish(stale) == 0
    with pytest.raises(LeaseLost):
        await wait(member.renew())
    assert member.generation is None
    with pytest.raises(LeaseLost):
        member.fence()
    g2 = await wait(member.join())
    assert g2 > g1
    assert not await wait(member.holdsLease(stale))
    assert finish(stale) == 0
    db.execute(f"UPDATE {table} SET claim_generation = %s", (g2,))
    assert finish(member.fence()) == 1
    await wait(member.renew())


@pytest_twisted.ensureDeferred
async def test_theTimerRejoinsAfterALostLease(db: Database) -> None:
    clock = Clock()
    member = db.member("s1", clock=clock)
    lost: List[int] = []
    member.onLeaseLost = lost.append
    g1 = await wait(member.startService())
    db.age("s1", DEFAULT_LEASE + 1, expired=True)
    clock.advance(member.renewInterval)
    await wait(member.lastRenewal)
    assert lost == [g1]
    assert member.generation is not None and member.generation > g1
    [row] = await wait(member.listServers())
    assert (row.generation, row.expired) == (member.generation, False)


@pytest_twisted.ensureDeferred
async def test_aLeaseNotRenewedInTimeIsGivenUp(db: Database) -> None:
    """
    Renewals that cannot reach the database: once a lease has passed by the
    local clock since the last renewal was sent, the lease is dropped as
    lost (peers may be reclaiming its jobs already), at that moment rather
    than at the next tick, and reported once; the next tick rejoins.
    """
    clock = Clock()
    member = db.member("s1", clock=clock, lease=6.0, renewInterval=2.0)
    lost: List[int] = []
    member.onLeaseLost = lost.append
    g1 = await wait(member.startService())
    realRenew = member._renewInThread

    def unreachable(generation: int) -> bool:
        raise OSError("connection refused")
    member._renewInThread = unreachable  # type: ignore[method-assign]
    clock.advance(2.0)
    await wait(member.lastRenewal)
    clock.advance(2.0)
    await wait(member.lastRenewal)
    clock.advance(1.9)
    assert (lost, member.generation, member.leaseValid()) == ([], g1, True)
    clock.advance(0.1)
    assert (lost, member.generation, member.leaseValid()) == ([g1], None, False)
    member._renewInThread = realRenew  # type: ignore[method-assign]
    clock.advance(2.0)
    await wait(member.lastRenewal)
    assert lost == [g1]
    assert member.generation is not None and member.generation > g1 and member.leaseValid()


@pytest_twisted.ensureDeferred
async def test_stopLeaves(db: Database) -> None:
    clock = Clock()
    member = db.member("s1", clock=clock)
    peer = db.member("s2", address="tcp:host=10.0.0.2:port=4730")
    await wait(member.startService())
    await wait(peer.join())
    await wait(member.stopService())
    assert member.generation is None
    assert clock.getDelayedCalls() == []
    assert [r.id for r in await wait(peer.listServers())] == ["s2"]


@pytest_twisted.ensureDeferred
async def test_aStaleLeaveKeepsTheSuccessorsRow(db: Database) -> None:
    old = db.member("s1")
    await wait(old.join())
    new = db.member("s1")
    g2 = await wait(new.join())
    await wait(old.leave())
    assert [(r.id, r.generation) for r in await wait(new.listServers())] == [("s1", g2)]


@pytest_twisted.ensureDeferred
async def test_twoMembersOfOneCluster(db: Database) -> None:
    a = db.member("b-server", address="tcp:host=10.0.0.2:port=4730")
    b = db.member("a-server", address="tcp:host=10.0.0.1:port=4730")
    ga = await wait(a.join())
    gb = await wait(b.join())
    assert ga != gb
    for member in (a, b):
        rows = await wait(member.listServers())
        assert [(r.id, r.generation) for r in rows] == [("a-server", gb), ("b-server", ga)]


@pytest_twisted.ensureDeferred
async def test_twoClustersApart(db: Database) -> None:
    """Clusters sharing tables see only their own servers; an id may be in both."""
    one = db.member("s1", cluster="one")
    two = db.member("s1", cluster="two", address="tcp:host=10.0.0.9:port=4730")
    g1 = await wait(one.join())
    g2 = await wait(two.join())
    assert [(r.id, r.generation) for r in await wait(one.listServers())] == [("s1", g1)]
    assert [(r.id, r.address) for r in await wait(two.listServers())] == [
        ("s1", "tcp:host=10.0.0.9:port=4730")]
    db.age("s1", DEFAULT_LEASE + 1, expired=True)  # both clusters' s1
    assert [r.id for r in await wait(one.expiredPeers())] == ["s1"]
    await wait(one.join())
    assert await wait(one.expiredPeers()) == []
    assert [r.id for r in await wait(two.expiredPeers())] == ["s1"]
    assert not await wait(one.holdsLease(Fence("one", "s1", g2)))


@pytest_twisted.ensureDeferred
async def test_anIdHeldLiveAtAnotherAddressIsRefused(db: Database) -> None:
    first = db.member("s1", address="tcp:host=10.0.0.1:port=4730")
    g1 = await wait(first.join())
    other = db.member("s1", address="tcp:host=10.0.0.2:port=4730")
    with pytest.raises(ServerIdInUse) as raised:
        await wait(other.join())
    assert "10.0.0.1" in str(raised.value)
    assert other.generation is None
    await wait(first.renew())
    db.age("s1", DEFAULT_LEASE + 1, expired=True)
    assert await wait(other.join()) > g1


@pytest_twisted.ensureDeferred
async def test_showServersEscapesPeerValues(db: Database) -> None:
    member = db.member("s\t1\n.\\", address="tcp:host=10.0.0.1:port=4730\r\n")
    generation = await wait(member.join())
    reply = await wait(member.showServers())
    lines = reply.split(b"\n")
    assert lines[-2:] == [b".", b""] and len(lines) == 3
    fields = lines[0].split(b"\t")
    assert fields[0] == b"s\\x091\\x0a.\\x5c"
    assert fields[1] == b"tcp:host=10.0.0.1:port=4730\\x0d\\x0a"
    assert fields[3:] == [b"0", b"%d" % generation, b"live"]
    assert 0 <= float(fields[2]) < DEFAULT_LEASE


def test_formatShowServers() -> None:
    rows = [ServerInfo("a", "tcp:host=x:port=1", 7, 1.26, False, 3),
            ServerInfo("b b", "h\xe9", 9, 12.0, True, 0),
            ServerInfo("c", "d", 1, -0.01, False, 0)]
    assert formatShowServers(rows) == (
        b"a\ttcp:host=x:port=1\t1.3\t3\t7\tlive\n"
        b"b b\th\xc3\xa9\t12.0\t0\t9\texpired\n"
        b"c\td\t0.0\t0\t1\tlive\n"
        b".\n")
    assert formatShowServers([]) == b".\n"


@pytest_twisted.ensureDeferred
async def test_anUnreachableDatabaseFailsTheJoin() -> None:
    port = freePort()
    member = Membership(f"host=127.0.0.1 port={port} dbname=test user=postgres", "c1", "s1",
                        "tcp:4730", reactor=_reactor(), clock=Clock())
    with pytest.raises(StoreError):
        await wait(member.join())
    assert member.generation is None
    await wait(member.stopService())


def test_theRenewalIntervalIsShorterThanTheLease() -> None:
    with pytest.raises(ValueError):
        Membership("dbname=test", "c1", "s1", "tcp:4730", reactor=Clock(), lease=2.0,
                   renewInterval=2.0)
    with pytest.raises(ValueError):
        Membership("dbname='", "c1", "s1", "tcp:4730", reactor=Clock())

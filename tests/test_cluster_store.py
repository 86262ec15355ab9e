"""
Two (or three) cluster members in one process against a real PostgreSQL:
each a L{JobServerState} with a L{ClusterJobStore} and a
L{ClusterCoordinator} (no LISTEN thread; polls only when a test asks), with
fake connections. Leases are aged in SQL, never by sleeping.
"""
from __future__ import annotations

import uuid
from typing import Any, Callable, List

import pytest
import pytest_twisted
from twisted.internet import defer, task

from tests._peers import requirePeer
from tests.test_server_state import P, FakePeer
from tests.test_store_contract import POSTGRESQL, _reactor, needsPsycopg, postgresAvailable, wait
from txgear.server._policy import PolicyTable, RetryPolicy
from txgear.server._state import JobServerState

# Every test here needs psycopg (even to parse a DSN); a CPython test run has it.
pytestmark = needsPsycopg


class Member:
    """One server of the cluster: state, store, membership, coordinator."""

    def __init__(self, schema: str, serverId: str, cluster: str = "c1", **stateArgs: Any) -> None:
        from txgear.cluster._coordinator import ClusterCoordinator
        from txgear.cluster._setup import makeClusterStore
        self.store, self.membership = makeClusterStore(
            f"postgresql:{POSTGRESQL} schema={schema}", cluster, serverId, _reactor())
        self.state = JobServerState(clock=_reactor(), handlePrefix=b"H:" + cluster.encode(),
                                    store=self.store, **stateArgs)
        self.coordinator = ClusterCoordinator(self.state, self.store, clock=_reactor(),
                                              poll=3600.0, listen=False)

    def connect(self) -> Any:
        peer = FakePeer()
        return self.state.connect(peer), peer

    def worker(self, function: bytes = b"f") -> Any:
        session, peer = self.connect()
        self.state.canDo(session, function)
        return session, peer


class Cluster:
    def __init__(self) -> None:
        requirePeer(postgresAvailable(), f"PostgreSQL at {POSTGRESQL!r}")
        self.schema = "txgear_cluster_store_" + uuid.uuid4().hex[:12]
        self.members: List[Member] = []

    @defer.inlineCallbacks
    def member(self, serverId: str, **stateArgs: Any) -> Any:
        member = Member(self.schema, serverId, **stateArgs)
        self.members.append(member)
        loaded = yield wait(member.store.open())
        assert loaded == []
        return member

    def execute(self, statement: str, params: Any = None) -> Any:
        import psycopg
        with psycopg.connect(POSTGRESQL, autocommit=True) as connection:
            cursor = connection.execute(statement.replace("@", f'"{self.schema}".txgear_'),
                                        params)
            return cursor.fetchall() if cursor.description else cursor.rowcount

    def rows(self) -> List[Any]:
        return self.execute("SELECT key, state, claimed_by, started, lost, attempts"
                            " FROM @cluster_jobs ORDER BY key")

    def expire(self, serverId: str) -> None:
        self.execute("UPDATE @servers SET lease_expires = now() - interval '1 ms' WHERE id = %s",
                     (serverId,))

    def cleanup(self) -> None:
        for member in self.members:
            pytest_twisted.blockon(wait(member.store.close()))
        self.execute(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')


@pytest.fixture
def cluster() -> Any:
    c = Cluster()
    yield c
    c.cleanup()


@defer.inlineCallbacks
def until(condition: Callable[[], Any], what: str, timeout: float = 10.0) -> Any:
    """Let the reactor run until C{condition()} is true (bounded)."""
    for _ in range(int(timeout / 0.01)):
        if condition():
            return
        yield task.deferLater(_reactor(), 0.01, lambda: None)
    raise AssertionError(f"timed out waiting for {what}")


@defer.inlineCallbacks
def holding(member: Member, *jobs: Any) -> Any:
    """
    A sleeping worker for C{f} on C{member}, then background jobs of C{f}
    (payloads, or (unique, payload) pairs) submitted there and held there
    (written claimed by it). Returns the worker, its peer, the client's peer
    and the handles.
    """
    worker, wpeer = member.worker()
    member.state.grab(worker)
    member.state.preSleep(worker)
    client, cpeer = member.connect()
    for job in jobs:
        unique, payload = job if isinstance(job, tuple) else (b"", job)
        member.state.submit(client, b"f", unique, payload, background=True)
    yield until(lambda: len(member.state.jobs) == len(jobs) and all(
        j.storeState == 2 for j in member.state.jobs.values()), "the jobs held")
    handles = [args[0] for kind, args in cpeer.take() if kind == P.JOB_CREATED]
    wpeer.take()
    return worker, wpeer, cpeer, handles


def created(peer: FakePeer) -> Callable[[], Any]:
    return lambda: any(kind == P.JOB_CREATED for kind, _ in peer.packets)


def handleOf(peer: FakePeer) -> bytes:
    (kind, args), = [p for p in peer.take() if p[0] == P.JOB_CREATED]
    return args[0]


@defer.inlineCallbacks
def submitted(member: Member, function: bytes = b"f", payload: bytes = b"x") -> Any:
    """A background job submitted to C{member}, once created: its client, peer, handle."""
    client, peer = member.connect()
    member.state.submit(client, function, b"", payload, background=True)
    yield until(created(peer), "JOB_CREATED")
    return client, peer, handleOf(peer)


@pytest_twisted.inlineCallbacks
def test_aJobWithoutLocalWorkersIsQueuedForAnyServerAndRunsWhereAWorkerIsIdle(cluster):
    a = yield cluster.member("a")
    b = yield cluster.member("b")
    _, _, handle = yield submitted(a, payload=b"payload")
    assert handle.startswith(b"H:c1:")
    assert a.state.jobs == {}  # not held on a: it has no worker for f
    [(key, state, claimedBy, started, lost, attempts)] = cluster.rows()
    assert (state, claimedBy) == (0, None) and handle == b"H:c1:%d" % key

    worker, wpeer = b.worker()
    b.state.grab(worker)  # NO_JOB: b asks the shared queue
    assert wpeer.take() == [(P.NO_JOB, [])]
    b.state.preSleep(worker)
    yield until(lambda: handle in b.state.jobs, "b claiming the job")
    assert wpeer.take() == [(P.NOOP, [])]
    b.state.grab(worker)
    assert wpeer.take() == [(P.JOB_ASSIGN_UNIQ, [handle, b"f", b"", b"payload"])]
    yield until(lambda: cluster.rows()[0][3], "the start recorded")
    assert cluster.rows()[0][1:3] == (1, "b")
    b.state.workEnd(worker, P.WORK_COMPLETE, handle, handle + b"\0done")
    yield until(lambda: cluster.rows() == [], "the row deleted")


@pytest_twisted.inlineCallbacks
def test_aServerWithAnIdleWorkerKeepsItsSubmissionWithoutAClaim(cluster):
    a = yield cluster.member("a")
    worker, wpeer = a.worker()
    a.state.grab(worker)
    a.state.preSleep(worker)
    wpeer.take()
    client, cpeer = a.connect()
    a.state.submit(client, b"f", b"", b"x", background=True)
    yield until(created(cpeer), "JOB_CREATED")
    handle = handleOf(cpeer)
    assert cluster.rows()[0][1:3] == (1, "a")
    assert a.coordinator.claimed == 0 and handle in a.state.jobs
    assert wpeer.take() == [(P.NOOP, [])]


@pytest_twisted.inlineCallbacks
def test_theSameUniqueOnTwoServersIsOneJob(cluster):
    a = yield cluster.member("a")
    b = yield cluster.member("b")
    c1, p1 = a.connect()
    c2, p2 = b.connect()
    a.state.submit(c1, b"f", b"u-1", b"x", background=True)
    b.state.submit(c2, b"f", b"u-1", b"y", background=True)
    yield until(lambda: created(p1)() and created(p2)(), "both JOB_CREATEDs")
    assert handleOf(p1) == handleOf(p2)
    assert len(cluster.rows()) == 1
    assert a.state.jobs == {} and b.state.jobs == {}
    # GET_STATUS_UNIQUE and GET_STATUS of it on either server, from the shared queue.
    b.state.getStatusUnique(c2, b"u-1")
    yield until(lambda: p2.packets, "STATUS_RES_UNIQUE")
    assert p2.take() == [(P.STATUS_RES_UNIQUE, [b"u-1", b"1", b"0", b"0", b"0", b"0"])]


@pytest_twisted.inlineCallbacks
def test_statusOfAClusterHandleKeepsTheConnectionsReplyOrder(cluster):
    a = yield cluster.member("a")
    b = yield cluster.member("b")
    _, _, handle = yield submitted(a)
    c2, p2 = b.connect()
    b.state.getStatus(c2, handle)
    b.state.getStatus(c2, b"H:c1:1")  # unknown to everybody
    b.state.getStatus(c2, b"H:other:5")  # not a cluster handle: answered at once, in order
    assert p2.packets == []
    yield until(lambda: len(p2.packets) == 3, "three statuses")
    assert p2.take() == [(P.STATUS_RES, [handle, b"1", b"0", b"0", b"0"]),
                         (P.STATUS_RES, [b"H:c1:1", b"0", b"0", b"0", b"0"]),
                         (P.STATUS_RES, [b"H:other:5", b"0", b"0", b"0", b"0"])]


@pytest_twisted.inlineCallbacks
def test_aDeadServersJobsComeBackAndARunningOneCountsAnAttempt(cluster):
    a = yield cluster.member("a", policies=PolicyTable(RetryPolicy.fromJobRetries(2)))
    b = yield cluster.member("b", policies=PolicyTable(RetryPolicy.fromJobRetries(2)))
    worker, wpeer, _, _ = yield holding(a, b"one", b"two")
    a.state.grab(worker)
    [(kind, args)] = wpeer.take()
    running = args[0]
    yield until(lambda: any(r[3] for r in cluster.rows()), "the start recorded")

    cluster.expire("a")  # a is dead as far as the cluster can tell
    yield wait(b.store.reclaim(60.0))
    rows = {r[0]: r for r in cluster.rows()}
    assert all(r[1] == 0 and r[2] is None for r in rows.values())
    runningKey = int(running.rsplit(b":", 1)[1])
    assert rows[runningKey][4] is True  # lost while running
    assert [r[4] for k, r in rows.items() if k != runningKey] == [False]

    # a, fenced, finishes its job: nothing is written.
    a.state.workEnd(worker, P.WORK_COMPLETE, running, running + b"\0late")
    # A store call runs after every write issued before it: the fenced delete is done.
    yield wait(a.store.countDead())
    assert len(cluster.rows()) == 2

    bworker, bpeer = b.worker()
    b.state.grab(bworker)
    yield until(lambda: len(b.state.jobs) == 2, "b claiming both")
    assert b.state.jobs[running].attempts == 1  # the lost run counted
    assert b.state.jobs[running].lastError == b"server lost"
    yield until(lambda: [r[5] for r in cluster.rows() if r[0] == runningKey] == [1],
                "the attempt written")


@pytest_twisted.inlineCallbacks
def test_aLostLeaseDropsEverythingHeldAndRejoinsWithANewGeneration(cluster):
    a = yield cluster.member("a")
    worker, wpeer, _, _ = yield holding(a, b"x", b"y")
    a.state.grab(worker)
    [(kind, args)] = wpeer.take()
    old = a.membership.generation
    cluster.expire("a")
    yield wait(a.membership.renew().addErrback(lambda f: f.trap(Exception)))
    a.coordinator._leaseLost(old)
    assert a.state.jobs == {} and a.coordinator.dropped == 2
    # What the worker still says of its job is dropped quietly.
    a.state.workEnd(worker, P.WORK_COMPLETE, args[0], args[0] + b"\0r")
    assert wpeer.take() == []
    yield wait(a.membership.join())
    assert a.membership.generation > old


@pytest_twisted.inlineCallbacks
def test_closingGivesBackWhatWasClaimedButNotStarted(cluster):
    a = yield cluster.member("a")
    worker, wpeer, _, _ = yield holding(a, b"1", b"2", b"3")
    a.state.grab(worker)
    yield until(lambda: sum(1 for r in cluster.rows() if r[3]) == 1, "one started")
    cluster.members.remove(a)
    yield wait(a.store.close())
    states = sorted((r[1], r[3]) for r in cluster.rows())
    # The unstarted two are queued again; the started one waits for the lease to lapse
    # (the server left: its row is gone, so any member reclaims it at once).
    assert states == [(0, False), (0, False), (1, True)]
    assert cluster.execute("SELECT count(*) FROM @servers")[0][0] == 0


@pytest_twisted.inlineCallbacks
def test_aRetryOfAHeldJobIsWrittenAndStaysHere(cluster):
    policies = PolicyTable(RetryPolicy.fromJobRetries(3))
    policies.set(b"f", "attempts:3,on:fail")
    a = yield cluster.member("a", policies=policies)
    worker, wpeer, _, _ = yield holding(a, b"x")
    a.state.grab(worker)
    [(kind, args)] = wpeer.take()
    a.state.workEnd(worker, P.WORK_FAIL, args[0], args[0])
    yield until(lambda: cluster.rows()[0][5] == 1, "the attempt written")
    assert cluster.rows()[0][1:4] == (1, "a", False)


@pytest_twisted.inlineCallbacks
def test_showServersAndClusterStatus(cluster):
    a = yield cluster.member("a")
    b = yield cluster.member("b")
    yield submitted(a, b"f\x01")
    listing = yield wait(b.coordinator.showServers())
    lines = listing.split(b"\n")
    assert lines[-2:] == [b".", b""]
    assert [line.split(b"\t")[0] for line in lines[:-2]] == [b"a", b"b"]
    assert all(line.split(b"\t")[5] == b"live" for line in lines[:-2])
    from txgear._admintext import formatClusterStatus
    rows = yield wait(b.coordinator.clusterStatus())
    assert formatClusterStatus(rows) == b"f\\x01\t1\t0\n.\n"


@pytest_twisted.inlineCallbacks
def test_metricsSayWhatIsLocalAndWhatIsClusterWide(cluster):
    pytest.importorskip("prometheus_client")
    from prometheus_client.exposition import generate_latest

    from txgear.web._metrics import metricsRegistry
    a = yield cluster.member("a")
    b = yield cluster.member("b")
    yield submitted(a)
    registry = metricsRegistry(b.state, None, _reactor())
    generate_latest(registry)  # the first scrape starts the look at the shared queue

    def scraped() -> bytes:
        return generate_latest(registry)
    yield until(lambda: b'gearman_cluster_jobs_queued{function="f"} 1.0' in scraped(),
                "the cluster-wide gauge")
    text = scraped()
    assert b"gearman_cluster_lease_valid 1.0" in text
    assert b"gearman_cluster_jobs_claimed_total 0.0" in text
    # Local gauges count what this server holds: nothing.
    assert b'gearman_function_jobs_queued{function="f"' not in text


def test_aFailureEveryTickIsLoggedOnceUntilItWorksAgain():
    from twisted.logger import capturedLogs

    from txgear.cluster._coordinator import ClusterCoordinator
    from txgear.cluster._setup import makeClusterStore
    store, _ = makeClusterStore("postgresql:host=127.0.0.1 dbname=x", "c1", "a")
    coordinator = ClusterCoordinator(JobServerState(clock=task.Clock(), store=store), store,
                                     clock=task.Clock(), listen=False)
    with capturedLogs() as events:
        for _ in range(3):
            coordinator._trouble("reclaim", "Reclaiming failed: {error}", error="down")
        coordinator._fine("claim", "Claiming jobs")  # never failed: nothing to say
        coordinator._fine("reclaim", "Reclaiming jobs")
        coordinator._trouble("reclaim", "Reclaiming failed: {error}", error="down again")
    texts = [e["log_format"].format(**{k: v for k, v in e.items() if not k.startswith("log_")})
             for e in events]
    assert texts == ["Reclaiming failed: down (logged once until it works again)",
                     "Reclaiming jobs works again",
                     "Reclaiming failed: down again (logged once until it works again)"]


@pytest_twisted.inlineCallbacks
def test_aLocalCopyKeptForAForegroundClientBecomesTheClusterJobWhenClaimed(cluster):
    a = yield cluster.member("a")
    # As if the foreground client attached after the batch left: written queued.
    a.store.decideClaim = lambda job: False
    background, bpeer = a.connect()
    foreground, fpeer = a.connect()
    a.state.submit(background, b"f", b"u", b"x", background=True)
    a.state.submit(foreground, b"f", b"u", b"x")
    yield until(created(bpeer), "JOB_CREATED")
    handle = handleOf(bpeer)
    job = a.state.jobs[handle]
    assert job.clients == [foreground] and not job.background and job.storeState == 0
    assert cluster.rows()[0][1] == 0  # queued for any server
    worker, wpeer = a.worker()
    a.state.grab(worker)  # the local copy is queued here
    [(kind, args)] = wpeer.take()
    assert (kind, args[0]) == (P.JOB_ASSIGN_UNIQ, handle)
    a.state.grab(worker)  # nothing else: a claims the row, which is this very job
    assert wpeer.take() == [(P.NO_JOB, [])]
    yield until(lambda: cluster.rows()[0][1] == 1, "the row claimed by a")
    assert a.state.jobs[handle] is job and job.background and job.storeState == 2
    a.state.workEnd(worker, P.WORK_COMPLETE, handle, handle + b"\0r")
    assert [p[0] for p in fpeer.take()] == [P.JOB_CREATED, P.WORK_COMPLETE]
    yield until(lambda: cluster.rows() == [], "the row deleted")


@pytest_twisted.inlineCallbacks
def test_theDeadSetAndKeptResultsAreSharedByTheMembers(cluster):
    policies = PolicyTable(RetryPolicy.fromJobRetries(0))
    policies.set(b"f", "attempts:1,on:fail,keep:1h")
    a = yield cluster.member("a", policies=policies)
    b = yield cluster.member("b", policies=policies)
    worker, wpeer, _, handles = yield holding(a, (b"dies", b"x"), (b"lives", b"y"))
    for outcome in (P.WORK_FAIL, P.WORK_COMPLETE):
        a.state.grab(worker)
        [(kind, args)] = wpeer.take()
        body = args[0] + (b"\0result" if outcome == P.WORK_COMPLETE else b"")
        a.state.workEnd(worker, outcome, args[0], body)
    yield until(lambda: cluster.rows() == [], "both finished")
    dead, = a.state.dead.newest()
    assert len(b.state.dead) == 0 and b.state.kept.get(handles[1]) is None

    b.coordinator._syncShared()
    yield until(lambda: not b.coordinator._syncing, "b's look at the shared tables")
    assert [e.handle for e in b.state.dead.newest()] == [dead.handle]
    assert b.state.kept.get(handles[1]).status == "complete"
    assert b.state.kept.byUnique(b"f", b"lives") is not None

    # b retries the dead job: a forgets it at its next look.
    assert b.state.retryDeadJob(dead.handle) is None
    yield until(lambda: any(r[0] == dead.key for r in cluster.rows()), "the job back")
    a.coordinator._syncShared()
    yield until(lambda: not a.coordinator._syncing, "a's look at the shared tables")
    assert len(a.state.dead) == 0

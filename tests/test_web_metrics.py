"""
Tests for C{/metrics} (txgear.web._metrics): every metric checked against
known traffic, driven through the real state and protocol over
StringTransport, with a task.Clock; the text is parsed back with
prometheus_client's parser.
"""
from __future__ import annotations

from collections import deque
from typing import Any, Dict, FrozenSet, Tuple

import pytest
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.web.test.requesthelper import DummyRequest

from tests.test_server_protocol import Conn
from txgear._packet import PacketType, encodeRequest, encodeResponse
from txgear.server import GearmanServerFactory, JobServerState
from txgear.web import makeSite
from txgear.web._metrics import CONTENT_TYPE, MetricsResource, functionLabel, metricsRegistry

P = PacketType
Samples = Dict[Tuple[str, FrozenSet[Tuple[str, str]]], float]


def scrape(factory: GearmanServerFactory) -> Samples:
    """Render C{/metrics} through its resource and parse it back."""
    state = factory.state
    resource = MetricsResource(metricsRegistry(state, factory, state.clock))
    request = DummyRequest([b""])
    body = resource.render(request)
    assert request.responseHeaders.getRawHeaders(b"content-type") == [CONTENT_TYPE]
    samples: Samples = {}
    for family in text_string_to_metric_families(body.decode("utf-8")):
        for sample in family.samples:
            key = (sample.name, frozenset(sample.labels.items()))
            assert key not in samples, key  # no duplicate series
            samples[key] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def bucket(samples: Samples, name: str, le: str, **labels: str) -> float:
    return value(samples, name + "_bucket", le=le, **labels)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def factory(clock: Clock) -> GearmanServerFactory:
    return GearmanServerFactory(JobServerState(clock=clock, handlePrefix=b"H:t", jobRetries=1))


def handles(conn: Conn, count: int) -> list:
    packets = conn.packets()
    assert [kind for kind, _ in packets] == [P.JOB_CREATED] * count
    return [args[0] for _, args in packets]


def test_jobOutcomesSubmissionsAndHistograms(factory: GearmanServerFactory, clock: Clock) -> None:
    """
    Known traffic: 4 foreground and 2 background jobs of C{f} end complete,
    fail, exception, cancelled, lost (worker gone), lost (client gone); one
    job of C{slow} times out. The background job whose worker was lost with
    no attempt left enters the dead set: counted lost and dead.
    """
    client, worker, admin = Conn(factory), Conn(factory), Conn(factory)
    worker.send(P.CAN_DO, b"f")
    for _ in range(3):
        client.send(P.SUBMIT_JOB, b"f", b"", b"x")
    client.send(P.SUBMIT_JOB_BG, b"f", b"", b"x")
    client.send(P.SUBMIT_JOB_BG, b"f", b"", b"x")
    h1, h2, h3, h4, h5 = handles(client, 5)
    clock.advance(0.003)
    worker.send(P.GRAB_JOB_UNIQ)
    clock.advance(2)
    worker.send(P.WORK_COMPLETE, h1, b"done")
    worker.send(P.GRAB_JOB_UNIQ)
    worker.send(P.WORK_FAIL, h2)
    worker.send(P.GRAB_JOB_UNIQ)
    worker.send(P.WORK_EXCEPTION, h3, b"boom")
    admin.sendBytes(b"cancel job " + h4 + b"\n")
    assert admin.text() == b"OK\r\n"
    worker.send(P.GRAB_JOB_UNIQ)
    worker.packets()
    worker.close()  # holding h5, with --job-retries 1: lost, and dead (background)
    late = Conn(factory)
    late.send(P.SUBMIT_JOB, b"f", b"", b"x")
    handles(late, 1)
    late.close()  # nobody runs it, nobody waits for it: lost
    # f has no worker and no job now: forgotten, its counters kept.
    assert b"f" not in factory.state.functions

    slowWorker = Conn(factory)
    slowWorker.send(P.CAN_DO_TIMEOUT, b"slow", b"1000")
    client.send(P.SUBMIT_JOB, b"slow", b"", b"x")
    slowWorker.send(P.GRAB_JOB_UNIQ)
    clock.advance(1)

    samples = scrape(factory)
    submitted = "gearman_function_jobs_submitted_total"
    assert value(samples, submitted, function="f", mode="foreground") == 4
    assert value(samples, submitted, function="f", mode="background") == 2
    assert value(samples, submitted, function="slow", mode="foreground") == 1
    assert value(samples, submitted, function="slow", mode="background") == 0
    finished = "gearman_function_jobs_finished_total"
    expected = {"complete": 1, "fail": 1, "exception": 1, "timeout": 0, "cancelled": 1,
                "lost": 2, "retried": 0, "dead": 1}
    for outcome, count in expected.items():
        assert value(samples, finished, function="f", outcome=outcome) == count, outcome
    assert value(samples, finished, function="slow", outcome="timeout") == 1
    assert value(samples, finished, function="slow", outcome="complete") == 0

    wait = "gearman_function_queue_wait_seconds"
    # h1 waited 3 ms; h2, h3 and h5 2.003 s.
    assert bucket(samples, wait, "0.001", function="f") == 0
    assert bucket(samples, wait, "0.005", function="f") == 1
    assert bucket(samples, wait, "1.0", function="f") == 1
    assert bucket(samples, wait, "5.0", function="f") == 4
    assert bucket(samples, wait, "+Inf", function="f") == 4
    assert value(samples, wait + "_count", function="f") == 4
    assert value(samples, wait + "_sum", function="f") == pytest.approx(0.003 + 3 * 2.003)
    run = "gearman_function_run_seconds"
    # h1 ran 2 s; h2, h3 and h5 ended at once.
    assert bucket(samples, run, "0.001", function="f") == 3
    assert bucket(samples, run, "1.0", function="f") == 3
    assert bucket(samples, run, "5.0", function="f") == 4
    assert value(samples, run + "_sum", function="f") == pytest.approx(2.0)
    assert bucket(samples, run, "0.5", function="slow") == 0
    assert bucket(samples, run, "1.0", function="slow") == 1


def test_gaugesPerFunction(factory: GearmanServerFactory, clock: Clock) -> None:
    """Queued by priority, running, workers and the oldest queued job's age."""
    client = Conn(factory)
    clock.advance(100)
    client.send(P.SUBMIT_JOB_LOW_BG, b"g", b"", b"x")
    (low,) = handles(client, 1)
    clock.advance(3)
    for kind in (P.SUBMIT_JOB_HIGH_BG, P.SUBMIT_JOB_HIGH_BG, P.SUBMIT_JOB_BG, P.SUBMIT_JOB_BG,
                 P.SUBMIT_JOB_BG):
        client.send(kind, b"g", b"", b"x")
    handles(client, 5)
    first, second = Conn(factory), Conn(factory)
    first.send(P.CAN_DO, b"g")
    second.send(P.CAN_DO, b"g")
    second.send(P.CAN_DO, b"idle")
    first.send(P.GRAB_JOB_UNIQ)  # a HIGH one
    clock.advance(7)

    samples = scrape(factory)
    queued = "gearman_function_jobs_queued"
    assert value(samples, queued, function="g", priority="high") == 1
    assert value(samples, queued, function="g", priority="normal") == 3
    assert value(samples, queued, function="g", priority="low") == 1
    assert value(samples, "gearman_function_jobs_running", function="g") == 1
    assert value(samples, "gearman_function_workers", function="g") == 2
    assert value(samples, "gearman_function_workers", function="idle") == 1
    assert value(samples, "gearman_functions") == 2
    age = "gearman_function_oldest_queued_job_age_seconds"
    assert value(samples, age, function="g") == 10.0
    assert value(samples, age, function="idle") == 0.0
    # Counters appear with a function's first job.
    assert ("gearman_function_jobs_submitted_total",
            frozenset({("function", "idle"), ("mode", "foreground")})) not in samples

    # The oldest one leaves (a dead head of its queue): the next is 7 s old.
    assert factory.state.cancel(low)
    assert value(scrape(factory), age, function="g") == 7.0


def test_serverCounters(factory: GearmanServerFactory) -> None:
    """Connections by role, bytes in and out, packets by type, errors by code."""
    sent = 0
    received = 0

    def send(conn: Conn, kind: int, *args: bytes) -> None:
        nonlocal sent
        data = encodeRequest(kind, *args)
        sent += len(data)
        conn.sendBytes(data)

    def drain(*conns: Conn) -> None:
        nonlocal received
        for conn in conns:
            received += len(conn.text())

    client, worker, admin, echo = Conn(factory), Conn(factory), Conn(factory), Conn(factory)
    send(client, P.SUBMIT_JOB, b"f", b"", b"payload")
    send(worker, P.CAN_DO, b"f")
    send(worker, P.GRAB_JOB_UNIQ)
    send(echo, P.ECHO_REQ, b"ping")
    admin.sendBytes(b"status\n")
    sent += len(b"status\n")
    drain(client, worker, admin, echo)
    samples = scrape(factory)
    connections = "gearman_connections"
    assert value(samples, connections, role="client") == 2  # the submitter; echo did nothing else
    assert value(samples, connections, role="worker") == 1
    assert value(samples, connections, role="admin") == 1

    # A worker that submits is a client until it asks for work again.
    send(worker, P.SUBMIT_JOB_BG, b"other", b"", b"")
    samples = scrape(factory)
    assert value(samples, connections, role="client") == 3
    assert value(samples, connections, role="worker") == 0
    send(worker, P.PRE_SLEEP)
    admin.close()
    client.close()
    samples = scrape(factory)
    assert value(samples, connections, role="client") == 1
    assert value(samples, connections, role="worker") == 1
    assert value(samples, connections, role="admin") == 0

    # Errors, by code.
    send(echo, P.SUBMIT_JOB, b"f", b"u" * 65, b"")
    send(echo, P.OPTION_REQ, b"nonsense")
    send(worker, P.WORK_COMPLETE, b"H:t:404", b"")
    send(worker, P.WORK_FAIL, b"H:t:405")
    bad = encodeResponse(P.ECHO_RES, b"x")  # a response magic on a request
    sent += len(bad)
    echo.sendBytes(bad)
    drain(worker, echo)
    samples = scrape(factory)
    errors = "gearman_errors_sent_total"
    assert value(samples, errors, code="ARGUMENT_TOO_LARGE") == 1
    assert value(samples, errors, code="UNKNOWN_OPTION") == 1
    assert value(samples, errors, code="JOB_NOT_FOUND") == 2
    assert value(samples, errors, code="INVALID_MAGIC") == 1

    packets = "gearman_packets_received_total"
    expected = {"SUBMIT_JOB": 2, "CAN_DO": 1, "GRAB_JOB_UNIQ": 1, "ECHO_REQ": 1,
                "admin_text": 1, "SUBMIT_JOB_BG": 1, "PRE_SLEEP": 1, "OPTION_REQ": 1,
                "WORK_COMPLETE": 1, "WORK_FAIL": 1}
    got = {dict(labels)["type"]: count for (name, labels), count in samples.items()
           if name == packets}
    assert got == expected
    assert value(samples, "gearman_received_bytes_total") == sent
    factory.flush()
    assert value(scrape(factory), "gearman_sent_bytes_total") == received


class _SlowStore:
    """A store whose every batch waits for the test to answer it."""

    def __init__(self) -> None:
        self.batches: list = []

    def addMany(self, jobs: Any) -> Deferred:
        d: Deferred = Deferred()
        self.batches.append((list(jobs), d))
        return d

    def remove(self, job: Any) -> Deferred:
        return succeed(None)


def test_storeCommitLatencyAndPendingJobs(clock: Clock) -> None:
    store = _SlowStore()
    factory = GearmanServerFactory(JobServerState(clock=clock, handlePrefix=b"H:t", store=store))
    client = Conn(factory)
    for _ in range(3):
        client.send(P.SUBMIT_JOB_BG, b"f", b"", b"x")
    samples = scrape(factory)
    assert value(samples, "gearman_store_pending_jobs") == 3  # this turn's batch
    clock.advance(0)  # the batch goes to the store
    assert len(store.batches) == 1
    assert value(scrape(factory), "gearman_store_pending_jobs") == 3
    clock.advance(0.02)
    store.batches[0][1].callback(None)
    client.send(P.SUBMIT_JOB_BG, b"f", b"", b"y")
    clock.advance(0)
    clock.advance(3)
    store.batches[1][1].errback(RuntimeError("disk full"))
    samples = scrape(factory)
    assert value(samples, "gearman_store_pending_jobs") == 0
    commit = "gearman_store_commit_seconds"
    assert bucket(samples, commit, "0.01") == 0
    assert bucket(samples, commit, "0.025") == 1
    assert bucket(samples, commit, "2.5") == 1
    assert bucket(samples, commit, "5.0") == 2
    assert value(samples, commit + "_sum") == pytest.approx(3.02)
    # The refused job's submitter got one ERROR, counted; the job was lost.
    assert value(samples, "gearman_errors_sent_total", code="QUEUE_ERROR") == 1
    assert value(samples, "gearman_function_jobs_finished_total", function="f",
                 outcome="lost") == 1


def test_deadSetCountedAndGauged(clock: Clock) -> None:
    """
    A background job that uses up its attempts counts as C{dead} and in the
    dead set's gauge; one dropped by the size limit counts as dropped.
    """
    from txgear.server._policy import PolicyTable
    table = PolicyTable()
    table.set(b"*", "attempts:1,on:fail")
    factory = GearmanServerFactory(JobServerState(clock=clock, handlePrefix=b"H:t",
                                                  policies=table, deadMaxJobs=1))
    client, worker = Conn(factory), Conn(factory)
    worker.send(P.CAN_DO, b"f")
    for _ in range(2):
        client.send(P.SUBMIT_JOB_BG, b"f", b"", b"x")
        handle, = handles(client, 1)
        worker.send(P.GRAB_JOB)
        worker.packets()
        worker.send(P.WORK_FAIL, handle)
    samples = scrape(factory)
    assert value(samples, "gearman_function_jobs_finished_total", function="f",
                 outcome="dead") == 2
    assert value(samples, "gearman_function_jobs_finished_total", function="f",
                 outcome="fail") == 2
    assert value(samples, "gearman_function_dead_jobs", function="f") == 1
    assert value(samples, "gearman_dead_dropped_total", limit="size") == 1
    assert value(samples, "gearman_dead_dropped_total", limit="age") == 0


def test_forgottenFunctionsKeepTheirCountersWithinABound(factory: GearmanServerFactory) -> None:
    factory.state.stats.maxRetired = 2
    client, worker = Conn(factory), Conn(factory)

    def runOne(name: bytes) -> None:
        client.send(P.SUBMIT_JOB_BG, name, b"", b"")
        worker.send(P.CAN_DO, name)
        worker.send(P.GRAB_JOB_UNIQ)
        (handle,) = [args[0] for kind, args in worker.packets() if kind == P.JOB_ASSIGN_UNIQ]
        worker.send(P.WORK_COMPLETE, handle, b"")
        worker.send(P.CANT_DO, name)  # now unused: forgotten

    complete = "gearman_function_jobs_finished_total"
    runOne(b"a")
    runOne(b"a")
    assert b"a" not in factory.state.functions
    assert value(scrape(factory), complete, function="a", outcome="complete") == 2
    runOne(b"b")
    runOne(b"c")
    samples = scrape(factory)
    # Two forgotten functions are kept: "a", forgotten first, is dropped.
    assert ("gearman_function_jobs_finished_total",
            frozenset({("function", "a"), ("outcome", "complete")})) not in samples
    assert value(samples, complete, function="b", outcome="complete") == 1
    assert value(samples, complete, function="c", outcome="complete") == 1
    assert len(factory.state.stats.retired) == 2


def test_functionNamesAsLabels(factory: GearmanServerFactory) -> None:
    """UTF-8 names as they are; other bytes as \\xNN; a backslash doubled: never two alike."""
    names = [b"caf\xc3\xa9", b"\xff", b"\\xff", b'say "hi"', b"a\\b"]
    assert [functionLabel(name) for name in names] == [
        "caf\u00e9", "\\xff", "\\\\xff", 'say "hi"', "a\\\\b"]
    client = Conn(factory)
    for name in names:
        client.send(P.SUBMIT_JOB_BG, name, b"", b"")
    samples = scrape(factory)
    for name in names:
        assert value(samples, "gearman_function_jobs_queued", function=functionLabel(name),
                     priority="normal") == 1


class _NoIteration(deque):
    def __iter__(self):  # type: ignore[override]
        raise AssertionError("a queue was walked")


class _NoIterationDict(dict):
    def __iter__(self):  # type: ignore[override]
        raise AssertionError("the jobs were walked")

    values = items = keys = __iter__  # type: ignore[assignment]


def test_collectNeverWalksJobs(factory: GearmanServerFactory, clock: Clock) -> None:
    """A scrape reads each function's counts and queue heads, never its jobs."""
    client = Conn(factory)
    for i in range(3000):
        client.send(P.SUBMIT_JOB_BG, b"many", b"", b"%d" % i)
        if i == 0:
            clock.advance(5)
    state = factory.state
    function = state.functions[b"many"]
    function.queues = tuple(_NoIteration(queue) for queue in function.queues)
    state.jobs = _NoIterationDict(state.jobs)
    samples = scrape(factory)
    assert value(samples, "gearman_function_jobs_queued", function="many",
                 priority="normal") == 3000
    assert value(samples, "gearman_function_oldest_queued_job_age_seconds", function="many") == 5


def test_processMetricsAndMount(factory: GearmanServerFactory) -> None:
    samples = scrape(factory)
    if any(name == "process_cpu_seconds_total" for name, _ in samples):
        assert value(samples, "process_resident_memory_bytes") > 0
    site = makeSite(factory.state, factory, factory.state.clock)
    child = site.resource.getChildWithDefault(b"metrics", DummyRequest([b"metrics"]))
    assert isinstance(child, MetricsResource)


def test_withoutPrometheusClient(monkeypatch):
    """Without the http extra, /metrics answers 503 naming it; the rest of the port works."""
    import sys

    from twisted.internet.task import Clock
    from twisted.web.test.requesthelper import DummyRequest

    from txgear.server import JobServerState
    from txgear.web import _metricsResource

    for name in [n for n in sys.modules if n == "txgear.web._metrics"
                 or n.startswith("prometheus_client")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    clock = Clock()
    resource = _metricsResource(JobServerState(clock=clock), None, clock)
    request = DummyRequest([b""])
    rendered = resource.render(request)
    body = rendered if isinstance(rendered, bytes) else b"".join(request.written)
    assert request.responseCode == 503
    assert b"pip install 'txgear[http]'" in body


def test_keptResultsCountedAndGauged(clock: Clock) -> None:
    """
    Kept results: the gauge, kept and not kept (too large), removed by the
    index limit and by expiry, and idempotent hits, with exact values.
    """
    from txgear.server._policy import PolicyTable
    table = PolicyTable()
    table.set(b"f", "keep:10s,idempotent:yes")
    clock.advance(1000)
    factory = GearmanServerFactory(JobServerState(clock=clock, handlePrefix=b"H:t",
                                                  policies=table, keepMaxSize=4,
                                                  keepMaxResults=2))
    client, worker = Conn(factory), Conn(factory)
    worker.send(P.CAN_DO, b"f")
    for unique, result in [(b"a", b"1"), (b"b", b"22"), (b"c", b"too large"), (b"d", b"4")]:
        client.send(P.SUBMIT_JOB_BG, b"f", unique, b"x")
        handle, = handles(client, 1)
        worker.send(P.GRAB_JOB)
        worker.packets()
        worker.send(P.WORK_COMPLETE, handle, result)
    client.send(P.SUBMIT_JOB_BG, b"f", b"d", b"x")  # kept: not run again
    handles(client, 1)
    samples = scrape(factory)
    assert value(samples, "gearman_kept_results") == 2
    assert value(samples, "gearman_results_kept_total") == 3
    assert value(samples, "gearman_results_not_kept_total") == 1
    assert value(samples, "gearman_kept_results_removed_total", reason="limit") == 2
    assert value(samples, "gearman_kept_results_removed_total", reason="expired") == 0
    assert value(samples, "gearman_idempotent_hits_total") == 1
    clock.advance(11)
    samples = scrape(factory)
    assert value(samples, "gearman_kept_results") == 0
    assert value(samples, "gearman_kept_results_removed_total", reason="expired") == 2

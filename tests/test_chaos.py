# -*- test-case-name: tests.test_chaos -*-
"""
Issue 11's chaos test, reduced: background jobs through workers that fail
at random (WORK_FAIL, WORK_EXCEPTION, exits mid-job, timeouts), the real
server killed with SIGKILL once and restarted on its store (SQLite, PostgreSQL,
Redis), then the checker of benchmarks/_chaoskit.py (the harness of
benchmarks/chaos.py) on the workers' logs and the server's final state.

The checker's own tests feed it hand-written runs and see each kind of
problem reported, so the integration runs can fail.
"""
from __future__ import annotations

import os
import sys

import pytest

from tests._peers import SOURCE_ROOT, requirePeer
from tests.test_integration_durability import _postgresAvailable, _redisAvailable

sys.path.append(os.path.join(SOURCE_ROOT, "benchmarks"))

import _chaoskit as chaos  # noqa: E402

BACKOFF = chaos.Backoff(0.2, 2.0)
TIMEOUT = 1.0


def attempt(unique: str, start: float, outcome: str, logged: float, error: str = "",
            handle: str = "") -> chaos.Attempt:
    return chaos.Attempt("w", start, handle or "H:x:" + unique, unique,
                         outcome or None, logged if outcome else None, error)


def checkRuns(runs, dead=None, known=(), kills=(), results=None) -> chaos.Report:
    handles = {u: "H:x:" + u for u in {a.unique for a in runs}}
    handles.update({u: "H:x:" + u for u in (dead or {})})
    return chaos.check(handles, runs, list(kills), dead or {}, set(known), 4, BACKOFF, TIMEOUT,
                       results)


def test_parseLogPairsStartsWithOutcomes() -> None:
    """A start with no outcome line (the worker was cut off) is an attempt without an outcome."""
    text = ("10.0\t1.0\tstart\tH:x:1\tjob-1\t\n"
            "10.1\t1.1\texception\tH:x:1\tjob-1\tboom here\n"
            "11.0\t2.0\tstart\tH:x:2\tjob-2\t\n"
            "12.0\t3.0\tstart\tH:x:3\tjob-3\t\n"
            "12.5\t3.5\tcomplete\tH:x:3\tjob-3\t\n"
            "13.0\t4.0\tsta")
    runs = chaos.parseLog("w1", text)
    assert [(a.unique, a.outcome, a.error) for a in runs] == [
        ("job-1", "exception", "boom here"), ("job-2", None, ""), ("job-3", "complete", "")]


def test_cleanRunPasses() -> None:
    runs = [attempt("job-1", 0.0, "fail", 0.1), attempt("job-1", 0.35, "complete", 0.4),
            attempt("job-2", 0.0, "complete", 0.1)]
    report = checkRuns(runs)
    assert report.ok, report.problems
    assert (report.completed, report.dead) == (2, 0)
    assert report.ratios == [pytest.approx(0.25 / 0.2)]


def test_lostJobAndEarlyRetryAreReported() -> None:
    """A job neither completed nor dead, and a retry sooner than the backoff, both fail the run."""
    runs = [attempt("job-1", 0.0, "fail", 0.1),
            attempt("job-1", 0.15, "complete", 0.2),           # 50 ms after: the policy waits 200
            attempt("job-2", 0.0, "exception", 0.1, "boom")]   # never retried, not dead
    report = checkRuns(runs)
    assert not report.ok
    assert any("job-1: retry 1 started 50 ms" in p for p in report.problems), report.problems
    assert any("job-2: lost" in p for p in report.problems), report.problems
    assert "FAIL" in report.text()


def test_tooManyRunsWithoutAKillAreReported() -> None:
    runs = [attempt("job-1", t, "fail", t + 0.1) for t in (0.0, 10.0, 20.0, 30.0, 40.0)]
    dead = {"job-1": ("H:x:job-1", 4, "WORK_FAIL")}
    report = checkRuns(runs, dead)
    assert any("5 counted runs, the limit is 4" in p for p in report.problems), report.problems


def test_runsAKillExplainsAreCountedNotReported() -> None:
    """
    A run cut by a kill does not count; a failure reported just before a
    kill may not have been stored, so one run more is the kill's, and its
    immediate retry is not a backoff violation.
    """
    kills = [(20.05, 20.2)]
    runs = [attempt("job-1", 0.0, "fail", 0.1), attempt("job-1", 10.0, "fail", 10.1),
            attempt("job-1", 20.0, "exit", 20.01),          # reported 40 ms before the kill
            attempt("job-1", 20.25, "fail", 20.3),          # at once after the restart
            attempt("job-1", 30.0, "fail", 30.1),
            attempt("job-2", 20.0, "", 0.0),                # cut by the kill
            attempt("job-2", 20.3, "complete", 20.4)]
    dead = {"job-1": ("H:x:job-1", 4, "WORK_FAIL")}
    report = checkRuns(runs, dead, kills=kills)
    assert report.ok, report.problems
    assert report.interrupted == {1: 1}
    assert report.beyondLimit == {1: 1}
    assert report.lostOutcomes == {1: 1}


def test_aRunReadAfterTheKillBelongsToTheKilledServer() -> None:
    """
    A job assigned just before a kill may be read, logged and completed
    after it: its connection was made before the kill, so the kill cut it,
    and its run after the restart is not a run after a completion.
    """
    text = ("5.0\t1.0\tconnect\t-\t-\t\n"
            "20.10\t1.0\tstart\tH:x:job-1\tjob-1\t\n"
            "20.11\t1.0\tcomplete\tH:x:job-1\tjob-1\t\n"
            "21.0\t1.0\tconnect\t-\t-\t\n"
            "21.5\t1.0\tstart\tH:x:job-1\tjob-1\t\n"
            "21.6\t1.0\tcomplete\tH:x:job-1\tjob-1\t\n")
    runs = chaos.parseLog("w", text)
    assert [a.connected for a in runs] == [5.0, 21.0]
    report = checkRuns(runs, kills=[(20.05, 20.9)])
    assert report.ok, report.problems
    assert report.interrupted == {1: 1}
    # Without the connection times (each run's own start), it is a rerun nothing explains.
    for a in runs:
        a.connected = a.start
    assert any("ran again" in p for p in checkRuns(runs, kills=[(20.05, 20.9)]).problems)


def test_deadJobMustCarryItsLastError() -> None:
    runs = [attempt("job-1", t, "exception", t + 0.1, "text %d" % t) for t in (0, 10, 20, 30)]
    report = checkRuns(runs, {"job-1": ("H:x:job-1", 4, "text 20")})
    assert any("last error 'text 20'" in p for p in report.problems), report.problems
    report = checkRuns(runs, {"job-1": ("H:x:job-1", 4, "text 30")})
    assert report.ok, report.problems


def test_stillQueuedAndRerunAfterCompletionAreReported() -> None:
    runs = [attempt("job-1", 0.0, "complete", 0.1), attempt("job-1", 5.0, "complete", 5.1)]
    report = checkRuns(runs, known={"H:x:job-1"})
    assert any("still queued" in p for p in report.problems), report.problems
    assert any("ran again" in p for p in report.problems), report.problems


def test_keptResultsAreCheckedWhenGiven() -> None:
    runs = [attempt("job-1", 0.0, "complete", 0.1), attempt("job-2", 0.0, "complete", 0.1)]
    results = {"H:x:job-1": ("OK complete", b"result:job-1"), "H:x:job-2": ("ERR UNKNOWN_JOB", b"")}
    report = checkRuns(runs, results=results)
    assert report.resultsChecked == 1
    assert [p for p in report.problems] == ["job-2: kept result 'ERR UNKNOWN_JOB'"]


@pytest.fixture(params=["sqlite", "postgresql", "redis"])
def store(request) -> str:
    if request.param == "postgresql":
        requirePeer(_postgresAvailable(), "PostgreSQL at 127.0.0.1:5432 (database test)")
    elif request.param == "redis":
        requirePeer(_redisAvailable(), "Redis at 127.0.0.1:6379")
    return request.param


def test_chaosWithOneKill(store, tmp_path) -> None:
    """
    300 jobs, half of the attempts failing (so that the dead set sees jobs
    too), one SIGKILL: every job completed or dead, nothing else.
    """
    report = chaos.run(store, jobs=300, kills=1, workers=12, failRate=0.5, seed=11,
                       deadline=120.0, workdir=str(tmp_path), verbose=False)
    print(report.text())
    assert report.ok, report.text()
    assert report.completed + report.dead == 300
    assert report.dead > 0
    assert sum(report.outcomes.values()) > 300

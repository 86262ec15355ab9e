# -*- test-case-name: tests.test_benchmarks_hostile -*-
"""
The hostile-peer suite (benchmarks/hostile.py) measures what it claims to,
against the real server of this tree, in its quick mode.

These tests do not assert that the server survives the attacks (that is what
the suite reports); they assert that the instruments see a frozen server and
memory that stays, and that a real attack's verdict is derived from the
numbers it measured.
"""
from __future__ import annotations

import os
import signal
import sys
import time

import pytest

from tests._peers import SOURCE_ROOT

sys.path.append(os.path.join(SOURCE_ROOT, "benchmarks"))

import hostile  # noqa: E402
from _hostilekit import MiB, SUBMIT_JOB_BG, JOB_CREATED  # noqa: E402

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

LIMITS = hostile.parseLimits([])
SCALE = 0.01


def run(attack: hostile.Attack) -> hostile.Row:
    return hostile.measure(attack, "txgear", SOURCE_ROOT, SCALE, LIMITS, settleSeconds=2.0,
                           python=sys.executable)


def freeze(ctx: hostile.Context) -> None:
    """The server stops for 0.4 s, as a reactor stuck in one call would."""
    os.kill(ctx.server.pid, signal.SIGSTOP)
    try:
        time.sleep(0.4)
    finally:
        os.kill(ctx.server.pid, signal.SIGCONT)


def keep24MiB(ctx: hostile.Context) -> None:
    """Three 8 MiB background jobs stay queued (no worker): memory that stays."""
    c = ctx.conn()
    for i in range(3):
        c.send(SUBMIT_JOB_BG, b"kept", b"", bytes([65 + i]) * (8 * MiB))
        c.expect(JOB_CREATED, 30)


def test_frozenServerFailsTheBystanderBudget() -> None:
    """A server that does not answer for 0.4 s is caught by the bystander's round trips."""
    row = run(hostile.Attack("freeze", "-", "", freeze, lambda L, s: L.slack, "slack"))
    assert row.error is None, row.error
    assert 0.35 <= row.worstRtt < 5.0
    assert row.verdict == "FAIL"
    assert any(f.startswith("bystander waited") for f in row.failed), row.failed


def test_memoryKeptFailsTheRssBudgets() -> None:
    """24 MiB held by the server shows in its growth and in its RSS after the attackers left."""
    row = run(hostile.Attack("keep", "-", "", keep24MiB, lambda L, s: MiB, "1 MiB"))
    assert row.error is None, row.error
    assert row.growth >= 20 * MiB
    assert row.after - row.before >= 20 * MiB
    assert row.verdict == "FAIL"
    assert any(f.startswith("RSS growth") for f in row.failed), row.failed
    assert any(f.startswith("RSS after") for f in row.failed), row.failed


def test_quickAttackVerdictFollowsItsMeasurements() -> None:
    """
    A real attack in quick mode: the row has every measurement, and its
    verdict is exactly what the budgets say of those numbers and facts.
    """
    byName = {a.name: a for a in hostile.ATTACKS}
    row = run(byName["forged-lines"])
    assert row.error is None, row.error
    assert row.before > 10 * MiB and row.after > 10 * MiB
    assert 0 < row.worstRtt < 60
    assert row.budget == LIMITS.slack
    [seen] = [f for f in row.facts if f.startswith("forged lines in: ")]
    forged = seen != "forged lines in: none"
    expected = (forged or row.growth > row.budget or row.after > 1.1 * row.before
                or row.worstRtt > 0.1 or row.bystanderLost)
    assert row.verdict == ("FAIL" if expected else "PASS"), (row.facts, row.failed)
    assert ("a peer forged admin lines" in row.failed) == forged
    cells = hostile.cells(row)
    assert len(cells) == len(hostile.COLUMNS) and cells[0] == "forged-lines" and cells[1] == "txgear"
    assert hostile.markdown([row]).count("\n") == 3


def test_everyIssueItemHasAnAttack() -> None:
    """Items 1-12 and 21 of issue 8 are each replayed by at least one attack."""
    items = {i.strip() for a in hostile.ATTACKS for i in a.items.split(",")}
    assert {str(i) for i in list(range(1, 13)) + [21]} <= items
    assert len({a.name for a in hostile.ATTACKS}) == len(hostile.ATTACKS)

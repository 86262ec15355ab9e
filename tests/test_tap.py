"""Tests for txgear.tap: the options of `twistd gearman`."""
from __future__ import annotations

import pytest
from twisted.logger import LogLevel
from twisted.python import usage

from txgear.tap import Options


def parse(*argv: str) -> Options:
    options = Options()
    options.parseOptions(list(argv))
    return options


def test_defaults():
    options = parse()
    assert options["ports"] == ["tcp:4730"]
    assert options["job-retries"] == 0 and options["worker-wakeup"] == 1
    assert options["log-level"] == LogLevel.info
    assert options["queue"] is None  # the SQLite default, chosen by makeService


def test_portsAreNumbersOrEndpoints():
    options = parse("--port", "4731", "-p", "unix:/tmp/g.sock", "--port",
                    "tcp:4732:interface=127.0.0.1")
    assert options["ports"] == ["tcp:4731", "unix:/tmp/g.sock", "tcp:4732:interface=127.0.0.1"]


def test_listenAppliesToPortNumbers():
    options = parse("-L", "127.0.0.1", "-p", "4731", "-p", "unix:/tmp/g.sock")
    assert options["ports"] == ["tcp:4731:interface=127.0.0.1", "unix:/tmp/g.sock"]
    assert parse("--listen", "::1")["ports"] == ["tcp:4730:interface=\\:\\:1"]


def test_gearmandStyleOptions():
    options = parse("--verbose", "WARNING", "-t", "0", "-j", "3", "-R", "-w", "0",
                    "--job-handle-prefix", "P", "--exceptions")
    assert options["log-level"] == LogLevel.warn
    assert (options["job-retries"], options["round-robin"], options["worker-wakeup"]) == (3, True, 0)
    assert options["job-handle-prefix"] == "P" and options["exceptions"]


@pytest.mark.parametrize("argv", [["--log-level", "loud"], ["--job-retries", "-1"],
                                  ["--max-packet-size", "100"], ["--worker-wakeup", "x"],
                                  ["--output-soft-limit", "100"],
                                  ["--output-hard-limit", str(16 * 1024 * 1024)],
                                  ["--packet-deadline", "0"], ["--partial-packet-budget", "-1"]])
def test_badValues(argv):
    with pytest.raises(usage.UsageError):
        parse(*argv)


def test_connectionLimits():
    options = parse()
    assert options["output-soft-limit"] == 1024 * 1024 and options["output-hard-limit"] == 0
    assert options["partial-packet-budget"] == 256 * 1024 * 1024
    assert options["packet-deadline"] == 60.0
    options = parse("--output-soft-limit", "65536", "--output-hard-limit", "40000000",
                    "--partial-packet-budget", "1000000", "--packet-deadline", "2.5")
    assert (options["output-soft-limit"], options["output-hard-limit"]) == (65536, 40000000)
    assert (options["partial-packet-budget"], options["packet-deadline"]) == (1000000, 2.5)

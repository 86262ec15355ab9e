"""
Tests of the command-line tools (L{txgear._cli}) and of the
C{gearman-worker} twistd plugin's options (L{txgear.worker_tap}).
"""
from __future__ import annotations

import io
import os
import subprocess
import sys

import pytest
import pytest_twisted
from twisted.python import usage

from tests._peers import SOURCE_ROOT, gearmandProcess
from tests import _peers
from tests.test_integration_client import closeAll, reverseWorker, started, within
from txgear import _cli, worker_tap
from txgear.client import GearmanClient
from txgear.worker import GearmanWorker


# Functions the plugin tests load by name.

def shout(job):
    return job.payload.upper()


def whisper(job):
    return job.payload.lower()


gearmanFunctions = {"whisper": whisper, "shout-slowly": (shout, 5.0)}


class _Text(io.StringIO):
    """A text stream that also collects bytes written to C{.buffer}."""

    def __init__(self) -> None:
        io.StringIO.__init__(self)
        self.buffer = io.BytesIO()

    def output(self) -> bytes:
        return self.getvalue().encode() + self.buffer.getvalue()


# Formatting (unit)


def test_tableAligns():
    assert _cli.table(["A", "BB"], [["xyz", "1"], ["q", "22 33"]]) == [
        "A    BB", "xyz  1", "q    22 33"]


def test_formatStatusSorted():
    lines = [b"resize\t3\t0\t2", b"thumb\t1\t1\t1"]
    assert _cli.formatAdmin("status", lines[::-1]) == [
        "FUNCTION  TOTAL  RUNNING  WORKERS",
        "resize    3      0        2",
        "thumb     1      1        1"]


def test_formatWorkers():
    lines = [b"28 127.0.0.1 - : resize", b"26 127.0.0.1 - :", b"27 127.0.0.1 img-1 : thumb resize"]
    assert _cli.formatAdmin("workers", lines) == [
        "FD  ADDRESS    CLIENT-ID  FUNCTIONS",
        "28  127.0.0.1  -          resize",
        "26  127.0.0.1  -",
        "27  127.0.0.1  img-1      thumb resize"]


def test_formatDeadSet():
    lines = [b"H:a:12\tresize\tu-1\t5\t2026-11-28T21:42:01.123Z\tTraceback:\\x0aboom",
             b"H:a:3\tmail\t\t1\t2026-11-27T08:00:00.000Z\tworker lost"]
    assert _cli.formatAdmin("dead", lines) == [
        "HANDLE  FUNCTION  UNIQUE  ATTEMPTS  DIED-AT                   LAST-ERROR",
        "H:a:12  resize    u-1     5         2026-11-28T21:42:01.123Z  Traceback:\\x0aboom",
        "H:a:3   mail              1         2026-11-27T08:00:00.000Z  worker lost"]
    assert _cli.formatAdmin("retry-dead", [b"OK 3"]) == ["retried 3 dead jobs"]
    assert _cli.formatAdmin("purge-dead", [b"OK 0"]) == ["purged 0 dead jobs"]


def test_formatVersion():
    assert _cli.formatAdmin("version", [b"OK 1.1.20+ds"]) == ["1.1.20+ds"]


def test_submitUsageErrors():
    from twisted.internet.testing import MemoryReactorClock

    reactor = MemoryReactorClock()
    err = _Text()
    from twisted.internet.defer import Deferred

    result = []
    Deferred.fromCoroutine(_cli.runSubmit(reactor, ["-s", "a", "--at", "5", "f", "x"],
                                          stderr=err)).addBoth(result.append)
    assert result == [_cli.USAGE]
    assert "--at needs --background" in err.getvalue()
    result.clear()
    Deferred.fromCoroutine(_cli.runSubmit(reactor, ["-s", "host:99999", "f"],
                                          stderr=err)).addBoth(result.append)
    assert result == [_cli.USAGE]


# worker_tap (unit)


def test_workerOptions():
    options = worker_tap.Options()
    options.parseOptions(["--server", "127.0.0.1:4999", "-s", "unix:/run/gear.sock",
                          "--function", "loud=tests.test_cli:shout",
                          "-f", "tests.test_cli:whisper", "--module", "tests.test_cli",
                          "--concurrency", "3", "--timeout", "7.5", "--client-id", "w9"])
    from twisted.internet.testing import MemoryReactorClock

    service = worker_tap.makeService(options, reactor=MemoryReactorClock())
    assert isinstance(service, GearmanWorker)
    assert service.concurrency == 3
    functions = service.factory.functions
    assert sorted(functions) == [b"loud", b"shout-slowly", b"whisper"]
    assert functions[b"loud"].callable is shout and functions[b"loud"].timeout == 7.5
    assert functions[b"shout-slowly"].timeout == 5.0
    assert service.factory.clientId == b"w9"
    assert [s.name for s in service.pool.servers] == ["127.0.0.1:4999", "unix:/run/gear.sock"]


@pytest.mark.parametrize("argv", [
    [],
    ["-f", "nocolon"],
    ["-f", "x=no.such.module:f"],
    ["-f", "x=tests.test_cli:nothing"],
    ["-f", "x=tests.test_cli:gearmanFunctions"],
    ["-m", "tests._peers"],
    ["-f", "tests.test_cli:shout", "--concurrency", "0"],
    ["-s", "host:0", "-f", "tests.test_cli:shout"],
])
def test_workerOptionsErrors(argv):
    with pytest.raises(usage.UsageError):
        worker_tap.Options().parseOptions(argv)


# Against gearmand (loopback)


@pytest.fixture
def gearmand():
    server = gearmandProcess().start()
    yield server
    server.stop()


@pytest_twisted.ensureDeferred
async def test_submitAndAdmin(gearmand):
    from twisted.internet import reactor

    addr = f"127.0.0.1:{gearmand.port}"
    worker = reverseWorker([addr])
    await started(worker)
    try:
        out, err = _Text(), _Text()
        code = await within(Deferred_(_cli.runSubmit(reactor, ["-s", addr, "reverse", "abc"],
                                                     stdout=out, stderr=err)))
        assert (code, out.output()) == (0, b"cba\n")

        stdin = _Text()
        stdin.buffer = io.BytesIO(b"one\ntwo\nthree\n")
        out, err = _Text(), _Text()
        code = await within(Deferred_(_cli.runSubmit(
            reactor, ["-s", addr, "-f", "-", "reverse"], stdin=stdin, stdout=out, stderr=err)))
        assert code == 0
        assert out.output() == b"eno\nowt\neerht\n"
        assert "3/3 done (100%), 0 failed" in err.getvalue()

        out = _Text()
        code = await within(Deferred_(_cli.runSubmit(
            reactor, ["-s", addr, "-b", "--high", "-u", "u1", "nobody", "x"], stdout=out)))
        handle, server = out.getvalue().split()
        assert code == 0 and server == addr
        out = _Text()
        await within(Deferred_(_cli.runSubmit(reactor, ["-s", addr, "--status", handle], stdout=out)))
        assert out.getvalue() == f"{handle}: queued, progress 0/0 on {addr}\n"
        out = _Text()
        await within(Deferred_(_cli.runSubmit(reactor, ["-s", addr, "--status-unique", "u1"],
                                              stdout=out)))
        assert out.getvalue() == f"u1: queued, progress 0/0, 0 client(s) waiting on {addr}\n"

        out = _Text()
        code = await within(Deferred_(_cli.runAdmin(reactor, ["-s", addr, "status"], stdout=out)))
        lines = out.getvalue().splitlines()
        assert code == 0 and lines[0].split() == ["FUNCTION", "TOTAL", "RUNNING", "WORKERS"]
        assert ["nobody", "1", "0", "0"] in [line.split() for line in lines]
        assert ["reverse", "0", "0", "1"] in [line.split() for line in lines]
        out = _Text()
        await within(Deferred_(_cli.runAdmin(reactor, ["-s", addr, "version"], stdout=out)))
        assert out.getvalue().startswith("1.1.")
        out = _Text()
        await within(Deferred_(_cli.runAdmin(reactor, ["-s", addr, "workers"], stdout=out)))
        assert any(line.split()[-1:] == ["reverse"] for line in out.getvalue().splitlines())
        out = _Text()
        await within(Deferred_(_cli.runAdmin(reactor, ["-s", addr, "--raw", "status"], stdout=out)))
        assert out.output().endswith(b".\n")

        err = _Text()
        code = await within(Deferred_(_cli.runSubmit(reactor, ["-s", "127.0.0.1:1", "f", "x"],
                                                     stderr=err)))
        assert code == _cli.UNREACHABLE and "no Gearman server is reachable" in err.getvalue()
    finally:
        await closeAll(worker)


def Deferred_(coroutine):
    from twisted.internet.defer import Deferred

    return Deferred.fromCoroutine(coroutine)


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [SOURCE_ROOT, env.get("PYTHONPATH")]))
    return env


@pytest_twisted.ensureDeferred
async def test_commandWorker(gearmand):
    """txgear-worker pipes payloads through a command; exits after --count jobs."""
    from twisted.internet.utils import getProcessOutputAndValue

    addr = f"127.0.0.1:{gearmand.port}"
    worker = getProcessOutputAndValue(sys.executable, [
        "-m", "txgear._cli", "worker", "-s", addr, "-f", "up", "-f", "failing", "-n", "3",
        "-c", "2", "--", "sh", "-c", 'if [ "$GEARMAN_FUNCTION" = failing ]; then echo oops >&2; '
                                     'exit 3; fi; tr a-z A-Z'], env=_env())
    client = GearmanClient([addr])
    await started(client)
    try:
        warnings = []
        assert await within(client.submit("up", b"hello")) == b"HELLO"
        assert await within(client.submit("up", b"a\0b")) == b"A\0B"
        from txgear.errors import JobFailed

        with pytest.raises(JobFailed):
            await within(client.submit("failing", b"x", onWarning=warnings.append))
        assert warnings == [b"oops\n"]
        out, err, code = await within(worker)
        assert code == 0, err
    finally:
        await closeAll(client)


def _pluginRegistered() -> bool:
    from twisted.application.service import IServiceMaker
    from twisted.plugin import getPlugins

    return any(p.tapname == "gearman-worker" for p in getPlugins(IServiceMaker))


@pytest_twisted.ensureDeferred
async def test_twistdPlugin(gearmand):
    if not _pluginRegistered():
        pytest.skip("the gearman-worker ServiceMaker is not in twisted/plugins/ yet")
    addr = f"127.0.0.1:{gearmand.port}"
    twistd = getattr(_peers, "TWISTD", [sys.executable, "-c", "import sys; sys.argv[0] = 'twistd'; "
                                        "from twisted.scripts.twistd import run; run()"])
    process = subprocess.Popen(
        twistd + ["--nodaemon", "--pidfile=", "--logfile=-", "gearman-worker", "--server", addr, "--function", "loud=tests.test_cli:shout"],
        env=_env(), cwd=SOURCE_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    client = GearmanClient([addr])
    await started(client)
    try:
        assert await within(client.submit("loud", b"plugin")) == b"PLUGIN"
    finally:
        await closeAll(client)
        process.terminate()
        log, _ = process.communicate(timeout=15)
    # twistd re-raises the signal that stopped it, after a clean shutdown.
    assert process.returncode in (0, -15), log
    assert b"Server Shut Down" in log


# The documentation's examples run as written.

EXAMPLES = os.path.join(SOURCE_ROOT, "docs", "examples")


@pytest_twisted.ensureDeferred
async def test_asyncioExample(gearmand):
    from twisted.internet.utils import getProcessOutputAndValue

    out, err, code = await within(getProcessOutputAndValue(
        sys.executable, [os.path.join(EXAMPLES, "asyncio_example.py"), f"127.0.0.1:{gearmand.port}"],
        env=_env()), 60)
    assert code == 0, err
    assert b"results: [b'JOB 0', b'JOB 1', b'JOB 2']" in out
    assert b"7/2 = b'3'" in out
    assert b"the worker raised: ZeroDivisionError" in out


@pytest_twisted.ensureDeferred
async def test_resizeExample(gearmand):
    from twisted.internet.utils import getProcessOutputAndValue

    sys.path.insert(0, EXAMPLES)
    try:
        import resize_jobs
    finally:
        sys.path.remove(EXAMPLES)
    addr = f"127.0.0.1:{gearmand.port}"
    workers = [GearmanWorker([addr], concurrency=4) for _ in range(2)]
    for worker in workers:
        from txgear.worker_tap import registerModule

        assert registerModule(worker, resize_jobs) == ["resize"]
    await started(*workers)
    try:
        out, err, code = await within(getProcessOutputAndValue(
            sys.executable, [os.path.join(EXAMPLES, "resize_client.py"), addr], env=_env()), 60)
        assert code == 0, err
        lines = out.decode().splitlines()
        assert len(lines) == 21
        assert lines[0].startswith("photo-000.jpg -> {'name': 'photo-000.jpg', 'width': 800, 'height': 600")
        assert lines[-1] == "broken.jpg failed"
    finally:
        await closeAll(*workers)


# User mistakes: the real console scripts, one line on standard error, the
# documented exit code, nothing else.

_ENTRY_POINTS = {"txgear-submit": "submitMain", "txgear-worker": "workerMain",
                 "txgear-admin": "adminMain"}


def consoleScript(name):
    """The command line of an installed console script, or its entry point run the same way."""
    path = os.path.join(os.path.dirname(sys.executable), name)
    if os.path.exists(path):
        return [path]
    return [sys.executable, "-c",
            f"import sys; from txgear._cli import {_ENTRY_POINTS[name]}; sys.exit({_ENTRY_POINTS[name]}())"]


def runScript(name, *argv, timeout=30):
    """Run a console script against this source tree: (exit code, stdout, stderr)."""
    done = subprocess.run(consoleScript(name) + list(argv), env=_env(), cwd=SOURCE_ROOT,
                          stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout)
    return done.returncode, done.stdout.decode(), done.stderr.decode()


_UNUSED = "127.0.0.1:1"  # nothing listens there: a mistake must be found before connecting


@pytest.mark.parametrize("name, argv, stderr", [
    ("txgear-submit", ["-s", _UNUSED, "-t", "-1", "f", "x"],
     "txgear-submit: argument -t/--timeout: give a number of seconds, 0 or more, not '-1' "
     "(see txgear-submit --help)\n"),
    ("txgear-submit", ["-s", _UNUSED, "-u", "u" * 70, "f", "x"],
     "txgear-submit: argument -u/--unique: a unique id is at most 63 bytes (gearmand's limit), "
     "this one has 70 (see txgear-submit --help)\n"),
    ("txgear-submit", ["-s", "host:99999", "f", "x"],
     "txgear-submit: -s/--server: invalid port in server address 'host:99999'; give host, "
     "host:port or an endpoint string\n"),
    ("txgear-worker", ["-s", _UNUSED, "-c", "0", "-f", "x"],
     "txgear-worker: argument -c/--concurrency: give a whole number of commands, 1 or more, "
     "not '0' (see txgear-worker --help)\n"),
    ("txgear-worker", ["-s", _UNUSED, "-t", "-5", "-f", "x"],
     "txgear-worker: argument -t/--timeout: give a number of seconds, more than 0, not '-5' "
     "(see txgear-worker --help)\n"),
    ("txgear-worker", ["-s", _UNUSED, "-f", "name", "--", "/nonexistent"],
     "txgear-worker: command '/nonexistent' does not exist; give an installed program or its "
     "path after --\n"),
    ("txgear-worker", ["-s", _UNUSED, "-f", "name", "--", "no-such-program-txgear"],
     "txgear-worker: command 'no-such-program-txgear' not found on PATH; give an installed "
     "program or its path after --\n"),
    ("txgear-admin", ["-s", _UNUSED, "status", "extra"],
     "txgear-admin: status takes no arguments, got 'extra' (see txgear-admin --help)\n"),
    ("txgear-admin", ["-s", _UNUSED, "cancel"],
     "txgear-admin: cancel: wrong number of arguments; use: txgear-admin cancel HANDLE\n"),
    ("txgear-admin", ["-s", _UNUSED, "retry-dead"],
     "txgear-admin: retry-dead: wrong number of arguments; use: txgear-admin retry-dead HANDLE "
     "| retry-dead function FUNCTION\n"),
    ("txgear-admin", ["-s", _UNUSED, "retry-dead", "H:a:1", "H:a:2"],
     "txgear-admin: retry-dead: wrong number of arguments; use: txgear-admin retry-dead HANDLE "
     "| retry-dead function FUNCTION\n"),
    ("txgear-admin", ["-s", _UNUSED, "dead", "f", "g"],
     "txgear-admin: dead: wrong number of arguments; use: txgear-admin dead [FUNCTION]\n"),
])
def test_scriptUsageMistakes(name, argv, stderr):
    assert runScript(name, *argv) == (_cli.USAGE, "", stderr)


@pytest.mark.parametrize("name", sorted(_ENTRY_POINTS))
def test_scriptVersion(name):
    from txgear._version import __version__

    assert runScript(name, "--version") == (0, f"{name} (txgear) {__version__}\n", "")


@pytest.mark.parametrize("name", sorted(_ENTRY_POINTS))
def test_scriptHelpDocumentsExitCodes(name):
    code, out, err = runScript(name, "--help")
    assert code == 0 and "exit status: 0 done" in " ".join(out.split())


@pytest_twisted.ensureDeferred
async def test_batchPrintsFailureReasons(gearmand):
    """C{-f}: each failed line says why, and a timeout exits with 3."""
    from twisted.internet import reactor

    addr = f"127.0.0.1:{gearmand.port}"
    stdin = _Text()
    stdin.buffer = io.BytesIO(b"one\ntwo\n")
    out, err = _Text(), _Text()
    code = await within(Deferred_(_cli.runSubmit(
        reactor, ["-s", addr, "-t", "0.2", "-f", "-", "nobody-does-this"], stdin=stdin,
        stdout=out, stderr=err)))
    assert code == _cli.UNREACHABLE
    assert out.output() == b"<failed: no result within 0.2 s (-t/--timeout)>\n" * 2
    out, err = _Text(), _Text()
    code = await within(Deferred_(_cli.runSubmit(
        reactor, ["-s", addr, "-t", "0.2", "nobody-does-this", "x"], stdout=out, stderr=err)))
    assert (code, err.getvalue()) == (
        _cli.UNREACHABLE, "txgear-submit: no result within 0.2 s (-t/--timeout)\n")


def test_workerModuleFromWorkingDirectory(tmp_path, monkeypatch):
    """C{--module} finds a module next to the user without PYTHONPATH, as the tutorial does."""
    (tmp_path / "txgear_tutorial_jobs.py").write_text(
        "gearmanFunctions = {'up': lambda job: job.payload.upper()}\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    monkeypatch.delitem(sys.modules, "txgear_tutorial_jobs", raising=False)
    options = worker_tap.Options()
    options.parseOptions(["-m", "txgear_tutorial_jobs"])
    assert options["loadedModules"][0].gearmanFunctions["up"] is not None


def test_refusedJobExitsWith4(gearmand):
    """A full queue (ERROR QUEUE_ERROR) is exit status 4, with the server's reason."""
    addr = f"127.0.0.1:{gearmand.port}"
    code, out, err = runScript("txgear-submit", "-s", addr, "-b", "full-fn", "first")
    assert code == 0, err
    # gearmand keeps a limit only for a function it knows.
    assert runScript("txgear-admin", "-s", addr, "maxqueue", "full-fn", "1")[0] == 0
    assert runScript("txgear-submit", "-s", addr, "-b", "full-fn", "second") == (
        _cli.REFUSED, "", "txgear-submit: the server refused the job: QUEUE_ERROR: "
                          "Job queue is full\n")


def test_resizeExampleWithoutServer():
    """The example client with no server up: one line, exit status 1, no traceback."""
    done = subprocess.run([sys.executable, os.path.join(EXAMPLES, "resize_client.py"), _UNUSED],
                          env=_env(), capture_output=True, timeout=60)
    assert (done.returncode, done.stdout) == (1, b"")
    assert done.stderr.decode().startswith("resize_client: no Gearman server is reachable (")
    assert len(done.stderr.splitlines()) == 1

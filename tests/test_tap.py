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


def _makeService(*argv: str):
    import gc

    from twisted.internet.testing import MemoryReactorClock

    from txgear.tap import makeService

    from txgear._log import logLevel, setLogLevel

    # makeService sets the collector's thresholds and the log level: put them back.
    thresholds = gc.get_threshold() if hasattr(gc, "get_threshold") else None
    level = logLevel()
    try:
        return makeService(parse(*argv), reactor=MemoryReactorClock())
    finally:
        setLogLevel(level)
        if thresholds is not None:
            gc.set_threshold(*thresholds)


def test_maxFunctionName():
    assert parse()["max-function-name"] == 512
    service = _makeService("--queue", "memory", "--max-function-name", "20")
    assert service.factory.maxFunctionName == 20
    assert service.factory.admin.maxFunctionName == 20
    with pytest.raises(usage.UsageError):
        parse("--max-function-name", "0")


def test_shutdownGrace():
    assert parse()["shutdown-grace"] == 5.0
    service = _makeService("--queue", "memory", "--shutdown-grace", "0.5")
    assert service.shutdownGrace == 0.5
    with pytest.raises(usage.UsageError):
        parse("--shutdown-grace", "-1")


# The real `twistd gearman` / `twistd gearman-worker` processes: a mistake is
# one line on standard error naming the option, exit status 2.

import os
import socket
import subprocess
import sys

from tests._peers import SOURCE_ROOT, TWISTD, freePort
from txgear._version import __version__


def runTwistd(tmp_path, *argv, pythonPath=(), timeout=30):
    """(exit status, stdout, stderr) of C{twistd -n <argv>} run from this source tree."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(list(pythonPath) + [SOURCE_ROOT] + (
        [env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    done = subprocess.run(TWISTD + ["--nodaemon", "--pidfile=", "--logfile=-"] + list(argv),
                          cwd=str(tmp_path), env=env, stdin=subprocess.DEVNULL,
                          capture_output=True, timeout=timeout)
    return done.returncode, done.stdout.decode(), done.stderr.decode()


@pytest.mark.parametrize("argv, stderr", [
    (["--queue", "bogus:x"],
     "twistd gearman: --queue: unknown queue 'bogus:x': use memory, sqlite:PATH, "
     "postgresql:<dsn> or redis:<url> (see twistd gearman --help)\n"),
    (["--queue", "sqlite:"],
     "twistd gearman: --queue: 'sqlite:': a file is needed after sqlite:, e.g. "
     "sqlite:/var/lib/txgear/queue.sqlite (or sqlite alone for txgear-queue.sqlite in the "
     "working directory) (see twistd gearman --help)\n"),
    (["-j", "abc"],
     "twistd gearman: --job-retries: give a whole number, 0 or more, not 'abc' "
     "(see twistd gearman --help)\n"),
    (["--max-packet-size", "lots"],
     "twistd gearman: --max-packet-size: give a whole number, not 'lots' "
     "(see twistd gearman --help)\n"),
    (["--port", "tcp:abc"],
     "twistd gearman: --port: 'abc' in 'tcp:abc' is not a port number (0-65535); give a port "
     "number, or an endpoint such as tcp:4730:interface=127.0.0.1 (see twistd gearman --help)\n"),
    (["--port", "bogus:1"],
     "twistd gearman: --port: 'bogus:1' is not a server endpoint (Unknown endpoint type: "
     "'bogus'); give a port number, or an endpoint such as tcp:4730:interface=127.0.0.1 "
     "(see twistd gearman --help)\n"),
    (["--log-level", "loud"],
     "twistd gearman: --log-level: unknown level 'loud'; give debug, info, warn, error or "
     "critical (see twistd gearman --help)\n"),
])
def test_twistdGearmanMistakes(tmp_path, argv, stderr):
    assert runTwistd(tmp_path, "gearman", *argv) == (2, "", stderr)
    assert not os.path.exists(tmp_path / "txgear-queue.sqlite")


def test_twistdGearmanMissingDriver(tmp_path):
    """A store whose driver is not installed: one line saying what to install."""
    fake = tmp_path / "nodriver" / "psycopg"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('No module named psycopg')\n")
    assert runTwistd(tmp_path, "gearman", "--queue", "postgresql:host=127.0.0.1",
                     pythonPath=[str(tmp_path / "nodriver")]) == (2, "", (
        "twistd gearman: --queue: postgresql:host=127.0.0.1: the Python package "
        "'psycopg[binary]' is needed (pip install 'txgear[postgresql]' or pip install "
        "'psycopg[binary]') (see twistd gearman --help)\n"))


def test_twistdGearmanPortInUse(tmp_path):
    """No traceback: the log says why at error level, the terminal gets one line."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        code, out, err = runTwistd(tmp_path, "gearman", "--queue", "memory",
                                   "--port", f"tcp:{port}:interface=127.0.0.1")
    assert (code, err) == (1, f"twistd gearman: cannot listen on 127.0.0.1:{port}: Address "
                              f"already in use; is another job server running there? Choose "
                              f"another address with --port\n")
    assert "Traceback" not in out and "#critical" not in out
    assert "The Gearman job server could not start: Couldn't listen on" in out


@pytest.mark.parametrize("plugin", ["gearman", "gearman-worker"])
def test_twistdVersion(tmp_path, plugin):
    code, out, err = runTwistd(tmp_path, plugin, "--version")
    assert (code, err) == (0, "")
    assert out.startswith(f"twistd {plugin} (txgear) {__version__}, Twisted ")


@pytest.mark.parametrize("argv, stderr", [
    (["-f", "tests.test_cli:shout", "-c", "0"],
     "twistd gearman-worker: --concurrency must be at least 1 "
     "(see twistd gearman-worker --help)\n"),
    (["-f", "tests.test_cli:shout", "-c", "many"],
     "twistd gearman-worker: --concurrency: give a whole number, not 'many' "
     "(see twistd gearman-worker --help)\n"),
    (["-f", "tests.test_cli:shout", "-t", "-5"],
     "twistd gearman-worker: --timeout: give a number of seconds, more than 0, not '-5' "
     "(see twistd gearman-worker --help)\n"),
    ([],
     "twistd gearman-worker: give at least one --function or --module "
     "(see twistd gearman-worker --help)\n"),
])
def test_twistdWorkerMistakes(tmp_path, argv, stderr):
    assert runTwistd(tmp_path, "gearman-worker", *argv) == (2, "", stderr)


@pytest.mark.parametrize("plugin", ["gearman", "gearman-worker"])
def test_twistdHelpHasNoMarkup(tmp_path, plugin):
    code, out, err = runTwistd(tmp_path, plugin, "--help")
    assert code == 0 and ("--server" in out or "--port" in out)
    for markup in ("C{", "L{", "I{", "@param"):
        assert markup not in out


def _startTwistd(tmp_path, *argv):
    return subprocess.Popen(
        TWISTD + ["--nodaemon", "--pidfile=", "--logfile=-"] + list(argv), cwd=str(tmp_path),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONPATH=SOURCE_ROOT))


def _stopTwistd(process):
    process.terminate()
    return process.communicate(timeout=15)[0].decode()


def test_twistdGearmanLogsUnixPathAsText(tmp_path):
    import time

    path = str(tmp_path / "g.sock")
    process = _startTwistd(tmp_path, "gearman", "--queue", "memory", "--port", f"unix:{path}")
    try:
        deadline = time.monotonic() + 15
        while not os.path.exists(path) and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        log = _stopTwistd(process)
    assert f"Gearman job server listening on unix:{path}\n" in log


def test_memoryQueueWarnsAtStartAndWhenDroppingJobs(tmp_path):
    from tests._peers import waitForPort
    from tests.test_cli import runScript

    port = freePort()
    process = _startTwistd(tmp_path, "gearman", "--queue", "memory",
                           "--port", f"tcp:{port}:interface=127.0.0.1")
    try:
        waitForPort(port, process=process)
        for payload in ("a", "b"):
            code, out, err = runScript("txgear-submit", "-s", f"127.0.0.1:{port}", "-b",
                                       "nobody-runs-this", payload)
            assert code == 0, err
    finally:
        log = _stopTwistd(process)
    assert ("[txgear#warn] The queue is memory: background jobs are lost when the server "
            "stops (--queue sqlite:PATH keeps them)\n") in log
    assert ("[txgear#warn] Stopping with the memory queue: 2 background job(s), queued or "
            "running, are dropped (--queue sqlite:PATH keeps them across restarts)\n") in log


def _unwritable(directory):
    try:
        os.close(os.open(os.path.join(directory, "txgear-probe"), os.O_RDWR | os.O_CREAT, 0o600))
    except PermissionError:
        return True
    except OSError:
        return False
    os.unlink(os.path.join(directory, "txgear-probe"))
    return False


def test_twistdGearmanUnwritableDirectory():
    """Started where it may not write (/sys: even root may not), it says where and what to do."""
    if not (os.path.isdir("/sys") and _unwritable("/sys")):
        pytest.skip("needs a directory this process may not write: /sys on Linux")
    code, out, err = runTwistd("/sys", "gearman", "--port", "tcp:0:interface=127.0.0.1")
    assert (code, err) == (1, (
        "twistd gearman: cannot start: sqlite:/sys/txgear-queue.sqlite: permission denied: "
        "cannot write /sys/txgear-queue.sqlite (Permission denied); the queue needs a file it "
        "may write in a directory it may write (/sys here). Choose another place with --queue "
        "sqlite:/a/writable/directory/queue.sqlite (a relative path, and the default, are in "
        "the working directory)\n"))
    assert "Traceback" not in out


def test_storeMessagesFollowLogLevel():
    """--log-level governs the stores' messages too (they use txgear's logger)."""
    from twisted.logger import LogLevel, globalLogPublisher

    from txgear._log import logLevel, setLogLevel
    from txgear.store._batch import ThreadedBatchStore
    from txgear.store._sqlite import SQLiteJobStore

    events = []
    before = logLevel()
    globalLogPublisher.addObserver(events.append)
    try:
        setLogLevel(LogLevel.warn)
        for store in (ThreadedBatchStore, SQLiteJobStore):
            store._log.info("hidden at warn")
            store._log.warn("shown at warn")
    finally:
        setLogLevel(before)
        globalLogPublisher.removeObserver(events.append)
    assert [e["log_format"] for e in events] == ["shown at warn"] * 2


def test_wheelHoldsThePluginAndMetadata(tmp_path):
    """
    C{pip wheel .} builds through pyproject.toml (PEP 517/621, no legacy
    C{setup.py install}); the wheel holds the twistd plugin file but no
    C{twisted/__init__.py} of ours, and the console scripts.
    """
    import zipfile

    with open(os.path.join(SOURCE_ROOT, "pyproject.toml"), encoding="utf-8") as f:
        pyproject = f.read()
    assert 'build-backend = "setuptools.build_meta"' in pyproject and "\n[project]\n" in pyproject
    import shutil

    # Built from a copy: setuptools leaves build/ and *.egg-info/ behind.
    source = tmp_path / "source"
    shutil.copytree(SOURCE_ROOT, source, ignore=shutil.ignore_patterns(
        ".git", ".venv*", "venv", "build", "dist", "*.egg-info", "__pycache__", ".tox",
        "*.sqlite*", "results", "loadgen"))
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w",
                           str(tmp_path), str(source)], capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr.decode()
    assert b"setup.py install" not in done.stderr and b"DEPRECATION" not in done.stderr
    [wheel] = [p for p in os.listdir(tmp_path) if p.endswith(".whl")]
    assert wheel == f"txgear-{__version__}-py3-none-any.whl"
    with zipfile.ZipFile(tmp_path / wheel) as archive:
        names = set(archive.namelist())
        info = f"txgear-{__version__}.dist-info/"
        metadata = archive.read(info + "METADATA").decode()
        entryPoints = archive.read(info + "entry_points.txt").decode()
    assert "twisted/plugins/txgear_plugin.py" in names
    assert not {"twisted/__init__.py", "twisted/plugins/__init__.py"} & names
    assert not any(n.startswith(("tests/", "benchmarks/")) for n in names)
    assert "Requires-Python: >=3.9" in metadata and "Requires-Dist: twisted>=22.10" in metadata
    for script in ("txgear-submit = txgear._cli:submitMain",
                   "txgear-worker = txgear._cli:workerMain",
                   "txgear-admin = txgear._cli:adminMain"):
        assert script in entryPoints


def test_maxFunctions():
    assert parse()["max-functions"] == 100000
    service = _makeService("--max-functions", "7", "--queue", "memory")
    assert service.state.maxFunctions == 7
    with pytest.raises(usage.UsageError):
        parse("--max-functions", "-1")


def test_connectionLimits():
    options = parse()
    assert options["output-soft-limit"] == 1024 * 1024 and options["output-hard-limit"] == 0
    assert options["partial-packet-budget"] == 256 * 1024 * 1024
    assert options["packet-deadline"] == 60.0
    options = parse("--output-soft-limit", "65536", "--output-hard-limit", "40000000",
                    "--partial-packet-budget", "1000000", "--packet-deadline", "2.5")
    assert (options["output-soft-limit"], options["output-hard-limit"]) == (65536, 40000000)
    assert (options["partial-packet-budget"], options["packet-deadline"]) == (1000000, 2.5)
    service = _makeService("--queue", "memory", "--output-soft-limit", "65536",
                           "--output-hard-limit", "40000000", "--partial-packet-budget", "1000000",
                           "--packet-deadline", "2.5")
    factory = service.factory
    assert (factory.outputSoftLimit, factory.outputHardLimit) == (65536, 40000000)
    assert (factory.partialBudget, factory.packetDeadline) == (1000000, 2.5)


def test_acl(tmp_path):
    assert parse()["access"] is None
    assert _makeService("--queue", "memory").factory.access is None
    path = tmp_path / "acl.ini"
    path.write_text("[anonymous]\ninvoke = echo\n")
    service = _makeService("--queue", "memory", "--acl", str(path))
    assert service.factory.access.path == str(path)
    assert service.factory.access.allows(("anonymous",), "invoke", b"echo")
    assert service.factory.guard is not None


def test_aclMistakes(tmp_path):
    with pytest.raises(usage.UsageError, match="--acl: cannot read"):
        parse("--acl", str(tmp_path / "missing.ini"))
    path = tmp_path / "acl.ini"
    path.write_text("[anonymous]\n\ninvoke = (\n")
    with pytest.raises(usage.UsageError, match=r"--acl: .*acl.ini, line 3: \[anonymous\] invoke"):
        parse("--acl", str(path))


def test_twistdGearmanAclMistake(tmp_path):
    path = tmp_path / "acl.ini"
    path.write_text("[ops]\nadmin = sure\n")
    code, out, err = runTwistd(tmp_path, "gearman", "--acl", str(path))
    assert (code, out) == (2, "")
    assert err == (f"twistd gearman: --acl: {path}, line 2: [ops] admin: give true or false, "
                   f"not 'sure' (see twistd gearman --help)\n")


# -- TLS -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def tlsPki(tmp_path_factory):
    from tests._tlskit import Pki

    return Pki(str(tmp_path_factory.mktemp("tap-pki")))


def test_tlsPorts(tlsPki):
    server = tlsPki.server
    options = parse("-L", "127.0.0.1", "--tls-port", "4731", "--tls-port", "tcp6:4732",
                    "--tls-cert", server.certPath, "--tls-key", server.keyPath)
    # Only TLS ports given: no plain port.
    assert options["ports"] == []
    assert options["tls-ports"] == ["tcp:4731:interface=127.0.0.1", "tcp6:4732"]
    assert options["tls"] is not None and not options["tls"].requiresClientCertificate
    assert options["tls-handshake-deadline"] == 10.0
    options = parse("--port", "4730", "--tls-port", "4731", "--tls-cert", server.pemPath,
                    "--tls-ca", tlsPki.ca.certPath, "--tls-handshake-deadline", "3")
    assert options["ports"] == ["tcp:4730"] and options["tls-ports"] == ["tcp:4731"]
    assert options["tls"].requiresClientCertificate and options["tls"].handshakeDeadline == 3.0
    service = _makeService("--queue", "memory", "--tls-port", "4731", "--tls-cert",
                           server.pemPath)
    assert service.endpoints == [] and service.tlsEndpoints == ["tcp:4731"]
    assert service.tls is not None


def test_tlsMistakes(tlsPki, tmp_path):
    server = tlsPki.server
    missing = str(tmp_path / "missing.pem")
    cases = [
        (["--tls-port", "4731"], "--tls-port needs --tls-cert"),
        (["--tls-cert", server.pemPath], "--tls-cert without --tls-port"),
        (["--tls-port", "4731", "--tls-cert", missing], f"--tls-cert: {missing}: cannot read"),
        (["--tls-port", "4731", "--tls-cert", server.certPath, "--tls-key",
          tlsPki.client.keyPath], f"--tls-key: {tlsPki.client.keyPath}: its private key does "
                                  f"not match"),
        (["--tls-port", "4731", "--tls-cert", server.certPath], "holds no usable PEM private key"),
        (["--tls-port", "4731", "--tls-cert", server.pemPath, "--tls-ca", server.keyPath],
         "--tls-ca: "),
        (["--tls-port", "ssl:4731", "--tls-cert", server.pemPath], "give a port number or a tcp:"),
        (["--tls-port", "tcp:99999", "--tls-cert", server.pemPath], "is not a port number"),
        (["--tls-port", "4731", "--tls-cert", server.pemPath, "--tls-handshake-deadline", "0"],
         "--tls-handshake-deadline must be positive"),
    ]
    for argv, message in cases:
        with pytest.raises(usage.UsageError) as caught:
            parse(*argv)
        assert message in str(caught.value), (argv, str(caught.value))


def test_twistdGearmanTLSMistake(tmp_path, tlsPki):
    code, out, err = runTwistd(tmp_path, "gearman", "--tls-port", "4731", "--tls-cert",
                               tlsPki.server.certPath, "--tls-key", tlsPki.client.keyPath)
    assert code == 2 and out == ""
    assert err == (f"twistd gearman: --tls-key: {tlsPki.client.keyPath}: its private key does "
                   f"not match the certificate in {tlsPki.server.certPath} (see twistd gearman "
                   f"--help)\n")


def test_twistdGearmanServesTLSOnly(tmp_path, tlsPki):
    """C{twistd gearman --tls-port} alone: it listens with TLS, and on no plain port."""
    from tests._peers import waitForPort
    from tests._tlskit import clientContext, tlsClient

    port = freePort()
    process = _startTwistd(tmp_path, "gearman", "--queue", "memory", "--listen", "127.0.0.1",
                           "--tls-port", str(port), "--tls-cert", tlsPki.server.pemPath,
                           "--tls-ca", tlsPki.ca.certPath)
    try:
        waitForPort(port, process=process)
        with tlsClient(port, clientContext(tlsPki, tlsPki.client)) as client:
            client.echo(b"tap")
    finally:
        log = _stopTwistd(process)
    assert (f"Gearman job server listening with TLS on 127.0.0.1:{port} (client certificates "
            f"required)\n") in log
    assert "Gearman job server listening on" not in log


# -- HTTP ----------------------------------------------------------------------


def test_httpOption():
    assert parse()["http"] == []
    assert _makeService("--queue", "memory").httpFactory is None
    options = parse("-L", "127.0.0.1", "--http", "8080", "--http", "tcp6:8081")
    assert options["http"] == ["tcp:8080:interface=127.0.0.1", "tcp6:8081"]
    service = _makeService("--queue", "memory", "--http", "tcp:0:interface=127.0.0.1")
    from twisted.web.server import Site

    assert isinstance(service.httpFactory, Site)
    assert service.httpFactory.resource.state is service.state
    with pytest.raises(usage.UsageError, match="--http"):
        parse("--http", "tcp:99999")


def test_httpLimits():
    options = parse()
    assert (options["http-max-wait"], options["http-max-waiting"]) == (60.0, 10000)
    service = _makeService("--queue", "memory", "--http", "tcp:0:interface=127.0.0.1",
                           "--http-max-wait", "5", "--http-max-waiting", "7",
                           "--max-packet-size", "2048")
    api = service.httpFactory.resource.api
    assert (api.maxWait, api.maxWaiting, api.maxBody) == (5.0, 7, 2048)
    assert service.httpFactory.maxBody == 2048
    assert (options["http-idle-timeout"], options["http-max-connections"]) == (60.0, 1024)
    site = _makeService("--queue", "memory", "--http", "tcp:0:interface=127.0.0.1",
                        "--http-idle-timeout", "7", "--http-max-connections", "3").httpFactory
    assert (site.timeOut, site.maxConnections) == (7.0, 3)
    for argv in (["--http-max-wait", "0"], ["--http-max-waiting", "0"],
                 ["--http-idle-timeout", "0"], ["--http-max-connections", "0"]):
        with pytest.raises(usage.UsageError, match=argv[0]):
            parse(*argv)


def test_httpsOption(tlsPki):
    options = parse("--https", "8443", "-L", "127.0.0.1", "--tls-cert", tlsPki.server.certPath,
                    "--tls-key", tlsPki.server.keyPath)
    assert options["https"] == ["tcp:8443:interface=127.0.0.1"]
    assert options["tls"] is not None
    with pytest.raises(usage.UsageError, match="--https needs --tls-cert"):
        parse("--https", "8443")
    with pytest.raises(usage.UsageError, match="--https"):
        parse("--https", "ssl:8443", "--tls-cert", tlsPki.server.certPath)
    service = _makeService("--queue", "memory", "--https", "tcp:0:interface=127.0.0.1",
                           "--tls-cert", tlsPki.server.certPath, "--tls-key",
                           tlsPki.server.keyPath)
    assert service.httpsEndpoints == ["tcp:0:interface=127.0.0.1"]
    assert service.httpFactory is not None


# -- retry policies --------------------------------------------------------------


def test_policyDefaultFollowsJobRetries():
    assert [(n, t) for n, t in parse()["policies"].rows()] == [(b"*", "attempts:0,backoff:0,on:lost")]
    assert list(parse("--job-retries", "3")["policies"].rows()) == [
        (b"*", "attempts:3,backoff:0,on:lost+timeout")]


def test_policyOptions():
    """Repeatable; the default (*) applies first, whatever the order, and functions build on it."""
    options = parse("--policy", "resize=backoff:2s..10m,on:lost+timeout+fail",
                    "--policy", "*=attempts:5", "--policy", "a=b=attempts:2")
    assert list(options["policies"].rows()) == [
        (b"*", "attempts:5,backoff:0,on:lost"),
        (b"a=b", "attempts:2,backoff:0,on:lost"),
        (b"resize", "attempts:5,backoff:2s..10m,on:lost+timeout+fail")]


@pytest.mark.parametrize("value, message", [
    ("resize", "--policy 'resize': write FUNCTION=SPEC"),
    ("=attempts:3", "write FUNCTION=SPEC"),
    ("resize=", "--policy 'resize=': empty policy"),
    ("resize=attempts:x", "attempts must be a whole number"),
    ("resize=keep:1x", "bad duration"),
    ("resize=backoff:5s..1s", "the maximum is below the minimum"),
    ("bad\x01name=attempts:2", "is not a valid function name"),
])
def test_policyMistakes(value, message):
    with pytest.raises(usage.UsageError, match=message):
        parse("--policy", value)


def test_twistdGearmanPolicyMistake(tmp_path):
    code, out, err = runTwistd(tmp_path, "gearman", "--policy", "f=on:crash")
    assert code == 2 and out == ""
    assert err == ("twistd gearman: --policy 'f=on:crash': unknown outcome 'crash': choose among "
                   "lost+timeout+fail+exception (see twistd gearman --help)\n")


@pytest.mark.parametrize("argv, message", [
    (["--cluster", "c1"], "needs --queue postgresql"),
    (["--cluster", "c1", "--queue", "sqlite:q.db"], "needs --queue postgresql"),
    (["--cluster", "bad name", "--queue", "postgresql:host=x"], "letters, digits"),
    (["--cluster", "c" * 65, "--queue", "postgresql:host=x"], "letters, digits"),
    (["--cluster", "c1", "--queue", "postgresql:host=x", "--cluster-lease", "1"], "at least 1.5"),
    (["--cluster", "c1", "--queue", "postgresql:host=x", "--cluster-poll", "0"], "positive"),
    (["--cluster", "c1", "--queue", "postgresql:host=x", "--cluster-id", "a\nb"], "printable"),
])
def test_clusterOptionsAreCheckedBeforeStart(argv, message):
    pytest.importorskip("psycopg")
    with pytest.raises(usage.UsageError, match=message):
        parse(*argv)


def test_clusterServiceUsesTheClusterHandlesAndStore():
    pytest.importorskip("psycopg")
    from txgear.cluster._store import ClusterJobStore
    options = parse("--cluster", "prod", "--queue", "postgresql:host=127.0.0.1 dbname=x",
                    "--port", "tcp:4999")
    assert options["cluster-id"].endswith(":4999")
    service = _makeService("--cluster", "prod", "--queue", "postgresql:host=127.0.0.1 dbname=x",
                           "--cluster-id", "gear-a")
    state = service.state
    assert isinstance(state.store, ClusterJobStore) and state.handlePrefix == b"H:prod:"
    assert state.cluster is not None and state.cluster.membership.serverId == "gear-a"
    assert state.cluster.membership.lease == 6.0 and state.cluster.poll == 1.0
    # Its address is where it listens, whatever its id: another server given the
    # same id elsewhere cannot take its live lease over.
    assert state.cluster.membership.address.endswith(":4730")


class _Stats:
    def __init__(self, nursery: str) -> None:
        self.nursery_size = nursery


@pytest.mark.parametrize("shown, size, warned", [
    ("150.0MB", 150 * 2**20, True),
    ("1.0MB", 2**20, False),
    ("16.0MB", 16 * 2**20, False),
])
def test_pypyNurseryOutOfProportionIsWarnedOf(shown: str, size: int, warned: bool) -> None:
    """
    A PyPy nursery over 16 MiB (PyPy takes half the cache size /proc/cpuinfo
    reports) is logged as a warning naming PYPY_GC_NURSERY; a usual one is not.
    """
    from twisted.logger import capturedLogs

    from txgear.tap import checkPyPyNursery

    with capturedLogs() as events:
        assert checkPyPyNursery(lambda: _Stats(shown)) == size
    warnings = [e for e in events if e["log_level"] == LogLevel.warn]
    assert len(warnings) == (1 if warned else 0)
    if warned:
        assert "PYPY_GC_NURSERY" in warnings[0]["log_format"] and warnings[0]["size"] == 150


def test_pypyNurseryCheckIgnoresWhatItCannotRead() -> None:
    """Stats without a readable nursery size: no warning, no size."""
    from txgear.tap import checkPyPyNursery

    assert checkPyPyNursery(lambda: _Stats("?")) is None
    assert checkPyPyNursery(lambda: object()) is None

"""
docs/tutorial.md, run as written.

The test reads the tutorial's code blocks and the HTML comment before each
(readers do not see it), which says what to do with the block:

  - C{test: skip (why)}: nothing;
  - C{test: start [waitports=P,Q]}: each command (a line, or lines joined by
    a trailing backslash) is started in the background, as in its own
    terminal, and stopped at the end; then the test waits until something
    listens on each port given;
  - C{test: run}: the block is run by C{sh -e}; it must exit with 0;
  - C{test: output}: what the last run printed on standard output: each
    line must match, C{...} matching any text, and a line of only C{...}
    any number of lines;
  - C{test: file NAME}: the block is saved as NAME.

Everything runs in a fresh directory, with the directory of the running
Python's scripts (C{twistd}, C{txgear-*}, C{python}) first on C{PATH}, and
this source tree first on C{PYTHONPATH}. The only change made to the text:
the port numbers 4730 and 4731 become free ports.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from typing import Dict, List, Tuple

import pytest

from tests._peers import SOURCE_ROOT, freePort, requirePeer, waitForPort

TUTORIAL = os.path.join(SOURCE_ROOT, "docs", "tutorial.md")
_BLOCK = re.compile(r"<!--\s*test:\s*(?P<directive>[^\n]*?)\s*-->\s*\n```[a-z]*\n(?P<body>.*?)^```",
                    re.DOTALL | re.MULTILINE)
_FENCE = re.compile(r"^```", re.MULTILINE)


def tutorialBlocks(text: str) -> List[Tuple[str, str, str]]:
    """The marked blocks of C{text}: (action, argument, body), in order."""
    blocks = []
    for match in _BLOCK.finditer(text):
        action, _, argument = match.group("directive").partition(" ")
        blocks.append((action, argument.strip(), match.group("body")))
    return blocks


def outputPattern(expected: str) -> "re.Pattern[str]":
    """The regular expression an output block stands for (C{...} matches anything)."""
    parts = []
    for line in expected.splitlines():
        if line.strip() == "...":
            parts.append(r"(?:[^\n]*\n)*?")
        else:
            parts.append(".*?".join(re.escape(piece) for piece in line.split("...")) + r"\n")
    return re.compile("".join(parts))


def commands(block: str) -> List[str]:
    """The commands of a block: lines, with backslash continuations joined."""
    joined = block.replace("\\\n", " ")
    return [line.strip() for line in joined.splitlines() if line.strip()]


def test_everyBlockIsMarked():
    """A code block the test does not know about would silently go untested."""
    with open(TUTORIAL, encoding="utf-8") as f:
        text = f.read()
    fences = len(_FENCE.findall(text)) // 2
    assert fences == len(tutorialBlocks(text))


def test_outputPattern():
    pattern = outputPattern("a...\n...\nlast\n")
    assert pattern.fullmatch("abc\nx\ny\nlast\n")
    assert pattern.fullmatch("a\nlast\n")
    assert not pattern.fullmatch("b\nlast\n")


def _environment(directory: str) -> Dict[str, str]:
    scripts = os.path.dirname(sys.executable)
    for program in ("twistd", "txgear-submit", "txgear-worker", "txgear-admin"):
        requirePeer(os.path.exists(os.path.join(scripts, program)),
                    f"the installed script {program} (pip install . first)")
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([scripts, env.get("PATH", "")])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [SOURCE_ROOT, env.get("PYTHONPATH")]))
    env.pop("GEARMAN_SERVER", None)
    return env


@pytest.mark.timeout(120)
def test_tutorial(tmp_path):
    portA, portB = freePort(), freePort()
    while portB == portA:
        portB = freePort()
    with open(TUTORIAL, encoding="utf-8") as f:
        text = f.read().replace("4730", str(portA)).replace("4731", str(portB))
    directory = str(tmp_path)
    env = _environment(directory)
    started: List[subprocess.Popen] = []
    logs = []
    lastOutput = None
    ran = {"start": 0, "run": 0, "output": 0, "file": 0}
    try:
        for action, argument, body in tutorialBlocks(text):
            if action == "skip":
                continue
            ran[action] += 1
            if action == "file":
                with open(os.path.join(directory, argument), "w", encoding="utf-8") as f:
                    f.write(body)
            elif action == "start":
                for command in commands(body):
                    log = open(os.path.join(directory, f"process-{len(started)}.log"), "wb")
                    logs.append(log)
                    started.append(subprocess.Popen(
                        ["sh", "-c", command], cwd=directory, env=env, stdin=subprocess.DEVNULL,
                        stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
                options = dict(option.split("=", 1) for option in argument.split())
                for port in filter(None, options.get("waitports", "").split(",")):
                    waitForPort(int(port), timeout=30)
            elif action == "run":
                done = subprocess.run(["sh", "-ec", body], cwd=directory, env=env,
                                      stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
                assert done.returncode == 0, (body, done.stdout, done.stderr)
                lastOutput = done.stdout.decode()
            elif action == "output":
                assert lastOutput is not None, "an output block before any run block"
                assert outputPattern(body).fullmatch(lastOutput), (body, lastOutput)
            else:
                pytest.fail(f"unknown tutorial test action {action!r}")
        assert ran == {"start": 2, "run": 4, "output": 4, "file": 3}

        # The client run without arguments uses the first server.
        done = subprocess.run([sys.executable, "resize_client.py"], cwd=directory, env=env,
                              capture_output=True, timeout=60)
        assert done.returncode == 0 and b"photo-019.jpg -> {" in done.stdout, done.stderr
    finally:
        for process in started:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in started:
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(5)
        for log in logs:
            log.close()

    # With no server up, the client says so on one line: no traceback.
    done = subprocess.run([sys.executable, "resize_client.py"], cwd=directory, env=env,
                          capture_output=True, timeout=60)
    assert done.returncode == 1 and done.stdout == b""
    assert done.stderr.decode().startswith("resize_client: no Gearman server is reachable")
    assert len(done.stderr.splitlines()) == 1, done.stderr

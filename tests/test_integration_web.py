"""
The HTTP port end to end: a real C{twistd gearman --http} (and C{--https}
with client certificates) process, the real C{gearman -w} worker, and
Python's urllib as the HTTP client; loopback only, every wait bounded.
"""
from __future__ import annotations

import json
import os
import signal
import ssl
import time
import urllib.error
import urllib.request
from typing import Any, Dict, Iterator, Optional, Tuple

import pytest

from tests._peers import freePort, requireProgram, txgearProcess, waitForPort
from tests._rawclient import RawClient, ToolProcess
from tests._tlskit import EXAMPLE_ACL, Pki, clientContext
from txgear._packet import PacketType as P


def http(url: str, method: str = "GET", body: Optional[bytes] = None,
         headers: Optional[Dict[str, str]] = None, context: Optional[ssl.SSLContext] = None,
         timeout: float = 15.0) -> Tuple[int, Dict[str, str], bytes]:
    """One request: (status, headers, body), whatever the status."""
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


@pytest.fixture(scope="module")
def server(tmp_path_factory: Any) -> Iterator[Any]:
    directory = tmp_path_factory.mktemp("web")
    httpPort = freePort()
    proc = txgearProcess(extra=["--queue", "memory", "--http",
                                f"tcp:{httpPort}:interface=127.0.0.1"], cwd=str(directory))
    proc.start()
    waitForPort(httpPort)
    proc.url = f"http://127.0.0.1:{httpPort}"  # type: ignore[attr-defined]
    try:
        yield proc
    finally:
        proc.stop()


def test_submit_over_http_to_a_gearman_tool_worker(server: Any) -> None:
    gearman = requireProgram("gearman")
    with ToolProcess([gearman, "-h", "127.0.0.1", "-p", str(server.port), "-w", "-f", "web-rev",
                      "--", "rev"]):
        status, headers, body = http(server.url + "/v1/functions/web-rev/jobs?wait=10",
                                     "POST", b"hello http")
        assert (status, body) == (200, b"ptth olleh")
        assert headers["X-Gearman-Outcome"] == "complete"
        # gearmand's plugin form, same worker.
        status, headers, body = http(server.url + "/web-rev", "POST", b"abc")
        assert (status, body) == (200, b"cba")
        assert headers["X-Gearman-Command"] == "WORK_COMPLETE"
        status, _, body = http(server.url + "/v1/functions")
        assert status == 200
        names = {f["name"]: f for f in json.loads(body)["items"]}
        assert names["web-rev"]["workers"] == 1
        status, _, body = http(server.url + "/v1/workers")
        assert any(w["functions"] == ["web-rev"] for w in json.loads(body)["items"])


def test_background_status_cancel_and_timeout(server: Any) -> None:
    status, headers, body = http(server.url + "/v1/functions/web-idle/jobs?background=true",
                                 "POST", b"x")
    assert status == 202
    handle = json.loads(body)["handle"]
    status, _, body = http(server.url + headers["Location"])
    assert status == 200 and json.loads(body)["known"] is True
    assert http(server.url + headers["Location"], "DELETE")[0] == 200
    assert http(server.url + headers["Location"])[0] == 404
    status, _, body = http(server.url + "/v1/functions/web-idle/jobs?wait=0.5", "POST", b"y")
    assert status == 504
    assert handle != json.loads(body)["handle"]


def _readEvents(response: Any, until: str, timeout: float = 15.0) -> str:
    """Read an event stream until an event named C{until} is complete."""
    text = ""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = response.readline().decode("utf-8")
        if not line:
            break
        text += line
        if line == "\n" and f"event: {until}\n" in text:
            return text
    raise AssertionError(f"no {until!r} event; got {text!r}")


def test_job_events_over_http_from_a_raw_worker(server: Any) -> None:
    worker = RawClient(server.port)
    try:
        worker.send(P.CAN_DO, b"web-events")
        status, headers, body = http(server.url + "/v1/functions/web-events/jobs?background=1",
                                     "POST", b"p")
        handle = json.loads(body)["handle"].encode()
        worker.send(P.GRAB_JOB)
        worker.expect(P.JOB_ASSIGN)
        stream = urllib.request.urlopen(server.url + headers["Location"] + "/events", timeout=15)
        assert stream.headers["Content-Type"].startswith("text/event-stream")
        _readEvents(stream, "status")
        worker.send(P.WORK_STATUS, handle, b"1", b"2")
        worker.send(P.WORK_DATA, handle, b"two\nlines")
        worker.send(P.WORK_COMPLETE, handle, b"end")
        text = _readEvents(stream, "complete")
        assert 'event: status\ndata: {"numerator": "1", "denominator": "2"}\n' in text
        assert "event: data\ndata: two\ndata: lines\n\n" in text
        assert text.endswith("event: complete\ndata: end\n\n")
        assert stream.read() == b""  # the stream ended
    finally:
        worker.close()


def test_stop_closes_an_open_event_stream(tmp_path: Any) -> None:
    httpPort = freePort()
    proc = txgearProcess(extra=["--queue", "memory", "--shutdown-grace", "1", "--http",
                                f"tcp:{httpPort}:interface=127.0.0.1"], cwd=str(tmp_path))
    proc.start()
    try:
        waitForPort(httpPort)
        url = f"http://127.0.0.1:{httpPort}"
        _, headers, _ = http(url + "/v1/functions/stuck/jobs?background=1", "POST", b"x")
        stream = urllib.request.urlopen(url + headers["Location"] + "/events", timeout=15)
        _readEvents(stream, "status")
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.process is not None
        proc.process.wait(15)  # does not hang on the open stream
        assert stream.read() == b""
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def tlsWeb(tmp_path_factory: Any) -> Iterator[Any]:
    directory = tmp_path_factory.mktemp("webtls")
    pki = Pki(str(directory))
    acl = directory / "acl.ini"
    acl.write_text(EXAMPLE_ACL)
    httpsPort = freePort()
    proc = txgearProcess(extra=["--queue", "memory", "--acl", str(acl),
                                "--https", f"tcp:{httpsPort}:interface=127.0.0.1",
                                "--tls-cert", pki.server.certPath, "--tls-key",
                                pki.server.keyPath, "--tls-ca", pki.ca.certPath],
                         cwd=str(directory))
    proc.start()
    waitForPort(httpsPort)
    proc.url = f"https://localhost:{httpsPort}"  # type: ignore[attr-defined]
    proc.pki = pki  # type: ignore[attr-defined]
    try:
        yield proc
    finally:
        proc.stop()


def test_https_client_certificate_names_the_requester(tlsWeb: Any) -> None:
    pki = tlsWeb.pki
    app = clientContext(pki, pki.client)
    status, _, _ = http(tlsWeb.url + "/v1/functions/resize/jobs?background=1", "POST", b"x",
                        context=app)
    assert status == 202  # client-app may invoke resize
    assert http(tlsWeb.url + "/v1/functions/secret/jobs?background=1", "POST", b"x",
                context=app)[0] == 403
    assert http(tlsWeb.url + "/v1/functions", context=app)[0] == 403  # no admin right
    admin = clientContext(pki, pki.admin)
    status, _, body = http(tlsWeb.url + "/v1/functions", context=admin)
    assert status == 200
    assert [f["name"] for f in json.loads(body)["items"]] == ["resize"]

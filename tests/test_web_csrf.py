"""
Cross-site request forgery rules of the HTTP port (txgear/web/_csrf.py),
on every state-changing route: the JSON API's submit and cancel, and
gearmand's form; over the real site on in-memory transports.
"""
from __future__ import annotations

from typing import Dict

import pytest

from txgear.web._csrf import crossSiteProblem

from tests._webkit import HandWorker, WebHarness

PAGE = {"Origin": "http://localhost", "X-Txgear-Request": "dashboard"}


def queuedHandle(h: WebHarness, function: str = "c") -> str:
    h.call("POST", f"/v1/functions/{function}/jobs?background=1", b"x")
    return list(h.state.jobs)[-1].decode()


def test_the_pages_cancel_from_its_own_origin_is_accepted() -> None:
    h = WebHarness()
    handle = queuedHandle(h)
    response = h.call("DELETE", "/v1/jobs/" + handle, headers=PAGE)
    assert response.status == 200
    assert h.state.jobs == {}


@pytest.mark.parametrize("headers", [
    {"Origin": "http://evil.example", "X-Txgear-Request": "dashboard"},
    {"Origin": "https://localhost", "X-Txgear-Request": "dashboard"},   # another scheme
    {"Origin": "http://localhost:8080", "X-Txgear-Request": "dashboard"},  # another port
    {"Origin": "null", "X-Txgear-Request": "dashboard"},               # an opaque origin
    {"Referer": "http://evil.example/page.html"},
    {"Sec-Fetch-Site": "cross-site"},
])
def test_a_cancel_from_another_origin_is_refused(headers: Dict[str, str]) -> None:
    h = WebHarness()
    handle = queuedHandle(h)
    response = h.call("DELETE", "/v1/jobs/" + handle, headers=headers)
    assert response.status == 403
    assert "cross-site" in response.json()["error"]
    assert list(h.state.jobs) == [handle.encode()]


def test_a_browser_request_without_the_action_header_or_json_is_refused() -> None:
    """A same-origin form (no custom header possible) cannot cancel either."""
    h = WebHarness()
    handle = queuedHandle(h)
    formLike = {"Origin": "http://localhost",
                "Content-Type": "application/x-www-form-urlencoded"}
    response = h.call("DELETE", "/v1/jobs/" + handle, headers=formLike)
    assert response.status == 403 and "X-Txgear-Request" in response.json()["error"]
    assert h.call("DELETE", "/v1/jobs/" + handle,
                  headers={"Sec-Fetch-Site": "same-origin"}).status == 403
    assert list(h.state.jobs) == [handle.encode()]
    jsonTyped = {"Origin": "http://localhost", "Content-Type": "application/json; charset=utf-8"}
    assert h.call("DELETE", "/v1/jobs/" + handle, headers=jsonTyped).status == 200


def test_programs_without_origin_or_referer_keep_working() -> None:
    h = WebHarness()
    handle = queuedHandle(h)
    assert h.call("DELETE", "/v1/jobs/" + handle).status == 200
    assert h.call("POST", "/v1/functions/s/jobs?background=1", b"x").status == 202
    HandWorker(h.state, b"g")
    exchange = h.request("POST", "/g", b"x", headers={"X-Gearman-Background": "true"})
    response = exchange.response()
    assert response is not None and response.status == 200
    assert response.headers[b"x-gearman-command"] == b"JOB_CREATED"


def test_submissions_and_gearmands_form_from_another_site_are_refused() -> None:
    h = WebHarness()
    evil = {"Origin": "http://evil.example", "Content-Type": "text/plain"}
    assert h.call("POST", "/v1/functions/s/jobs?background=1", b"x", headers=evil).status == 403
    assert h.call("POST", "/s", b"x", headers=evil).status == 403
    assert h.call("PUT", "/s", b"x", headers={"Referer": "http://evil.example/"}).status == 403
    assert h.state.jobs == {}
    same = {"Origin": "http://localhost", "Content-Type": "application/json"}
    assert h.call("POST", "/v1/functions/s/jobs?background=1", b"{}", headers=same).status == 202


def test_reads_are_never_refused() -> None:
    h = WebHarness()
    evil = {"Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site"}
    assert h.call("GET", "/v1/functions", headers=evil).status == 200
    assert h.call("GET", "/", headers=evil).status == 200


class _Request:
    """Just what crossSiteProblem asks of a request."""

    def __init__(self, method: bytes, headers: Dict[bytes, bytes], secure: bool = False) -> None:
        self.method = method
        self.headers = headers
        self.secure = secure

    def getHeader(self, name: bytes) -> object:
        return self.headers.get(name)

    def isSecure(self) -> bool:
        return self.secure


def test_origins_compare_scheme_host_and_default_ports() -> None:
    def problem(origin: bytes, host: bytes, secure: bool = False) -> object:
        return crossSiteProblem(_Request(b"POST", {b"origin": origin, b"host": host,
                                                   b"x-txgear-request": b"1"}, secure))

    assert problem(b"http://127.0.0.1:8080", b"127.0.0.1:8080") is None
    assert problem(b"http://EXAMPLE.org:80", b"example.org") is None
    assert problem(b"https://example.org", b"example.org:443", secure=True) is None
    assert problem(b"http://[::1]:9730", b"[::1]:9730") is None
    assert problem(b"http://example.org", b"example.org", secure=True) is not None
    assert problem(b"http://example.org:81", b"example.org") is not None
    assert problem(b"http://example.org", b"") is not None
    assert problem(b"http://exa mple.org:x", b"example.org") is not None
    assert crossSiteProblem(_Request(b"GET", {b"origin": b"http://evil"})) is None

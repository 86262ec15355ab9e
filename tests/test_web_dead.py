"""
The dead set over the JSON API (txgear/web/_api.py): C{GET /v1/dead},
C{POST /v1/dead/retry}, C{DELETE /v1/dead} and the C{dead} member of
C{/v1/stats}, over the real twisted.web site on in-memory transports and a
task.Clock: every field, page, status code and right.
"""
from __future__ import annotations

import json
from typing import Any, Tuple

from txgear._packet import PacketType
from txgear.server._state import QUEUED

from tests._webkit import HandWorker, WebHarness
from tests.test_web_api import aclWith

HOSTILE_ERROR = b"Traceback <img src=x onerror=alert(1)>\n\xff"


def dies(h: WebHarness, worker: HandWorker, function: str = "f", unique: str = "",
         payload: bytes = b"x", error: bytes = b"") -> str:
    """A background job of C{function} fails for good (the default policy); its handle."""
    query = "background=1" + (f"&unique={unique}" if unique else "")
    created = h.call("POST", f"/v1/functions/{function}/jobs?{query}", payload)
    assert created.status == 202
    handle = created.json()["handle"].encode()
    grabbed, _, _ = worker.grab()
    assert grabbed == handle
    if error:
        worker.end(handle, PacketType.WORK_EXCEPTION, error)
    else:
        worker.end(handle, PacketType.WORK_FAIL)
    assert h.state.dead.get(handle) is not None
    return handle.decode()


def threeDead(h: WebHarness) -> Tuple[HandWorker, str, str, str]:
    """Three dead jobs, one second apart: two of C{a}, one of C{b} (hostile error)."""
    worker = HandWorker(h.state, b"a", b"b")
    first = dies(h, worker, "a", unique="u1", payload=b"12345")
    h.clock.advance(1.0)
    second = dies(h, worker, "b", error=HOSTILE_ERROR)
    h.clock.advance(1.0)
    third = dies(h, worker, "a")
    return worker, first, second, third


def post(h: WebHarness, path: str, value: Any) -> Any:
    return h.call("POST", path, json.dumps(value).encode(),
                  {"Content-Type": "application/json"})


# -- listing ----------------------------------------------------------------------


def test_dead_jobs_are_listed_newest_first_with_every_field() -> None:
    h = WebHarness()
    h.clock.advance(1700000000.25)
    _, first, second, third = threeDead(h)
    response = h.call("GET", "/v1/dead")
    assert response.status == 200
    assert b"<" not in response.body  # markup escaped even inside the JSON
    body = response.json()
    assert body["next"] is None
    assert [item["handle"] for item in body["items"]] == [third, second, first]
    assert body["items"][2] == {"handle": first, "function": "a", "unique": "u1",
                                "attempts": 1, "error": "WORK_FAIL",
                                "died_at": 1700000000.25, "payload_size": 5}
    assert body["items"][1]["error"] == "Traceback <img src=x onerror=alert(1)>\n\ufffd"
    assert body["items"][1]["died_at"] == 1700000001.25


def test_dead_jobs_come_in_pages_and_by_function() -> None:
    h = WebHarness()
    _, first, second, third = threeDead(h)
    page = h.call("GET", "/v1/dead?limit=2").json()
    assert [item["handle"] for item in page["items"]] == [third, second]
    assert page["next"]
    rest = h.call("GET", "/v1/dead?limit=2&after=" + page["next"]).json()
    assert [item["handle"] for item in rest["items"]] == [first]
    assert rest["next"] is None
    ofA = h.call("GET", "/v1/dead?function=a").json()
    assert [item["handle"] for item in ofA["items"]] == [third, first]
    assert h.call("GET", "/v1/dead?function=nothing").json() == {"items": [], "next": None}
    for bad in ("after=x", "after=1.", "after=.2", "limit=-1", "limit=x"):
        assert h.call("GET", "/v1/dead?" + bad).status == 400, bad


def test_a_page_cursor_survives_the_jobs_before_it_leaving() -> None:
    h = WebHarness()
    _, first, second, third = threeDead(h)
    page = h.call("GET", "/v1/dead?limit=1").json()
    assert post(h, "/v1/dead/retry", {"handles": [third, second]}).status == 200
    rest = h.call("GET", "/v1/dead?after=" + page["next"]).json()
    assert [item["handle"] for item in rest["items"]] == [first]


def test_stats_counts_the_dead_set_per_function() -> None:
    h = WebHarness()
    assert h.call("GET", "/v1/stats").json()["dead"] == {"count": 0, "by_function": {}}
    threeDead(h)
    assert h.call("GET", "/v1/stats").json()["dead"] == {"count": 3,
                                                         "by_function": {"a": 2, "b": 1}}


# -- retrying -----------------------------------------------------------------------


def test_retrying_handles_counts_retried_stayed_and_unknown() -> None:
    h = WebHarness()
    worker, first, second, third = threeDead(h)
    # A live job takes the unique of the first: it stays dead.
    live = h.call("POST", "/v1/functions/a/jobs?background=1&unique=u1", b"live")
    assert live.status == 202
    response = post(h, "/v1/dead/retry", {"handles": [first, second, "H:test:999", second]})
    assert response.status == 200
    assert response.json() == {"retried": 1, "stayed": 1, "unknown": 2}
    assert h.state.dead.get(second.encode()) is None
    assert h.state.jobs[second.encode()].state == QUEUED
    assert [item["handle"] for item in h.call("GET", "/v1/dead").json()["items"]] == [
        third, first]
    # The retried job runs again, its payload back.
    grabbed = {worker.grab()[::2], worker.grab()[::2]}
    assert grabbed == {(second.encode(), b"x"), (live.json()["handle"].encode(), b"live")}


def test_retrying_a_function_or_everything() -> None:
    h = WebHarness()
    worker, first, second, third = threeDead(h)
    assert post(h, "/v1/dead/retry", {"function": "a"}).json() == {
        "retried": 2, "stayed": 0, "unknown": 0}
    assert [item["handle"] for item in h.call("GET", "/v1/dead").json()["items"]] == [second]
    assert post(h, "/v1/dead/retry", {"function": "a"}).json()["retried"] == 0
    assert post(h, "/v1/dead/retry", {}).json() == {"retried": 1, "stayed": 0, "unknown": 0}
    assert len(h.state.dead) == 0
    fourth = dies(h, HandWorker(h.state, b"c"), "c")
    # No body at all (curl -X POST) retries everything too.
    assert h.call("POST", "/v1/dead/retry").json()["retried"] == 1
    assert h.state.jobs[fourth.encode()].state == QUEUED


def test_a_retry_body_that_cannot_be_used_is_400_and_retries_nothing() -> None:
    h = WebHarness()
    _, first, _, _ = threeDead(h)
    for body in (b"not json", b"\xff", b"[]", b'"x"', b'{"handles": "H:test:1"}',
                 b'{"handles": [1]}', b'{"function": 3}', b'{"handle": "x"}',
                 json.dumps({"handles": [first], "function": "a"}).encode(),
                 json.dumps({"handles": ["h"] * 1001}).encode()):
        response = h.call("POST", "/v1/dead/retry", body)
        assert response.status == 400, body
        assert response.json()["error"]
    assert len(h.state.dead) == 3


def test_a_retry_body_over_the_size_limit_is_413() -> None:
    h = WebHarness(maxPacket=64)
    response = h.call("POST", "/v1/dead/retry", json.dumps({"handles": ["H:x"] * 20}).encode())
    assert response.status == 413


# -- purging ------------------------------------------------------------------------


def test_purging_a_function_or_everything() -> None:
    h = WebHarness()
    _, first, second, third = threeDead(h)
    response = h.call("DELETE", "/v1/dead?function=a")
    assert (response.status, response.json()) == (200, {"purged": 2})
    assert [item["handle"] for item in h.call("GET", "/v1/dead").json()["items"]] == [second]
    assert h.call("DELETE", "/v1/dead?function=a").json() == {"purged": 0}
    assert h.call("DELETE", "/v1/dead").json() == {"purged": 1}
    assert len(h.state.dead) == 0
    assert second.encode() not in h.state.jobs  # gone, not retried


# -- methods, rights, forgery ------------------------------------------------------------


def test_other_methods_are_405_with_those_allowed() -> None:
    h = WebHarness()
    response = h.call("GET", "/v1/dead/retry")
    assert (response.status, response.headers[b"allow"]) == (405, b"POST")
    response = h.call("PUT", "/v1/dead")
    assert (response.status, response.headers[b"allow"]) == (405, b"DELETE, GET")


def test_listing_needs_admin_and_changes_need_grant() -> None:
    def check(rules: str, listing: int, changing: int) -> None:
        h = WebHarness(access=aclWith(rules))
        worker = HandWorker(h.state, b"a")
        h.state.submit(h.state.connect(worker), b"a", b"", b"x", background=True)
        handle, _, _ = worker.grab()
        worker.end(handle, PacketType.WORK_FAIL)
        assert h.call("GET", "/v1/dead").status == listing, rules
        assert post(h, "/v1/dead/retry", {"handles": [handle.decode()]}).status == changing
        assert h.call("DELETE", "/v1/dead").status == changing
        assert len(h.state.dead) == (1 if changing == 403 else 0), rules

    check("[anonymous]\ninvoke = .*\n", 403, 403)
    check("[anonymous]\nadmin = true\n", 200, 403)
    check("[anonymous]\ngrant = true\n", 403, 200)
    check("[anonymous]\nadmin = true\ngrant = true\n", 200, 200)


def test_a_cross_site_retry_or_purge_is_refused() -> None:
    h = WebHarness()
    threeDead(h)
    evil = {"Origin": "http://evil.example", "Content-Type": "application/json"}
    assert h.call("POST", "/v1/dead/retry", b"{}", evil).status == 403
    assert h.call("DELETE", "/v1/dead", b"", evil).status == 403
    # A page of the server itself (the dashboard) may.
    page = {"Origin": "http://localhost", "Content-Type": "application/json"}
    assert h.call("POST", "/v1/dead/retry", b"{}", page).status == 200
    assert len(h.state.dead) == 0

"""
The JSON API (txgear/web/_api.py) over the real twisted.web site, on
in-memory transports and a task.Clock: every route and status code, the
access rules, paging, the limits, and the stop with requests open.
"""
from __future__ import annotations

import json
import os

from txgear._packet import PacketType
from txgear.server._access import AccessControl, parseRules
from txgear.server._state import LOW, QUEUED, RUNNING
from txgear.web._api import ROUTES

from tests._webkit import HandWorker, WebHarness


def aclWith(text: str) -> AccessControl:
    return AccessControl(parseRules(text).values())


# -- submitting ----------------------------------------------------------------


def test_foreground_complete_returns_the_data_chunks_and_the_result() -> None:
    h = WebHarness()
    worker = HandWorker(h.state, b"echo")
    exchange = h.request("POST", "/v1/functions/echo/jobs?wait=5", b"hello")
    assert exchange.response() is None
    handle, unique, payload = worker.grab()
    assert (unique, payload) == (b"", b"hello")
    worker.status(handle, b"1", b"2")  # ignored by a plain call
    worker.data(handle, b"warn", PacketType.WORK_WARNING)  # ignored too
    worker.data(handle, b"part1,")
    worker.end(handle, data=b"part2")
    response = exchange.response()
    assert response is not None and response.complete
    assert response.status == 200
    assert response.body == b"part1,part2"
    assert response.headers[b"x-gearman-job-handle"] == handle
    assert response.headers[b"x-gearman-outcome"] == b"complete"
    h.settle()
    assert h.httpSessions() == 0


def test_fail_is_502_and_exception_is_500_with_its_data() -> None:
    h = WebHarness()
    worker = HandWorker(h.state, b"f")
    failing = h.request("POST", "/v1/functions/f/jobs", b"1")
    raising = h.request("POST", "/v1/functions/f/jobs", b"2")
    first, _, _ = worker.grab()
    second, _, _ = worker.grab()
    worker.end(first, PacketType.WORK_FAIL)
    worker.end(second, PacketType.WORK_EXCEPTION, b"Traceback: boom")
    failed = failing.response()
    assert failed is not None and failed.status == 502
    assert failed.json()["handle"] == first.decode()
    assert failed.headers[b"x-gearman-outcome"] == b"fail"
    raised = raising.response()
    assert raised is not None and raised.status == 500
    assert raised.body == b"Traceback: boom"
    assert raised.headers[b"x-gearman-outcome"] == b"exception"


def test_wait_running_out_is_504_and_a_running_job_runs_on() -> None:
    h = WebHarness()
    worker = HandWorker(h.state, b"slow")
    exchange = h.request("POST", "/v1/functions/slow/jobs?wait=2", b"x")
    handle, _, _ = worker.grab()
    h.clock.advance(1.9)
    assert exchange.response() is None
    h.clock.advance(0.2)
    response = exchange.response()
    assert response is not None and response.status == 504
    assert response.json()["handle"] == handle.decode()
    assert response.headers[b"location"] == b"/v1/jobs/" + handle
    h.settle()
    assert h.state.jobs[handle].state == RUNNING
    assert h.httpSessions() == 0
    worker.end(handle, data=b"late")  # goes nowhere, no error to the worker
    assert all(kind != PacketType.ERROR for kind, _ in worker.packets)
    assert handle not in h.state.jobs


def test_wait_is_capped_by_the_server_limit() -> None:
    h = WebHarness(maxWait=3.0)
    HandWorker(h.state, b"slow")
    exchange = h.request("POST", "/v1/functions/slow/jobs?wait=1000", b"x")
    h.clock.advance(3.0)
    response = exchange.response()
    assert response is not None and response.status == 504


def test_a_queued_job_nobody_waits_for_is_dropped_when_the_client_leaves() -> None:
    h = WebHarness()
    exchange = h.request("POST", "/v1/functions/nobody/jobs", b"x")
    assert len(h.state.jobs) == 1
    exchange.disconnect()
    assert h.state.jobs == {}
    assert h.httpSessions() == 0
    assert h.site.resource.api.waiting == 0


def test_queue_full_is_503() -> None:
    h = WebHarness()
    h.state.createFunction(b"small")
    h.state.setMaxQueue(b"small", [1, 1, 1])
    h.request("POST", "/v1/functions/small/jobs?background=true", b"1")
    response = h.call("POST", "/v1/functions/small/jobs?background=true", b"2")
    assert response.status == 503
    assert response.json()["code"] == "QUEUE_ERROR"


def test_background_is_202_with_the_handle_and_a_location() -> None:
    h = WebHarness()
    response = h.call("POST", "/v1/functions/bg/jobs?background=true&priority=low&unique=u1",
                      b"payload")
    assert response.status == 202
    handle = response.json()["handle"].encode()
    assert response.headers[b"location"] == b"/v1/jobs/" + handle
    job = h.state.jobs[handle]
    assert (job.background, job.priority, job.unique, job.state) == (True, LOW, b"u1", QUEUED)
    h.settle()
    assert h.httpSessions() == 0


def test_parameters_as_headers() -> None:
    h = WebHarness()
    response = h.call("POST", "/v1/functions/bg/jobs", b"p", headers={
        "X-Gearman-Background": "true", "X-Gearman-Priority": "low", "X-Gearman-Unique": "h1"})
    assert response.status == 202
    job = h.state.jobs[response.json()["handle"].encode()]
    assert (job.background, job.priority, job.unique) == (True, LOW, b"h1")


def test_unique_coalesces_http_submissions() -> None:
    h = WebHarness()
    worker = HandWorker(h.state, b"c")
    one = h.request("POST", "/v1/functions/c/jobs?unique=same", b"x")
    two = h.request("POST", "/v1/functions/c/jobs?unique=same", b"x")
    assert len(h.state.jobs) == 1
    handle, _, _ = worker.grab()
    worker.end(handle, data=b"both")
    assert [e.response().body for e in (one, two)] == [b"both", b"both"]  # type: ignore[union-attr]


def test_bad_parameters_are_400() -> None:
    h = WebHarness()
    for query in ("priority=urgent", "background=maybe", "wait=soon", "wait=-1",
                  "unique=" + "u" * 65):
        response = h.call("POST", "/v1/functions/f/jobs?" + query, b"x")
        assert response.status == 400, query
        assert "error" in response.json()
    assert h.call("POST", "/v1/functions/bad%01name/jobs", b"x").status == 400
    assert h.state.jobs == {}


def test_payload_larger_than_the_packet_limit_is_413() -> None:
    h = WebHarness(maxPacket=1024)
    response = h.call("POST", "/v1/functions/f/jobs?background=1", b"x" * 1025)
    assert response.status == 413
    assert h.call("POST", "/v1/functions/f/jobs?background=1", b"x" * 1024).status == 202


def test_waiting_requests_are_bounded_429() -> None:
    h = WebHarness(maxWaiting=1)
    h.request("POST", "/v1/functions/f/jobs", b"x")
    response = h.call("POST", "/v1/functions/f/jobs", b"y")
    assert response.status == 429
    assert len(h.state.jobs) == 1


def test_unknown_route_404_and_wrong_method_405() -> None:
    h = WebHarness()
    assert h.call("GET", "/v1/nothing").status == 404
    assert h.call("GET", "/nothing").status == 404
    response = h.call("PUT", "/v1/jobs/H:test:1")
    assert response.status == 405
    assert response.headers[b"allow"] == b"DELETE, GET"
    assert h.call("GET", "/v1/functions/f/jobs").status == 405


# -- access control over HTTP ----------------------------------------------------


def test_anonymous_may_invoke_what_the_list_allows_and_gets_403_otherwise() -> None:
    h = WebHarness(access=aclWith("[anonymous]\ninvoke = echo\n"))
    assert h.call("POST", "/v1/functions/echo/jobs?background=1", b"x").status == 202
    denied = h.call("POST", "/v1/functions/secret/jobs?background=1", b"x")
    assert denied.status == 403
    assert len(h.state.jobs) == 1


def test_jobs_the_requester_may_not_invoke_look_unknown() -> None:
    h = WebHarness(access=aclWith("[anonymous]\ninvoke = echo\n"))
    own = HandWorker(h.state)  # submits as a Gearman client would
    h.state.submit(own.session, b"secret", b"s1", b"x", background=True)
    handle = next(iter(h.state.jobs))
    assert h.call("GET", "/v1/jobs/" + handle.decode()).status == 404
    assert h.call("GET", "/v1/jobs?unique=s1").status == 404
    assert h.call("DELETE", "/v1/jobs/" + handle.decode()).status == 404
    assert h.call("GET", "/v1/jobs/" + handle.decode() + "/events").status == 404
    assert handle in h.state.jobs


def test_listings_need_the_admin_right() -> None:
    h = WebHarness(access=aclWith("[anonymous]\ninvoke = echo\n"))
    assert h.call("GET", "/v1/functions").status == 403
    assert h.call("GET", "/v1/workers").status == 403
    h = WebHarness(access=aclWith("[anonymous]\nadmin = true\n"))
    assert h.call("GET", "/v1/functions").status == 200
    assert h.call("GET", "/v1/workers").status == 200


# -- jobs ------------------------------------------------------------------------


def test_job_status_as_get_status_gives_it() -> None:
    h = WebHarness()
    worker = HandWorker(h.state, b"s")
    h.request("POST", "/v1/functions/s/jobs?unique=k1", b"x")
    handle, _, _ = worker.grab()
    worker.status(handle, b"3", b"7")
    body = h.call("GET", "/v1/jobs/" + handle.decode()).json()
    assert body == {"handle": handle.decode(), "known": True, "running": True,
                    "numerator": "3", "denominator": "7", "function": "s",
                    "background": False, "priority": "normal"}
    byUnique = h.call("GET", "/v1/jobs?unique=k1")
    assert byUnique.status == 200
    assert byUnique.json() == {"unique": "k1", "known": True, "running": True,
                               "numerator": "3", "denominator": "7", "waiting": 1}
    unknown = h.call("GET", "/v1/jobs/H:test:999")
    assert unknown.status == 404 and unknown.json()["known"] is False
    assert h.call("GET", "/v1/jobs?unique=nope").status == 404
    assert h.call("GET", "/v1/jobs").status == 400


def test_delete_cancels_and_the_waiting_client_gets_the_failure() -> None:
    h = WebHarness()
    waiting = h.request("POST", "/v1/functions/c/jobs", b"x")
    handle = next(iter(h.state.jobs)).decode()
    response = h.call("DELETE", "/v1/jobs/" + handle)
    assert response.status == 200 and response.json() == {"handle": handle, "cancelled": True}
    assert h.state.jobs == {}
    failed = waiting.response()
    assert failed is not None and failed.status == 502
    assert h.call("DELETE", "/v1/jobs/" + handle).status == 404
    h.settle()
    assert h.httpSessions() == 0


# -- listings --------------------------------------------------------------------


def test_functions_are_listed_with_counts_and_paged() -> None:
    h = WebHarness()
    HandWorker(h.state, b"a", b"b")
    for query in ("priority=high", "priority=low", ""):
        h.call("POST", "/v1/functions/b/jobs?background=1&" + query, b"x")
    h.state.createFunction(b"c")
    page = h.call("GET", "/v1/functions?limit=2").json()
    assert [f["name"] for f in page["items"]] == ["a", "b"]
    assert page["items"][1] == {"name": "b", "queued": {"high": 1, "normal": 1, "low": 1},
                                "running": 0, "workers": 1, "scheduled": 0, "total": 3}
    following = h.call("GET", "/v1/functions?limit=2&after=" + page["next"]).json()
    assert [f["name"] for f in following["items"]] == ["c"]
    assert following["next"] is None
    assert h.call("GET", "/v1/functions?after=***").status == 400


def test_workers_are_listed_with_their_functions_and_paged() -> None:
    h = WebHarness()
    workers = [HandWorker(h.state, b"f%d" % i, clientId=b"w%d" % i) for i in range(3)]
    h.request("POST", "/v1/functions/f0/jobs", b"x")  # an HTTP client: not a worker
    page = h.call("GET", "/v1/workers?limit=2").json()
    assert [w["client_id"] for w in page["items"]] == ["w0", "w1"]
    assert page["items"][0]["functions"] == ["f0"]
    assert page["items"][0]["id"] == workers[0].session.id
    rest = h.call("GET", "/v1/workers?limit=2&after=" + page["next"]).json()
    assert [w["client_id"] for w in rest["items"]] == ["w2"]
    assert rest["next"] is None


def test_peer_supplied_strings_are_safely_encoded() -> None:
    h = WebHarness()
    hostile = b'<script>"x"\\</script>\xff\xfe'
    HandWorker(h.state, hostile, clientId=b'id"</a>\xc3')
    raw = h.call("GET", "/v1/functions").body + h.call("GET", "/v1/workers").body
    assert b"<" not in raw and b"\xff" not in raw
    functions = h.call("GET", "/v1/functions").json()["items"]
    assert functions[0]["name"] == '<script>"x"\\</script>\ufffd\ufffd'
    workers = h.call("GET", "/v1/workers").json()["items"]
    assert workers[0]["client_id"] == 'id"</a>\ufffd'
    response = h.call("GET", "/v1/workers")
    assert response.headers[b"content-type"] == b"application/json"
    assert response.headers[b"x-content-type-options"] == b"nosniff"


# -- counters --------------------------------------------------------------------


def test_stats_give_counts_counters_oldest_age_and_totals() -> None:
    h = WebHarness()
    worker = HandWorker(h.state, b"a")
    HandWorker(h.state, b"idle")  # registered, never a job: no counters
    h.call("POST", "/v1/functions/a/jobs?background=1", b"1")
    h.clock.advance(1.0)
    h.call("POST", "/v1/functions/a/jobs?background=1&priority=high", b"2")
    waiting = h.request("POST", "/v1/functions/a/jobs", b"3")
    h.clock.advance(4.0)
    handle, _, _ = worker.grab()  # the high one
    worker.end(handle)
    handle, _, _ = worker.grab()
    worker.end(handle, PacketType.WORK_FAIL)
    body = h.call("GET", "/v1/stats").json()
    assert body["time"] == 5.0
    functions = {f["name"]: f for f in body["functions"]}
    assert list(functions) == ["a", "idle"]
    assert functions["a"] == {
        "name": "a", "queued": {"high": 0, "normal": 1, "low": 0}, "running": 0, "workers": 1,
        "scheduled": 0, "oldest_age": 4.0, "submitted": {"foreground": 1, "background": 2},
        "finished": {"complete": 1, "fail": 1, "exception": 0, "timeout": 0, "cancelled": 0,
                     "lost": 0, "retried": 0, "dead": 1}}  # its failed background job entered the dead set
    assert functions["idle"]["oldest_age"] is None and "finished" not in functions["idle"]
    assert body["totals"]["submitted"] == {"foreground": 1, "background": 2}
    assert body["totals"]["finished"]["complete"] == 1
    assert waiting.response() is None


def test_stats_totals_keep_forgotten_functions() -> None:
    h = WebHarness()
    worker = HandWorker(h.state, b"gone")
    h.call("POST", "/v1/functions/gone/jobs?background=1", b"1")
    handle, _, _ = worker.grab()
    worker.end(handle)
    h.state.disconnect(worker.session)  # the function is forgotten
    body = h.call("GET", "/v1/stats").json()
    assert body["functions"] == []
    assert body["totals"]["finished"]["complete"] == 1


def test_failures_are_listed_newest_first_with_error_text_escaped() -> None:
    h = WebHarness()
    worker = HandWorker(h.state, b"f<x>")
    for payload in (b"1", b"2", b"3"):
        h.call("POST", "/v1/functions/f%3Cx%3E/jobs?background=1", payload)
    h.clock.advance(7.0)
    first, _, _ = worker.grab()
    worker.end(first, PacketType.WORK_EXCEPTION, b"Traceback <img src=x>\n\xff" + b"e" * 500)
    second, _, _ = worker.grab()
    worker.end(second, PacketType.WORK_FAIL)
    response = h.call("GET", "/v1/failures")
    assert b"<" not in response.body
    items = response.json()["items"]
    assert [(f["handle"], f["outcome"], f["final"]) for f in items] == [
        (second.decode(), "fail", True), (first.decode(), "exception", True)]
    assert items[0] == {"time": 7.0, "function": "f<x>", "handle": second.decode(),
                        "outcome": "fail", "final": True, "error": "WORK_FAIL"}
    assert items[1]["error"].startswith("Traceback <img src=x>\n\ufffd")
    assert len(items[1]["error"]) == 256 - 1 + 1  # 256 bytes kept; the 0xff byte became U+FFFD
    assert [f["handle"] for f in h.call("GET", "/v1/failures?limit=1").json()["items"]] == [
        second.decode()]
    assert h.call("GET", "/v1/failures?limit=x").status == 400


def test_stats_and_failures_need_the_admin_right() -> None:
    h = WebHarness(access=aclWith("[anonymous]\ninvoke = echo\n"))
    assert h.call("GET", "/v1/stats").status == 403
    assert h.call("GET", "/v1/failures").status == 403
    h = WebHarness(access=aclWith("[anonymous]\nadmin = true\n"))
    assert h.call("GET", "/v1/stats").status == 200
    assert h.call("GET", "/v1/failures").status == 200


# -- the stop --------------------------------------------------------------------


def test_stop_answers_waiting_requests_ends_streams_and_closes_connections() -> None:
    h = WebHarness()
    worker = HandWorker(h.state, b"s")
    waiting = h.request("POST", "/v1/functions/s/jobs", b"x")
    handle, _, _ = worker.grab()
    stream = h.request("GET", f"/v1/jobs/{handle.decode()}/events")
    idle = h.request("GET", "/v1/functions")
    assert len(h.site.channels) == 3
    done = h.site.stopServing(grace=5)
    answered = waiting.response()
    assert answered is not None and answered.status == 503
    ended = stream.response()
    assert ended is not None and ended.complete
    for exchange in (waiting, stream, idle):
        assert exchange.transport.disconnecting
        exchange.channel.connectionLost(None)
    assert done.called
    h.settle()
    assert h.httpSessions() == 0


def test_stop_aborts_connections_that_do_not_close() -> None:
    h = WebHarness()
    exchange = h.request("GET", "/v1/functions")
    done = h.site.stopServing(grace=2)
    assert not done.called
    h.clock.advance(2)
    assert exchange.transport.disconnecting  # StringTransport: abort = lose


# -- the OpenAPI document ----------------------------------------------------------


def _document() -> dict:
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        "txgear", "web", "openapi.json")
    with open(path) as f:
        return json.load(f)


def test_every_route_is_in_the_openapi_document_and_nothing_else() -> None:
    document = _document()
    inDocument = {(method.upper(), path) for path, item in document["paths"].items()
                  for method in item}
    inCode = {(method, pattern) for method, pattern, _ in ROUTES}
    assert inDocument == inCode


def test_the_openapi_document_is_served_and_in_the_docs() -> None:
    h = WebHarness()
    response = h.call("GET", "/v1/openapi.json")
    assert response.status == 200
    assert json.loads(response.body) == _document()
    docs = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        "docs", "openapi.json")
    with open(docs) as f:
        assert json.load(f) == _document()


def test_an_idle_connection_is_closed_after_the_idle_timeout() -> None:
    web = WebHarness(idleTimeout=30.0)
    idle = web.connect()
    web.clock.advance(29)
    assert not idle.transport.disconnecting
    web.clock.advance(2)
    assert idle.transport.disconnecting


def test_a_request_under_way_outlives_the_idle_timeout() -> None:
    """A foreground submission waiting for its job is not idle."""
    web = WebHarness(idleTimeout=30.0, maxWait=300.0)
    waiting = web.request("POST", "/v1/functions/slow/jobs?wait=300", b"x")
    web.clock.advance(120)
    assert waiting.response() is None
    assert not waiting.transport.disconnecting


def test_connections_past_the_limit_get_503_and_are_closed() -> None:
    web = WebHarness(maxConnections=2)
    first, second = web.connect(), web.connect()
    third = web.connect()
    assert third.raw().startswith(b"HTTP/1.1 503 ")
    assert third.transport.disconnecting
    assert not first.transport.disconnecting and not second.transport.disconnecting
    assert web.site.refused == 1 and len(web.site.channels) == 2
    first.disconnect()
    fourth = web.connect()
    assert fourth.raw() == b"" and not fourth.transport.disconnecting

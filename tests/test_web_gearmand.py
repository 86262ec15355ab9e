"""
gearmand's HTTP plugin form (txgear/web/_gearmand.py): POST /FUNCTION with
X-Gearman-* headers, answered as gearmand answers.
"""
from __future__ import annotations

from txgear._packet import PacketType
from txgear.server._state import HIGH, LOW

from tests._webkit import HandWorker, WebHarness


def test_post_function_runs_a_job_and_answers_as_gearmand() -> None:
    h = WebHarness()
    worker = HandWorker(h.state, b"reverse")
    exchange = h.request("POST", "/reverse", b"Hello world!")
    handle, unique, payload = worker.grab()
    assert (unique, payload) == (b"-", b"Hello world!")  # gearmand's default unique
    worker.end(handle, data=b"!dlrow olleH")
    response = exchange.response()
    assert response is not None
    assert response.status == 200
    assert response.headers[b"x-gearman-job-handle"] == handle
    assert response.headers[b"x-gearman-command"] == b"WORK_COMPLETE"
    assert response.headers[b"content-length"] == b"12"
    assert response.body == b"!dlrow olleH"


def test_background_low_priority_and_unique_headers() -> None:
    h = WebHarness()
    response = h.call("POST", "/reverse", b"x", headers={
        "X-Gearman-Background": "true", "X-Gearman-Priority": "low", "X-Gearman-Unique": "k"})
    assert response.status == 200
    assert response.headers[b"x-gearman-command"] == b"JOB_CREATED"
    assert response.body == b""
    job = h.state.jobs[response.headers[b"x-gearman-job-handle"]]
    assert (job.background, job.priority, job.unique) == (True, LOW, b"k")
    high = h.call("POST", "/reverse", b"y", headers={"X-Gearman-Background": "TRUE",
                                                      "X-Gearman-Priority": "high"})
    assert h.state.jobs[high.headers[b"x-gearman-job-handle"]].priority == HIGH


def test_same_payload_coalesces_as_with_gearmand() -> None:
    h = WebHarness()
    worker = HandWorker(h.state, b"f")
    one = h.request("POST", "/f", b"same")
    two = h.request("PUT", "/f", b"same")
    assert len(h.state.jobs) == 1
    handle, _, _ = worker.grab()
    worker.end(handle, data=b"r")
    assert one.response().body == two.response().body == b"r"  # type: ignore[union-attr]


def test_fail_and_exception_are_200_work_fail_with_no_body() -> None:
    h = WebHarness()
    worker = HandWorker(h.state, b"f")
    for kind in (PacketType.WORK_FAIL, PacketType.WORK_EXCEPTION):
        exchange = h.request("POST", "/f", b"x%d" % kind)
        handle, _, _ = worker.grab()
        worker.end(handle, kind, b"trace")
        response = exchange.response()
        assert response is not None and response.status == 200
        assert response.headers[b"x-gearman-command"] == b"WORK_FAIL"
        assert response.body == b""


def test_the_function_is_the_whole_path() -> None:
    h = WebHarness()
    response = h.call("POST", "//a/b%20c", b"x", headers={"X-Gearman-Background": "true"})
    assert h.state.jobs[response.headers[b"x-gearman-job-handle"]].func.name == b"a/b c"


def test_what_gearmand_cannot_answer_gets_the_api_statuses() -> None:
    h = WebHarness(maxPacket=1024)
    assert h.call("POST", "/", b"x").status == 404
    assert h.call("GET", "/reverse").status == 404  # GET is the dashboard's
    assert h.call("POST", "/f", b"x" * 2000).status == 413
    assert h.call("POST", "/f", b"x", headers={"X-Gearman-Priority": "urgent"}).status == 400
    h.state.createFunction(b"full")
    h.state.setMaxQueue(b"full", [1, 1, 1])
    h.call("POST", "/full", b"1", headers={"X-Gearman-Background": "true"})
    assert h.call("POST", "/full", b"2", headers={"X-Gearman-Background": "true"}).status == 503

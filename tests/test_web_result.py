"""
Kept results over the JSON API: C{GET /v1/jobs/{handle}} and C{GET
/v1/jobs?unique=&function=} report a finished job's kept result; C{GET
/v1/jobs/{handle}/result} answers its bytes (200), 502 (fail), 500
(exception), 404 (unknown, expired, or not visible), 409 (queued or
running), 410 (finished, not kept). Real twisted.web site, in-memory
transports, task.Clock; the store read is asynchronous.
"""
from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred

from txgear._packet import PacketType
from txgear.server._policy import PolicyTable

from tests._webkit import HandWorker, WebHarness
from tests.test_web_api import aclWith

BINARY = b"\x00\xff\r\nresult\n" * 5


def keeping(**options: Any) -> WebHarness:
    table = PolicyTable()
    table.set(b"f", "keep:1m,attempts:1")
    h = WebHarness(policies=table, **options)
    h.state.kept.maxSize = 100
    return h


def submitted(h: WebHarness, unique: str = "") -> bytes:
    query = "background=1" + (f"&unique={unique}" if unique else "")
    created = h.call("POST", f"/v1/functions/f/jobs?{query}", b"x")
    assert created.status == 202
    return created.json()["handle"].encode()


def finished(h: WebHarness, worker: HandWorker, kind: int = PacketType.WORK_COMPLETE,
             data: bytes = BINARY, unique: str = "") -> str:
    handle = submitted(h, unique)
    assert worker.grab()[0] == handle
    worker.end(handle, kind, data)
    return handle.decode()


def test_result_bytes_and_outcomes() -> None:
    h = keeping()
    h.clock.advance(1700000000)
    worker = HandWorker(h.state, b"f")
    done = finished(h, worker, unique="order-1")
    reply = h.call("GET", f"/v1/jobs/{done}/result")
    assert (reply.status, reply.body) == (200, BINARY)
    assert reply.headers[b"content-type"] == b"application/octet-stream"
    assert reply.headers[b"x-gearman-outcome"] == b"complete"
    failed = finished(h, worker, PacketType.WORK_FAIL, b"")
    reply = h.call("GET", f"/v1/jobs/{failed}/result")
    assert (reply.status, reply.json()["error"]) == (502, "the job failed")
    raised = finished(h, worker, PacketType.WORK_EXCEPTION, b"Trace\0back")
    reply = h.call("GET", f"/v1/jobs/{raised}/result")
    assert (reply.status, reply.body) == (500, b"Trace\0back")
    big = finished(h, worker, data=b"b" * 101)
    reply = h.call("GET", f"/v1/jobs/{big}/result")
    assert reply.status == 410
    assert (reply.json()["outcome"], reply.json()["size"]) == ("complete", 101)
    assert h.call("GET", "/v1/jobs/H:test:999/result").status == 404
    # GET /v1/jobs/{handle}: known stays false (as GET_STATUS), the result is reported.
    body = h.call("GET", f"/v1/jobs/{done}").json()
    assert body["known"] is False and body["function"] == "f"
    assert body["result"] == {"status": "complete", "size": len(BINARY), "kept": True,
                              "expiresAt": 1700000060.0}
    found = h.call("GET", "/v1/jobs?unique=order-1&function=f")
    assert found.status == 200 and found.json()["handle"] == done
    assert h.call("GET", "/v1/jobs?unique=order-1").status == 404  # no function: no result
    h.clock.advance(61)
    assert h.call("GET", f"/v1/jobs/{done}/result").status == 404
    assert h.call("GET", f"/v1/jobs/{done}").status == 404


def test_queued_and_running_are_409() -> None:
    h = keeping()
    queued = submitted(h).decode()
    reply = h.call("GET", f"/v1/jobs/{queued}/result")
    assert (reply.status, reply.json()["state"]) == (409, "queued")
    worker = HandWorker(h.state, b"f")
    worker.grab()
    reply = h.call("GET", f"/v1/jobs/{queued}/result")
    assert (reply.status, reply.json()["state"]) == (409, "running")


def test_the_store_read_is_asynchronous() -> None:
    h = keeping()
    worker = HandWorker(h.state, b"f")
    done = finished(h, worker)
    reading: Deferred = Deferred()
    real = h.state.kept.store.getKept
    h.state.kept.store.getKept = lambda key: reading
    exchange = h.request("GET", f"/v1/jobs/{done}/result")
    assert exchange.response() is None  # answered when the store answers
    real(int(done.rsplit(":", 1)[1])).chainDeferred(reading)
    reply = exchange.response()
    assert reply is not None and (reply.status, reply.body) == (200, BINARY)
    broken: Deferred = Deferred()
    h.state.kept.store.getKept = lambda key: broken
    exchange = h.request("GET", f"/v1/jobs/{done}/result")
    broken.errback(RuntimeError("disk"))
    reply = exchange.response()
    assert reply is not None and reply.status == 500


def test_invoke_right_needed() -> None:
    h = keeping(access=aclWith("[anonymous]\ninvoke = g\n"))
    state = h.state
    worker = HandWorker(state, b"f")
    # Submitted by a Gearman client allowed f (the HTTP requester is not).
    from tests.test_server_retry import connect
    session, peer = connect(state)
    state.submit(session, b"f", b"u", b"x", background=True)
    handle = worker.grab()[0]
    worker.end(handle, PacketType.WORK_COMPLETE, b"secret")
    assert h.state.kept.get(handle) is not None
    assert h.call("GET", f"/v1/jobs/{handle.decode()}/result").status == 404
    assert "result" not in h.call("GET", f"/v1/jobs/{handle.decode()}").json()
    assert h.call("GET", "/v1/jobs?unique=u&function=f").status == 404

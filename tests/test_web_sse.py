"""
Server-Sent Events (txgear/web/_sse.py): the framing, and a job's event
stream over the real site on in-memory transports.
"""
from __future__ import annotations

import base64
import json
from typing import List, Tuple

from txgear._packet import PacketType
from txgear.web._sse import KEEPALIVE, formatEvent

from tests._webkit import Exchange, HandWorker, WebHarness


def test_event_framing_splits_every_kind_of_line_break() -> None:
    assert formatEvent("data", "one") == b"event: data\ndata: one\n\n"
    assert formatEvent("data", "a\nb\r\nc\rd") == (
        b"event: data\ndata: a\ndata: b\ndata: c\ndata: d\n\n")
    assert formatEvent("data", "") == b"event: data\ndata: \n\n"
    assert formatEvent("data", "end\n") == b"event: data\ndata: end\ndata: \n\n"
    assert formatEvent("warning", " \u00e9") == "event: warning\ndata:  \u00e9\n\n".encode()


def parseEvents(body: bytes) -> List[Tuple[str, str]]:
    """The (event, data) pairs of a stream, as an EventSource would read them."""
    events = []
    for block in body.decode("utf-8").split("\n\n"):
        name, data = "message", []
        lines = [line for line in block.split("\n") if line and not line.startswith(":")]
        if not lines:
            continue
        for line in lines:
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if field == "event":
                name = value
            elif field == "data":
                data.append(value)
        events.append((name, "\n".join(data)))
    return events


def _stream(h: WebHarness, handle: bytes, query: str = "") -> Exchange:
    return h.request("GET", f"/v1/jobs/{handle.decode()}/events{query}")


def test_a_job_stream_gives_status_data_warning_then_the_outcome_and_ends() -> None:
    h = WebHarness()
    worker = HandWorker(h.state, b"s")
    submitter = h.request("POST", "/v1/functions/s/jobs", b"x")
    handle, _, _ = worker.grab()
    stream = _stream(h, handle)
    response = stream.response()
    assert response is not None and response.status == 200
    assert response.headers[b"content-type"] == b"text/event-stream; charset=utf-8"
    worker.status(handle, b"1", b"4")
    worker.data(handle, b"line1\nline2")
    worker.data(handle, b"careful", PacketType.WORK_WARNING)
    worker.end(handle, data=b"done")
    response = stream.response()
    assert response is not None and response.complete
    events = parseEvents(response.body)
    assert [name for name, _ in events] == ["status", "status", "data", "warning", "complete"]
    assert json.loads(events[0][1]) == {"handle": handle.decode(), "running": True,
                                        "numerator": "0", "denominator": "0"}
    assert json.loads(events[1][1]) == {"numerator": "1", "denominator": "4"}
    assert events[2][1] == "line1\nline2"
    assert events[4][1] == "done"
    assert submitter.response().body == b"line1\nline2done"  # type: ignore[union-attr]
    h.settle()
    assert h.httpSessions() == 0


def test_fail_and_exception_end_the_stream() -> None:
    h = WebHarness()
    worker = HandWorker(h.state, b"s")
    for kind, name, data in ((PacketType.WORK_FAIL, "fail", ""),
                             (PacketType.WORK_EXCEPTION, "exception", "oops")):
        h.call("POST", "/v1/functions/s/jobs?background=1", b"x")
        handle, _, _ = worker.grab()
        stream = _stream(h, handle)
        worker.end(handle, kind, data.encode())
        response = stream.response()
        assert response is not None and response.complete
        assert parseEvents(response.body)[-1] == (name, data)


def test_base64_encoding_and_undecodable_bytes() -> None:
    h = WebHarness()
    worker = HandWorker(h.state, b"s")
    h.call("POST", "/v1/functions/s/jobs?background=1", b"x")
    handle, _, _ = worker.grab()
    textual = _stream(h, handle)
    binary = _stream(h, handle, "?encoding=base64")
    worker.data(handle, b"\xff\x00\r\n")
    worker.end(handle, data=b"")
    assert parseEvents(textual.response().body)[1] == ("data", "\ufffd\x00\n")  # type: ignore[union-attr]
    event = parseEvents(binary.response().body)[1]  # type: ignore[union-attr]
    assert base64.b64decode(event[1]) == b"\xff\x00\r\n"
    assert h.call("GET", f"/v1/jobs/{handle.decode()}/events?encoding=hex").status == 400


def test_keep_alive_comments_while_idle() -> None:
    h = WebHarness()
    HandWorker(h.state, b"s")
    h.call("POST", "/v1/functions/s/jobs?background=1", b"x")
    handle = next(iter(h.state.jobs))
    stream = _stream(h, handle)
    before = stream.raw()
    h.clock.advance(15)
    assert KEEPALIVE in stream.raw()[len(before):]
    h.clock.advance(15)
    assert stream.raw().count(KEEPALIVE) == 2


def test_unknown_job_is_404_not_a_stream() -> None:
    h = WebHarness()
    response = h.call("GET", "/v1/jobs/H:test:9/events")
    assert response.status == 404
    assert response.headers[b"content-type"] == b"application/json"


def test_a_stream_keeps_a_foreground_job_alive_and_leaving_detaches_it() -> None:
    h = WebHarness()
    submitter = h.request("POST", "/v1/functions/q/jobs", b"x")
    handle = next(iter(h.state.jobs))
    stream = _stream(h, handle)
    submitter.disconnect()
    assert handle in h.state.jobs  # the stream still waits for it
    stream.disconnect()
    h.settle()
    assert h.state.jobs == {}
    assert h.httpSessions() == 0
    assert h.site.resource.api.streams == {}


def test_streams_count_against_the_waiting_limit() -> None:
    h = WebHarness(maxWaiting=1)
    h.call("POST", "/v1/functions/q/jobs?background=1", b"x")
    handle = next(iter(h.state.jobs))
    _stream(h, handle)
    assert h.call("GET", f"/v1/jobs/{handle.decode()}/events").status == 429

# -*- test-case-name: tests.test_web_sse -*-
"""
Server-Sent Events: the framing, and a stream of one job's events.

Framing (the HTML living standard's C{text/event-stream}): an event is
C{event: NAME} then one C{data: } line per line of its data (split at
CRLF, CR and LF, the only line breaks the format knows), then an empty
line; a comment line (C{: keep-alive}) keeps idle proxies from closing the
stream. Text is UTF-8.
"""
from __future__ import annotations

import base64
import json
import re
from typing import Any, Optional

from txgear._packet import PacketType
from txgear.web._http import text
from txgear.web._session import HTTPSession

#: Seconds between keep-alive comments on an idle event stream.
DEFAULT_KEEPALIVE = 15.0

KEEPALIVE = b": keep-alive\n\n"

_LINE_BREAK = re.compile(r"\r\n|\r|\n")


def formatEvent(event: str, data: str) -> bytes:
    """One event, framed: C{event:}, C{data:} lines, an empty line."""
    lines = _LINE_BREAK.split(data)
    return ("event: " + event + "\n" + "".join("data: " + line + "\n" for line in lines)
            + "\n").encode("utf-8")


#: The events of a job's stream, by the packet that makes each.
_EVENTS = {
    PacketType.WORK_STATUS: "status",
    PacketType.WORK_DATA: "data",
    PacketType.WORK_WARNING: "warning",
    PacketType.WORK_COMPLETE: "complete",
    PacketType.WORK_FAIL: "fail",
    PacketType.WORK_EXCEPTION: "exception",
}
_FINAL = (PacketType.WORK_COMPLETE, PacketType.WORK_FAIL, PacketType.WORK_EXCEPTION)


class JobEventStream:
    """
    The events of one job on one request: the job's current status first,
    then each WORK_STATUS (C{status}), WORK_DATA (C{data}), WORK_WARNING
    (C{warning}), then the outcome (C{complete}, C{fail} or C{exception})
    and the end of the stream.

    The stream is a client attached to the job (L{JobServerState.attach}),
    so it keeps a foreground job alive as its submitter does. Data is the
    payload as UTF-8 text (bytes that are not become U+FFFD), or base64
    with C{encoding="base64"}.
    """

    def __init__(self, api: Any, request: Any, handle: bytes, encoding: str,
                 keepAlive: float) -> None:
        self.api = api
        self.request = request
        self.handle = handle
        self.base64 = encoding == "base64"
        self.keepAlive = keepAlive
        self.peer: Optional[HTTPSession] = None
        self._timer: Any = None
        self.ended = False

    def start(self, numerator: bytes, denominator: bytes, running: bool) -> bool:
        """Attach to the job; C{False} if it is gone."""
        api = self.api
        self.peer = HTTPSession(api.state, self._packet)
        if not api.state.attach(self.peer.session, self.handle):
            self.peer.close()
            return False
        request = self.request
        request.setResponseCode(200)
        request.setHeader(b"content-type", b"text/event-stream; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"x-accel-buffering", b"no")  # nginx: do not buffer the stream
        api.streams[self] = None
        request.notifyFinish().addBoth(self._requestGone)
        request.write(formatEvent("status", json.dumps(
            {"handle": text(self.handle), "running": running,
             "numerator": text(numerator), "denominator": text(denominator)})))
        self._arm()
        return True

    def _arm(self) -> None:
        if self.keepAlive > 0:
            self._timer = self.api.clock.callLater(self.keepAlive, self._tick)

    def _tick(self) -> None:
        self._timer = None
        if not self.ended:
            self.request.write(KEEPALIVE)
            self._arm()

    def _data(self, body: bytes) -> str:
        if self.base64:
            return base64.b64encode(body).decode("ascii")
        return text(body)

    def _packet(self, kind: int, body: bytes) -> None:
        event = _EVENTS.get(kind)  # type: ignore[call-overload]
        if event is None or self.ended:
            return
        if kind == PacketType.WORK_STATUS:
            _, numerator, denominator = bytes(body).split(b"\0", 2)
            data = json.dumps({"numerator": text(numerator), "denominator": text(denominator)})
        elif kind == PacketType.WORK_FAIL:
            data = ""
        else:
            data = self._data(bytes(body).split(b"\0", 1)[1])
        self.request.write(formatEvent(event, data))
        if kind in _FINAL:
            self.end()

    def end(self) -> None:
        """End the stream (the job ended, or the server stops)."""
        if self.ended:
            return
        self.ended = True
        self._cleanup()
        self.request.finish()

    def _requestGone(self, _: object) -> None:
        if not self.ended:
            self.ended = True
            self._cleanup()

    def _cleanup(self) -> None:
        self.api.streams.pop(self, None)
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self.peer is not None:
            self.api.reaper.close(self.peer)


__all__ = ["DEFAULT_KEEPALIVE", "KEEPALIVE", "JobEventStream", "formatEvent"]

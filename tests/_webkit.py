"""
What the HTTP port's unit tests share: a job server state with the real
HTTP site over in-memory transports (a task.Clock for every timer), raw
HTTP/1.1 requests in, parsed responses out, and a worker driven by hand.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from txgear._packet import PacketDecoder, PacketType
from txgear.server._protocol import GearmanServerFactory
from txgear.server._state import JobServerState
from txgear.web import makeSite


class Response:
    """A parsed HTTP response (chunked bodies decoded); C{complete} once it ended."""

    def __init__(self, raw: bytes) -> None:
        head, _, rest = raw.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        self.status = int(lines[0].split()[1])
        self.headers: Dict[bytes, bytes] = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            self.headers[name.strip().lower()] = value.strip()
        self.complete = False
        if self.headers.get(b"transfer-encoding") == b"chunked":
            body = b""
            while True:
                size, sep, tail = rest.partition(b"\r\n")
                if not sep:
                    break
                n = int(size, 16)
                if n == 0:
                    self.complete = True
                    break
                body += tail[:n]
                rest = tail[n + 2:]
            self.body = body
        else:
            length = int(self.headers.get(b"content-length", b"-1"))
            self.body = rest if length < 0 else rest[:length]
            self.complete = length >= 0 and len(rest) >= length

    def json(self) -> Any:
        import json
        return json.loads(self.body)


class Exchange:
    """One connection with one request sent."""

    def __init__(self, channel: Any, transport: StringTransport) -> None:
        self.channel = channel
        self.transport = transport

    def raw(self) -> bytes:
        return self.transport.value()

    def response(self) -> Optional[Response]:
        raw = self.raw()
        if b"\r\n\r\n" not in raw:
            return None
        return Response(raw)

    def disconnect(self) -> None:
        """The client goes away."""
        from twisted.internet.error import ConnectionDone
        from twisted.python.failure import Failure
        self.channel.connectionLost(Failure(ConnectionDone()))


class WebHarness:
    """A server state, its factory and its HTTP site, on a task.Clock."""

    def __init__(self, access: Any = None, maxPacket: int = 1024 * 1024, maxWait: float = 60.0,
                 maxWaiting: int = 10000, policies: Any = None, **siteOptions: Any) -> None:
        self.clock = Clock()
        self.state = JobServerState(clock=self.clock, handlePrefix=b"H:test", policies=policies)
        self.factory = GearmanServerFactory(self.state, maxPacket=maxPacket, access=access)
        self.site = makeSite(self.state, self.factory, self.clock, maxWait=maxWait,
                             maxWaiting=maxWaiting, **siteOptions)

    def connect(self, transport: Optional[StringTransport] = None) -> Exchange:
        """A connection with nothing sent yet."""
        channel = self.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        channel.callLater = self.clock.callLater  # the idle timeout, on the test's clock
        transport = transport or StringTransport(
            peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
        channel.makeConnection(transport)
        return Exchange(channel, transport)

    def request(self, method: str, path: str, body: bytes = b"",
                headers: Optional[Dict[str, str]] = None,
                transport: Optional[StringTransport] = None) -> Exchange:
        channel = self.connect(transport).channel
        transport = channel.transport
        lines = [f"{method} {path} HTTP/1.1", "Host: localhost",
                 f"Content-Length: {len(body)}"]
        for name, value in (headers or {}).items():
            lines.append(f"{name}: {value}")
        channel.dataReceived(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        return Exchange(channel, transport)

    def call(self, method: str, path: str, body: bytes = b"",
             headers: Optional[Dict[str, str]] = None) -> Response:
        """A request answered at once: its response."""
        response = self.request(method, path, body, headers).response()
        assert response is not None, "no response yet"
        return response

    def settle(self) -> None:
        """Run the timers due now (detached sessions, output)."""
        self.clock.advance(0)
        self.factory.flush()

    def httpSessions(self) -> int:
        """Sessions of the state that are not workers (HTTP requests in flight)."""
        return sum(1 for s in self.state.sessions.values() if not s.functions)


class HandWorker:
    """A worker session driven by hand: it grabs, reports, completes."""

    def __init__(self, state: JobServerState, *functions: bytes, clientId: bytes = b"") -> None:
        self.state = state
        self.packets: List[Tuple[int, bytes]] = []
        self._decoder = PacketDecoder(expectRequests=False)
        self.session = state.connect(self)
        if clientId:
            state.setClientId(self.session, clientId)
        for name in functions:
            state.canDo(self.session, name)

    def write(self, data: bytes) -> None:
        self.packets.extend(self._decoder.feed(data))

    def writeSequence(self, data: List[bytes]) -> None:
        self.write(b"".join(data))

    def grab(self) -> Tuple[bytes, bytes, bytes]:
        """Grab a job: (handle, unique, payload)."""
        self.packets.clear()
        self.state.grab(self.session, PacketType.GRAB_JOB_UNIQ)
        kind, body = self.packets[-1]
        assert kind == PacketType.JOB_ASSIGN_UNIQ, PacketType(kind).name
        handle, _, unique, payload = bytes(body).split(b"\0", 3)
        return handle, unique, payload

    def status(self, handle: bytes, numerator: bytes, denominator: bytes) -> None:
        self.state.workStatus(self.session, handle, numerator, denominator,
                              b"\0".join((handle, numerator, denominator)))

    def data(self, handle: bytes, data: bytes, kind: int = PacketType.WORK_DATA) -> None:
        self.state.workData(self.session, kind, handle, handle + b"\0" + data)

    def end(self, handle: bytes, kind: int = PacketType.WORK_COMPLETE, data: bytes = b"") -> None:
        body = handle if kind == PacketType.WORK_FAIL else handle + b"\0" + data
        self.state.workEnd(self.session, kind, handle, body)

# -*- test-case-name: tests.test_web_api -*-
"""
An HTTP request as a Gearman client of the server state.

The state knows connections only as sessions around an
L{txgear.interfaces.IServerPeer} it writes encoded response packets to.
An L{HTTPSession} is such a peer: it decodes what the state writes with the
codec's own L{PacketDecoder} and hands each packet, as C{(type, body)}, to
its listener. So an HTTP submission goes through exactly the code a
Gearman client's does (coalescing, queue limits, the store, held replies),
and the state needs no HTTP-specific path; the cost is one encode and
decode per packet, small beside HTTP's own.

A session is detached (L{JobServerState.disconnect}) when its request ends;
never from inside a write, since the state may be in the middle of a call
that wrote it: L{SessionReaper} does it after the call returns.
"""
from __future__ import annotations

from typing import Any, Callable, List, Optional, Tuple

from txgear._packet import PacketDecoder, PacketType

#: Any body the state writes is accepted: its sizes were bounded on the way in.
_ANY_SIZE = 2 ** 32 - 1

Listener = Callable[[int, bytes], None]


class HTTPSession:
    """
    One HTTP request acting as a Gearman client: the state's peer. WORK_EXCEPTION
    is asked for (as with OPTION_REQ C{exceptions}), so that an exception
    is told from a failure.

    @ivar session: the state's L{txgear.server._state.Session} for it.
    """

    __slots__ = ("state", "session", "listener", "_decoder")

    def __init__(self, state: Any, listener: Listener) -> None:
        self.state = state
        self.listener = listener
        self._decoder = PacketDecoder(expectRequests=False, maxPacket=_ANY_SIZE)
        self.session = state.connect(self)
        self.session.exceptions = True

    def write(self, data: bytes) -> None:
        for kind, body in self._decoder.feed(data):
            self.listener(kind, body)

    def writeSequence(self, data: List[bytes]) -> None:
        self.write(b"".join(data))

    @property
    def closed(self) -> bool:
        """Has the state forgotten this session?"""
        return bool(self.session.closed)

    def close(self) -> None:
        """Detach now, as a client connection that went away (not from inside a write)."""
        self.listener = _ignore
        self.state.disconnect(self.session)


def _ignore(kind: int, body: bytes) -> None:
    pass


class SessionReaper:
    """
    Detaches sessions once the state call under way has returned: one
    timer per reactor turn for all of them.
    """

    def __init__(self, clock: Any) -> None:
        self.clock = clock
        self._due: List[HTTPSession] = []

    def close(self, session: HTTPSession) -> None:
        """Detach C{session} at the end of this reactor turn."""
        session.listener = _ignore
        due = self._due
        due.append(session)
        if len(due) == 1:
            self.clock.callLater(0, self._reap)

    def _reap(self) -> None:
        due, self._due = self._due, []
        for session in due:
            session.close()


class _Capture:
    """A peer that keeps the packets written to it (for one synchronous call)."""

    __slots__ = ("packets",)

    def __init__(self) -> None:
        self.packets: List[Tuple[int, bytes]] = []

    def write(self, data: bytes) -> None:
        self.packets.extend(PacketDecoder(expectRequests=False, maxPacket=_ANY_SIZE).feed(data))

    def writeSequence(self, data: List[bytes]) -> None:
        self.write(b"".join(data))


def statusOf(state: Any, handle: Optional[bytes] = None, unique: Optional[bytes] = None,
             visible: Optional[Callable[[Any], bool]] = None) -> List[bytes]:
    """
    What GET_STATUS (C{handle}) or GET_STATUS_UNIQUE (C{unique}) answers, as
    its arguments; asked of the state with a session of its own that the
    state never registers (the call is synchronous).
    """
    from txgear.server._state import Session

    capture = _Capture()
    session = Session(capture, 0)
    if handle is not None:
        state.getStatus(session, handle, visible)
        expected = PacketType.STATUS_RES
    else:
        state.getStatusUnique(session, unique or b"", visible)
        expected = PacketType.STATUS_RES_UNIQUE
    kind, body = capture.packets[0]
    assert kind == expected, kind
    return body.split(b"\0")


__all__ = ["HTTPSession", "SessionReaper", "statusOf"]

# -*- test-case-name: tests.test_web_api -*-
"""
What the API's resources share: JSON replies, the text of peer-given
bytes, who a request is and what it may do.

Identity over HTTP is that of the Gearman port: the names of the
connection's client certificate (an C{--https} port with C{--tls-ca}), else
C{anonymous}; rights come from the same access list (C{--acl}).
"""
from __future__ import annotations

import json
from typing import Any, Optional, Tuple

from txgear.server._access import ADMIN, GRANT, INVOKE
from txgear.server._identity import peerNames

__all__ = ["ADMIN", "GRANT", "INVOKE", "Requester", "jsonBody", "text", "error"]


def text(value: Any) -> str:
    """
    Peer-given bytes (names, ids, payloads) as JSON text: UTF-8, with any
    byte that is not replaced by U+FFFD. C{json.dumps} then escapes every
    control and non-ASCII character.
    """
    if isinstance(value, str):
        return value
    return bytes(value).decode("utf-8", "replace")


def jsonBody(request: Any, value: Any, code: int = 200) -> bytes:
    """Set C{code} and the JSON headers on C{request}; the body to return."""
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"x-content-type-options", b"nosniff")
    request.setHeader(b"cache-control", b"no-store")
    encoded = json.dumps(value, ensure_ascii=True, separators=(",", ":"))
    # No markup characters either: a page that inlines a reply cannot be broken out of.
    return encoded.translate(_MARKUP).encode("ascii") + b"\n"


_MARKUP = str.maketrans({"<": "\\u003c", ">": "\\u003e", "&": "\\u0026"})


def error(request: Any, status: int, message: str, **extra: Any) -> bytes:
    """A JSON error reply with HTTP C{status}: C{{"error": message, ...}}."""
    body = {"error": message}
    body.update(extra)
    return jsonBody(request, body, status)


class Requester:
    """
    Who sent a request and what the access list lets them do. Has the
    C{accessNames()} and C{_peer()} the access guard's denial log asks of a
    connection.
    """

    __slots__ = ("request", "guard", "_names")

    def __init__(self, request: Any, factory: Any) -> None:
        self.request = request
        self.guard = factory.guard
        self._names: Optional[Tuple[str, ...]] = None

    def accessNames(self) -> Tuple[str, ...]:
        names = self._names
        if names is None:
            channel = self.request.channel
            names = self._names = peerNames(getattr(channel, "transport", None))
        return names

    def _peer(self) -> str:
        try:
            return "HTTP " + str(self.request.getClientAddress())
        except Exception:
            return "HTTP ?"

    def may(self, right: str, function: bytes) -> bool:
        """May this requester use C{right} (invoke) on C{function}? Denials are logged once."""
        guard = self.guard
        if guard is None:
            return True
        if guard.access.allows(self.accessNames(), right, function):
            return True
        guard.denied(self, right, function)
        return False

    def has(self, right: str) -> bool:
        """Does this requester hold the server-wide C{right} (admin)?"""
        guard = self.guard
        if guard is None:
            return True
        if guard.access.has(self.accessNames(), right):
            return True
        guard.denied(self, right, b"HTTP " + self.request.path[:100])
        return False

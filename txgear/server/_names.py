# -*- test-case-name: tests.test_server_protocol -*-
"""
The rules for names peers give the server: function names (refused when
too long or holding control characters) and client ids (cut and cleaned).
Shared by the packet handlers and the admin commands. Pure: no I/O.
"""
from __future__ import annotations

import re
from typing import Optional, Tuple

#: The default longest function name, in bytes: libgearman refuses longer
#: ones client-side (gearmand itself only has its 8 KiB line rule).
DEFAULT_MAX_FUNCTION_NAME = 512

#: The longest client id kept (SET_CLIENT_ID), in bytes; gearmand keeps about
#: as much. A longer id is cut, not refused: a client cannot tell.
MAX_CLIENT_ID = 128

NAME_TOO_LARGE = (b"ARGUMENT_TOO_LARGE", b"Function name too large")
NAME_HAS_CONTROL = (b"INVALID_ARGUMENT", b"Function name contains control characters")

_controlCharacter = re.compile(rb"[\x00-\x1f\x7f]").search
_CONTROL_BYTES = bytes(range(0x20)) + b"\x7f"


def functionNameProblem(name: bytes, limit: int) -> Optional[Tuple[bytes, bytes]]:
    """
    Why C{name} cannot name a function, as C{(code, text)} for an ERROR
    packet or an admin C{ERR} line; C{None} if it can. Spaces and UTF-8 are
    allowed (listings escape what needs it); control characters are not, as
    no real client sends them and they would forge admin listing lines.

    @param name: the function name a peer sent.
    @param limit: the longest name allowed, in bytes.
    """
    if len(name) > limit:
        return NAME_TOO_LARGE
    if _controlCharacter(name) is not None:
        return NAME_HAS_CONTROL
    return None


def cleanClientId(clientId: bytes) -> bytes:
    """
    A SET_CLIENT_ID value as kept: control characters dropped, surrounding
    whitespace stripped, then cut to L{MAX_CLIENT_ID} bytes.
    """
    return clientId.translate(None, _CONTROL_BYTES).strip()[:MAX_CLIENT_ID]


__all__ = ["DEFAULT_MAX_FUNCTION_NAME", "MAX_CLIENT_ID", "cleanClientId", "functionNameProblem"]

# -*- test-case-name: tests.test_web_csrf -*-
"""
Cross-site request forgery: a page of another site, open in the browser of
an operator who can reach the HTTP port, must not be able to submit or
cancel jobs through it.

A request that changes state (any method but GET, HEAD and OPTIONS) is
refused when:

  - its C{Origin} (or, without one, its C{Referer}) is present and is not
    the request's own origin (scheme, and the C{Host} header's host and
    port); an opaque C{Origin: null} is refused too; or when
    C{Sec-Fetch-Site} says C{cross-site};
  - it comes from a browser page (it has an C{Origin} or a
    C{Sec-Fetch-Site}) but carries neither a JSON content type nor the
    L{ACTION_HEADER}: a same-origin page's script can set them, a form
    cannot.

Programs that send neither C{Origin} nor C{Referer} (curl, the Gearman HTTP
plugin's clients) are not affected.
"""
from __future__ import annotations

from typing import Any, Optional, Tuple
from urllib.parse import urlsplit

#: Methods that change nothing: never refused.
SAFE_METHODS = frozenset((b"GET", b"HEAD", b"OPTIONS"))

#: The header the dashboard's actions send (any value).
ACTION_HEADER = b"x-txgear-request"

_DEFAULT_PORTS = {"http": 80, "https": 443}


def _origin(scheme: str, netloc: str) -> Optional[Tuple[str, str, int]]:
    """C{(scheme, host, port)} of a URL's parts, the port made explicit."""
    try:
        parts = urlsplit(f"{scheme}://{netloc}")
        port = parts.port
    except ValueError:
        return None
    host = parts.hostname
    if not host or scheme not in _DEFAULT_PORTS:
        return None
    return scheme, host.lower(), port if port is not None else _DEFAULT_PORTS[scheme]


def _header(request: Any, name: bytes) -> Optional[str]:
    value = request.getHeader(name)
    if value is None:
        return None
    return value.decode("latin-1") if isinstance(value, bytes) else value


def crossSiteProblem(request: Any) -> Optional[str]:
    """
    Why C{request} is refused as a possible cross-site forgery, or C{None}
    if it may proceed.
    """
    if request.method in SAFE_METHODS:
        return None
    origin = _header(request, b"origin")
    referer = _header(request, b"referer")
    fetchSite = _header(request, b"sec-fetch-site")
    if fetchSite is not None and fetchSite.strip().lower() == "cross-site":
        return "cross-site request refused"
    claimed = origin if origin is not None else referer
    if claimed is not None:
        host = _header(request, b"host")
        own = _origin("https" if request.isSecure() else "http", host or "")
        try:
            parts = urlsplit(claimed.strip())
            theirs = _origin(parts.scheme.lower(), parts.netloc)
        except ValueError:
            theirs = None
        if own is None or theirs is None or own != theirs:
            return "cross-site request refused: its origin is not this server's"
    if origin is not None or fetchSite is not None:
        contentType = (_header(request, b"content-type") or "").split(";")[0].strip().lower()
        if contentType != "application/json" and request.getHeader(ACTION_HEADER) is None:
            return ("a request from a browser page needs Content-Type: application/json "
                    "or an X-Txgear-Request header")
    return None


__all__ = ["ACTION_HEADER", "SAFE_METHODS", "crossSiteProblem"]

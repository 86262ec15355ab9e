# -*- test-case-name: tests.test_web_page -*-
"""
The dashboard: a live page at C{/} and its assets under C{/static/}, plain
HTML, CSS and JavaScript shipped in the package (C{txgear/web/static/}),
read once at start-up; nothing comes from elsewhere, so it works offline.

The page polls the JSON API (C{/v1/stats}, C{/v1/workers},
C{/v1/failures}) and draws everything itself; it writes every
peer-supplied string as text, never as markup. Its replies carry a
Content-Security-Policy that allows only this server's own scripts and
styles (no inline script), and forbid framing and sniffing.
"""
from __future__ import annotations

import os
from typing import Any, Dict, Tuple

from twisted.web.pages import notFound
from twisted.web.resource import Resource

_STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")

#: The files served under C{/static/}, with their content types.
ASSETS: Dict[str, bytes] = {
    "dashboard.js": b"text/javascript; charset=utf-8",
    "dashboard.css": b"text/css; charset=utf-8",
    "favicon.svg": b"image/svg+xml",
}
PAGE = "index.html"

#: What the page may load and do: only this server's own files.
CONTENT_SECURITY_POLICY = (b"default-src 'none'; script-src 'self'; style-src 'self'; "
                           b"img-src 'self'; connect-src 'self'; base-uri 'none'; "
                           b"form-action 'none'; frame-ancestors 'none'")

SECURITY_HEADERS: Tuple[Tuple[bytes, bytes], ...] = (
    (b"content-security-policy", CONTENT_SECURITY_POLICY),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cache-control", b"no-cache"),
)


def _read(name: str) -> bytes:
    with open(os.path.join(_STATIC, name), "rb") as f:
        return f.read()


class StaticFile(Resource):
    """One file of the dashboard, held in memory, with the security headers."""

    isLeaf = True

    def __init__(self, body: bytes, contentType: bytes) -> None:
        Resource.__init__(self)
        self.body = body
        self.contentType = contentType

    def render_GET(self, request: Any) -> bytes:
        if request.postpath:  # a path below a file
            return notFound().render(request)  # type: ignore[no-any-return]
        for name, value in SECURITY_HEADERS:
            request.setHeader(name, value)
        request.setHeader(b"content-type", self.contentType)
        return self.body

    render_HEAD = render_GET


class StaticDirectory(Resource):
    """C{/static/NAME}: the files of L{ASSETS} only (no file system lookup per request)."""

    def __init__(self) -> None:
        Resource.__init__(self)
        for name, contentType in ASSETS.items():
            self.putChild(name.encode("ascii"), StaticFile(_read(name), contentType))

    def getChild(self, path: bytes, request: Any) -> Any:
        return notFound()


def dashboardResources() -> Dict[bytes, Resource]:
    """The root's children that make up the dashboard: C{b""} (the page) and C{b"static"}."""
    return {b"": StaticFile(_read(PAGE), b"text/html; charset=utf-8"),
            b"static": StaticDirectory()}


__all__ = ["ASSETS", "CONTENT_SECURITY_POLICY", "SECURITY_HEADERS", "StaticDirectory",
           "StaticFile", "dashboardResources"]

"""
The dashboard's files (txgear/web/_dashboard.py, txgear/web/static/): served
from the package with the security headers, only the known files, and the
page's script writes peer strings as text (a static check beside the
browser test).
"""
from __future__ import annotations

import os
import re

import pytest

from txgear.web._dashboard import ASSETS

from tests._webkit import HandWorker, WebHarness

STATIC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                      "txgear", "web", "static")


def test_the_page_is_served_with_the_security_headers() -> None:
    h = WebHarness()
    response = h.call("GET", "/")
    assert response.status == 200
    assert response.headers[b"content-type"] == b"text/html; charset=utf-8"
    csp = response.headers[b"content-security-policy"]
    assert b"script-src 'self'" in csp and b"unsafe-inline" not in csp
    assert b"frame-ancestors 'none'" in csp
    assert response.headers[b"x-content-type-options"] == b"nosniff"
    assert response.headers[b"referrer-policy"] == b"no-referrer"
    assert response.headers[b"x-frame-options"] == b"DENY"
    assert b'<script src="/static/dashboard.js"' in response.body


@pytest.mark.parametrize("name", sorted(ASSETS))
def test_every_asset_is_served_with_its_type_and_headers(name: str) -> None:
    h = WebHarness()
    response = h.call("GET", "/static/" + name)
    assert response.status == 200
    assert response.headers[b"content-type"] == ASSETS[name]
    assert response.headers[b"x-content-type-options"] == b"nosniff"
    with open(os.path.join(STATIC, name), "rb") as f:
        assert response.body == f.read()


@pytest.mark.parametrize("path", ["/static/", "/static/index.html", "/static/../_api.py",
                                  "/static/%2e%2e%2f_api.py", "/static/dashboard.js/x", "/nothing",
                                  "//x"])
def test_other_paths_are_not_found(path: str) -> None:
    assert WebHarness().call("GET", path).status == 404


def test_posting_to_the_pages_paths_is_still_gearmands_form() -> None:
    h = WebHarness()
    HandWorker(h.state, b"static")
    exchange = h.request("POST", "/static", b"x", headers={"X-Gearman-Background": "true"})
    response = exchange.response()
    assert response is not None and response.headers[b"x-gearman-command"] == b"JOB_CREATED"
    assert h.call("POST", "/", b"x").status == 404  # no function named: as before


def test_the_page_has_no_inline_script_and_the_script_no_markup_sinks() -> None:
    with open(os.path.join(STATIC, "index.html"), encoding="utf-8") as f:
        page = f.read()
    assert re.findall(r"<script\b[^>]*>", page) == ['<script src="/static/dashboard.js" defer>']
    assert not re.search(r"\son\w+=", page)  # no inline handlers
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    with open(os.path.join(STATIC, "dashboard.js"), encoding="utf-8") as f:
        script = f.read()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in script

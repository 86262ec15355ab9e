"""Tests for the admin text formats, txgear._admintext."""
from __future__ import annotations

from txgear import _admintext as text


def test_escapeKeepsOrdinaryValuesAsTheyAre():
    for value in (b"resize", b"img-worker-1", b"H:host:12", "r\u00e9sum\u00e9".encode(), b"a b"):
        assert text.escape(value) is value


def test_escapeControlCharactersAndBackslash():
    assert text.escape(b"a\nb\tc\r\x00\x7f\\") == b"a\\x0ab\\x09c\\x0d\\x00\\x7f\\x5c"
    assert text.escape(b"a b") == b"a b"
    assert text.escape(b"a b", space=True) == b"a\\x20b"


def test_everyListingEscapes():
    assert text.formatStatus([(b"f\n", 1, 0, 0)]) == b"f\\x0a\t1\t0\t0\n.\n"
    assert text.formatPriorityStatus([(b"f\t", 1, 0, 0, 0)]) == b"f\\x09\t1\t0\t0\t0\n.\n"
    assert text.formatShowJobs([(b"H\n", 0, 0, 1)]) == b"H\\x0a\t0\t0\t1\n.\n"
    assert text.formatLines([b"u\n.", b""]) == b"u\\x0a.\n\n.\n"
    assert text.formatWorkers([(b"7", b"127.0.0.1", b"id x\n", [b"a b", b"c"])]) == (
        b"7 127.0.0.1 id\\x20x\\x0a : a\\x20b c\n.\n")

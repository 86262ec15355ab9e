# -*- test-case-name: tests.test_store_contract -*-
"""
Store descriptions given as URLs: txgear's own options ride in the query
string beside the driver's.
"""
from __future__ import annotations

from typing import Dict, Sequence, Tuple
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit


def takeQueryOptions(url: str, names: Sequence[str]) -> Tuple[str, Dict[str, str]]:
    """
    Take the query parameters called C{names} out of C{url}.

    @return: the URL without them (for the driver), and their values.
    """
    parts = urlsplit(url)
    options: Dict[str, str] = {}
    query = []
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name in names:
            options[name] = value
        else:
            query.append((name, value))
    return urlunsplit(parts._replace(query=urlencode(query))), options

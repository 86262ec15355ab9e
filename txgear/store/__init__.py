# -*- test-case-name: tests.test_store_description -*-
"""
Persistent stores for background jobs, and the C{--queue} descriptions that
choose one.

  - C{memory}: nothing survives a restart (L{MemoryJobStore});
  - C{sqlite:PATH} (or C{sqlite} alone, for L{DEFAULT_SQLITE_PATH}; an empty
    PATH is an error): a SQLite file, relative to the current directory; C{?synchronous=full} adds an
    C{fsync} per batch (L{SQLiteJobStore});
  - C{postgresql:<dsn>}: a libpq connection string, e.g.
    C{postgresql:host=db1 dbname=gearman schema=gearman1}, or a URL,
    C{postgresql://gear@db1/gearman?schema=gearman1}; txgear's own options
    C{schema} (default C{public}) and C{prefix} (of the table names, default
    C{txgear_}) go among the libpq ones (L{PostgresJobStore});
  - C{redis:<url>}: e.g. C{redis:redis://127.0.0.1:6379/0?prefix=gear1:}, or
    the URL alone; C{prefix} (default C{txgear:}) starts every key
    (L{RedisJobStore}).
"""
from __future__ import annotations

from typing import Any, Callable, Dict
from urllib.parse import parse_qsl

from txgear.errors import StoreError
from txgear.interfaces import IJobStore
from txgear.store._memory import MemoryJobStore
from txgear.store._postgres import PostgresJobStore, splitPostgresOptions
from txgear.store._redis import RedisJobStore, splitRedisOptions
from txgear.store._sqlite import SQLiteJobStore

__all__ = [
    "DEFAULT_QUEUE",
    "DEFAULT_SQLITE_PATH",
    "MemoryJobStore",
    "PostgresJobStore",
    "RedisJobStore",
    "SQLiteJobStore",
    "checkQueue",
    "storeFromString",
]

#: The file the default store keeps, in the server's working directory.
DEFAULT_SQLITE_PATH = "txgear-queue.sqlite"

#: The C{--queue} description used when none is given.
DEFAULT_QUEUE = f"sqlite:{DEFAULT_SQLITE_PATH}"


def storeFromString(description: str, reactor: Any = None) -> IJobStore:
    """
    Build the store a C{--queue} description names (see the module
    docstring). The store is not opened: call its C{open()}.

    @param description: e.g. C{memory}, C{sqlite:queue.db},
        C{postgresql:host=127.0.0.1 dbname=test}, C{redis://127.0.0.1:6379/0}.
    @param reactor: the reactor the store uses; the global one by default.
    @raise ValueError: if the description cannot be parsed.
    @raise StoreError: if the store needs a driver that is not installed.
    """
    return _storeFactory(description)(reactor)


def checkQueue(description: str) -> None:
    """
    Check a C{--queue} description as L{storeFromString} does, without
    building the store (nor importing the reactor).

    @raise ValueError: if the description cannot be parsed.
    @raise StoreError: if the store needs a driver that is not installed.
    """
    _storeFactory(description)


def _storeFactory(description: str) -> Callable[[Any], IJobStore]:
    """What builds the store C{description} names, given a reactor."""
    kind, colon, rest = description.partition(":")
    kind = kind.strip().lower()
    if kind == "memory" and not rest:
        return lambda reactor: MemoryJobStore()
    if kind == "sqlite":
        path, _, query = rest.partition("?")
        if colon and not path.strip():
            raise ValueError(f"{description!r}: a file is needed after sqlite:, e.g. "
                             f"sqlite:/var/lib/txgear/queue.sqlite (or sqlite alone for "
                             f"{DEFAULT_SQLITE_PATH} in the working directory)")
        options = _options(query, ("synchronous",), description)
        synchronous = options.get("synchronous", "NORMAL")
        if synchronous.upper() not in ("NORMAL", "FULL"):
            raise ValueError(f"{description!r}: synchronous must be NORMAL or FULL, "
                             f"not {synchronous!r}")
        return lambda reactor: SQLiteJobStore(path or DEFAULT_SQLITE_PATH, reactor=reactor,
                                              synchronous=synchronous)
    if kind in ("postgresql", "postgres"):
        dsn = description if rest.startswith("//") else rest
        if not dsn.strip():
            raise ValueError(f"{description!r}: a connection string is needed after {kind}:")
        _requireDriver("psycopg", "psycopg[binary]", "postgresql", description)
        conninfo, pgOptions = splitPostgresOptions(dsn)
        return lambda reactor: PostgresJobStore(
            conninfo, reactor=reactor, schema=pgOptions.get("schema", "public"),
            prefix=pgOptions.get("prefix", "txgear_"))
    if kind in ("redis", "rediss"):
        url = description if rest.startswith("//") else rest
        if "://" not in url:
            raise ValueError(f"{description!r}: a URL is needed, e.g. redis:redis://127.0.0.1:6379/0")
        _requireDriver("redis", "redis", "redis", description)
        url, redisOptions = splitRedisOptions(url)
        return lambda reactor: RedisJobStore(url, reactor=reactor,
                                             prefix=redisOptions.get("prefix", "txgear:"))
    raise ValueError(f"unknown queue {description!r}: use memory, sqlite:PATH, "
                     f"postgresql:<dsn> or redis:<url>")


def _options(query: str, allowed: tuple, description: str) -> Dict[str, str]:
    options = dict(parse_qsl(query, keep_blank_values=True)) if query else {}
    unknown = set(options) - set(allowed)
    if unknown:
        raise ValueError(f"{description!r}: unknown option(s) {', '.join(sorted(unknown))}")
    return options


def _requireDriver(module: str, package: str, extra: str, description: str) -> None:
    try:
        __import__(module)
    except ImportError as e:
        raise StoreError(f"{description}: the Python package {package!r} is needed "
                         f"(pip install 'txgear[{extra}]' or pip install '{package}')") from e

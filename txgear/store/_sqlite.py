# -*- test-case-name: tests.test_store_contract -*-
"""
The SQLite job store: the embedded default (C{--queue sqlite:PATH}).

Python's C{sqlite3} runs in the store's own thread. The file is in WAL mode
with C{synchronous=NORMAL}: a committed batch is in the write-ahead log before
C{add} fires, so it survives a crash or C{kill -9} of the server process; a
power failure or kernel crash may lose the last batches unless the store is
opened with C{synchronous="FULL"} (one C{fsync} per batch). The file is locked
exclusively while the store is open, so two servers cannot share one queue.

Schema version 2: C{meta(name, value)} and C{jobs(key INTEGER PRIMARY KEY,
priority INTEGER, data BLOB)}, where C{data} holds the other fields in the
format of L{txgear.store._record}; three narrow columns write about three
times faster than one column per field. A batch is one transaction of
multi-row C{DELETE} and C{INSERT OR REPLACE} statements.
"""
from __future__ import annotations

import os
import sqlite3
from typing import Any, Dict, List, Optional

from zope.interface import implementer

from txgear.errors import StoreError, StoreSchemaError
from txgear.interfaces import IJobStore
from txgear.jobs import StoredJob
from txgear.store._batch import Operation, ThreadedBatchStore
from txgear.store._record import collapse, packedRows, unpackRecord

#: The name recorded in the C{meta} table, telling a txgear queue from any
#: other SQLite file.
SCHEMA_NAME = "txgear-queue"

#: The schema version this code reads and writes.
SCHEMA_VERSION = 2

_CREATE = [
    "CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE jobs (key INTEGER PRIMARY KEY, priority INTEGER NOT NULL, data BLOB NOT NULL)",
]

#: Rows per statement: a batch is written with multi-row statements of these
#: sizes, largest first (a few shapes, so they stay in the statement cache;
#: 256 rows of 3 values stay under the 999 variables of older SQLite).
_CHUNKS = (256, 64, 16, 4, 1)
_INSERT = {rows: "INSERT OR REPLACE INTO jobs (key, priority, data) VALUES "
           + ", ".join(["(?, ?, ?)"] * rows) for rows in _CHUNKS}
_DELETE = {rows: "DELETE FROM jobs WHERE key IN (" + ", ".join(["?"] * rows) + ")"
           for rows in _CHUNKS}
_LOAD = "SELECT key, priority, data FROM jobs ORDER BY priority, key"

_SYNCHRONOUS = ("NORMAL", "FULL")


@implementer(IJobStore)
class SQLiteJobStore(ThreadedBatchStore):
    """
    Background jobs in a SQLite file.

    @ivar path: the absolute path of the database file.
    """

    _threadName = "txgear-store-sqlite"

    def __init__(self, path: str, reactor: Any = None, synchronous: str = "NORMAL",
                 busyTimeout: float = 5.0) -> None:
        """
        @param path: the database file, created if missing (its directory must
            exist); relative to the current directory.
        @param reactor: the reactor; the global one by default.
        @param synchronous: C{"NORMAL"} (survives a process crash) or
            C{"FULL"} (also survives a power failure; one C{fsync} per batch).
        @param busyTimeout: seconds to wait for a file another process holds.
        """
        ThreadedBatchStore.__init__(self, reactor)
        synchronous = synchronous.upper()
        if synchronous not in _SYNCHRONOUS:
            raise ValueError(f"synchronous must be NORMAL or FULL, not {synchronous!r}")
        self.path = os.path.abspath(path)
        self.description = f"sqlite:{self.path}"
        self._synchronous = synchronous
        self._busyTimeout = busyTimeout
        self._connection: Optional[sqlite3.Connection] = None

    def _openInThread(self) -> List[StoredJob]:
        if sqlite3.sqlite_version_info < (3, 24, 0):
            raise StoreError(f"{self.description}: SQLite {sqlite3.sqlite_version} is too old (3.24+ needed)")
        directory = os.path.dirname(self.path)
        if not os.path.isdir(directory):
            raise StoreError(f"{self.description}: the directory {directory} does not exist")
        try:
            connection = sqlite3.connect(self.path, timeout=self._busyTimeout,
                                         isolation_level=None, check_same_thread=False)
        except sqlite3.Error as e:
            raise StoreError(f"{self.description}: cannot open the file: {e}") from e
        self._connection = connection
        try:
            # Both only change this connection, never the file.
            connection.execute("PRAGMA locking_mode = EXCLUSIVE")
            connection.execute("PRAGMA query_only = ON")
            tables = {row[0] for row in connection.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'")}
            if tables:
                self._checkSchema(connection, tables)
            connection.execute("PRAGMA query_only = OFF")
            mode = connection.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise StoreError(f"{self.description}: cannot switch to WAL mode (got {mode!r})")
            connection.execute(f"PRAGMA synchronous = {self._synchronous}")
            if not tables:
                self._createSchema(connection)
            # Take the exclusive lock now, so a second server fails at start-up.
            connection.execute("BEGIN IMMEDIATE")
            connection.execute("COMMIT")
            try:
                return [unpackRecord(key, priority, data)
                        for key, priority, data in connection.execute(_LOAD)]
            except StoreSchemaError as e:
                raise StoreSchemaError(f"{self.description}: {e}; the file was left untouched") from e
        except sqlite3.DatabaseError as e:
            message = str(e)
            if isinstance(e, sqlite3.OperationalError) and "locked" in message:
                raise StoreError(f"{self.description}: the file is in use by another process "
                                 f"(another job server?): {message}") from e
            if isinstance(e, sqlite3.OperationalError) or "full" in message:
                raise StoreError(f"{self.description}: {message}") from e
            raise StoreSchemaError(f"{self.description}: not a readable txgear queue "
                                   f"(corrupt?): {message}; the file was left untouched") from e

    def _checkSchema(self, connection: sqlite3.Connection, tables: set) -> None:
        if "meta" not in tables:
            raise StoreSchemaError(
                f"{self.description}: this SQLite file is not a txgear queue (no meta table; "
                f"tables: {', '.join(sorted(tables))}); it was left untouched")
        meta = dict(connection.execute("SELECT name, value FROM meta"))
        if meta.get("schema") != SCHEMA_NAME:
            raise StoreSchemaError(
                f"{self.description}: this SQLite file is not a txgear queue "
                f"(schema {meta.get('schema')!r}); it was left untouched")
        version = meta.get("version")
        if version != str(SCHEMA_VERSION):
            raise StoreSchemaError(
                f"{self.description}: the queue has schema version {version}, this txgear "
                f"reads version {SCHEMA_VERSION}; the file was left untouched (run the txgear "
                f"version that wrote it, or move the file aside)")
        check = [row[0] for row in connection.execute("PRAGMA quick_check")]
        if check != ["ok"]:
            raise StoreSchemaError(f"{self.description}: the file is corrupt ({'; '.join(check[:5])}); "
                                   f"it was left untouched")

    def _createSchema(self, connection: sqlite3.Connection) -> None:
        connection.execute("BEGIN IMMEDIATE")
        try:
            for statement in _CREATE:
                connection.execute(statement)
            connection.executemany("INSERT INTO meta (name, value) VALUES (?, ?)",
                                   [("schema", SCHEMA_NAME), ("version", str(SCHEMA_VERSION))])
            connection.execute("COMMIT")
        except BaseException:
            connection.execute("ROLLBACK")
            raise

    def _writeInThread(self, operations: List[Operation]) -> None:
        connection = self._connection
        assert connection is not None
        try:
            connection.execute("BEGIN IMMEDIATE")
            try:
                records, removed = collapse(operations)
                if removed:
                    _executeInChunks(connection, _DELETE, removed, 1)
                # A key twice among the records: the later replaces the earlier.
                _executeInChunks(connection, _INSERT,
                                 [value for row in packedRows(records) for value in row], 3)
                connection.execute("COMMIT")
            except BaseException:
                if connection.in_transaction:
                    connection.execute("ROLLBACK")
                raise
        except sqlite3.Error as e:
            raise StoreError(f"{self.description}: {e}") from e

    def _closeInThread(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()


def _executeInChunks(connection: sqlite3.Connection, statements: Dict[int, str],
                     values: List[Any], width: int) -> None:
    """
    Run C{statements[n]} over consecutive slices of C{values}, C{n} rows of
    C{width} values at a time, largest C{n} first.

    One multi-row statement rather than C{executemany}: C{sqlite3} releases
    the GIL once per statement, not once per row, so the reactor thread and
    this one do not hand the GIL back and forth for every row (which, under
    load, made each row wait for the reactor thread).
    """
    start = 0
    end = len(values)
    for rows in _CHUNKS:
        size = rows * width
        statement = statements[rows]
        while end - start >= size:
            connection.execute(statement, values[start:start + size])
            start += size

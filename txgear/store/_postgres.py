# -*- test-case-name: tests.test_store_contract -*-
"""
The PostgreSQL job store (C{--queue postgresql:<dsn>}), with psycopg 3 in the
store's own thread.

A batch is one transaction: adds are C{COPY}ed into a temporary table and
upserted from there in order, removes go by arrays of keys; so a burst of
submits costs a few round trips. A lost connection fails the batch in
flight with L{StoreError}; the next batch reconnects.
"""
from __future__ import annotations

import re
from typing import Any, Dict, List, Optional, Tuple
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from zope.interface import implementer

from txgear.errors import StoreError, StoreSchemaError
from txgear.interfaces import IJobStore
from txgear.jobs import StoredJob
from txgear.store._batch import Operation, ThreadedBatchStore, jobFromRecord, runsOf

SCHEMA_NAME = "txgear-queue"
SCHEMA_VERSION = 1

#: Options of a C{postgresql:} description that are txgear's, not libpq's.
STORE_OPTIONS = ("schema", "prefix")

_CHUNK_ROWS = 10000
_COPY_TYPES = ["bytea", "bytea", "bytea", "bytea", "int2", "int8", "bytea", "bytea"]

_PAIR = re.compile(r"""\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*('(?:[^'\\]|\\.)*'|[^\s']*)""")


def splitPostgresOptions(dsn: str) -> Tuple[str, Dict[str, str]]:
    """
    Take txgear's own options (C{schema}, C{prefix}) out of a libpq connection
    string, given as C{key=value} pairs or as a C{postgresql://} URL (where
    they are query parameters).

    @return: the connection string for libpq, and txgear's options.
    @raise ValueError: if C{dsn} cannot be parsed.
    """
    options: Dict[str, str] = {}
    if re.match(r"^postgres(ql)?://", dsn):
        parts = urlsplit(dsn)
        query = []
        for name, value in parse_qsl(parts.query, keep_blank_values=True):
            if name in STORE_OPTIONS:
                options[name] = value
            else:
                query.append((name, value))
        return urlunsplit(parts._replace(query=urlencode(query))), options
    kept = []
    position = 0
    dsn = dsn.strip()
    while position < len(dsn):
        match = _PAIR.match(dsn, position)
        if match is None or match.end() == position:
            raise ValueError(f"cannot parse the PostgreSQL connection string at {dsn[position:]!r}")
        name, value = match.group(1), match.group(2)
        if name in STORE_OPTIONS:
            if value.startswith("'"):
                value = re.sub(r"\\(.)", r"\1", value[1:-1])
            options[name] = value
        else:
            kept.append(match.group(0).strip())
        position = match.end()
    return " ".join(kept), options


@implementer(IJobStore)
class PostgresJobStore(ThreadedBatchStore):
    """
    Background jobs in two tables of a PostgreSQL database:
    C{<schema>.<prefix>jobs} and C{<schema>.<prefix>meta}.

    Give each job server its own schema or prefix: every server loads all the
    jobs of its tables at start-up.
    """

    _threadName = "txgear-store-postgresql"

    def __init__(self, conninfo: str, reactor: Any = None, schema: str = "public",
                 prefix: str = "txgear_", connectTimeout: int = 10) -> None:
        """
        @param conninfo: a libpq connection string (C{host=... dbname=...}) or
            URL (C{postgresql://user@host/db}).
        @param reactor: the reactor; the global one by default.
        @param schema: the schema holding the tables, created if missing.
        @param prefix: the prefix of the table names.
        @param connectTimeout: seconds to wait for a connection, unless
            C{conninfo} sets C{connect_timeout}.
        @raise ValueError: if C{conninfo} is invalid.
        """
        ThreadedBatchStore.__init__(self, reactor)
        import psycopg.conninfo
        try:
            params = psycopg.conninfo.conninfo_to_dict(conninfo)
        except psycopg.Error as e:
            raise ValueError(f"invalid PostgreSQL connection string: {e}") from e
        params.setdefault("connect_timeout", connectTimeout)
        params.setdefault("application_name", "txgear")
        self._conninfo = psycopg.conninfo.make_conninfo("", **params)
        self.schema = schema
        self.prefix = prefix
        shown = {k: ("***" if k == "password" else v) for k, v in params.items()
                 if k not in ("connect_timeout", "application_name")}
        self.description = "postgresql:" + psycopg.conninfo.make_conninfo("", **shown) + (
            f" schema={schema} prefix={prefix}")
        self._connection: Any = None
        self._sql: Dict[str, Any] = {}

    # Connection ------------------------------------------------------------

    def _connect(self) -> Any:
        import psycopg
        if self._connection is not None and not self._connection.closed:
            return self._connection
        self._connection = None
        try:
            connection = psycopg.connect(self._conninfo)
        except psycopg.Error as e:
            raise StoreError(f"{self.description}: cannot connect: {e}".strip()) from e
        try:
            # Adds are COPYed here, then upserted in order: much faster than
            # binding arrays or rows.
            connection.execute(
                "CREATE TEMPORARY TABLE txgear_staging (n bigserial, key bytea, function bytea,"
                " uniq bytea, payload bytea, priority int2, run_at int8, reducer bytea,"
                " client_id bytea) ON COMMIT DELETE ROWS")
            connection.commit()
        except psycopg.Error as e:
            connection.close()
            raise StoreError(f"{self.description}: {e}") from e
        self._connection = connection
        return connection

    def _failed(self, e: Exception) -> StoreError:
        """
        Forget a broken connection (the next batch reconnects), roll back a
        usable one, and describe C{e}.
        """
        connection = self._connection
        if connection is not None:
            if getattr(connection, "broken", False) or connection.closed:
                self._connection = None
                try:
                    connection.close()
                except Exception:
                    pass
            else:
                try:
                    connection.rollback()
                except Exception:
                    self._connection = None
                    connection.close()
        return StoreError(f"{self.description}: {e.__class__.__name__}: {e}".strip())

    # Thread side ----------------------------------------------------------

    def _openInThread(self) -> List[StoredJob]:
        import psycopg
        from psycopg import sql
        jobs = sql.Identifier(self.schema, self.prefix + "jobs")
        meta = sql.Identifier(self.schema, self.prefix + "meta")
        columns = sql.SQL("key, function, uniq, payload, priority, run_at, reducer, client_id")
        self._sql = {
            "copy": sql.SQL("COPY pg_temp.txgear_staging ({columns}) FROM STDIN (FORMAT BINARY)").format(
                columns=columns),
            "insert": sql.SQL(
                "INSERT INTO {jobs} ({columns})"
                " SELECT {columns} FROM pg_temp.txgear_staging ORDER BY n"
                " ON CONFLICT (key) DO UPDATE SET function = EXCLUDED.function,"
                " uniq = EXCLUDED.uniq, payload = EXCLUDED.payload, priority = EXCLUDED.priority,"
                " run_at = EXCLUDED.run_at, reducer = EXCLUDED.reducer,"
                " client_id = EXCLUDED.client_id").format(jobs=jobs, columns=columns),
            "delete": sql.SQL("DELETE FROM {jobs} WHERE key = ANY(%s::bytea[])").format(jobs=jobs),
        }
        connection = self._connect()
        try:
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT table_name FROM information_schema.tables"
                    " WHERE table_schema = %s AND table_name IN (%s, %s)",
                    (self.schema, self.prefix + "meta", self.prefix + "jobs"))
                tables = {row[0] for row in cursor.fetchall()}
                if not tables:
                    cursor.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(
                        sql.Identifier(self.schema)))
                    cursor.execute(sql.SQL(
                        "CREATE TABLE {meta} (name text PRIMARY KEY, value text NOT NULL)"
                    ).format(meta=meta))
                    cursor.execute(sql.SQL(
                        "CREATE TABLE {jobs} ("
                        " seq bigserial PRIMARY KEY,"
                        " key bytea NOT NULL UNIQUE,"
                        " function bytea NOT NULL,"
                        " uniq bytea NOT NULL,"
                        " payload bytea NOT NULL,"
                        " priority smallint NOT NULL,"
                        " run_at bigint NOT NULL,"
                        " reducer bytea NOT NULL,"
                        " client_id bytea NOT NULL)").format(jobs=jobs))
                    cursor.execute(sql.SQL("CREATE INDEX ON {jobs} (priority, seq)").format(jobs=jobs))
                    cursor.execute(sql.SQL("INSERT INTO {meta} (name, value) VALUES (%s, %s), (%s, %s)")
                                   .format(meta=meta),
                                   ("schema", SCHEMA_NAME, "version", str(SCHEMA_VERSION)))
                    connection.commit()
                elif self.prefix + "meta" not in tables:
                    raise StoreSchemaError(
                        f"{self.description}: the table {self.prefix}jobs exists without "
                        f"{self.prefix}meta: not a txgear queue; left untouched")
                cursor.execute(sql.SQL("SELECT name, value FROM {meta}").format(meta=meta))
                values = dict(cursor.fetchall())
                if values.get("schema") != SCHEMA_NAME or values.get("version") != str(SCHEMA_VERSION):
                    raise StoreSchemaError(
                        f"{self.description}: the queue has schema {values.get('schema')!r} "
                        f"version {values.get('version')}, this txgear reads {SCHEMA_NAME!r} "
                        f"version {SCHEMA_VERSION}; left untouched")
                cursor.execute(sql.SQL("SELECT {columns} FROM {jobs} ORDER BY priority, seq").format(
                    columns=columns, jobs=jobs), binary=True)
                loaded = [jobFromRecord(row) for row in cursor]
            connection.commit()
            return loaded
        except StoreSchemaError:
            self._failed(Exception())
            raise
        except psycopg.Error as e:
            raise self._failed(e) from e

    def _writeInThread(self, operations: List[Operation]) -> None:
        import psycopg
        connection = self._connect()
        try:
            with connection.cursor() as cursor:
                staged = False
                for isAdd, items in runsOf(operations):
                    if isAdd:
                        if staged:
                            cursor.execute("TRUNCATE pg_temp.txgear_staging")
                        with cursor.copy(self._sql["copy"]) as copy:
                            copy.set_types(_COPY_TYPES)
                            for record in items:
                                copy.write_row(record)
                        cursor.execute(self._sql["insert"])
                        staged = True
                    else:
                        for start in range(0, len(items), _CHUNK_ROWS):
                            cursor.execute(self._sql["delete"], [items[start:start + _CHUNK_ROWS]],
                                           binary=True)
            connection.commit()
        except psycopg.Error as e:
            raise self._failed(e) from e

    def _closeInThread(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()


# -*- test-case-name: tests.test_store_contract -*-
"""
The Redis job store (C{--queue redis:<url>}), with redis-py in the store's own
thread.

Keys, all under one prefix (C{txgear:} by default), schema version 3:
  - C{<prefix>meta}: a hash with the schema name and version;
  - C{<prefix>jobs}: a hash from job key (in decimal) to the job's fields
    packed as L{txgear.store._record} describes;
  - C{<prefix>order}: a sorted set of job keys (in decimal) scored by
    C{priority * 2**51 + key}, so that its order is the load order (scores
    are doubles: exact below 2**53, hence keys below 2**51 and priorities
    0 to 3).

  - the dead set: C{<prefix>dead}, a hash from job key to the time of death
    (Unix ms, signed 64-bit), payload size (unsigned 32-bit) and priority (8 bits), big-endian,
    then the job's fields packed as above with an empty payload;
    C{<prefix>deadpayload}, a hash from job key to its payload (so listings
    never read payloads); C{<prefix>deadorder}, a sorted set of job keys
    scored by time of death.

  - kept results (schema version 5): C{<prefix>kept}, a hash from job key to
    the finish and expiry times (Unix ms, signed 64-bit), the result's size
    (unsigned 64-bit), its status (8 bits: 0 complete, 1 fail, 2 exception)
    and whether its bytes were kept (8 bits), the function's length
    (unsigned 32-bit), big-endian, then the function and the unique;
    C{<prefix>keptresult}, a hash from job key to the result's bytes;
    C{<prefix>keptexpiry}, a sorted set of job keys scored by expiry (expiry
    reads a score range of it).

Version 3 differs from 2 only in the records it writes (format 2: attempts,
retry time and last error); version 4 adds the dead set's keys, version 5
the kept results'. A version 2, 3 or 4 queue is migrated when opened by
setting its version to 5 (its format 1 records are still read; it has no
dead set or kept results yet).

A batch is one C{MULTI}/C{EXEC} transaction, sent at once on a connection
kept for batches; its commands are encoded here, in one pass over the
records, rather than argument by argument by redis-py (which cost more than
the rest of a batch). C{add} fires once
Redis has applied the transaction: the job survives a crash of the job server;
surviving a crash of Redis itself needs Redis persistence (C{appendonly yes}),
which the store checks and warns about at start-up.
"""
from __future__ import annotations

import struct
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple
from urllib.parse import urlsplit, urlunsplit

from zope.interface import implementer

from txgear.errors import StoreError, StoreSchemaError
from txgear.interfaces import IJobStore
from txgear.jobs import KEPT_STATUSES, DeadJob, KeptResult, StoredJob
from txgear.store._batch import Operation, ThreadedBatchStore, splitFinished
from txgear.store._record import (FORMAT_VERSION, RECORD_HEADER, Record, collapse, packRecord,
                                  unpackRecord)
from txgear.store._url import takeQueryOptions

SCHEMA_NAME = b"txgear-queue"
SCHEMA_VERSION = 5

#: Older schema versions L{RedisJobStore.open} migrates to L{SCHEMA_VERSION}.
MIGRATED_VERSIONS = (b"2", b"3", b"4")

#: In front of a dead job's packed fields: time of death (ms), payload size, priority.
_DEAD_HEADER = struct.Struct(">qIB")

#: In front of a kept result's function and unique: finish and expiry times
#: (ms), size, status, kept or not, the function's length.
_KEPT_HEADER = struct.Struct(">qqQBBI")

#: Options of a C{redis:} URL that are txgear's, not redis-py's.
STORE_OPTIONS = ("prefix",)

_CHUNK = 1000

_MULTI = b"*1\r\n$5\r\nMULTI\r\n"
_EXEC = b"*1\r\n$4\r\nEXEC\r\n"

#: Scores are C{priority * _PRIORITY_STEP + key}.
_PRIORITY_STEP = 2 ** 51
_MAX_PRIORITY = 3


def splitRedisOptions(url: str) -> Tuple[str, Dict[str, str]]:
    """
    Take txgear's own options (C{prefix}) out of the query of a Redis URL.

    @return: the URL for redis-py and txgear's options.
    """
    return takeQueryOptions(url, STORE_OPTIONS)


@implementer(IJobStore)
class RedisJobStore(ThreadedBatchStore):
    """
    Background jobs in a Redis database, under a key prefix. Give each job
    server its own prefix: every server loads all the jobs under its prefix.
    """

    _threadName = "txgear-store-redis"

    def __init__(self, url: str, reactor: Any = None, prefix: str = "txgear:",
                 socketTimeout: float = 30.0, connectTimeout: float = 5.0) -> None:
        """
        @param url: a redis-py URL: C{redis://[:password@]host[:port][/db]},
            C{rediss://...} (TLS) or C{unix:///path/to/socket?db=0}.
        @param reactor: the reactor; the global one by default.
        @param prefix: the prefix of every key the store uses.
        @param socketTimeout: seconds to wait for Redis to answer.
        @param connectTimeout: seconds to wait for a connection.
        """
        ThreadedBatchStore.__init__(self, reactor)
        self.url = url
        self.prefix = prefix
        parts = urlsplit(url)
        if parts.password is not None:
            netloc = parts.netloc.rsplit("@", 1)[1]
            user = parts.username or ""
            parts = parts._replace(netloc=f"{user}:***@{netloc}")
        self.description = f"redis:{urlunsplit(parts)} prefix={prefix}"
        raw = prefix.encode("utf-8")
        self._metaKey = raw + b"meta"
        self._jobsKey = raw + b"jobs"
        self._orderKey = raw + b"order"
        self._deadKey = raw + b"dead"
        self._deadPayloadKey = raw + b"deadpayload"
        self._deadOrderKey = raw + b"deadorder"
        self._keptKey = raw + b"kept"
        self._keptResultKey = raw + b"keptresult"
        self._keptExpiryKey = raw + b"keptexpiry"
        self._socketTimeout = socketTimeout
        self._connectTimeout = connectTimeout
        self._client: Any = None
        # The connection batches are written on (see _transaction), and the
        # retry policy it shares with the client.
        self._writer: Any = None
        self._retry: Any = None
        self._warning: Optional[str] = None

    def _makeClient(self) -> Any:
        import redis
        from redis.backoff import ExponentialBackoff
        from redis.retry import Retry
        self._retry = Retry(ExponentialBackoff(cap=0.5, base=0.05), 2)
        return redis.Redis.from_url(
            self.url, socket_timeout=self._socketTimeout,
            socket_connect_timeout=self._connectTimeout, retry=self._retry)

    def _openInThread(self) -> List[StoredJob]:
        import redis
        try:
            self._client = client = self._makeClient()
            client.ping()
            meta = client.hgetall(self._metaKey)
            if not meta:
                if client.exists(self._jobsKey, self._orderKey):
                    raise StoreSchemaError(
                        f"{self.description}: keys exist without {self._metaKey!r}: not a txgear "
                        f"queue; left untouched")
                client.hset(self._metaKey, mapping={b"schema": SCHEMA_NAME,
                                                    b"version": str(SCHEMA_VERSION).encode()})
            migrate = meta.get(b"schema") == SCHEMA_NAME and meta.get(b"version") in MIGRATED_VERSIONS
            if meta and not migrate and (meta.get(b"schema") != SCHEMA_NAME
                                         or meta.get(b"version") != str(SCHEMA_VERSION).encode()):
                raise StoreSchemaError(
                    f"{self.description}: the queue has schema {meta.get(b'schema')!r} version "
                    f"{meta.get(b'version')!r}, this txgear reads {SCHEMA_NAME!r} version "
                    f"{SCHEMA_VERSION}; left untouched")
            self._checkPersistence(client)
            order = client.zrange(self._orderKey, 0, -1, withscores=True)
            jobs: List[StoredJob] = []
            for start in range(0, len(order), _CHUNK):
                chunk = order[start:start + _CHUNK]
                members = [member for member, _ in chunk]
                for (member, score), data in zip(chunk, client.hmget(self._jobsKey, members)):
                    if data is None:
                        raise StoreSchemaError(f"{self.description}: job {member!r} is in "
                                               f"{self._orderKey!r} but has no record")
                    priority, key = divmod(int(score), _PRIORITY_STEP)
                    if member != b"%d" % key:
                        raise StoreSchemaError(f"{self.description}: job {member!r} has the "
                                               f"score {score} of key {key}")
                    jobs.append(unpackRecord(key, priority, data))
            if migrate:
                # Only once every record was read: a store refused is left as it was.
                client.hset(self._metaKey, b"version", str(SCHEMA_VERSION).encode())
                self._reactor.callFromThread(
                    self._log.info, "Job store {store}: schema migrated to version {version}",
                    store=self.description, version=SCHEMA_VERSION)
            return jobs
        except StoreSchemaError as e:
            if str(e).startswith(self.description):
                raise
            raise StoreSchemaError(f"{self.description}: {e}; left untouched") from e
        except redis.ResponseError as e:
            if "WRONGTYPE" in str(e):
                raise StoreSchemaError(f"{self.description}: {e}; left untouched") from e
            raise StoreError(f"{self.description}: {e}") from e
        except redis.RedisError as e:
            raise StoreError(f"{self.description}: {e.__class__.__name__}: {e}") from e

    def _checkPersistence(self, client: Any) -> None:
        import redis
        try:
            info = client.info("persistence")
        except redis.ResponseError:
            return
        if not info.get("aof_enabled"):
            self._warning = ("Redis append-only file is off: jobs survive a crash of the job "
                             "server, not a crash of Redis (set appendonly yes)")

    def _opened(self, jobs: List[StoredJob]) -> List[StoredJob]:
        if self._warning:
            self._log.warn("{store}: {warning}", store=self.description, warning=self._warning)
        return ThreadedBatchStore._opened(self, jobs)

    def _writeInThread(self, operations: List[Operation]) -> None:
        import redis
        operations, dead, kept = splitFinished(operations)
        records, removed = collapse(operations)
        jobsKey, orderKey = self._jobsKey, self._orderKey
        commands: List[bytes] = []
        for start in range(0, len(removed), _CHUNK):
            members = [b"%d" % key for key in removed[start:start + _CHUNK]]
            commands.append(_command(b"HDEL", jobsKey, *members))
            commands.append(_command(b"ZREM", orderKey, *members))
        for start in range(0, len(records), _CHUNK):
            problem = _addCommands(jobsKey, orderKey, records[start:start + _CHUNK], commands)
            if problem is not None:
                raise StoreError(f"{self.description}: {problem}")
        _indexedCommands(commands, dead, self._deadKey, _packDead, self._deadPayloadKey,
                         lambda d: d.payload, self._deadOrderKey, lambda d: d.diedAt)
        _indexedCommands(commands, kept, self._keptKey, _packKept, self._keptResultKey,
                         lambda k: k.result, self._keptExpiryKey, lambda k: k.expiresAt)
        if not commands:
            return
        try:
            self._transaction(commands)
        except redis.RedisError as e:
            raise StoreError(f"{self.description}: {e.__class__.__name__}: {e}") from e

    def _transaction(self, commands: List[bytes]) -> None:
        """
        Send C{commands} (encoded) as one C{MULTI}/C{EXEC} on the batch
        connection and check every reply; a lost connection is retried as
        the client's own commands are (the transaction then applies once:
        Redis runs none of it before C{EXEC}).

        @raise redis.RedisError: if Redis refused a command, or could not be
            reached.
        """
        import redis
        if self._writer is None:
            pool = self._client.connection_pool
            self._writer = pool.connection_class(**pool.connection_kwargs)
        writer = self._writer
        data = b"".join([_MULTI, *commands, _EXEC])

        def send() -> Any:
            try:
                writer.send_packed_command([data], check_health=False)
                for _ in range(len(commands) + 1):  # MULTI's OK, then QUEUED each
                    writer.read_response()
                return writer.read_response()
            except BaseException:
                # Replies may be left unread: never reuse this connection as it is.
                writer.disconnect()
                raise

        results = self._retry.call_with_retry(send, lambda error: writer.disconnect())
        if not isinstance(results, list):
            raise redis.ResponseError(f"EXEC answered {results!r}")
        for result in results:
            if isinstance(result, Exception):
                raise result

    def _closeInThread(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.disconnect()
        client, self._client = self._client, None
        if client is not None:
            client.close()

    # The dead set, in the store's thread -------------------------------------

    def _listDeadInThread(self, function: Optional[bytes],
                          limit: Optional[int]) -> List[DeadJob]:
        import redis
        try:
            listed: List[DeadJob] = []
            for member, data in self._records(self._deadOrderKey, self._deadKey, "dead job"):
                entry = _unpackDead(int(member), data)
                if function is None or entry.function == function:
                    listed.append(entry)
        except redis.RedisError as e:
            raise StoreError(f"{self.description}: {e.__class__.__name__}: {e}") from e
        listed.sort(key=lambda d: (-d.diedAt, -d.key))
        return listed if limit is None else listed[:limit]

    def _retryDeadInThread(self, keys: List[int]) -> List[StoredJob]:
        import redis
        members = [b"%d" % key for key in keys]
        revived: List[StoredJob] = []
        try:
            pipe = self._client.pipeline(transaction=True)
            for start in range(0, len(members), _CHUNK):
                chunk = members[start:start + _CHUNK]
                infos = self._client.hmget(self._deadKey, chunk)
                payloads = self._client.hmget(self._deadPayloadKey, chunk)
                found = []
                for member, data, payload in zip(chunk, infos, payloads):
                    if data is None:
                        continue
                    entry = _unpackDead(int(member), data)
                    entry.payload = payload or b""
                    job = entry.revived()
                    revived.append(job)
                    found.append(member)
                    pipe.hset(self._jobsKey, member, packRecord(
                        (job.key, job.priority, job.function, job.unique, job.payload, 0,
                         job.reducer, job.clientId, 0, 0, b"")))
                    pipe.zadd(self._orderKey, {member: job.priority * _PRIORITY_STEP + job.key})
                if found:
                    pipe.hdel(self._deadKey, *found)
                    pipe.hdel(self._deadPayloadKey, *found)
                    pipe.zrem(self._deadOrderKey, *found)
            if len(pipe):
                pipe.execute()
        except redis.RedisError as e:
            raise StoreError(f"{self.description}: {e.__class__.__name__}: {e}") from e
        return revived

    def _purgeDeadInThread(self, keys: List[int]) -> int:
        return self._deleteMembers([b"%d" % key for key in keys], self._deadKey,
                                   self._deadPayloadKey, self._deadOrderKey)

    def _countDeadInThread(self) -> int:
        import redis
        try:
            return int(self._client.zcard(self._deadOrderKey))
        except redis.RedisError as e:
            raise StoreError(f"{self.description}: {e.__class__.__name__}: {e}") from e

    # Kept results, in the store's thread ---------------------------------------

    def _listKeptInThread(self, limit: Optional[int]) -> List[KeptResult]:
        import redis
        try:
            listed = [_unpackKept(int(member), data, b"") for member, data
                      in self._records(self._keptExpiryKey, self._keptKey, "kept result")]
        except redis.RedisError as e:
            raise StoreError(f"{self.description}: {e.__class__.__name__}: {e}") from e
        listed.sort(key=lambda k: (-k.finishedAt, -k.key))
        return listed if limit is None else listed[:limit]

    def _getKeptInThread(self, key: int) -> Optional[KeptResult]:
        import redis
        member = b"%d" % key
        try:
            pipe = self._client.pipeline(transaction=True)
            pipe.hget(self._keptKey, member)
            pipe.hget(self._keptResultKey, member)
            data, result = pipe.execute()
        except redis.RedisError as e:
            raise StoreError(f"{self.description}: {e.__class__.__name__}: {e}") from e
        return None if data is None else _unpackKept(key, data, result or b"")

    def _expireKeptInThread(self, now: int) -> int:
        import redis
        try:
            members = self._client.zrangebyscore(self._keptExpiryKey, "-inf", now)
        except redis.RedisError as e:
            raise StoreError(f"{self.description}: {e.__class__.__name__}: {e}") from e
        return self._deleteKept(members)

    def _purgeKeptInThread(self, keys: List[int]) -> int:
        return self._deleteKept([b"%d" % key for key in keys])

    def _deleteKept(self, members: List[bytes]) -> int:
        return self._deleteMembers(members, self._keptKey, self._keptResultKey,
                                   self._keptExpiryKey)

    def _records(self, orderKey: bytes, recordKey: bytes,
                 what: str) -> Iterator[Tuple[bytes, bytes]]:
        """Each member of a sorted set with its record from a hash, read in chunks."""
        members = self._client.zrange(orderKey, 0, -1)
        for start in range(0, len(members), _CHUNK):
            chunk = members[start:start + _CHUNK]
            for member, data in zip(chunk, self._client.hmget(recordKey, chunk)):
                if data is None:
                    raise StoreSchemaError(f"{self.description}: {what} {member!r} has no "
                                           f"record")
                yield member, data

    def _deleteMembers(self, members: List[bytes], recordKey: bytes, bytesKey: bytes,
                       orderKey: bytes) -> int:
        """
        Delete C{members} from a record hash, its bytes hash and its sorted
        set, in one transaction; how many records there were.
        """
        import redis
        count = 0
        try:
            pipe = self._client.pipeline(transaction=True)
            for start in range(0, len(members), _CHUNK):
                chunk = members[start:start + _CHUNK]
                pipe.hdel(recordKey, *chunk)
                pipe.hdel(bytesKey, *chunk)
                pipe.zrem(orderKey, *chunk)
            if len(pipe):
                count = sum(pipe.execute()[0::3])
        except redis.RedisError as e:
            raise StoreError(f"{self.description}: {e.__class__.__name__}: {e}") from e
        return count

def _indexedCommands(commands: List[bytes], items: List[Any], recordKey: bytes,
                     pack: Callable[[Any], bytes], bytesKey: bytes, bytesOf: Callable[[Any], bytes],
                     orderKey: bytes, scoreOf: Callable[[Any], int]) -> None:
    """
    The commands that write C{items} (dead jobs, kept results) by key: the
    packed record in one hash, the bytes in another, the key in a sorted set
    by C{scoreOf}; in chunks.
    """
    for start in range(0, len(items), _CHUNK):
        chunk = items[start:start + _CHUNK]
        commands.append(_command(b"HSET", recordKey, *_pairs(
            (b"%d" % item.key, pack(item)) for item in chunk)))
        commands.append(_command(b"HSET", bytesKey, *_pairs(
            (b"%d" % item.key, bytesOf(item)) for item in chunk)))
        commands.append(_command(b"ZADD", orderKey, *_pairs(
            (b"%d" % scoreOf(item), b"%d" % item.key) for item in chunk)))


def _command(*args: bytes) -> bytes:
    """One Redis command in the protocol's encoding (RESP): an array of bulk strings."""
    return b"*%d\r\n" % len(args) + b"".join([b"$%d\r\n%b\r\n" % (len(arg), arg) for arg in args])


def _pairs(pairs: Iterator[Tuple[bytes, bytes]]) -> List[bytes]:
    """C{[(a, b), (c, d)]} flattened to C{[a, b, c, d]}."""
    return [item for pair in pairs for item in pair]


def _addCommands(jobsKey: bytes, orderKey: bytes, records: List[Record],
                 commands: List[bytes]) -> Optional[str]:
    """
    Append to C{commands} the C{HSET} of C{records}' packed values and the
    C{ZADD} of their scores, each record packed (as L{packRecord} does) and
    framed in one pass.

    @return: why a record cannot be stored (its key or priority out of
        range), or C{None}.
    """
    pack = RECORD_HEADER.pack
    headerSize = RECORD_HEADER.size
    step = _PRIORITY_STEP
    values: List[bytes] = [b"*%d\r\n$4\r\nHSET\r\n$%d\r\n%b\r\n"
                           % (2 + 2 * len(records), len(jobsKey), jobsKey)]
    scores: List[bytes] = [b"*%d\r\n$4\r\nZADD\r\n$%d\r\n%b\r\n"
                           % (2 + 2 * len(records), len(orderKey), orderKey)]
    extend = values.extend
    append = scores.append
    # A key twice among the records: Redis applies the pairs in order, so the
    # later record and score replace the earlier.
    for (key, priority, function, unique, payload, when, reducer, clientId, attempts, retryAt,
         lastError) in records:
        if not (0 < key < step and 0 <= priority <= _MAX_PRIORITY):
            return f"job key {key} or priority {priority} out of range"
        member = b"%d" % key
        score = b"%d" % (priority * step + key)
        functionSize = len(function)
        uniqueSize = len(unique)
        reducerSize = len(reducer)
        clientIdSize = len(clientId)
        errorSize = len(lastError)
        payloadSize = len(payload)
        extend((b"$%d\r\n%b\r\n$%d\r\n" % (
                    len(member), member, headerSize + functionSize + uniqueSize + reducerSize
                    + clientIdSize + errorSize + payloadSize),
                pack(FORMAT_VERSION, when, retryAt, attempts, functionSize, uniqueSize,
                     reducerSize, clientIdSize, errorSize, payloadSize),
                function, unique, reducer, clientId, lastError, payload, b"\r\n"))
        append(b"$%d\r\n%b\r\n$%d\r\n%b\r\n" % (len(score), score, len(member), member))
    commands.append(b"".join(values))
    commands.append(b"".join(scores))
    return None


def _packKept(kept: KeptResult) -> bytes:
    """A kept result's record without its bytes (see the module docstring)."""
    return _KEPT_HEADER.pack(kept.finishedAt, kept.expiresAt, kept.size,
                             KEPT_STATUSES.index(kept.status), int(kept.kept),
                             len(kept.function)) + kept.function + kept.unique


def _unpackKept(key: int, data: bytes, result: bytes) -> KeptResult:
    if len(data) < _KEPT_HEADER.size:
        raise StoreSchemaError(f"kept result {key}: truncated record ({len(data)} bytes)")
    finishedAt, expiresAt, size, status, kept, length = _KEPT_HEADER.unpack_from(data)
    if status >= len(KEPT_STATUSES) or _KEPT_HEADER.size + length > len(data):
        raise StoreSchemaError(f"kept result {key}: bad record")
    rest = data[_KEPT_HEADER.size:]
    return KeptResult(key, rest[:length], rest[length:], KEPT_STATUSES[status], result,
                      finishedAt, expiresAt, bool(kept), size)


def _packDead(dead: DeadJob) -> bytes:
    """A dead job's record without its payload (see the module docstring)."""
    return _DEAD_HEADER.pack(dead.diedAt, dead.payloadSize, dead.priority) + packRecord(
        (dead.key, dead.priority, dead.function, dead.unique, b"", 0, dead.reducer,
         dead.clientId, dead.attempts, 0, dead.lastError))


def _unpackDead(key: int, data: bytes) -> DeadJob:
    if len(data) < _DEAD_HEADER.size:
        raise StoreSchemaError(f"dead job {key}: truncated record ({len(data)} bytes)")
    diedAt, size, priority = _DEAD_HEADER.unpack_from(data)
    job = unpackRecord(key, priority, data[_DEAD_HEADER.size:])
    return DeadJob(key, job.function, job.unique, b"", priority, job.reducer, job.clientId,
                   job.attempts, job.lastError, diedAt, size)


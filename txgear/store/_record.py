# -*- test-case-name: tests.test_store_record -*-
"""
The records stores write, and the binary format that packs a job's fields
into one string for the stores that keep one value per job (SQLite, Redis).

A L{Record} is the snapshot of a job the batching machinery takes on the
reactor thread: C{(key, priority, function, unique, payload, when, reducer,
clientId, attempts, retryAt, lastError)}. The key and the priority stay
outside the packed value (the stores keep them in their own columns or
scores, to find and order jobs); the other fields are packed by
L{packRecord}.

Packed format, version 2 (all integers big-endian)::

    offset  size  field
    0       1     format version: 2
    1       8     when (signed 64-bit; 0 when not scheduled)
    9       8     retryAt (signed 64-bit, Unix milliseconds; 0 when not waiting for a retry)
    17      4     attempts (unsigned 32-bit)
    21      4     length F of function    (unsigned 32-bit)
    25      4     length U of unique
    29      4     length R of reducer
    33      4     length C of clientId
    37      4     length E of lastError
    41      4     length P of payload
    45      F     function
    45+F    U     unique
    ...     R     reducer
    ...     C     clientId
    ...     E     lastError
    ...     P     payload (last: the large field)

Version 1 (written before retry policies; still read, as attempts 0, no
retry time and no last error) has a 29-byte header: version, when, then the
lengths of function, unique, reducer, clientId and payload, then those
fields in that order.

The header's lengths must add up to the value's length exactly; anything else
(another version byte, a truncated or padded value) is refused with
L{StoreSchemaError}. A future format takes the next version byte; readers
keep decoding the older ones.

Batches, for the stores that write one value per batch (SQLite's log). An
adds batch is its records back to back, each framed as::

    offset  size  field
    0       8     key (unsigned 64-bit)
    8       1     priority (unsigned 8-bit)
    9       4     length L of the packed record (unsigned 32-bit)
    13      L     the record, packed as above

(L{packBatch}, L{unpackBatch}); a removes batch is the removed keys back to
back, 8 bytes each, unsigned (L{packKeys}, L{unpackKeys}). A batch that
does not end exactly at its last entry's end, or holds a record that does
not decode, is refused with L{StoreSchemaError} naming the log row.
"""
from __future__ import annotations

import struct
from typing import Any, Iterator, List, Optional, Sequence, Tuple

from txgear.errors import StoreSchemaError
from txgear.jobs import StoredJob

#: One stored job as the writers see it: (key, priority, function, unique,
#: payload, when, reducer, clientId, attempts, retryAt, lastError).
Record = Tuple[int, int, bytes, bytes, bytes, int, bytes, bytes, int, int, bytes]

#: The version byte L{packRecord} writes.
FORMAT_VERSION = 2

_HEADER = struct.Struct(">BqqIIIIIII")
_HEADER_V1 = struct.Struct(">BqIIIII")

#: The fixed header in front of a packed record's fields, for writers that
#: pack records inline (see L{packRecord}).
RECORD_HEADER = _HEADER

#: The size of the fixed header in front of the fields.
HEADER_SIZE = _HEADER.size
HEADER_SIZE_V1 = _HEADER_V1.size

#: A batch entry's frame (key, priority, record length), then the record's
#: own header: packed together, in one call per record.
_ENTRY = struct.Struct(">QBI")
_ENTRY_AND_HEADER = struct.Struct(">QBIBqqIIIIIII")

#: The size of an adds batch entry's frame, in front of the packed record.
ENTRY_HEADER_SIZE = _ENTRY.size

_MINIMUM_ENTRY = ENTRY_HEADER_SIZE + HEADER_SIZE


def recordOf(job: Any) -> Record:
    """The L{Record} of any object with the attributes of L{StoredJob}."""
    return (job.key, job.priority, job.function, job.unique, job.payload, job.when, job.reducer,
            job.clientId, job.attempts, job.retryAt, job.lastError)


def packRecord(record: Record) -> bytes:
    """
    Pack the fields of C{record} other than its key and priority (see the
    module docstring for the format).

    @param record: a L{Record}.
    @return: the packed value.
    @raise struct.error: if a field does not fit its header slot (a field of
        4 GiB or more, a C{when} outside 64 bits).
    """
    (_, _, function, unique, payload, when, reducer, clientId, attempts, retryAt,
     lastError) = record
    return b"".join((_HEADER.pack(FORMAT_VERSION, when, retryAt, attempts, len(function),
                                  len(unique), len(reducer), len(clientId), len(lastError),
                                  len(payload)),
                     function, unique, reducer, clientId, lastError, payload))


def packRecordV1(record: Record) -> bytes:
    """
    Pack C{record} in format 1, as txgear did before retry policies
    (attempts, retry time and last error are not kept): for tests of
    stores written then.
    """
    _, _, function, unique, payload, when, reducer, clientId = record[:8]
    return b"".join((_HEADER_V1.pack(1, when, len(function), len(unique), len(reducer),
                                     len(clientId), len(payload)),
                     function, unique, reducer, clientId, payload))


def packedRows(records: List[Record]) -> List[Tuple[int, int, bytes]]:
    """
    L{packRecord} over many records, inlined.

    @return: C{(key, priority, packed)} for each record, in order.
    """
    pack = _HEADER.pack
    return [(key, int(priority), pack(FORMAT_VERSION, when, retryAt, attempts, len(function),
                                      len(unique), len(reducer), len(clientId), len(lastError),
                                      len(payload))
             + function + unique + reducer + clientId + lastError + payload)
            for (key, priority, function, unique, payload, when, reducer, clientId, attempts,
                 retryAt, lastError) in records]


def unpackRecord(key: int, priority: int, data: Any) -> StoredJob:
    """
    Decode what L{packRecord} made (format 2, or format 1).

    @param key: the job's key, stored beside the value.
    @param priority: the job's priority, stored beside the value.
    @param data: the packed value (C{bytes}, or a buffer such as a
        C{memoryview}).
    @return: the job, with C{bytes} fields.
    @raise StoreSchemaError: if C{data} is not a value of a known format.
    """
    if type(data) is not bytes:
        if isinstance(data, str):
            raise StoreSchemaError(f"job {key}: the record is text, not binary")
        data = bytes(data)
    if data[:1] == b"\x01":
        return _unpackV1(key, priority, data)
    if len(data) < HEADER_SIZE:
        raise StoreSchemaError(f"job {key}: truncated record ({len(data)} bytes)")
    (version, when, retryAt, attempts, functionSize, uniqueSize, reducerSize, clientIdSize,
     errorSize, payloadSize) = _HEADER.unpack_from(data)
    if version != FORMAT_VERSION:
        raise StoreSchemaError(f"job {key}: record format {version} is unknown "
                               f"(this txgear reads formats 1 and {FORMAT_VERSION})")
    end1 = HEADER_SIZE + functionSize
    end2 = end1 + uniqueSize
    end3 = end2 + reducerSize
    end4 = end3 + clientIdSize
    end5 = end4 + errorSize
    if end5 + payloadSize != len(data):
        raise StoreSchemaError(f"job {key}: record of {len(data)} bytes does not match its header")
    return StoredJob(key, data[HEADER_SIZE:end1], data[end1:end2], data[end5:], priority, when,
                     data[end2:end3], data[end3:end4], attempts, retryAt, data[end4:end5])


def _unpackV1(key: int, priority: int, data: bytes) -> StoredJob:
    if len(data) < HEADER_SIZE_V1:
        raise StoreSchemaError(f"job {key}: truncated record ({len(data)} bytes)")
    _, when, functionSize, uniqueSize, reducerSize, clientIdSize, payloadSize = (
        _HEADER_V1.unpack_from(data))
    end1 = HEADER_SIZE_V1 + functionSize
    end2 = end1 + uniqueSize
    end3 = end2 + reducerSize
    end4 = end3 + clientIdSize
    if end4 + payloadSize != len(data):
        raise StoreSchemaError(f"job {key}: record of {len(data)} bytes does not match its header")
    return StoredJob(key, data[HEADER_SIZE_V1:end1], data[end1:end2], data[end4:], priority, when,
                     data[end2:end3], data[end3:end4])


#: The run times every store can hold: a signed 64-bit number, not negative.
MAX_WHEN = 2 ** 63 - 1


def recordsProblem(records: Sequence[Record]) -> Optional[str]:
    """
    Why some record of C{records} cannot be stored (every store keeps the run
    time as a signed 64-bit number), or C{None}. Checked before a batch is
    written, so that one such record fails only its own write.
    """
    if not records:
        return None
    whens = [record[5] for record in records]
    low, high = min(whens), max(whens)
    if low < 0 or high > MAX_WHEN:
        return f"run time {low if low < 0 else high} out of range (0 to {MAX_WHEN})"
    return None


def collapse(operations: List[Tuple[bool, Any]]) -> Tuple[List[Record], List[int]]:
    """
    Reduce a batch of writes to what it leaves behind: the records to store
    and the keys to delete, two disjoint sets that can be written in either
    order. The last write of a key decides (add, remove, add leaves it
    stored; add, remove leaves it gone).

    @param operations: C{(True, records)} for an C{add}/C{addMany}, C{(False,
        key)} for a C{remove}, in the order they were issued.
    @return: C{(records, keys)}. When the batch holds no remove, C{records}
        is every record in order and may name a key twice (the later record
        must win); otherwise each key appears once, in one of the two lists.
    """
    for isAdd, _ in operations:
        if not isAdd:
            break
    else:
        if len(operations) == 1:
            return operations[0][1], []
        return [record for _, records in operations for record in records], []
    final: dict = {}
    for isAdd, items in operations:
        if isAdd:
            for record in items:
                final[record[0]] = record
        else:
            final[items] = None
    records = [record for record in final.values() if record is not None]
    keys = [key for key, record in final.items() if record is None]
    return records, keys


def lastOfEachKey(records: List[Record]) -> List[Record]:
    """
    Drop all but the last record of each key, for writers that cannot store
    one key twice in one statement.
    """
    if len({record[0] for record in records}) == len(records):
        return records
    return list({record[0]: record for record in records}.values())


def packBatch(records: Sequence[Record]) -> bytes:
    """
    Pack C{records} as one adds batch (see the module docstring): each one's
    key, priority and length, then its L{packRecord} bytes, back to back.

    @param records: L{Record}s, in the order they are to be replayed (a key
        given twice: the later record wins).
    @return: the batch.
    @raise struct.error: if a value does not fit its slot (a key outside
        unsigned 64 bits, a priority outside 0-255, a field of 4 GiB or more,
        a C{when} outside signed 64 bits).
    """
    # The hot path of a burst of submits: one pack call per record and one
    # join; a flat list of parts beats concatenating each record's parts.
    pack = _ENTRY_AND_HEADER.pack
    parts: List[bytes] = []
    extend = parts.extend
    for (key, priority, function, unique, payload, when, reducer, clientId, attempts, retryAt,
         lastError) in records:
        functionSize = len(function)
        uniqueSize = len(unique)
        reducerSize = len(reducer)
        clientIdSize = len(clientId)
        errorSize = len(lastError)
        payloadSize = len(payload)
        extend((pack(key, priority,
                     HEADER_SIZE + functionSize + uniqueSize + reducerSize + clientIdSize
                     + errorSize + payloadSize,
                     FORMAT_VERSION, when, retryAt, attempts, functionSize, uniqueSize,
                     reducerSize, clientIdSize, errorSize, payloadSize),
                function, unique, reducer, clientId, lastError, payload))
    return b"".join(parts)


def packBatches(records: Sequence[Record], maxRecords: int, maxBytes: int) -> Iterator[bytes]:
    """
    Pack C{records} as consecutive adds batches of at most C{maxRecords}
    records and, unless one record alone is larger, at most about
    C{maxBytes} bytes each.

    @return: the batches, in order (none for no records).
    """
    start = 0
    count = len(records)
    while start < count:
        end = start
        size = 0
        while end < count and end - start < maxRecords:
            record = records[end]
            size += (_MINIMUM_ENTRY + len(record[2]) + len(record[3]) + len(record[4])
                     + len(record[6]) + len(record[7]) + len(record[10]))
            if size > maxBytes and end > start:
                break
            end += 1
        yield packBatch(records[start:end])
        start = end


def _binary(seq: int, data: Any) -> bytes:
    if type(data) is bytes:
        return data
    if isinstance(data, (bytearray, memoryview)):
        return bytes(data)
    raise StoreSchemaError(f"log row {seq}: the batch is {type(data).__name__}, not binary")


def unpackBatch(seq: int, data: Any) -> List[StoredJob]:
    """
    Decode an adds batch made by L{packBatch} (records of format 2, or of
    format 1 as written before retry policies).

    @param seq: the batch's position in its log, for error messages.
    @param data: the batch (C{bytes}, or a buffer such as a C{memoryview}).
    @return: its jobs, in order (a key may appear twice: the later wins).
    @raise StoreSchemaError: if C{data} is truncated, padded or holds a
        record that does not decode; the message names C{seq}, and the job's
        key when it is known.
    """
    data = _binary(seq, data)
    size = len(data)
    unpack = _ENTRY_AND_HEADER.unpack_from
    jobs: List[StoredJob] = []
    append = jobs.append
    offset = 0
    while offset < size:
        if size - offset < ENTRY_HEADER_SIZE + HEADER_SIZE_V1:
            _refuseShortEntry(seq, data, offset)
        start = offset + ENTRY_HEADER_SIZE
        if data[start] == 1:
            key, priority, length = _ENTRY.unpack_from(data, offset)
            end = start + length
            if end > size:
                raise StoreSchemaError(f"log row {seq}: job {key}: truncated entry at offset "
                                       f"{offset} ({length} bytes announced, {size - start} left)")
            try:
                append(_unpackV1(key, priority, data[start:end]))
            except StoreSchemaError as e:
                raise StoreSchemaError(f"log row {seq}: {e}") from e
            offset = end
            continue
        if size - offset < _MINIMUM_ENTRY:
            _refuseShortEntry(seq, data, offset)
        (key, priority, length, version, when, retryAt, attempts, functionSize, uniqueSize,
         reducerSize, clientIdSize, errorSize, payloadSize) = unpack(data, offset)
        end = start + length
        if end > size:
            raise StoreSchemaError(f"log row {seq}: job {key}: truncated entry at offset {offset} "
                                   f"({length} bytes announced, {size - start} left)")
        if length < HEADER_SIZE:
            raise StoreSchemaError(f"log row {seq}: job {key}: truncated record ({length} bytes)")
        if version != FORMAT_VERSION:
            raise StoreSchemaError(f"log row {seq}: job {key}: record format {version} is unknown "
                                   f"(this txgear reads formats 1 and {FORMAT_VERSION})")
        end1 = start + HEADER_SIZE + functionSize
        end2 = end1 + uniqueSize
        end3 = end2 + reducerSize
        end4 = end3 + clientIdSize
        end5 = end4 + errorSize
        if end5 + payloadSize != end:
            raise StoreSchemaError(f"log row {seq}: job {key}: record of {length} bytes does not "
                                   f"match its header")
        append(StoredJob(key, data[start + HEADER_SIZE:end1], data[end1:end2], data[end5:end],
                         priority, when, data[end2:end3], data[end3:end4], attempts, retryAt,
                         data[end4:end5]))
        offset = end
    return jobs


def _refuseShortEntry(seq: int, data: bytes, offset: int) -> None:
    left = len(data) - offset
    if left < ENTRY_HEADER_SIZE:
        raise StoreSchemaError(f"log row {seq}: truncated entry at offset {offset} "
                               f"({left} bytes left)")
    key, _, length = _ENTRY.unpack_from(data, offset)
    version = data[offset + ENTRY_HEADER_SIZE] if left > ENTRY_HEADER_SIZE else FORMAT_VERSION
    if length < HEADER_SIZE_V1 or (length < HEADER_SIZE and version != 1):
        raise StoreSchemaError(f"log row {seq}: job {key}: truncated record ({length} bytes)")
    raise StoreSchemaError(f"log row {seq}: job {key}: truncated entry at offset {offset} "
                           f"({length} bytes announced, {left - ENTRY_HEADER_SIZE} left)")


def packKeys(keys: Sequence[int]) -> bytes:
    """
    Pack C{keys} as one removes batch: 8 bytes each, big-endian, unsigned.

    @raise struct.error: if a key is outside unsigned 64 bits.
    """
    return struct.pack(f">{len(keys)}Q", *keys)


def unpackKeys(seq: int, data: Any) -> Tuple[int, ...]:
    """
    Decode what L{packKeys} made.

    @param seq: the batch's position in its log, for error messages.
    @raise StoreSchemaError: if C{data} is not a whole number of keys.
    """
    data = _binary(seq, data)
    if len(data) % 8:
        raise StoreSchemaError(f"log row {seq}: a removes batch of {len(data)} bytes is not a "
                               f"whole number of 8-byte keys")
    return struct.unpack(f">{len(data) // 8}Q", data)

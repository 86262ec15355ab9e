# -*- test-case-name: tests.test_store_record -*-
"""
The records stores write, and the binary format that packs a job's fields
into one string for the stores that keep one value per job (SQLite, Redis).

A L{Record} is the snapshot of a job the batching machinery takes on the
reactor thread: C{(key, priority, function, unique, payload, when, reducer,
clientId)}. The key and the priority stay outside the packed value (the
stores keep them in their own columns or scores, to find and order jobs); the
other six fields are packed by L{packRecord}.

Packed format, version 1 (all integers big-endian)::

    offset  size  field
    0       1     format version: 1
    1       8     when (signed 64-bit; 0 when not scheduled)
    9       4     length F of function    (unsigned 32-bit)
    13      4     length U of unique
    17      4     length R of reducer
    21      4     length C of clientId
    25      4     length P of payload
    29      F     function
    29+F    U     unique
    ...     R     reducer
    ...     C     clientId
    ...     P     payload (last: the large field)

The header's lengths must add up to the value's length exactly; anything else
(another version byte, a truncated or padded value) is refused with
L{StoreSchemaError}. A future format takes the next version byte; readers
keep decoding the older ones.
"""
from __future__ import annotations

import struct
from typing import Any, List, Tuple

from txgear.errors import StoreSchemaError
from txgear.jobs import StoredJob

#: One stored job as the writers see it: (key, priority, function, unique,
#: payload, when, reducer, clientId).
Record = Tuple[int, int, bytes, bytes, bytes, int, bytes, bytes]

#: The version byte L{packRecord} writes.
FORMAT_VERSION = 1

_HEADER = struct.Struct(">BqIIIII")

#: The size of the fixed header in front of the fields.
HEADER_SIZE = _HEADER.size


def packRecord(record: Record) -> bytes:
    """
    Pack the fields of C{record} other than its key and priority (see the
    module docstring for the format).

    @param record: a L{Record}.
    @return: the packed value.
    @raise struct.error: if a field does not fit its header slot (a field of
        4 GiB or more, a C{when} outside 64 bits).
    """
    _, _, function, unique, payload, when, reducer, clientId = record
    return b"".join((_HEADER.pack(FORMAT_VERSION, when, len(function), len(unique), len(reducer),
                                  len(clientId), len(payload)),
                     function, unique, reducer, clientId, payload))


def packedRows(records: List[Record]) -> List[Tuple[int, int, bytes]]:
    """
    L{packRecord} over many records, inlined (a third faster).

    @return: C{(key, priority, packed)} for each record, in order.
    """
    pack = _HEADER.pack
    return [(key, int(priority), pack(FORMAT_VERSION, when, len(function), len(unique),
                                      len(reducer), len(clientId), len(payload))
             + function + unique + reducer + clientId + payload)
            for key, priority, function, unique, payload, when, reducer, clientId in records]


def unpackRecord(key: int, priority: int, data: Any) -> StoredJob:
    """
    Decode what L{packRecord} made.

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
    if len(data) < HEADER_SIZE:
        raise StoreSchemaError(f"job {key}: truncated record ({len(data)} bytes)")
    version, when, functionSize, uniqueSize, reducerSize, clientIdSize, payloadSize = (
        _HEADER.unpack_from(data))
    if version != FORMAT_VERSION:
        raise StoreSchemaError(f"job {key}: record format {version} is unknown "
                               f"(this txgear reads format {FORMAT_VERSION})")
    end1 = HEADER_SIZE + functionSize
    end2 = end1 + uniqueSize
    end3 = end2 + reducerSize
    end4 = end3 + clientIdSize
    if end4 + payloadSize != len(data):
        raise StoreSchemaError(f"job {key}: record of {len(data)} bytes does not match its header")
    return StoredJob(key, data[HEADER_SIZE:end1], data[end1:end2], data[end4:], priority, when,
                     data[end2:end3], data[end3:end4])


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

"""
The packed record format of L{txgear.store._record}, its batch framing (the
SQLite log's rows) and the batch reduction the stores share.
"""
from __future__ import annotations

import os
import struct

import pytest

from txgear.errors import StoreSchemaError
from txgear.jobs import Priority, StoredJob
from txgear.store._record import (ENTRY_HEADER_SIZE, FORMAT_VERSION, HEADER_SIZE, collapse,
                                  lastOfEachKey, packBatch, packBatches, packKeys, packRecord,
                                  packRecordV1, packedRows, unpackBatch, unpackKeys,
                                  unpackRecord)


def record(key: int = 1, priority: int = Priority.NORMAL, function: bytes = b"f",
           unique: bytes = b"u", payload: bytes = b"p", when: int = 0, reducer: bytes = b"",
           clientId: bytes = b"", attempts: int = 0, retryAt: int = 0,
           lastError: bytes = b"") -> tuple:
    return (key, priority, function, unique, payload, when, reducer, clientId, attempts, retryAt,
            lastError)


def roundTrip(r: tuple) -> StoredJob:
    return unpackRecord(r[0], r[1], packRecord(r))


def test_knownBytes() -> None:
    """The layout is fixed: a golden value, field by field."""
    packed = packRecord(record(7, Priority.HIGH, b"fn", b"uq", b"DATA", 258, b"r", b"cid", 3,
                               1700000000123, b"boom"))
    assert packed == (b"\x02"                               # format version
                      + b"\x00\x00\x00\x00\x00\x00\x01\x02"  # when = 258
                      + (1700000000123).to_bytes(8, "big")   # retryAt (ms)
                      + b"\x00\x00\x00\x03"                  # attempts
                      + b"\x00\x00\x00\x02"                  # len(function)
                      + b"\x00\x00\x00\x02"                  # len(unique)
                      + b"\x00\x00\x00\x01"                  # len(reducer)
                      + b"\x00\x00\x00\x03"                  # len(clientId)
                      + b"\x00\x00\x00\x04"                  # len(lastError)
                      + b"\x00\x00\x00\x04"                  # len(payload)
                      + b"fnuqrcidboomDATA")
    assert HEADER_SIZE == 45 and FORMAT_VERSION == 2


def test_formatOneIsStillRead() -> None:
    """
    Records written before retry policies (format 1, a golden value) read
    as jobs with no attempts, retry time or last error, in records and in
    batches.
    """
    old = (b"\x01" + b"\x00\x00\x00\x00\x00\x00\x01\x02" + b"\x00\x00\x00\x02"
           + b"\x00\x00\x00\x02" + b"\x00\x00\x00\x01" + b"\x00\x00\x00\x03"
           + b"\x00\x00\x00\x04" + b"fnuqrcidDATA")
    assert packRecordV1(record(7, Priority.HIGH, b"fn", b"uq", b"DATA", 258, b"r", b"cid")) == old
    expected = StoredJob(7, b"fn", b"uq", b"DATA", Priority.HIGH, 258, b"r", b"cid")
    assert unpackRecord(7, Priority.HIGH, old) == expected
    assert expected.attempts == 0 and expected.retryAt == 0 and expected.lastError == b""
    entry = struct.pack(">QBI", 7, Priority.HIGH, len(old)) + old
    newer = packBatch([record(8, attempts=2, retryAt=5, lastError=b"x")])
    assert unpackBatch(1, entry + newer + entry) == [
        expected, StoredJob(8, b"f", b"u", b"p", attempts=2, retryAt=5, lastError=b"x"), expected]
    short = struct.pack(">QBI", 7, 1, len(old) - 1) + old[:-1]
    with pytest.raises(StoreSchemaError, match="log row 1: job 7: record of 40 bytes does not"):
        unpackBatch(1, short)


def test_retryFieldsRoundTrip() -> None:
    r = record(attempts=4, retryAt=2 ** 62, lastError=b"\x00Traceback\n" * 10)
    job = roundTrip(r)
    assert (job.attempts, job.retryAt, job.lastError) == (4, 2 ** 62, b"\x00Traceback\n" * 10)
    assert unpackBatch(1, packBatch([r])) == [job]


def test_roundTripEveryField() -> None:
    r = record(2 ** 40, Priority.LOW, b"resize", b"img-42", b"payload", 4102444800, b"sum", b"web-7")
    assert roundTrip(r) == StoredJob(2 ** 40, b"resize", b"img-42", b"payload", Priority.LOW,
                                     4102444800, b"sum", b"web-7")


def test_nulsEverywhere() -> None:
    r = record(3, Priority.HIGH, b"\x00f\x00", b"\x00", b"\x00\x00a\x00", 0, b"\x00r", b"c\x00")
    job = roundTrip(r)
    assert (job.function, job.unique, job.payload, job.reducer, job.clientId) == (
        b"\x00f\x00", b"\x00", b"\x00\x00a\x00", b"\x00r", b"c\x00")


def test_emptyFields() -> None:
    r = record(1, Priority.NORMAL, b"", b"", b"", 0, b"", b"")
    assert len(packRecord(r)) == HEADER_SIZE
    assert roundTrip(r) == StoredJob(1, b"", b"", b"", Priority.NORMAL)


def test_oneMebibytePayload() -> None:
    big = os.urandom(1024 * 1024)
    r = record(payload=big, unique=b"u" * 300)
    packed = packRecord(r)
    assert len(packed) == HEADER_SIZE + 1 + 300 + len(big)
    job = roundTrip(r)
    assert job.payload == big and type(job.payload) is bytes


def test_packedRowsIsPackRecord() -> None:
    """The inlined batch packer writes the same bytes as L{packRecord}."""
    records = [record(1, Priority.HIGH, b"\x00f", b"", os.urandom(1000), 7, b"r", b"c"),
               record(2, Priority.LOW, b"", b"u\x00", b"", 0, b"", b""),
               record(3, Priority.NORMAL, b"f", b"u", b"x" * (1024 * 1024), -1, b"\x00", b"\x00")]
    rows = packedRows(records)
    assert rows == [(r[0], r[1], packRecord(r)) for r in records]
    assert all(type(priority) is int for _, priority, _ in rows)


def test_negativeWhen() -> None:
    assert roundTrip(record(when=-5)).when == -5


def test_buffersAreAccepted() -> None:
    """Drivers may hand back a memoryview or bytearray."""
    packed = packRecord(record(payload=b"x\x00y"))
    assert unpackRecord(1, 1, memoryview(packed)).payload == b"x\x00y"
    assert unpackRecord(1, 1, bytearray(packed)).payload == b"x\x00y"


def test_fieldTypes() -> None:
    job = roundTrip(record(priority=Priority.LOW))
    assert type(job.key) is int and type(job.priority) is int and type(job.when) is int
    assert all(type(v) is bytes for v in (job.function, job.unique, job.payload, job.reducer,
                                          job.clientId))


@pytest.mark.parametrize("data, message", [
    (b"", "truncated"),
    (b"\x01\x00\x00", "truncated"),
    (b"\x03" + b"\x00" * 44, "record format 3 is unknown"),
    (b"\x00" + b"\x00" * 44, "record format 0 is unknown"),
    (b"\x01" + b"\x00" * 27, "truncated"),
    (b"\x02" + b"\x00" * 28, "truncated"),
])
def test_badHeaderIsRefused(data: bytes, message: str) -> None:
    with pytest.raises(StoreSchemaError, match=message):
        unpackRecord(5, 1, data)


def test_lengthMismatchIsRefused() -> None:
    packed = packRecord(record(payload=b"abc"))
    with pytest.raises(StoreSchemaError, match="job 9: record of .* does not match its header"):
        unpackRecord(9, 1, packed[:-1])
    with pytest.raises(StoreSchemaError, match="does not match its header"):
        unpackRecord(9, 1, packed + b"\x00")


def test_textIsRefused() -> None:
    with pytest.raises(StoreSchemaError, match="text"):
        unpackRecord(1, 1, "\x01" * 29)


def test_oversizedWhenCannotBePacked() -> None:
    with pytest.raises(struct.error):
        packRecord(record(when=2 ** 63))


def test_collapseAddsOnlyKeepsEveryRecordInOrder() -> None:
    a, b, c = record(1), record(2), record(1, payload=b"later")
    assert collapse([(True, [a, b]), (True, [c])]) == ([a, b, c], [])
    assert collapse([(True, [a])]) == ([a], [])
    assert collapse([]) == ([], [])


def test_collapseLastWriteOfAKeyWins() -> None:
    a, b, a2 = record(1), record(2), record(1, payload=b"again")
    records, removed = collapse([(True, [a, b]), (False, 1), (True, [a2]), (False, 2),
                                 (False, 3), (True, [record(4)]), (False, 4)])
    assert records == [a2]
    assert sorted(removed) == [2, 3, 4]


def test_lastOfEachKey() -> None:
    a, b, a2 = record(1), record(2), record(1, payload=b"again")
    records = [a, b]
    assert lastOfEachKey(records) is records
    assert sorted(lastOfEachKey([a, b, a2])) == sorted([a2, b])


# Batches (SQLite's log) -----------------------------------------------------


def test_batchKnownBytes() -> None:
    """An adds batch entry is key, priority, length, then the packed record."""
    r = record(7, Priority.HIGH, b"fn", b"uq", b"DATA", 258, b"r", b"cid")
    packed = packRecord(r)
    assert packBatch([r]) == (b"\x00\x00\x00\x00\x00\x00\x00\x07"  # key
                              + b"\x00"                              # priority
                              + struct.pack(">I", len(packed))       # length of the record
                              + packed)
    assert ENTRY_HEADER_SIZE == 13
    assert packKeys([1, 2 ** 64 - 1]) == b"\x00" * 7 + b"\x01" + b"\xff" * 8


def test_batchRoundTrip() -> None:
    records = [record(2 ** 63 + 5, Priority.LOW, b"\x00f", b"", os.urandom(1000), -7, b"r", b"c"),
               record(2, Priority.HIGH, b"", b"u\x00", b"", 0, b"", b""),
               record(3, Priority.NORMAL, b"f", b"u", b"x" * (1024 * 1024), 2 ** 40, b"\x00", b"\x00"),
               record(2, Priority.NORMAL, payload=b"again")]
    jobs = unpackBatch(1, packBatch(records))
    assert jobs == [roundTrip(r) for r in records]
    assert all(type(j.key) is int and type(j.priority) is int and type(j.payload) is bytes
               for j in jobs)
    assert unpackBatch(1, memoryview(packBatch(records))) == jobs
    assert unpackBatch(1, bytearray(packBatch(records))) == jobs
    assert packBatch([]) == b"" and unpackBatch(1, b"") == []


def test_keysRoundTrip() -> None:
    keys = [1, 5, 2 ** 33, 2 ** 64 - 1]
    assert unpackKeys(3, packKeys(keys)) == tuple(keys)
    assert unpackKeys(3, memoryview(packKeys(keys))) == tuple(keys)
    assert packKeys([]) == b"" and unpackKeys(3, b"") == ()


def test_packBatchesBoundsRows() -> None:
    """Rows of at most C{maxRecords} records and about C{maxBytes} bytes."""
    records = [record(n, payload=b"x" * (n % 7) * 50) for n in range(1, 2501)]
    rows = list(packBatches(records, 1000, 10 ** 9))
    assert [len(unpackBatch(1, row)) for row in rows] == [1000, 1000, 500]
    assert b"".join(rows) == packBatch(records)
    rows = list(packBatches(records, 1000, 4096))
    assert all(len(row) <= 4096 for row in rows) and len(rows) > 40
    assert b"".join(rows) == packBatch(records)
    # One record larger than the bound gets a row of its own.
    big = [record(1), record(2, payload=b"y" * 10000), record(3)]
    assert [len(unpackBatch(1, row)) for row in packBatches(big, 1000, 100)] == [1, 1, 1]
    assert list(packBatches([], 1000, 100)) == []


def test_truncatedBatchIsRefusedNamingTheRow() -> None:
    """
    Every cut inside an entry is refused, naming the log row (a cut between
    two entries cannot be told from a shorter batch; SQLite keeps values
    whole).
    """
    batch = packBatch([record(1, payload=b"abc"), record(2, unique=b"", payload=b"")])
    first = ENTRY_HEADER_SIZE + HEADER_SIZE + len(b"fuabc")
    for cut in range(1, len(batch)):
        if cut == first:
            assert [j.key for j in unpackBatch(7, batch[:cut])] == [1]
            continue
        with pytest.raises(StoreSchemaError, match="^log row 7: .*truncated"):
            unpackBatch(7, batch[:cut])


def test_paddedBatchIsRefused() -> None:
    with pytest.raises(StoreSchemaError, match="log row 4: truncated entry"):
        unpackBatch(4, packBatch([record(1)]) + b"\x00")
    with pytest.raises(StoreSchemaError, match="log row 4: job 9: truncated entry"):
        unpackBatch(4, packBatch([record(1)]) + struct.pack(">QBI", 9, 1, 1000) + b"\x01" * 40)


@pytest.mark.parametrize("change, message", [
    # The record's version byte, right after the entry's frame.
    (lambda b: b[:13] + b"\x09" + b[14:], "log row 5: job 1: record format 9 is unknown"),
    # A record length shorter than a record header.
    (lambda b: b[:9] + struct.pack(">I", 3) + b[13:], "log row 5: job 1: truncated record"),
    # A record whose field lengths do not add up to the entry's length.
    (lambda b: b[:9] + struct.pack(">I", len(b) - 14) + b[13:-1] + b"\x00\x00",
     "log row 5: job 1: record of .* does not match its header"),
])
def test_corruptBatchIsRefused(change: object, message: str) -> None:
    batch = packBatch([record(1, payload=b"x" * 40)])
    with pytest.raises(StoreSchemaError, match=message):
        unpackBatch(5, change(batch))  # type: ignore[operator]


def test_batchOfAnotherTypeIsRefused() -> None:
    for value in ("text", 12, None):
        with pytest.raises(StoreSchemaError, match="log row 2: the batch is .*, not binary"):
            unpackBatch(2, value)
        with pytest.raises(StoreSchemaError, match="log row 2: the batch is .*, not binary"):
            unpackKeys(2, value)


def test_partialKeyIsRefused() -> None:
    with pytest.raises(StoreSchemaError, match="log row 6: a removes batch of 12 bytes"):
        unpackKeys(6, packKeys([1]) + b"\x00" * 4)


def test_outOfRangeValuesCannotBePacked() -> None:
    # CPython's struct raises struct.error, PyPy's sometimes ValueError.
    for bad in (record(key=2 ** 64), record(key=-1), record(priority=256), record(when=2 ** 63)):
        with pytest.raises((struct.error, ValueError)):
            packBatch([bad])
    with pytest.raises((struct.error, ValueError)):
        packKeys([2 ** 64])

"""Tests for the pure packet codec, txgear._packet."""
from __future__ import annotations

import os
import platform
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from txgear._packet import (
    ARGUMENT_COUNTS,
    MAX_TYPE,
    TEXT,
    PacketDecoder,
    PacketType,
    encodeRequest,
    encodeResponse,
    requestHeader,
    responseHeader,
    splitArguments,
)
from txgear.errors import ProtocolError


def test_encodeRequestMatchesTheWireFormat():
    # The byte-level example of PROTOCOL.md section 1.3.
    assert encodeRequest(PacketType.CAN_DO, b"reverse") == bytes.fromhex(
        "00524551 00000001 00000007") + b"reverse"


def test_encodeResponseJoinsArgumentsWithNul():
    packet = encodeResponse(PacketType.JOB_ASSIGN_UNIQ, b"H:1", b"f", b"u", b"a\0b")
    assert packet[:4] == b"\0RES"
    assert struct.unpack(">II", packet[4:12]) == (31, len(b"H:1\0f\0u\0a\0b"))
    assert packet[12:] == b"H:1\0f\0u\0a\0b"


def test_headersMatchEncodedPackets():
    assert responseHeader(13, 5) == encodeResponse(13, b"a", b"bcd")[:12]
    assert requestHeader(7, 2) == encodeRequest(7, b"", b"", b"")[:12]


def test_argumentCountsCoverEveryType():
    assert len(ARGUMENT_COUNTS) == MAX_TYPE + 1
    assert ARGUMENT_COUNTS[PacketType.SUBMIT_REDUCE_JOB] == 5  # with the aggregator field
    assert ARGUMENT_COUNTS[PacketType.JOB_ASSIGN_ALL] == 5
    assert ARGUMENT_COUNTS[PacketType.STATUS_RES_UNIQUE] == 6


def test_splitKeepsNulsInTheLastArgument():
    assert splitArguments(PacketType.SUBMIT_JOB, b"f\0u\0a\0b\0") == [b"f", b"u", b"a\0b\0"]
    assert splitArguments(PacketType.WORK_FAIL, b"H:1\0") == [b"H:1\0"]
    assert splitArguments(PacketType.NOOP, b"") == []


def test_splitRejectsTooFewArguments():
    with pytest.raises(ProtocolError):
        splitArguments(PacketType.SUBMIT_JOB, b"f\0payload")


def test_decodeManyPacketsInOneRead():
    stream = (encodeRequest(PacketType.SUBMIT_JOB, b"f", b"", b"x")
              + encodeRequest(PacketType.GRAB_JOB_UNIQ)
              + encodeRequest(PacketType.ECHO_REQ, b"\0\0"))
    decoder = PacketDecoder()
    assert decoder.feed(stream) == [(7, b"f\0\0x"), (30, b""), (16, b"\0\0")]
    again = PacketDecoder(allowText=True)
    assert again.feedFlat(stream) == [7, b"f\0\0x", 30, b"", 16, b"\0\0"]
    assert decoder.error is None and decoder.bufferedBytes() == 0


def test_decodeByteByByte():
    packets = [encodeRequest(kind, *([b"a\0b"] * max(1, ARGUMENT_COUNTS[kind])))
               if ARGUMENT_COUNTS[kind] else encodeRequest(kind)
               for kind in range(1, MAX_TYPE + 1)]
    stream = b"".join(packets)
    decoder = PacketDecoder()
    out = []
    for i in range(len(stream)):
        out.extend(decoder.feed(stream[i:i + 1]))
    assert [kind for kind, _ in out] == list(range(1, MAX_TYPE + 1))
    assert [encodeRequest(kind) [:4] + struct.pack(">II", kind, len(body)) + body
            for kind, body in out] == packets


def test_decodeTextLinesInterleavedWithPackets():
    decoder = PacketDecoder(allowText=True)
    stream = b"status\r\n" + encodeRequest(PacketType.ECHO_REQ, b"x") + b"version\n\n"
    out = []
    for i in range(len(stream)):
        out.extend(decoder.feed(stream[i:i + 1]))
    assert out == [(TEXT, b"status"), (16, b"x"), (TEXT, b"version"), (TEXT, b"")]


def test_otherMagicIsReportedAsNegativeType():
    decoder = PacketDecoder(expectRequests=True)
    assert decoder.feed(encodeResponse(PacketType.ECHO_RES, b"x")) == [(-17, b"x")]
    client = PacketDecoder(expectRequests=False)
    assert client.feed(encodeRequest(PacketType.ECHO_REQ, b"x")) == [(-16, b"x")]


@pytest.mark.parametrize("data, message", [
    (b"\0XYZ" + struct.pack(">II", 1, 0), "bad magic"),
    (b"\0REQ" + struct.pack(">II", 0, 0), "unknown packet type 0"),
    (b"\0REQ" + struct.pack(">II", 43, 0), "unknown packet type 43"),
    (b"\0REQ" + struct.pack(">II", 1, 0xFFFFFFFF), "exceeds the limit"),
    (b"status\n", "expected a packet"),
])
def test_framingErrorsStopDecoding(data, message):
    decoder = PacketDecoder(allowText=False)
    good = encodeRequest(PacketType.ECHO_REQ, b"ok")
    assert decoder.feed(good + data + good) == [(16, b"ok")]
    assert decoder.error is not None and message in str(decoder.error)
    assert decoder.feed(good) == []


def test_oversizedSizeFieldIsRejectedBeforeTheBodyArrives():
    decoder = PacketDecoder(maxPacket=1024)
    assert decoder.feed(b"\0REQ" + struct.pack(">II", 7, 1025)) == []
    assert "exceeds the limit" in str(decoder.error)
    assert decoder.bufferedBytes() == 0


def test_overlongTextLine():
    decoder = PacketDecoder(allowText=True, maxLine=16)
    assert decoder.feed(b"x" * 10) == []
    assert decoder.error is None
    assert decoder.feed(b"x" * 10) == []
    assert "longer than 16" in str(decoder.error)


def test_largePayloadInChunksIsJoinedOnce():
    payload = bytes(range(256)) * 4096 * 4  # 4 MiB with NULs
    stream = encodeRequest(PacketType.SUBMIT_JOB, b"f", b"u", payload)
    decoder = PacketDecoder()
    out = []
    for i in range(0, len(stream), 65536):
        out.extend(decoder.feed(stream[i:i + 65536]))
        # Until the last chunk nothing is decoded and nothing is joined.
        assert decoder.bufferedBytes() in (0, min(i + 65536, len(stream)))
    assert len(out) == 1
    assert splitArguments(7, out[0][1]) == [b"f", b"u", payload]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([7, 13, 16, 1, 9, 36]),
                          st.lists(st.binary(max_size=20), min_size=1, max_size=4)),
                max_size=10),
       st.lists(st.integers(min_value=1, max_value=50), min_size=1, max_size=30))
def test_anySplitOfAStreamDecodesTheSame(packets, cuts):
    stream = b"".join(encodeRequest(kind, *args) for kind, args in packets)
    expected = PacketDecoder().feed(stream)
    decoder = PacketDecoder()
    out, offset, i = [], 0, 0
    while offset < len(stream):
        size = cuts[i % len(cuts)]
        out.extend(decoder.feed(stream[offset:offset + size]))
        offset += size
        i += 1
    assert out == expected
    assert len(out) == len(packets)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["req", "res", "text"]),
                          st.binary(max_size=300)), max_size=8),
       st.lists(st.tuples(st.integers(min_value=1, max_value=400), st.booleans(),
                          st.integers(min_value=0, max_value=2)), min_size=1, max_size=30))
def test_anyMixOfFeedAndTakingOneAtATimeDecodesTheSame(messages, reads):
    # Reads fed whole, or added while the caller takes only some messages
    # (a stalled server), with held messages of either magic and text lines.
    def encode(kind, body):
        if kind == "text":
            return b"t" + body.replace(b"\n", b"") + b"\n"
        return (encodeRequest if kind == "req" else encodeResponse)(PacketType.ECHO_REQ, body)

    stream = b"".join(encode(kind, body) for kind, body in messages)
    expected = PacketDecoder(allowText=True).feed(stream)
    assert len(expected) == len(messages)
    decoder = PacketDecoder(allowText=True)
    out, offset, i = [], 0, 0
    while offset < len(stream):
        size, whole, taken = reads[i % len(reads)]
        chunk = stream[offset:offset + size]
        if whole:
            out.extend(decoder.feed(chunk))
        else:
            decoder.add(chunk)
            for _ in range(taken):
                message = decoder.next()
                if message is not None:
                    out.append(message)
        offset += size
        i += 1
    out.extend(decoder.feed(b""))
    assert out == expected
    assert decoder.bufferedBytes() == 0 and decoder.unfinishedSize() == 0


def test_messagesAreTakenOneAtATimeAndTheRestWaits():
    # A server stops taking messages midway (its output is full); what it
    # did not take stays, in order, ahead of later reads.
    decoder = PacketDecoder(allowText=True)
    first = encodeRequest(PacketType.ECHO_REQ, b"1") + b"status\n" + encodeRequest(PacketType.ECHO_REQ, b"3")
    decoder.add(first[:-2])
    assert decoder.next() == (16, b"1")
    assert decoder.bufferedBytes() == len(first) - 2 - 13
    decoder.add(first[-2:] + encodeRequest(PacketType.ECHO_REQ, b"4")[:5])
    decoder.add(encodeRequest(PacketType.ECHO_REQ, b"4")[5:])
    assert [decoder.next() for _ in range(4)] == [(0, b"status"), (16, b"3"), (16, b"4"), None]
    assert decoder.bufferedBytes() == 0 and decoder.unfinishedSize() == 0


def test_unfinishedSizeIsTheAnnouncedSize():
    decoder = PacketDecoder()
    packet = encodeRequest(PacketType.ECHO_REQ, b"x" * 1000)
    assert decoder.feed(packet[:5]) == []
    assert decoder.unfinishedSize() == 5
    serial = decoder.partialSerial
    assert decoder.feed(packet[5:100]) == []
    assert decoder.unfinishedSize() == len(packet) and decoder.bufferedBytes() == 100
    assert decoder.partialSerial == serial  # still the same message
    assert decoder.feed(packet[100:] + packet[:3]) == [(16, b"x" * 1000)]
    assert decoder.unfinishedSize() == 3 and decoder.partialSerial != serial

@pytest.mark.skipif(platform.python_implementation() == "PyPy",
                    reason="tracemalloc is CPython's")
def test_trickledBodyCostsAboutOneByteOfMemoryPerByte():
    import tracemalloc

    size = 128 * 1024
    stream = encodeRequest(PacketType.ECHO_REQ, b"y" * size)
    decoder = PacketDecoder()
    tracemalloc.start()
    try:
        for i in range(len(stream) - 1):
            decoder.feed(stream[i:i + 1])
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert held < 2 * size, held
    assert decoder.feed(stream[-1:]) == [(16, b"y" * size)]


def test_clearDropsTheBuffers():
    decoder = PacketDecoder()
    decoder.feed(encodeRequest(PacketType.ECHO_REQ, b"z" * 100)[:50])
    decoder.clear()
    assert decoder.bufferedBytes() == 0


def test_largeBodiesOfViewKindsWholeInOneReadAreViewsOfIt():
    payload = os.urandom(70000)
    complete = encodeRequest(PacketType.WORK_COMPLETE, b"H:1", payload)
    status = encodeRequest(PacketType.WORK_STATUS, b"H:1", b"1", b"2")
    decoder = PacketDecoder(viewKinds=(PacketType.WORK_COMPLETE,))
    read = complete + encodeRequest(PacketType.GRAB_JOB) + status
    kinds, bodies = [], []
    for kind, body in decoder.feed(read):
        kinds.append(kind)
        bodies.append(body)
    assert kinds == [PacketType.WORK_COMPLETE, PacketType.GRAB_JOB, PacketType.WORK_STATUS]
    # The large body of a view kind is a read-only view of the read: no copy.
    assert type(bodies[0]) is memoryview and bodies[0].obj is read and bodies[0].readonly
    assert bytes(bodies[0]) == b"H:1\0" + payload
    # Small bodies and other kinds are bytes, as always.
    assert type(bodies[1]) is bytes and type(bodies[2]) is bytes
    [(_, body)] = decoder.feed(encodeRequest(PacketType.ECHO_REQ, payload))
    assert type(body) is bytes and body == payload
    # A large body that fills less than half of its read is copied (a view
    # would keep the whole read alive).
    small = encodeRequest(PacketType.WORK_COMPLETE, b"H:2", b"x" * 65536)
    read = small + encodeRequest(PacketType.ECHO_REQ, b"y" * 70000)
    [(_, body), _] = decoder.feed(read)
    assert type(body) is bytes and body == b"H:2\0" + b"x" * 65536
    # Split across reads: joined into bytes, as before.
    body = b"".join(b for _, b in decoder.feed(complete[:40000]) + decoder.feed(complete[40000:]))
    assert type(body) is bytes and body == b"H:1\0" + payload
    # Without viewKinds, never a view.
    [(_, body)] = PacketDecoder().feed(complete)
    assert type(body) is bytes

"""
Hostile and unlucky input against the real server process (C{twistd
gearman}), for the limits of issue 8: a bad epoch amid a burst of background
submits, and a stop while a job completes.
"""
from __future__ import annotations

from typing import List

from tests._peers import txgearProcess
from tests._rawclient import RawClient
from txgear._packet import PacketType, encodeRequest

P = PacketType


def test_epochBeyondTheStoreFailsOnlyItsOwnSubmit() -> None:
    """
    500 background submits with an epoch of 2**63 among them, on the default
    SQLite store: the bad one gets ERROR INVALID_ARGUMENT, the 500 others
    JOB_CREATED (the bad record used to fail its whole store batch).
    """
    with txgearProcess() as server:
        with RawClient(server.port, timeout=30) as first, RawClient(server.port, timeout=30) as second:
            def burst(tag: bytes) -> List[bytes]:
                return [encodeRequest(P.SUBMIT_JOB_BG, b"f", b"", b"%s-%d" % (tag, i))
                        for i in range(250)]
            bad = encodeRequest(P.SUBMIT_JOB_EPOCH, b"f", b"", b"%d" % 2 ** 63, b"bad")
            one, two = burst(b"a"), burst(b"b")
            # One read each, so that everything lands in one store batch.
            first.sendRaw(b"".join(one[:125] + [bad] + one[125:]))
            second.sendRaw(b"".join(two))
            replies = [first.recv() for _ in range(251)]
            replies += [second.recv() for _ in range(250)]
            status = first.admin("status")
        errors = [args for kind, args in replies if kind == P.ERROR]
        assert errors == [[b"INVALID_ARGUMENT",
                           b"Epoch must be a number of seconds from 0 to 253402300799"]]
        assert [kind for kind, _ in replies].count(P.JOB_CREATED) == 500
        assert status == b"f\t500\t0\t0\n.\n"

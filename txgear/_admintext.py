# -*- test-case-name: tests.test_admintext -*-
"""
The admin text protocol's reply formats, byte for byte as gearmand 1.1.20
writes them, and parsers for them. Pure: no I/O.

Line endings are not uniform in gearmand: listings and C{OK <value>} replies
end in C{\\n}, C{OK}/C{ERR} replies to commands in C{\\r\\n}.
"""
from __future__ import annotations

from typing import Iterable, List, NamedTuple, Sequence, Tuple

OK = b"OK\r\n"
END = b".\n"


def ok(value: bytes) -> bytes:
    """An C{OK <value>} reply (C{version}, C{getpid}, C{verbose})."""
    return b"OK " + value + b"\n"


def err(code: bytes, text: bytes = b"") -> bytes:
    """An C{ERR} reply; spaces in the text become C{+} as in gearmand."""
    if text:
        return b"ERR " + code + b" " + text.replace(b" ", b"+") + b"\r\n"
    return b"ERR " + code + b"\r\n"


def unknownCommand(word: bytes) -> bytes:
    """gearmand's reply to an unknown command (the word glued to the text)."""
    return b"ERR UNKNOWN_COMMAND Unknown+server+command" + word + b"\r\n"


def incompleteArguments(command: bytes) -> bytes:
    return b"ERR INVALID_ARGUMENTS An+incomplete+set+of+arguments+was+sent+to+this+command+" + command + b"\r\n"


def formatStatus(rows: Iterable[Tuple[bytes, int, int, int]]) -> bytes:
    """C{status}: one C{FUNCTION\\tTOTAL\\tRUNNING\\tWORKERS} line per function."""
    return b"".join(b"%s\t%d\t%d\t%d\n" % row for row in rows) + END


def formatPriorityStatus(rows: Iterable[Tuple[bytes, int, int, int, int]]) -> bytes:
    """C{prioritystatus}: C{FUNCTION\\tHIGH\\tNORMAL\\tLOW\\tWORKERS} lines."""
    return b"".join(b"%s\t%d\t%d\t%d\t%d\n" % row for row in rows) + END


def formatWorkers(rows: Iterable[Tuple[bytes, bytes, bytes, Sequence[bytes]]]) -> bytes:
    """C{workers}: C{FD IP ID : F1 F2} per connection (C{FD IP ID :} with none)."""
    out = []
    for fd, ip, clientId, functions in rows:
        line = b"%s %s %s :" % (fd, ip, clientId)
        if functions:
            line += b" " + b" ".join(functions)
        out.append(line + b"\n")
    return b"".join(out) + END


def formatShowJobs(rows: Iterable[Tuple[bytes, int, int, int]]) -> bytes:
    """C{show jobs}: C{HANDLE\\tRETRIES\\tIGNORE\\tPERSISTED} per job."""
    return b"".join(b"%s\t%d\t%d\t%d\n" % row for row in rows) + END


def formatLines(lines: Iterable[bytes]) -> bytes:
    """C{show unique jobs}: one value per line."""
    return b"".join(line + b"\n" for line in lines) + END


# -- parsing (for clients of the admin protocol) -----------------------------


class WorkerInfo(NamedTuple):
    """One line of the C{workers} reply."""

    fd: str
    ip: str
    clientId: str
    functions: Tuple[str, ...]


def parseWorkers(lines: List[bytes]) -> List[WorkerInfo]:
    """Parse the lines (without the final C{.}) of a C{workers} reply."""
    result = []
    for line in lines:
        head, _, functions = line.partition(b" :")
        parts = head.split(b" ", 2)
        if len(parts) != 3:
            raise ValueError(f"malformed workers line {line!r}")
        fd, ip, clientId = (p.decode("utf-8", "replace") for p in parts)
        result.append(WorkerInfo(fd, ip, clientId,
                                 tuple(f.decode("utf-8", "replace") for f in functions.split())))
    return result

# -*- test-case-name: tests.test_admintext -*-
"""
The admin text protocol's reply formats, byte for byte as gearmand 1.1.20
writes them, and parsers for them. Pure: no I/O.

Line endings are not uniform in gearmand: listings and C{OK <value>} replies
end in C{\\n}, C{OK}/C{ERR} replies to commands in C{\\r\\n}.
"""
from __future__ import annotations

import re
import time
from typing import Dict, Iterable, List, NamedTuple, Optional, Sequence, Tuple

OK = b"OK\r\n"
END = b".\n"

# What a peer-sent value may not show raw in a listing: control characters
# (they would end or split lines and fields), and the backslash that starts
# an escape. Space separates the fields of a C{workers} line.
_UNSAFE = re.compile(rb"[\x00-\x1f\x7f\\]")
_UNSAFE_OR_SPACE = re.compile(rb"[\x00-\x20\x7f\\]")


def _hexEscape(match: "re.Match[bytes]") -> bytes:
    return b"\\x%02x" % match.group()[0]


def escape(value: bytes, space: bool = False) -> bytes:
    """
    A peer-sent value (function name, client id, unique, handle) made safe for
    one field of an admin listing: each control character, each backslash
    and, with C{space}, each space becomes C{\\xNN}. Other bytes, UTF-8
    included, are kept, so ordinary names print exactly as gearmand prints
    them.

    @param value: the raw value.
    @param space: also escape spaces (for C{workers}, whose fields they separate).
    """
    pattern = _UNSAFE_OR_SPACE if space else _UNSAFE
    if pattern.search(value) is None:
        return value
    return pattern.sub(_hexEscape, value)


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
    return b"".join(b"%s\t%d\t%d\t%d\n" % (escape(name), total, running, workers)
                    for name, total, running, workers in rows) + END


def formatPriorityStatus(rows: Iterable[Tuple[bytes, int, int, int, int]]) -> bytes:
    """C{prioritystatus}: C{FUNCTION\\tHIGH\\tNORMAL\\tLOW\\tWORKERS} lines."""
    return b"".join(b"%s\t%d\t%d\t%d\t%d\n" % (escape(name), high, normal, low, workers)
                    for name, high, normal, low, workers in rows) + END


def formatWorkers(rows: Iterable[Tuple[bytes, bytes, bytes, Sequence[bytes]]]) -> bytes:
    """
    C{workers}: C{FD IP ID : F1 F2} per connection (C{FD IP ID :} with none).
    The id and the names are escaped, spaces included (L{escape}).
    """
    out = []
    for fd, ip, clientId, functions in rows:
        line = b"%s %s %s :" % (fd, ip, escape(clientId, True))
        if functions:
            line += b" " + b" ".join([escape(name, True) for name in functions])
        out.append(line + b"\n")
    return b"".join(out) + END


def formatClusterStatus(rows: Iterable[Tuple[bytes, int, int]]) -> bytes:
    """
    C{show cluster status}: C{FUNCTION\tQUEUED\tCLAIMED} per function of the
    cluster's shared queue (queued for any server; claimed by one).
    """
    return b"".join(b"%s\t%d\t%d\n" % (escape(name), queued, claimed)
                    for name, queued, claimed in rows) + END


def formatShowJobs(rows: Iterable[Tuple[bytes, int, int, int]]) -> bytes:
    """C{show jobs}: C{HANDLE\\tRETRIES\\tIGNORE\\tPERSISTED} per job."""
    return b"".join(b"%s\t%d\t%d\t%d\n" % (escape(handle), retries, ignore, persisted)
                    for handle, retries, ignore, persisted in rows) + END


def formatPolicies(rows: Iterable[Tuple[bytes, str]]) -> bytes:
    """
    C{show policies} (a txgear extension): C{FUNCTION\tSPEC} per policy, the
    default (C{*}) first; the name escaped (L{escape}), the SPEC canonical.
    """
    return b"".join(b"%s\t%s\n" % (escape(name), spec.encode("ascii")) for name, spec in rows) + END


def isoTime(milliseconds: int) -> bytes:
    """Unix milliseconds as ISO 8601 UTC to the millisecond: C{2026-11-28T21:42:01.123Z}."""
    seconds, millis = divmod(milliseconds, 1000)
    return (time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)).encode("ascii")
            + b".%03dZ" % millis)


def formatDead(rows: Iterable[Tuple[bytes, bytes, bytes, int, int, bytes]]) -> bytes:
    """
    C{show dead} (a txgear extension):
    C{HANDLE\tFUNCTION\tUNIQUE\tATTEMPTS\tDIED-AT\tLAST-ERROR} per dead job,
    DIED-AT in ISO 8601 UTC (L{isoTime}, from Unix milliseconds); handle,
    function, unique and last error escaped (L{escape}), so that no value
    can end a line or a field.
    """
    return b"".join(b"%s\t%s\t%s\t%d\t%s\t%s\n" % (escape(handle), escape(function),
                                                    escape(unique), attempts, isoTime(diedAt),
                                                    escape(lastError))
                    for handle, function, unique, attempts, diedAt, lastError in rows) + END


def formatLines(lines: Iterable[bytes]) -> bytes:
    """C{show unique jobs}: one value per line, escaped (L{escape})."""
    return b"".join(escape(line) + b"\n" for line in lines) + END


#: gear's replies to the C{acl} commands (C{\\n} endings, as gear).
ACL_OK = b"OK\n"
ACL_DISABLED = b"ERR ACL_DISABLED\n"
def formatResult(status: bytes, result: bytes) -> bytes:
    """
    C{show result} (a txgear extension): C{OK <status> <size>\n}, then
    exactly <size> bytes of the result, raw (NULs and newlines included),
    then C{\n}. A reader takes the size from the first line, never looks
    for a terminator inside the bytes.
    """
    return b"OK %s %d\n" % (status, len(result)) + result + b"\n"


PERMISSION_DENIED = b"ERR PERMISSION_DENIED\n"
UNKNOWN_ACL_VERB = b"ERR UNKNOWN_ACL_VERB\n"


def aclUnable(message: bytes) -> bytes:
    """gear's C{ERR UNABLE <message>} (the message kept on one line)."""
    return b"ERR UNABLE " + escape(message) + b"\n"


def formatAclList(rows: Iterable[Tuple[bytes, Optional[bytes], Optional[bytes], bool, bool]]) -> bytes:
    """
    C{acl list}: gear's C{NAME\\tregister=P\\tinvoke=P\\tgrant=B} per identity
    (C{None} for no pattern, C{True}/C{False}), then txgear's C{\\tadmin=B}.
    """
    def pattern(value: Optional[bytes]) -> bytes:
        return b"None" if value is None else escape(value)

    return b"".join(b"%s\tregister=%s\tinvoke=%s\tgrant=%s\tadmin=%s\n"
                    % (escape(name), pattern(register), pattern(invoke),
                       b"True" if grant else b"False", b"True" if admin else b"False")
                    for name, register, invoke, grant, admin in rows) + END


# -- parsing (for clients of the admin protocol) -----------------------------


#: A parsed C{status} reply: C{(total, running, workers)} by function name.
StatusTable = Dict[bytes, Tuple[int, int, int]]


def parseStatus(lines: List[bytes]) -> StatusTable:
    """
    Parse the lines (without the final C{.}) of a C{status} reply; lines that
    are not four tab-separated fields with numbers are skipped.
    """
    table: StatusTable = {}
    for line in lines:
        fields = line.split(b"\t")
        if len(fields) < 4:
            continue
        try:
            table[fields[0]] = (int(fields[1]), int(fields[2]), int(fields[3]))
        except ValueError:
            continue
    return table


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

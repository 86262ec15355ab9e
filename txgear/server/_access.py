# -*- test-case-name: tests.test_server_access -*-
"""
The access control list: which identity may register, invoke, administer
and grant what. Pure rules; the server applies them in
L{txgear.server._guard}.

The file is gear's INI format (C{configparser}, no interpolation): one
section per identity (a certificate name, or C{anonymous}), with
C{register} and C{invoke} regular expressions and C{grant} true/false, plus
txgear's C{admin} true/false. Deny by default.

Function names are bytes and matched as bytes: a pattern is encoded as
UTF-8 and compiled as a bytes regular expression, which must match the
B{whole} name (gear matches only at the start). So any byte name can be
matched (C{\\xNN} escapes), a UTF-8 name matches as written, and C{.}
stands for one byte.
"""
from __future__ import annotations

import configparser
import re
from typing import Callable, Dict, Iterable, List, Optional, Pattern, Tuple

from txgear._log import logger

#: The rights.
REGISTER = "register"
INVOKE = "invoke"
GRANT = "grant"
ADMIN = "admin"
#: Rights given by a regular expression over function names.
PATTERN_RIGHTS = (REGISTER, INVOKE)
#: Rights given by true/false.
FLAG_RIGHTS = (GRANT, ADMIN)

#: Default number of (names, right, function) decisions remembered; past it
#: the cache starts afresh.
DEFAULT_CACHE_LIMIT = 16384

Names = Tuple[str, ...]


class AccessFileError(ValueError):
    """An access control file that cannot be read or is not valid."""


class AccessEntry:
    """
    One identity's rights.

    @ivar name: the identity (the section name).
    @ivar register: compiled pattern of the functions it may register, or C{None}.
    @ivar invoke: compiled pattern of the functions it may invoke (submit,
        ask the status of, cancel), or C{None}.
    @ivar grant: may change the list for others, and run the admin
        commands that change the server (C{maxqueue}, C{create function}...).
    @ivar admin: may run the read-only admin listings.
    """

    __slots__ = ("name", "register", "invoke", "grant", "admin")

    def __init__(self, name: str, register: Optional[Pattern[bytes]] = None,
                 invoke: Optional[Pattern[bytes]] = None, grant: bool = False,
                 admin: bool = False) -> None:
        self.name = name
        self.register = register
        self.invoke = invoke
        self.grant = grant
        self.admin = admin

    def allows(self, right: str, function: bytes) -> bool:
        """C{right} (L{REGISTER} or L{INVOKE}) on C{function}."""
        pattern = self.register if right == REGISTER else self.invoke
        return pattern is not None and pattern.fullmatch(function) is not None

    def __repr__(self) -> str:
        return (f"<AccessEntry {self.name!r} register={_source(self.register)!r} "
                f"invoke={_source(self.invoke)!r} grant={self.grant} admin={self.admin}>")


def _source(pattern: Optional[Pattern[bytes]]) -> Optional[bytes]:
    return None if pattern is None else pattern.pattern


def compilePattern(source: bytes) -> Pattern[bytes]:
    """
    Compile a function name pattern (bytes; a pattern read as text is
    encoded as UTF-8 first).

    @raise re.error: it is not a valid regular expression.
    """
    return re.compile(source)


def parseRules(text: str, source: str = "<string>") -> Dict[str, AccessEntry]:
    """
    The entries an access control file holds.

    @param text: the file's content.
    @param source: its name, for error messages.
    @raise AccessFileError: naming the line at fault.
    """
    parser = configparser.RawConfigParser(strict=True)
    try:
        parser.read_string(text, source)
    except configparser.Error as e:
        raise AccessFileError(" ".join(str(e).split()))
    lines = text.splitlines()
    entries: Dict[str, AccessEntry] = {}
    for section in parser.sections():
        entry = AccessEntry(section)
        for option, value in parser.items(section):
            where = _where(source, lines, section, option)
            value = value.strip()
            if option in PATTERN_RIGHTS:
                if not value:
                    continue
                try:
                    setattr(entry, option, compilePattern(value.encode("utf-8")))
                except re.error as e:
                    raise AccessFileError(f"{where}: [{section}] {option}: not a valid regular "
                                          f"expression ({e})")
            elif option in FLAG_RIGHTS:
                flag = _BOOLEANS.get(value.lower())
                if flag is None:
                    raise AccessFileError(f"{where}: [{section}] {option}: give true or false, "
                                          f"not {value!r}")
                setattr(entry, option, flag)
            else:
                raise AccessFileError(f"{where}: [{section}] {option}: unknown right (give "
                                      f"register, invoke, grant or admin)")
        entries[section] = entry
    return entries


# configparser's words for true and false.
_BOOLEANS = {"1": True, "yes": True, "true": True, "on": True,
             "0": False, "no": False, "false": False, "off": False}


def _where(source: str, lines: List[str], section: str, option: str) -> str:
    """C{"FILE, line N"} of C{option} in C{section} (or in DEFAULT), as well as it can tell."""
    found: Optional[int] = None
    current: Optional[str] = None
    for number, line in enumerate(lines, 1):
        stripped = line.strip()
        if not stripped or stripped[0] in "#;":
            continue
        if stripped.startswith("[") and stripped.endswith("]") and not line[0].isspace():
            current = stripped[1:-1]
            continue
        key = re.split("[=:]", stripped, 1)[0].strip().lower()
        if key == option and current in (section, configparser.DEFAULTSECT):
            found = number
            if current == section:
                break
    return f"{source}, line {found}" if found is not None else source


class AccessControl:
    """
    An access control list: deny by default; an identity's rights are
    those of the first of its connection's names that has an entry.

    Decisions on function names are cached per (names, right, function),
    so a check costs a dictionary lookup once a name was seen; the cache is
    cleared on every change and bounded by C{cacheLimit}.

    @param entries: the initial entries.
    @param path: the file the entries come from, read again by L{reload}.
    @param cacheLimit: how many decisions to remember.
    @ivar path: that file, or C{None}.
    @ivar evaluations: how many times a pattern was matched (the cache's misses).
    """

    _log = logger()

    def __init__(self, entries: Iterable[AccessEntry] = (), path: Optional[str] = None,
                 cacheLimit: int = DEFAULT_CACHE_LIMIT) -> None:
        self.path = path
        self.cacheLimit = max(1, cacheLimit)
        self._entries: Dict[str, AccessEntry] = {e.name: e for e in entries}
        self._decisions: Dict[Tuple[Names, str, bytes], bool] = {}
        self._observers: List[Callable[[], None]] = []
        self.evaluations = 0

    @classmethod
    def fromFile(cls, path: str, cacheLimit: int = DEFAULT_CACHE_LIMIT) -> "AccessControl":
        """
        Read an access control file.

        @raise AccessFileError: it cannot be read or is not valid (the
            message names the file and line).
        """
        return cls(_readRules(path).values(), path, cacheLimit)

    def reload(self) -> None:
        """
        Read the file again and apply it at once, to open connections too
        (runtime grants and revokes are replaced by the file's rules).

        @raise AccessFileError: the file cannot be read or is not valid; the
            rules in force are kept.
        """
        if self.path is None:
            return
        self._entries = _readRules(self.path)
        self._log.info("Access control list reloaded from {path}: {count} identities",
                       path=self.path, count=len(self._entries))
        self._changed()

    # -- decisions -----------------------------------------------------------

    def entryFor(self, names: Names) -> Optional[AccessEntry]:
        """The entry of the first of C{names} that has one, or C{None}."""
        entries = self._entries
        for name in names:
            entry = entries.get(name)
            if entry is not None:
                return entry
        return None

    def identity(self, names: Names) -> str:
        """The name whose entry applies to C{names} (their first one if none has an entry)."""
        entry = self.entryFor(names)
        return entry.name if entry is not None else names[0]

    def allows(self, names: Names, right: str, function: bytes) -> bool:
        """May a connection called C{names} use C{right} (register or invoke) on C{function}?"""
        key = (names, right, function)
        decision = self._decisions.get(key)
        if decision is None:
            self.evaluations += 1
            entry = self.entryFor(names)
            decision = entry is not None and entry.allows(right, function)
            if len(self._decisions) >= self.cacheLimit:
                self._decisions.clear()
            self._decisions[key] = decision
        return decision

    def has(self, names: Names, right: str) -> bool:
        """Does a connection called C{names} have the C{grant} or C{admin} right?"""
        entry = self.entryFor(names)
        return entry is not None and bool(getattr(entry, right))

    # -- changes -------------------------------------------------------------

    def entries(self) -> List[AccessEntry]:
        """The entries, by identity."""
        return [self._entries[name] for name in sorted(self._entries)]

    def grant(self, right: str, identity: str, pattern: Optional[Pattern[bytes]] = None) -> None:
        """
        Give C{identity} a right (making its entry if it has none): for
        L{REGISTER} and L{INVOKE}, C{pattern} replaces its pattern.
        """
        entry = self._entries.get(identity)
        if entry is None:
            entry = self._entries[identity] = AccessEntry(identity)
        if right in PATTERN_RIGHTS:
            if pattern is None:
                raise ValueError(f"granting {right} needs a pattern")
            setattr(entry, right, pattern)
        elif right in FLAG_RIGHTS:
            setattr(entry, right, True)
        else:
            raise ValueError(f"unknown right {right!r}")
        self._changed()

    def revoke(self, right: Optional[str], identity: str) -> None:
        """
        Take a right from C{identity}, or every right (C{right=None}). Its
        entry stays, empty, so that it still shadows the other names of its
        certificates.
        """
        if right is not None and right not in PATTERN_RIGHTS + FLAG_RIGHTS:
            raise ValueError(f"unknown right {right!r}")
        entry = self._entries.get(identity)
        if entry is None:
            return
        if right is None or right in PATTERN_RIGHTS:
            for name in ((right,) if right else PATTERN_RIGHTS):
                setattr(entry, name, None)
        if right is None or right in FLAG_RIGHTS:
            for name in ((right,) if right else FLAG_RIGHTS):
                setattr(entry, name, False)
        self._changed()

    def addObserver(self, observer: Callable[[], None]) -> None:
        """Call C{observer} after each change (grant, revoke, reload)."""
        self._observers.append(observer)

    def removeObserver(self, observer: Callable[[], None]) -> None:
        if observer in self._observers:
            self._observers.remove(observer)

    def _changed(self) -> None:
        self._decisions.clear()
        for observer in list(self._observers):
            observer()


def _readRules(path: str) -> Dict[str, AccessEntry]:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise AccessFileError(f"cannot read {path}: {e.strerror or e}")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise AccessFileError(f"{path}, line {line}: not UTF-8")
    return parseRules(text, path)


__all__ = ["ADMIN", "AccessControl", "AccessEntry", "AccessFileError", "DEFAULT_CACHE_LIMIT",
           "GRANT", "INVOKE", "REGISTER", "compilePattern", "parseRules"]

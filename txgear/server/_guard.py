# -*- test-case-name: tests.test_server_access -*-
"""
Access control applied to a server's connections: the layer between the
protocol's dispatch and the state (the state stays policy-free).

A factory with an L{AccessControl} gives its connections a second dispatch
table (L{guardedDispatch}) whose handlers for CAN_DO, CAN_DO_TIMEOUT, every
SUBMIT variant, GET_STATUS and GET_STATUS_UNIQUE decide first, then call the
plain handler; admin lines go through L{AccessGuard.runAdmin}. A factory
without one never runs any of this.

What a denial gets (also in docs/security.md):
  - CAN_DO / CAN_DO_TIMEOUT: C{ERROR PERMISSION_DENIED} naming the function,
    which is not registered;
  - SUBMIT_*: C{ERROR 0 "Permission denied by ACL"} (gear's code and text);
  - GET_STATUS / GET_STATUS_UNIQUE, admin C{cancel job}: the reply for an
    unknown job;
  - admin listings without C{admin}, changes without C{grant}:
    C{ERR PERMISSION_DENIED}.
"""
from __future__ import annotations

import re
from typing import Any, Callable, Dict, List, Optional, Tuple

from txgear import _admintext as text
from txgear._log import logger
from txgear._packet import PacketType, encodeResponse
from txgear.server._access import ADMIN, GRANT, INVOKE, REGISTER, AccessControl, compilePattern
from txgear.server._admin import MAX_TOKENS, AdminCommands, Reply
from txgear.server._state import Job, JobServerState, Session

#: Default number of (identity, right, name) denials remembered so that each
#: is logged once; past it, the memory starts afresh.
DEFAULT_DENIALS_LOGGED = 10000

ERR_INVOKE_DENIED = encodeResponse(PacketType.ERROR, b"0", b"Permission denied by ACL")

#: Admin commands that need the C{admin} right (read-only listings).
ADMIN_COMMANDS = frozenset([b"status", b"prioritystatus", b"workers", b"show", b"version",
                            b"getpid", b"verbose"])
#: Admin commands that need the C{grant} right (they change the server).
#: Any other command L{AdminCommands} knows, but not listed here or in
#: L{ADMIN_COMMANDS}, needs C{grant} too.
GRANT_COMMANDS = frozenset([b"maxqueue", b"create", b"drop", b"shutdown", b"policy", b"retry",
                            b"purge"])
#: Admin commands checked per use: C{cancel job} and C{show result}
#: (invoke on the job's function), C{acl} (per verb).
CHECKED_COMMANDS = frozenset([b"cancel", b"acl"])

Handler = Callable[[Any, bytes], None]


def registerDenied(name: bytes) -> bytes:
    """The ERROR answering a CAN_DO of C{name} the identity may not register."""
    return encodeResponse(PacketType.ERROR, b"PERMISSION_DENIED",
                          b"Permission denied by ACL: may not register " + name)


class AccessGuard:
    """
    Applies an L{AccessControl} to a factory's connections.

    A connection (a L{txgear.server._protocol.GearmanServerProtocol}) is
    asked for its names with C{accessNames()} (computed once, on first use)
    and C{knownNames()} (C{None} before).

    @param access: the rules.
    @param state: the server state.
    @param admin: the admin commands run once allowed.
    @param connections: the factory's live connections, by session.
    @param denialsLogged: how many denials are remembered to be logged once.
    """

    _log = logger()

    def __init__(self, access: AccessControl, state: JobServerState, admin: AdminCommands,
                 connections: Dict[Session, Any],
                 denialsLogged: int = DEFAULT_DENIALS_LOGGED) -> None:
        self.access = access
        self.state = state
        self.admin = admin
        self.connections = connections
        self.denialsLogged = max(1, denialsLogged)
        self._logged: Dict[Tuple[str, str, bytes], None] = {}
        access.addObserver(self.accessChanged)

    def close(self) -> None:
        """Stop following the rules' changes."""
        self.access.removeObserver(self.accessChanged)

    # -- denials -------------------------------------------------------------

    def denied(self, protocol: Any, right: str, what: bytes) -> None:
        """Log, once per identity, right and C{what}, that C{protocol} was refused."""
        identity = self.access.identity(protocol.accessNames())
        key = (identity, right, what)
        logged = self._logged
        if key in logged:
            return
        if len(logged) >= self.denialsLogged:
            logged.clear()
        logged[key] = None
        self._log.warn("Access denied: {identity} has no {right} right for {what} (from {peer}; "
                       "logged once)", identity=identity, right=right,
                       what=text.escape(what[:200]).decode("utf-8", "replace"),
                       peer=protocol._peer())

    # -- changes -------------------------------------------------------------

    def accessChanged(self) -> None:
        """
        The rules changed: take from each connected worker the functions it
        may no longer register (it gets no more of their jobs; one it runs
        may finish and report).
        """
        access = self.access
        for protocol in list(self.connections.values()):
            names = protocol.knownNames()
            session = protocol.session
            if names is None or not session.functions:
                continue
            for function in list(session.functions):
                if not access.allows(names, REGISTER, function.name):
                    self.state.cantDo(session, function.name)
                    self._log.info("{identity} may no longer register {function}: taken from "
                                   "the worker at {peer}", identity=access.identity(names),
                                   function=text.escape(function.name).decode("utf-8", "replace"),
                                   peer=protocol._peer())

    # -- admin ---------------------------------------------------------------

    def runAdmin(self, protocol: Any, line: bytes) -> Tuple[Reply, Optional[str]]:
        """Run an admin line for C{protocol} if its identity may."""
        tokens = line.split()
        if not tokens or len(tokens) > MAX_TOKENS:
            return self.admin.run(protocol.session, line)
        word = tokens[0].lower()
        access = self.access
        if word == b"acl":
            return self._acl(protocol, line, tokens), None
        if word == b"show" and len(tokens) > 1 and tokens[1].lower() == b"result":
            # As GET_STATUS: invoke on the job's function; others look unknown.
            names = protocol.accessNames()

            def visible(function: bytes) -> bool:
                if access.allows(names, INVOKE, function):
                    return True
                self.denied(protocol, INVOKE, function)
                return False

            return self.admin.showResult(tokens[2:], visible), None
        if word == b"cancel":
            if len(tokens) == 3 and tokens[1].lower() == b"job":
                job = self.state.jobs.get(tokens[2])
                if job is not None and not access.allows(protocol.accessNames(), INVOKE,
                                                         job.func.name):
                    self.denied(protocol, INVOKE, job.func.name)
                    return text.err(b"UNKNOWN_JOB"), None
        elif word in ADMIN_COMMANDS:
            if not access.has(protocol.accessNames(), ADMIN):
                self.denied(protocol, ADMIN, word)
                return text.PERMISSION_DENIED, None
        elif word == b"shutdown" and not self.admin.allowShutdown:
            pass  # disabled: answered as an unknown command, whoever asks
        elif word in GRANT_COMMANDS or (
                word.isalpha() and hasattr(self.admin, "command_" + word.decode("ascii"))):
            if not access.has(protocol.accessNames(), GRANT):
                self.denied(protocol, GRANT, word)
                return text.PERMISSION_DENIED, None
        return self.admin.run(protocol.session, line)

    def _acl(self, protocol: Any, line: bytes, tokens: List[bytes]) -> bytes:
        access = self.access
        names = protocol.accessNames()
        if len(tokens) < 2:
            return text.UNKNOWN_ACL_VERB
        command = tokens[1].lower()
        if command == b"list":
            if not (access.has(names, ADMIN) or access.has(names, GRANT)):
                self.denied(protocol, ADMIN, b"acl list")
                return text.PERMISSION_DENIED
            return text.formatAclList(
                (e.name.encode("utf-8"), None if e.register is None else e.register.pattern,
                 None if e.invoke is None else e.invoke.pattern, e.grant, e.admin)
                for e in access.entries())
        if command == b"grant":
            if len(tokens) < 4:
                return text.incompleteArguments(b"acl")
            if not access.has(names, GRANT):
                self.denied(protocol, GRANT, b"acl grant")
                return text.PERMISSION_DENIED
            verb = tokens[2].lower()
            subject = tokens[3].decode("utf-8", "replace")
            if verb in (b"invoke", b"register"):
                parts = line.split(None, 4)
                if len(parts) < 5 or not parts[4].strip():
                    return text.incompleteArguments(b"acl")
                try:
                    pattern = compilePattern(parts[4].strip())
                except re.error as e:
                    return text.aclUnable(b"Regular expression error: "
                                          + str(e).encode("utf-8", "replace"))
                access.grant(verb.decode("ascii"), subject, pattern)
            elif verb in (b"grant", b"admin"):
                access.grant(verb.decode("ascii"), subject)
            else:
                return text.UNKNOWN_ACL_VERB
            self._log.info("{identity} granted {right} to {subject}",
                           identity=access.identity(names), right=verb.decode("ascii"),
                           subject=subject)
            return text.ACL_OK
        if command in (b"revoke", b"self-revoke"):
            mine = command == b"self-revoke"
            if len(tokens) < (3 if mine else 4):
                return text.incompleteArguments(b"acl")
            target: Optional[str] = None
            if mine:
                entry = access.entryFor(names)
                target = entry.name if entry is not None else None
            else:
                target = tokens[3].decode("utf-8", "replace")
                # Anyone may revoke their own rights (as gear).
                if target not in names and not access.has(names, GRANT):
                    self.denied(protocol, GRANT, b"acl revoke")
                    return text.PERMISSION_DENIED
            verb = tokens[2].lower()
            if verb not in (b"invoke", b"register", b"grant", b"admin", b"all"):
                return text.UNKNOWN_ACL_VERB
            if target is not None:
                access.revoke(None if verb == b"all" else verb.decode("ascii"), target)
                self._log.info("{identity} revoked {right} from {subject}",
                               identity=access.identity(names), right=verb.decode("ascii"),
                               subject=target)
            return text.ACL_OK
        return text.UNKNOWN_ACL_VERB


# -- guarded packet handlers -------------------------------------------------


def _byName(plain: Handler, right: str, whole: bool) -> Handler:
    """C{plain}, called only if the connection may use C{right} on the packet's function."""
    def guarded(protocol: Any, body: bytes) -> None:
        if whole:
            name = body
        else:
            end = body.find(b"\0")
            if end < 0:
                plain(protocol, body)  # malformed: the plain handler says so
                return
            name = body[:end]
        # A name is checked before it can be remembered by the access cache.
        if name not in protocol.state.functions and protocol._refusedName(name):
            return
        guard = protocol.factory.guard
        if guard.access.allows(protocol.accessNames(), right, name):
            plain(protocol, body)
            return
        guard.denied(protocol, right, name)
        protocol.state.sendError(protocol.session,
                                 registerDenied(name) if right == REGISTER else ERR_INVOKE_DENIED)

    guarded.__name__ = "_guarded" + getattr(plain, "__name__", "")
    return guarded


def _visibleTo(protocol: Any) -> Callable[[Job], bool]:
    """Whether a job is one the connection may invoke (others look unknown to it)."""
    guard = protocol.factory.guard
    names = protocol.accessNames()

    def visible(job: Job) -> bool:
        if guard.access.allows(names, INVOKE, job.func.name):
            return True
        guard.denied(protocol, INVOKE, job.func.name)
        return False

    return visible


def _getStatus(protocol: Any, body: bytes) -> None:
    protocol.state.getStatus(protocol.session, body, _visibleTo(protocol))


def _getStatusUnique(protocol: Any, body: bytes) -> None:
    protocol.state.getStatusUnique(protocol.session, body, _visibleTo(protocol))


_REGISTERS = {PacketType.CAN_DO: True, PacketType.CAN_DO_TIMEOUT: False}
_INVOKES = (PacketType.SUBMIT_JOB, PacketType.SUBMIT_JOB_BG, PacketType.SUBMIT_JOB_HIGH,
            PacketType.SUBMIT_JOB_HIGH_BG, PacketType.SUBMIT_JOB_LOW, PacketType.SUBMIT_JOB_LOW_BG,
            PacketType.SUBMIT_JOB_EPOCH, PacketType.SUBMIT_JOB_SCHED, PacketType.SUBMIT_REDUCE_JOB,
            PacketType.SUBMIT_REDUCE_JOB_BACKGROUND)


def guardedDispatch(plain: Tuple[Handler, ...]) -> Tuple[Handler, ...]:
    """The dispatch table of connections under access control, from the plain one."""
    table = list(plain)
    for kind, whole in _REGISTERS.items():
        table[kind] = _byName(plain[kind], REGISTER, whole)
    for kind in _INVOKES:
        table[kind] = _byName(plain[kind], INVOKE, False)
    table[PacketType.GET_STATUS] = _getStatus
    table[PacketType.GET_STATUS_UNIQUE] = _getStatusUnique
    return tuple(table)


__all__ = ["ADMIN_COMMANDS", "AccessGuard", "CHECKED_COMMANDS", "DEFAULT_DENIALS_LOGGED",
           "ERR_INVOKE_DENIED", "GRANT_COMMANDS", "guardedDispatch", "registerDenied"]

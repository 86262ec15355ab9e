"""
Tests for access control: the rules (txgear.server._access) and how the
server applies them to every packet and admin command (txgear.server._guard),
over StringTransport with real client certificates.
"""
from __future__ import annotations

import os
import re

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs

from tests._certs import Authority
from txgear._packet import PacketDecoder, PacketType, encodeRequest, splitArguments
from txgear.server import GearmanServerFactory, JobServerState
from txgear.server._access import (
    ADMIN,
    GRANT,
    INVOKE,
    REGISTER,
    AccessControl,
    AccessFileError,
    parseRules,
)
from txgear.server._admin import AdminCommands
from tests._tlskit import EXAMPLE_ACL
from txgear.server._guard import ADMIN_COMMANDS, CHECKED_COMMANDS, GRANT_COMMANDS

P = PacketType

EXAMPLE = EXAMPLE_ACL

DENIED = (P.ERROR, [b"0", b"Permission denied by ACL"])
PERMISSION_DENIED = b"ERR PERMISSION_DENIED\n"


def registerDenied(name):
    return (P.ERROR, [b"PERMISSION_DENIED", b"Permission denied by ACL: may not register " + name])


# -- the rules ----------------------------------------------------------------


def rules(text=EXAMPLE, **kwargs):
    return AccessControl(parseRules(text).values(), **kwargs)


def test_exampleFileRights():
    access = rules()
    assert access.allows(("client-app",), INVOKE, b"resize")
    assert access.allows(("client-app",), INVOKE, b"thumbnail")
    assert not access.allows(("client-app",), REGISTER, b"resize")
    assert access.allows(("worker-app",), REGISTER, b"thumbnail")
    assert not access.allows(("worker-app",), INVOKE, b"thumbnail")
    assert access.has(("ops-admin",), ADMIN) and access.has(("ops-admin",), GRANT)
    assert not access.allows(("ops-admin",), INVOKE, b"resize")
    assert not access.has(("client-app",), ADMIN) and not access.has(("client-app",), GRANT)
    assert access.allows(("anonymous",), INVOKE, b"echo")


def test_patternsMatchTheWholeName():
    """gear's prefix match would let `resize` allow `resizeAll`; txgear's does not."""
    access = rules()
    for name in (b"resizeAll", b"xresize", b"resize|thumbnail", b"resiz", b"", b"resize\n"):
        assert not access.allows(("client-app",), INVOKE, name), name


def test_denyByDefault():
    access = rules("[empty]\n[other]\ninvoke = .*\n")
    assert not access.allows(("stranger",), INVOKE, b"resize")
    assert not access.allows(("empty",), INVOKE, b"resize")
    assert not access.allows(("anonymous",), REGISTER, b"resize")
    assert not access.has(("stranger",), ADMIN) and not access.has(("stranger",), GRANT)
    assert not rules("").allows(("anonymous",), INVOKE, b"x")


def test_theFirstNameWithASectionApplies():
    access = rules("[cn]\n[w1.example]\ninvoke = .*\n[spiffe://x/y]\nregister = .*\n")
    # The common name has a section, empty: it shadows the DNS name's.
    assert not access.allows(("cn", "w1.example"), INVOKE, b"f")
    assert access.identity(("cn", "w1.example")) == "cn"
    assert access.allows(("other", "w1.example", "spiffe://x/y"), INVOKE, b"f")
    assert not access.allows(("other", "w1.example", "spiffe://x/y"), REGISTER, b"f")
    assert access.allows(("other", "spiffe://x/y"), REGISTER, b"f")
    assert access.identity(("nobody", "nothing")) == "nobody"


def test_anyByteNameCanBeMatched():
    access = rules("[a]\ninvoke = \\xff\\x00?.*|résumé\n")
    assert access.allows(("a",), INVOKE, b"\xff\x80binary")
    assert access.allows(("a",), INVOKE, "résumé".encode("utf-8"))
    assert not access.allows(("a",), INVOKE, "résumé".encode("latin-1"))


def test_gearFilesParse():
    access = rules("[zuul]\nregister = merger:.*\ninvoke = build:.*\ngrant = yes\n"
                   "[DEFAULT]\n")
    assert access.allows(("zuul",), REGISTER, b"merger:merge")
    assert access.has(("zuul",), GRANT)


@pytest.mark.parametrize("text, message", [
    ("[a]\ninvoke = ok\n\n[b]\nregister = (unclosed\n",
     "<string>, line 5: [b] register: not a valid regular expression (missing ), "
     "unterminated subpattern at position 0)"),
    ("[a]\nadmin = maybe\n", "<string>, line 2: [a] admin: give true or false, not 'maybe'"),
    ("[a]\ninvokes = .*\n", "<string>, line 2: [a] invokes: unknown right"),
    ("invoke = .*\n", "no section headers"),
    ("[a]\n[a]\n", "line 2"),
    ("[a]\njunk line\n", "line 2"),
])
def test_invalidFilesAreRefusedNamingTheLine(text, message):
    with pytest.raises(AccessFileError) as e:
        parseRules(text)
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_unreadableFile(tmp_path):
    with pytest.raises(AccessFileError, match="cannot read"):
        AccessControl.fromFile(str(tmp_path / "missing.ini"))
    path = tmp_path / "latin1.ini"
    path.write_bytes(b"[a]\n\ninvoke = r\xe9sum\xe9\n")
    with pytest.raises(AccessFileError, match="line 3: not UTF-8"):
        AccessControl.fromFile(str(path))


def test_decisionsAreCachedAndTheCacheIsClearedOnChange():
    access = rules()
    names = ("client-app",)
    assert access.allows(names, INVOKE, b"resize")
    before = access.evaluations
    for _ in range(10):
        assert access.allows(names, INVOKE, b"resize")
    assert access.evaluations == before
    access.revoke(INVOKE, "client-app")
    assert not access.allows(names, INVOKE, b"resize")
    assert access.evaluations == before + 1
    access.grant(INVOKE, "client-app", re.compile(b"resize"))
    assert access.allows(names, INVOKE, b"resize")


def test_theCacheIsBounded():
    access = rules(cacheLimit=3)
    for i in range(50):
        access.allows(("client-app",), INVOKE, b"f%d" % i)
        assert len(access._decisions) <= 3


def test_reloadAppliesTheFileOrKeepsTheRules(tmp_path):
    path = tmp_path / "acl.ini"
    path.write_text(EXAMPLE)
    access = AccessControl.fromFile(str(path))
    changes = []
    access.addObserver(lambda: changes.append(1))
    assert access.allows(("client-app",), INVOKE, b"resize")
    path.write_text("[client-app]\ninvoke = thumbnail\n")
    access.reload()
    assert changes == [1]
    assert not access.allows(("client-app",), INVOKE, b"resize")
    assert access.allows(("client-app",), INVOKE, b"thumbnail")
    path.write_text("[client-app]\ninvoke = (\n")
    with pytest.raises(AccessFileError, match="line 2"):
        access.reload()
    assert access.allows(("client-app",), INVOKE, b"thumbnail")
    assert changes == [1]


def test_revokeKeepsAnEmptyEntry():
    access = rules("[cn]\ninvoke = .*\n[dns]\ninvoke = .*\nadmin = true\n")
    access.revoke(None, "cn")
    assert [e.name for e in access.entries()] == ["cn", "dns"]
    assert not access.allows(("cn", "dns"), INVOKE, b"f")
    assert not access.has(("cn", "dns"), ADMIN)
    access.revoke(None, "unknown")  # nothing to do
    assert "unknown" not in [e.name for e in access.entries()]


def test_everyAdminCommandIsClassified():
    """A new admin command must be given a right here (unlisted ones need grant)."""
    commands = {name[len("command_"):].encode() for name in dir(AdminCommands)
                if name.startswith("command_")}
    assert commands == ADMIN_COMMANDS | GRANT_COMMANDS | CHECKED_COMMANDS


# -- the server ---------------------------------------------------------------


class CertificateTransport(StringTransport):
    """A connection whose peer presented C{certificate} (C{None}: a plain one)."""

    def __init__(self, certificate, port):
        StringTransport.__init__(self, peerAddress=IPv4Address("TCP", "127.0.0.1", port))
        self.certificate = certificate

    def getPeerCertificate(self):
        return self.certificate


class Conn:
    def __init__(self, factory, certificate=None, port=5000):
        self.factory = factory
        self.transport = CertificateTransport(certificate, port)
        self.protocol = factory.buildProtocol(self.transport.getPeer())
        self.protocol.makeConnection(self.transport)
        self.decoder = PacketDecoder(expectRequests=False)

    def send(self, kind, *args):
        self.protocol.dataReceived(encodeRequest(kind, *args))

    def packets(self):
        self.factory.flush()
        data = self.transport.value()
        self.transport.clear()
        return [(kind, splitArguments(kind, body)) for kind, body in self.decoder.feed(data)]

    def admin(self, line):
        self.protocol.dataReceived(line + b"\r\n")
        self.factory.flush()
        data = self.transport.value()
        self.transport.clear()
        return data


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    ca = Authority(str(tmp_path_factory.mktemp("ca")))
    return {name: ca.issue(name).certificate
            for name in ("client-app", "worker-app", "ops-admin", "stranger")}


@pytest.fixture
def factory():
    return GearmanServerFactory(JobServerState(clock=Clock(), handlePrefix=b"H:t"),
                                allowShutdown=True, access=rules())


@pytest.fixture
def conns(factory, certs):
    ports = iter(range(6000, 7000))

    def connect(name):
        return Conn(factory, None if name == "anonymous" else certs[name], next(ports))

    return connect


def test_theIdentityComesFromTheCertificate(conns):
    assert conns("client-app").protocol.accessNames() == ("client-app",)
    assert conns("anonymous").protocol.accessNames() == ("anonymous",)


def test_registerAllowedAndDenied(factory, conns):
    worker = conns("worker-app")
    worker.send(P.CAN_DO, b"resize")
    worker.send(P.CAN_DO_TIMEOUT, b"thumbnail", b"5000")
    assert worker.packets() == []
    assert [f.name for f in worker.protocol.session.functions] == [b"resize", b"thumbnail"]
    client = conns("client-app")
    client.send(P.CAN_DO, b"resize")
    client.send(P.CAN_DO_TIMEOUT, b"thumbnail", b"5000")
    worker.send(P.CAN_DO, b"resizeAll")
    assert client.packets() == [registerDenied(b"resize"), registerDenied(b"thumbnail")]
    assert worker.packets() == [registerDenied(b"resizeAll")]
    assert client.protocol.session.functions == []
    assert b"resizeAll" not in factory.state.functions
    assert factory.state.functions[b"resize"].workers == 1


_SUBMITS = [
    (P.SUBMIT_JOB, []), (P.SUBMIT_JOB_BG, []), (P.SUBMIT_JOB_HIGH, []),
    (P.SUBMIT_JOB_HIGH_BG, []), (P.SUBMIT_JOB_LOW, []), (P.SUBMIT_JOB_LOW_BG, []),
    (P.SUBMIT_JOB_EPOCH, [b"0"]), (P.SUBMIT_JOB_SCHED, [b"", b"", b"", b"", b""]),
    (P.SUBMIT_REDUCE_JOB, [b"reducer", b"none"]),
    (P.SUBMIT_REDUCE_JOB_BACKGROUND, [b"reducer", b"none"]),
]


@pytest.mark.parametrize("kind, middle", _SUBMITS)
def test_everySubmitIsGuardedByInvoke(factory, conns, kind, middle):
    client, worker, anonymous = conns("client-app"), conns("worker-app"), conns("anonymous")
    client.send(kind, b"resize", b"u1", *middle, b"data")
    assert client.packets() == [(P.JOB_CREATED, [b"H:t:1"])]
    for conn, name in ((worker, b"resize"), (client, b"resizeAll"), (anonymous, b"resize")):
        conn.send(kind, name, b"u2", *middle, b"data")
        assert conn.packets() == [DENIED]
    assert list(factory.state.jobs) == [b"H:t:1"]


def test_attachingByUniqueNeedsInvoke(factory, conns):
    client, anonymous = conns("client-app"), conns("anonymous")
    client.send(P.SUBMIT_JOB, b"resize", b"secret-unique", b"data")
    assert client.packets() == [(P.JOB_CREATED, [b"H:t:1"])]
    anonymous.send(P.SUBMIT_JOB, b"resize", b"secret-unique", b"")
    assert anonymous.packets() == [DENIED]
    assert factory.state.jobs[b"H:t:1"].clients == [client.protocol.session]


def test_largeSubmissionsAreGuardedToo(conns):
    client, anonymous = conns("client-app"), conns("anonymous")
    payload = b"x" * (200 * 1024)
    client.send(P.SUBMIT_JOB, b"resize", b"", payload)
    anonymous.send(P.SUBMIT_JOB, b"resize", b"", payload)
    assert client.packets() == [(P.JOB_CREATED, [b"H:t:1"])]
    assert anonymous.packets() == [DENIED]


def test_statusOfAJobOneMayNotInvokeLooksUnknown(conns):
    client, anonymous = conns("client-app"), conns("anonymous")
    client.send(P.SUBMIT_JOB_BG, b"resize", b"u-1", b"data")
    assert client.packets() == [(P.JOB_CREATED, [b"H:t:1"])]
    anonymous.send(P.SUBMIT_JOB_BG, b"echo", b"u-1", b"data")
    assert anonymous.packets() == [(P.JOB_CREATED, [b"H:t:2"])]
    client.send(P.GET_STATUS, b"H:t:1")
    client.send(P.GET_STATUS_UNIQUE, b"u-1")
    assert client.packets() == [(P.STATUS_RES, [b"H:t:1", b"1", b"0", b"0", b"0"]),
                                (P.STATUS_RES_UNIQUE, [b"u-1", b"1", b"0", b"0", b"0", b"0"])]
    anonymous.send(P.GET_STATUS, b"H:t:1")
    anonymous.send(P.GET_STATUS, b"H:t:2")
    anonymous.send(P.GET_STATUS, b"H:t:99")
    assert anonymous.packets() == [(P.STATUS_RES, [b"H:t:1", b"0", b"0", b"0", b"0"]),
                                   (P.STATUS_RES, [b"H:t:2", b"1", b"0", b"0", b"0"]),
                                   (P.STATUS_RES, [b"H:t:99", b"0", b"0", b"0", b"0"])]
    # Both jobs share the unique: each identity sees only its own.
    stranger = conns("stranger")
    stranger.send(P.GET_STATUS_UNIQUE, b"u-1")
    assert stranger.packets() == [(P.STATUS_RES_UNIQUE, [b"u-1", b"0", b"0", b"0", b"0", b"0"])]
    anonymous.send(P.GET_STATUS_UNIQUE, b"u-1")
    assert anonymous.packets() == [(P.STATUS_RES_UNIQUE, [b"u-1", b"1", b"0", b"0", b"0", b"0"])]


def test_cancelJobNeedsInvokeOnItsFunction(factory, conns):
    client, anonymous, admin = conns("client-app"), conns("anonymous"), conns("ops-admin")
    client.send(P.SUBMIT_JOB_BG, b"resize", b"", b"a")
    client.send(P.SUBMIT_JOB_BG, b"resize", b"", b"b")
    client.packets()
    assert anonymous.admin(b"cancel job H:t:1") == b"ERR UNKNOWN_JOB\r\n"
    assert admin.admin(b"cancel job H:t:1") == b"ERR UNKNOWN_JOB\r\n"
    assert anonymous.admin(b"cancel job H:t:99") == b"ERR UNKNOWN_JOB\r\n"
    assert b"H:t:1" in factory.state.jobs
    assert client.admin(b"cancel job H:t:1") == b"OK\r\n"
    assert b"H:t:1" not in factory.state.jobs


def test_showResultNeedsInvokeOnItsFunction(factory, conns):
    """As GET_STATUS: the result of a job whose function one may not invoke looks unknown."""
    from tests.test_server_kept import complete
    factory.state.policies.set(b"resize", "keep:1h")
    client, anonymous, admin = conns("client-app"), conns("anonymous"), conns("ops-admin")
    client.send(P.SUBMIT_JOB_BG, b"resize", b"u-9", b"a")
    client.packets()
    complete(factory.state, b"H:t:1", b"\x00done\n", b"resize")
    assert client.admin(b"show result H:t:1") == b"OK complete 6\n\x00done\n\n"
    assert client.admin(b"show result unique resize u-9") == b"OK complete 6\n\x00done\n\n"
    assert anonymous.admin(b"show result H:t:1") == b"ERR UNKNOWN_JOB\r\n"
    assert admin.admin(b"show result unique resize u-9") == b"ERR UNKNOWN_JOB\r\n"


_ADMIN_LINES = [b"status", b"prioritystatus", b"workers", b"show jobs", b"show unique jobs",
                b"version", b"getpid", b"verbose", b"show dead", b"show dead resize"]


@pytest.mark.parametrize("line", _ADMIN_LINES)
def test_listingsNeedAdmin(conns, line):
    plain = Conn(GearmanServerFactory(JobServerState(clock=Clock(), handlePrefix=b"H:t")))
    expected = plain.admin(line)
    for name in ("client-app", "worker-app", "anonymous", "stranger"):
        assert conns(name).admin(line) == PERMISSION_DENIED
    reply = conns("ops-admin").admin(line)
    if line == b"getpid":
        assert reply == b"OK %d\n" % os.getpid()
    elif line == b"workers":  # one line per connection, each of them
        assert reply.count(b"\n") == len(conns("anonymous").factory.connections)
    else:
        assert reply == expected


@pytest.mark.parametrize("line, effect", [
    (b"maxqueue resize 1", lambda s: s.functions[b"resize"].maxQueue == [1, 1, 1]),
    (b"create function made", lambda s: b"made" in s.functions),
    (b"drop function kept", lambda s: b"kept" not in s.functions),
])
def test_changesNeedGrant(factory, conns, line, effect):
    state = factory.state
    state.createFunction(b"resize")
    state.createFunction(b"kept")
    for name in ("client-app", "worker-app", "anonymous"):
        assert conns(name).admin(line) == PERMISSION_DENIED
        assert not effect(state)
    assert conns("ops-admin").admin(line) == b"OK\r\n"
    assert effect(state)


@pytest.mark.parametrize("line, reply", [
    (b"retry dead H:t:1", b"ERR UNKNOWN_JOB\r\n"),
    (b"retry dead function resize", b"OK 0\n"),
    (b"purge dead", b"OK 0\n"),
    (b"purge dead resize", b"OK 0\n"),
])
def test_deadSetChangesNeedGrant(conns, line, reply):
    for name in ("client-app", "worker-app", "anonymous"):
        assert conns(name).admin(line) == PERMISSION_DENIED
    assert conns("ops-admin").admin(line) == reply


def test_shutdownNeedsGrant(conns):
    calls = []
    factory = conns("anonymous").factory
    factory._shutdown = lambda graceful: calls.append(graceful)
    assert conns("client-app").admin(b"shutdown") == PERMISSION_DENIED
    assert calls == []
    assert conns("ops-admin").admin(b"shutdown graceful") == b"OK\n"
    assert calls == [True]


def test_unknownCommandsAreAnsweredAsBefore(conns):
    assert conns("anonymous").admin(b"frobnicate") == (
        b"ERR UNKNOWN_COMMAND Unknown+server+commandfrobnicate\r\n")


def test_disabledShutdownIsUnknownToEveryone():
    factory = GearmanServerFactory(JobServerState(clock=Clock()), access=rules())
    assert Conn(factory).admin(b"shutdown") == b"ERR UNKNOWN_COMMAND Unknown+server+commandshutdown\r\n"


# -- the acl commands ------------------------------------------------------------


LIST = (b"anonymous\tregister=None\tinvoke=echo\tgrant=False\tadmin=False\n"
        b"client-app\tregister=None\tinvoke=resize|thumbnail\tgrant=False\tadmin=False\n"
        b"ops-admin\tregister=None\tinvoke=None\tgrant=True\tadmin=True\n"
        b"worker-app\tregister=resize|thumbnail\tinvoke=None\tgrant=False\tadmin=False\n"
        b".\n")


@pytest.mark.parametrize("line", [b"acl list", b"acl grant invoke x .*", b"acl grant grant x",
                                  b"acl revoke all x", b"acl self-revoke all", b"acl bogus",
                                  b"acl"])
def test_aclCommandsWithAccessControlOff(line):
    conn = Conn(GearmanServerFactory(JobServerState(clock=Clock())))
    assert conn.admin(line) == b"ERR ACL_DISABLED\n"


def test_aclListNeedsAdminOrGrant(factory, conns):
    assert conns("ops-admin").admin(b"acl list") == LIST
    assert conns("client-app").admin(b"acl list") == PERMISSION_DENIED
    factory.access.grant(GRANT, "granter")
    factory.access.grant(ADMIN, "reader")
    assert conns("anonymous").admin(b"acl list") == PERMISSION_DENIED
    assert Conn(factory, None).admin(b"acl list") == PERMISSION_DENIED
    for name in ("granter", "reader"):
        conn = Conn(factory)
        conn.protocol._names = (name,)
        assert conn.admin(b"acl list").endswith(b"worker-app\tregister=resize|thumbnail"
                                                b"\tinvoke=None\tgrant=False\tadmin=False\n.\n")


def test_aclGrant(factory, conns):
    admin, anonymous = conns("ops-admin"), conns("anonymous")
    assert admin.admin(b"acl grant invoke anonymous resize|echo") == b"OK\n"
    anonymous.send(P.SUBMIT_JOB, b"resize", b"", b"x")
    assert anonymous.packets() == [(P.JOB_CREATED, [b"H:t:1"])]
    assert admin.admin(b"acl grant register newcomer a b") == b"OK\n"  # the rest of the line
    assert factory.access.allows(("newcomer",), REGISTER, b"a b")
    assert admin.admin(b"acl grant grant anonymous") == b"OK\n"
    assert admin.admin(b"acl grant admin anonymous") == b"OK\n"
    assert anonymous.admin(b"acl list").startswith(
        b"anonymous\tregister=None\tinvoke=resize|echo\tgrant=True\tadmin=True\n")
    assert admin.admin(b"acl grant bogus anonymous") == b"ERR UNKNOWN_ACL_VERB\n"
    assert admin.admin(b"acl grant invoke anonymous (") == (
        b"ERR UNABLE Regular expression error: missing ), unterminated subpattern at position 0\n")
    assert factory.access.allows(("anonymous",), INVOKE, b"echo")
    assert admin.admin(b"acl grant invoke anonymous").startswith(b"ERR INVALID_ARGUMENTS")


def test_aclGrantNeedsGrant(factory, conns):
    for name in ("client-app", "worker-app"):
        assert conns(name).admin(b"acl grant invoke %s .*" % name.encode()) == PERMISSION_DENIED
        assert conns(name).admin(b"acl grant bogus x") == PERMISSION_DENIED
    assert not factory.access.allows(("client-app",), INVOKE, b"anything")


def test_aclRevoke(factory, conns):
    admin = conns("ops-admin")
    for verb, check in ((b"invoke", lambda a: not a.allows(("client-app",), INVOKE, b"resize")),
                        (b"register", lambda a: not a.allows(("client-app",), REGISTER, b"r")),
                        (b"admin", lambda a: not a.has(("client-app",), ADMIN)),
                        (b"grant", lambda a: not a.has(("client-app",), GRANT))):
        factory.access.grant(ADMIN, "client-app")
        factory.access.grant(GRANT, "client-app")
        factory.access.grant(REGISTER, "client-app", re.compile(b"r"))
        factory.access.grant(INVOKE, "client-app", re.compile(b"resize"))
        assert admin.admin(b"acl revoke " + verb + b" client-app") == b"OK\n"
        assert check(factory.access)
    assert admin.admin(b"acl revoke all worker-app") == b"OK\n"
    assert not factory.access.allows(("worker-app",), REGISTER, b"resize")
    assert admin.admin(b"acl revoke all nobody") == b"OK\n"
    assert admin.admin(b"acl revoke bogus worker-app") == b"ERR UNKNOWN_ACL_VERB\n"


def test_aclRevokeOfOthersNeedsGrantButOfOneselfNot(factory, conns):
    client = conns("client-app")
    assert client.admin(b"acl revoke invoke worker-app") == PERMISSION_DENIED
    assert client.admin(b"acl revoke bogus worker-app") == PERMISSION_DENIED
    assert client.admin(b"acl revoke invoke client-app") == b"OK\n"
    assert not factory.access.allows(("client-app",), INVOKE, b"resize")


def test_aclSelfRevoke(factory, conns):
    worker, admin = conns("worker-app"), conns("ops-admin")
    assert worker.admin(b"acl self-revoke bogus") == b"ERR UNKNOWN_ACL_VERB\n"
    assert worker.admin(b"acl self-revoke register") == b"OK\n"
    assert not factory.access.allows(("worker-app",), REGISTER, b"resize")
    assert conns("stranger").admin(b"acl self-revoke all") == b"OK\n"
    assert admin.admin(b"acl self-revoke admin") == b"OK\n"
    assert admin.admin(b"status") == PERMISSION_DENIED
    assert admin.admin(b"acl self-revoke all") == b"OK\n"
    assert admin.admin(b"acl list") == PERMISSION_DENIED


def test_unknownAclVerbs(conns):
    for line in (b"acl", b"acl bogus", b"acl lists"):
        assert conns("ops-admin").admin(line) == b"ERR UNKNOWN_ACL_VERB\n"


# -- changes on open connections -----------------------------------------------------


def test_aRevokedWorkerGetsNoMoreJobsButFinishesItsOwn(factory, conns):
    worker, client, admin = conns("worker-app"), conns("client-app"), conns("ops-admin")
    worker.send(P.CAN_DO, b"resize")
    worker.send(P.CAN_DO, b"thumbnail")
    client.send(P.SUBMIT_JOB, b"resize", b"", b"first")
    worker.send(P.GRAB_JOB)
    assert worker.packets() == [(P.JOB_ASSIGN, [b"H:t:1", b"resize", b"first"])]
    worker.send(P.PRE_SLEEP)
    assert admin.admin(b"acl grant register worker-app thumbnail") == b"OK\n"
    assert [f.name for f in worker.protocol.session.functions] == [b"thumbnail"]
    assert factory.state.functions[b"resize"].workers == 0
    client.send(P.SUBMIT_JOB, b"resize", b"", b"second")
    assert worker.packets() == []  # not woken
    worker.send(P.GRAB_JOB)
    assert worker.packets() == [(P.NO_JOB, [])]
    # The running job may still finish.
    worker.send(P.WORK_COMPLETE, b"H:t:1", b"done")
    assert client.packets() == [(P.JOB_CREATED, [b"H:t:1"]), (P.JOB_CREATED, [b"H:t:2"]),
                                (P.WORK_COMPLETE, [b"H:t:1", b"done"])]
    # Registering it again is refused.
    worker.send(P.CAN_DO, b"resize")
    assert worker.packets() == [registerDenied(b"resize")]


def test_aSelfRevokedWorkerLosesItsFunctionsAtOnce(factory, conns):
    worker = conns("worker-app")
    worker.send(P.CAN_DO, b"resize")
    assert worker.admin(b"acl self-revoke all") == b"OK\n"
    assert worker.protocol.session.functions == []


def test_aClientGainsInvokeOnItsOpenConnection(conns):
    anonymous, admin = conns("anonymous"), conns("ops-admin")
    anonymous.send(P.SUBMIT_JOB, b"resize", b"", b"x")
    assert anonymous.packets() == [DENIED]
    assert admin.admin(b"acl grant invoke anonymous resize") == b"OK\n"
    anonymous.send(P.SUBMIT_JOB, b"resize", b"", b"x")
    assert anonymous.packets() == [(P.JOB_CREATED, [b"H:t:1"])]


def test_reloadAppliesToOpenConnections(tmp_path, certs):
    path = tmp_path / "acl.ini"
    path.write_text(EXAMPLE)
    factory = GearmanServerFactory(JobServerState(clock=Clock(), handlePrefix=b"H:t"),
                                   access=AccessControl.fromFile(str(path)))
    worker, client = Conn(factory, certs["worker-app"]), Conn(factory, certs["client-app"], 5001)
    worker.send(P.CAN_DO, b"resize")
    worker.send(P.CAN_DO, b"thumbnail")
    path.write_text("[worker-app]\nregister = thumbnail\n[client-app]\ninvoke = resize\n")
    factory.access.reload()
    assert [f.name for f in worker.protocol.session.functions] == [b"thumbnail"]
    client.send(P.SUBMIT_JOB, b"thumbnail", b"", b"x")
    client.send(P.SUBMIT_JOB, b"resize", b"", b"x")
    assert client.packets() == [DENIED, (P.JOB_CREATED, [b"H:t:1"])]


def test_workResultsAreOnlyAcceptedFromTheWorkerHoldingTheJob(factory, conns, certs):
    client, holder = conns("client-app"), conns("worker-app")
    other = Conn(factory, certs["worker-app"], 7001)
    for worker in (holder, other):
        worker.send(P.CAN_DO, b"resize")
    client.send(P.SUBMIT_JOB, b"resize", b"", b"x")
    holder.send(P.GRAB_JOB)
    assert holder.packets()[0][0] == P.JOB_ASSIGN
    client.packets()
    other.send(P.WORK_STATUS, b"H:t:1", b"1", b"2")
    other.send(P.WORK_DATA, b"H:t:1", b"forged")
    other.send(P.WORK_WARNING, b"H:t:1", b"forged")
    other.send(P.WORK_EXCEPTION, b"H:t:1", b"forged")
    other.send(P.WORK_FAIL, b"H:t:1")
    other.send(P.WORK_COMPLETE, b"H:t:1", b"forged")
    assert [args[0] for kind, args in other.packets()] == [b"JOB_NOT_FOUND"] * 6
    assert client.packets() == []
    holder.send(P.WORK_COMPLETE, b"H:t:1", b"real")
    assert client.packets() == [(P.WORK_COMPLETE, [b"H:t:1", b"real"])]


# -- logging, and no cost when off ----------------------------------------------------------


def test_eachDenialIsLoggedOncePerIdentityAndFunction(conns):
    anonymous, client = conns("anonymous"), conns("client-app")
    with capturedLogs() as events:
        for _ in range(3):
            anonymous.send(P.SUBMIT_JOB, b"resize", b"", b"x")
            client.send(P.SUBMIT_JOB, b"resizeAll", b"", b"x")
            anonymous.admin(b"status")
            conns("anonymous").send(P.CAN_DO, b"resize")
    denials = [e for e in events if "Access denied" in e.get("log_format", "")]
    assert sorted((e["identity"], e["right"], e["what"]) for e in denials) == [
        ("anonymous", "admin", "status"), ("anonymous", "invoke", "resize"),
        ("anonymous", "register", "resize"), ("client-app", "invoke", "resizeAll")]


def test_theDenialLogIsBounded(conns):
    anonymous = conns("anonymous")
    guard = anonymous.factory.guard
    guard.denialsLogged = 5
    for i in range(40):
        anonymous.send(P.SUBMIT_JOB, b"f%d" % i, b"", b"x")
        assert len(guard._logged) <= 5


def test_noIdentityIsComputedWithAccessControlOff():
    factory = GearmanServerFactory(JobServerState(clock=Clock(), handlePrefix=b"H:t"))
    conn = Conn(factory, "not a certificate")
    conn.send(P.CAN_DO, b"f")
    conn.send(P.SUBMIT_JOB, b"f", b"", b"x")
    conn.send(P.GET_STATUS, b"H:t:1")
    assert [kind for kind, args in conn.packets()] == [P.JOB_CREATED, P.STATUS_RES]
    assert conn.admin(b"status") == b"f\t1\t0\t1\n.\n"
    assert conn.admin(b"cancel job H:t:1").endswith(b"OK\r\n")  # after its WORK_FAIL
    assert conn.protocol.knownNames() is None
    assert factory.guard is None
    from txgear.server._protocol import _DISPATCH
    assert conn.protocol._table is _DISPATCH


def test_namesAreComputedOncePerConnection(factory, certs, monkeypatch):
    from txgear.server import _protocol
    calls = []
    real = _protocol.peerNames
    monkeypatch.setattr(_protocol, "peerNames", lambda t: calls.append(t) or real(t))
    conn = Conn(factory, certs["client-app"])
    assert calls == []
    for _ in range(3):
        conn.send(P.SUBMIT_JOB, b"resize", b"", b"x")
    conn.admin(b"status")
    assert len(calls) == 1

"""The admin commands 'policy FUNCTION SPEC' and 'show policies' (txgear.server._admin), exact replies."""
from __future__ import annotations

from twisted.internet.task import Clock

from txgear.server._admin import AdminCommands
from txgear.server._state import JobServerState


def admin():
    state = JobServerState(clock=Clock(), handlePrefix=b"H:t", jobRetries=2)
    commands = AdminCommands(state, lambda session: (b"1", b"127.0.0.1"), maxFunctionName=16)
    return state, lambda line: commands.run(None, line)[0]


def test_showPoliciesDefault():
    _, run = admin()
    assert run(b"show policies") == b"*\tattempts:2,backoff:0,on:lost+timeout\n.\n"
    assert run(b"SHOW POLICIES") == b"*\tattempts:2,backoff:0,on:lost+timeout\n.\n"


def test_policySetsAndListsEscaped():
    state, run = admin()
    assert run(b"policy resize attempts:5,backoff:2s..10m,on:lost+timeout+fail") == b"OK\r\n"
    assert run(b"policy \\a\xc3\xa9 on:exception") == b"OK\r\n"
    assert run(b"policy * backoff:1s") == b"OK\r\n"
    assert run(b"show policies") == (
        b"*\tattempts:2,backoff:1s,on:lost+timeout\n"
        b"\\x5ca\xc3\xa9\tattempts:2,backoff:0,on:exception\n"
        b"resize\tattempts:5,backoff:2s..10m,on:lost+timeout+fail\n.\n")
    assert state.policies.forFunction(b"resize").attempts == 5


def test_policyMistakes():
    state, run = admin()
    assert run(b"policy") == (b"ERR INVALID_ARGUMENTS An+incomplete+set+of+arguments+was+sent+"
                              b"to+this+command+policy\r\n")
    assert run(b"policy f") == run(b"policy")
    assert run(b"policy f attempts:1 extra") == run(b"policy")
    assert run(b"policy f attempts:x\x01") == (
        b"ERR INVALID_POLICY attempts+must+be+a+whole+number+from+0+(no+limit)+to+1000000,+"
        b"not+'x\\x5cx01'\r\n")
    assert run(b"policy f idempotent:yes").startswith(
        b"ERR INVALID_POLICY idempotent:yes+needs+keep:TTL")
    assert run(b"policy " + b"f" * 17 + b" attempts:2").startswith(b"ERR ARGUMENT_TOO_LARGE")
    assert list(state.policies.rows()) == [(b"*", "attempts:2,backoff:0,on:lost+timeout")]

# -*- test-case-name: tests.test_tap -*-
"""
Command-line behaviour shared by txgear's twistd plugins (C{twistd gearman},
C{twistd gearman-worker}): a mistake is one line naming the option, exit
status 2, instead of twistd's full help and a bare C{int()} error; and
C{--version} gives txgear's version.
"""
from __future__ import annotations

import platform
import sys
from typing import Any, Callable, List, Optional, Sequence

from twisted.python import usage

from txgear._version import __version__

#: The exit status of a usage mistake (as the console scripts).
USAGE = 2

_KINDS = {int: "a whole number", float: "a number"}


def namedCoercions(parameters: List[List[Any]]) -> List[List[Any]]:
    """
    C{optParameters} whose coercions, on a bad value, name their option and
    say what to give instead (twistd alone says only C{invalid literal for
    int() with base 10}).
    """
    named = []
    for row in parameters:
        if len(row) >= 5 and row[4] is not None:
            row = list(row[:4]) + [_naming(row[0], row[4])] + list(row[5:])
        named.append(row)
    return named


def _naming(name: str, coerce: Callable[[str], Any]) -> Callable[[str], Any]:
    kind = _KINDS.get(coerce)  # type: ignore[call-overload]

    def convert(value: str) -> Any:
        try:
            return coerce(value)
        except ValueError as e:
            if kind is not None:
                raise ValueError(f"--{name}: give {kind}, not {value!r}")
            raise ValueError(f"--{name}: {e}")
    convert.coerceDoc = getattr(coerce, "coerceDoc", "")  # type: ignore[attr-defined]
    return convert


class PluginOptions(usage.Options):
    """
    L{usage.Options} for a twistd plugin. Parsed by twistd (with a parent),
    a mistake prints C{<command>: <what is wrong>} on standard error and exits
    with status 2; parsed directly (tests, embedding), it raises
    L{usage.UsageError} as usual.

    @cvar command: how the user runs it, e.g. C{"twistd gearman"}.
    """

    command = "twistd"

    def opt_version(self) -> None:
        """Display txgear's version and exit."""
        sys.stdout.write(f"{self.command} (txgear) {__version__}, Twisted {_twistedVersion()}, "
                         f"{platform.python_implementation()} {platform.python_version()}\n")
        sys.stdout.flush()
        sys.exit(0)

    def parseOptions(self, options: Optional[Sequence[str]] = None) -> None:
        try:
            usage.Options.parseOptions(self, options)
        except usage.UsageError as e:
            if getattr(self, "parent", None) is None:
                raise
            exitWithMistake(self.command, f"{e} (see {self.command} --help)")


def exitWithMistake(command: str, message: str) -> None:
    """Report a usage mistake on one line and exit with status 2."""
    prefix = "Parameter type enforcement failed: "
    if message.startswith(prefix):
        message = message[len(prefix):]
    sys.stderr.write(f"{command}: {message}\n")
    sys.stderr.flush()
    sys.exit(USAGE)


def _twistedVersion() -> str:
    from twisted import __version__ as version

    return str(version)


__all__ = ["PluginOptions", "namedCoercions", "exitWithMistake", "USAGE"]

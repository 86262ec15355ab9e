# -*- test-case-name: tests.test_worker_tap -*-
"""
C{twistd gearman-worker}: run Python functions as Gearman workers (see
L{USAGE_TEXT}, which C{--help} shows).
"""
from __future__ import annotations

import importlib
import os
import sys
from typing import Any, List, Optional, Tuple

from twisted.python import usage

from txgear._address import parseAddress
from txgear._pluginoptions import PluginOptions, namedCoercions
from txgear.worker import GearmanWorker, JobFunction


def loadCallable(spec: str) -> JobFunction:
    """
    Import C{package.module:attribute} (the attribute may be dotted).

    @raise usage.UsageError: the spec is malformed or names nothing callable.
    """
    if ":" not in spec:
        raise usage.UsageError(f"{spec!r} should be package.module:callable")
    moduleName, attribute = spec.split(":", 1)
    _importFromWorkingDirectory()
    try:
        target: Any = importlib.import_module(moduleName)
    except ImportError as e:
        raise usage.UsageError(f"cannot import {moduleName!r}: {e}")
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise usage.UsageError(f"{moduleName!r} has no attribute {attribute!r}")
    if not callable(target):
        raise usage.UsageError(f"{spec!r} is not callable")
    return target  # type: ignore[no-any-return]


def parseFunction(value: str) -> Tuple[str, str]:
    """Split C{name=module:callable} (name optional) into C{(name, spec)}."""
    if "=" in value.split(":", 1)[0]:
        name, spec = value.split("=", 1)
    else:
        spec = value
        name = value.rsplit(":", 1)[-1].rsplit(".", 1)[-1]
    if not name:
        raise usage.UsageError(f"empty function name in {value!r}")
    return name, spec


#: The help text of C{twistd gearman-worker} (plain text: C{--help} shows it as is).
USAGE_TEXT = (
    "Run Python functions as Gearman workers, e.g. twistd -n gearman-worker --server gear1 "
    "--server gear2:4731 --function resize=myapp.jobs:resize --module myapp.morejobs "
    "--concurrency 8. A --function is NAME=package.module:callable, or "
    "package.module:callable named after the callable. A --module declares its functions "
    "with a mapping gearmanFunctions = {'name': callable or (callable, timeoutSeconds)}, or "
    "with a function registerFunctions(worker) that calls worker.register(...). Modules are "
    "imported from the working directory too. With --tls-ca (and --tls-cert, --tls-key for a "
    "client certificate) every host:port server is reached over TLS, its certificate verified. "
    "Exit status: 2 for a mistake in these options.")


def _positiveSeconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = 0.0
    if not seconds > 0:
        raise ValueError(f"give a number of seconds, more than 0, not {value!r}")
    return seconds


def _seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not seconds >= 0:
        raise ValueError(f"give a number of seconds, 0 or more, not {value!r}")
    return seconds


class Options(PluginOptions):
    """Command line of C{twistd gearman-worker}."""

    command = "twistd gearman-worker"
    synopsis = "[options]"
    longdesc = USAGE_TEXT
    optParameters = namedCoercions([
        ["concurrency", "c", 1, "Most jobs run at once, across all servers.", int],
        ["timeout", "t", None, "Seconds a job may run (CAN_DO_TIMEOUT), for every function "
                               "without its own timeout.", _positiveSeconds],
        ["grace", "g", 30.0, "Seconds running jobs get to finish when stopping.", _seconds],
        ["client-id", None, None, "Name shown in the server's 'workers' listing."],
        ["tls-ca", None, None, "Connect with TLS: verify servers' certificates against this "
                               "CA (PEM) and the server's host name or IP address."],
        ["tls-cert", None, None, "Connect with TLS: present this client certificate (PEM; "
                                 "the file may also hold its key)."],
        ["tls-key", None, None, "The private key (PEM) of --tls-cert."],
    ])

    def __init__(self) -> None:
        usage.Options.__init__(self)
        self["servers"] = []
        self["functions"] = []
        self["modules"] = []

    def opt_server(self, value: str) -> None:
        """Job server: host, host:port, [v6]:port or a client endpoint string such as tls:host:4730 (repeatable) [default: localhost:4730]"""
        try:
            parseAddress(value)
        except ValueError as e:
            raise usage.UsageError(f"--server: {e}")
        self["servers"].append(value)

    opt_s = opt_server

    def opt_function(self, value: str) -> None:
        """NAME=package.module:callable to register (repeatable)"""
        self["functions"].append(parseFunction(value))

    opt_f = opt_function

    def opt_module(self, value: str) -> None:
        """package.module whose gearmanFunctions mapping (or registerFunctions(worker)) declares functions (repeatable)"""
        self["modules"].append(value)

    opt_m = opt_module

    def postOptions(self) -> None:
        if not self["servers"]:
            self["servers"] = ["localhost:4730"]
        if not self["functions"] and not self["modules"]:
            raise usage.UsageError("give at least one --function or --module")
        if self["concurrency"] < 1:
            raise usage.UsageError("--concurrency must be at least 1")
        from txgear._tlsclient import tlsOptionsFrom

        try:
            self["tls"] = tlsOptionsFrom(self["tls-ca"], self["tls-cert"], self["tls-key"])
            if self["tls"] is not None:
                for server in self["servers"]:
                    parseAddress(server).checkEncrypts()
        except ValueError as e:
            raise usage.UsageError(str(e))
        # Import now, so mistakes are reported before the service starts.
        self["loaded"] = [(name, loadCallable(spec)) for name, spec in self["functions"]]
        self["loadedModules"] = [_loadModule(name) for name in self["modules"]]


def _importFromWorkingDirectory() -> None:
    # As "python script.py" would: a module next to the user is found without
    # PYTHONPATH. Appended, so it never shadows an installed module.
    here = os.getcwd()
    if here not in sys.path and "" not in sys.path:
        sys.path.append(here)


def _loadModule(name: str) -> Any:
    _importFromWorkingDirectory()
    try:
        module = importlib.import_module(name)
    except ImportError as e:
        raise usage.UsageError(f"cannot import {name!r}: {e}")
    if not hasattr(module, "gearmanFunctions") and not hasattr(module, "registerFunctions"):
        raise usage.UsageError(f"{name!r} has neither gearmanFunctions nor registerFunctions")
    return module


def registerModule(worker: GearmanWorker, module: Any, defaultTimeout: Optional[float] = None) -> List[str]:
    """
    Register the functions a module declares (see the module docstring).

    @return: the names registered.
    """
    names: List[str] = []
    if hasattr(module, "registerFunctions"):
        before = set(worker.factory.functions)
        module.registerFunctions(worker)
        names.extend(n.decode("utf-8", "replace") for n in set(worker.factory.functions) - before)
    for name, value in dict(getattr(module, "gearmanFunctions", {})).items():
        timeout = defaultTimeout
        if isinstance(value, tuple):
            value, timeout = value
        worker.register(name, value, timeout)
        names.append(name)
    return names


def makeService(options: Options, reactor: Any = None) -> GearmanWorker:
    """The L{GearmanWorker} service the options describe."""
    worker = GearmanWorker(options["servers"], concurrency=options["concurrency"],
                           clientId=options["client-id"], grace=options["grace"], reactor=reactor,
                           tls=options.get("tls"))
    for name, function in options["loaded"]:
        worker.register(name, function, options["timeout"])
    for module in options["loadedModules"]:
        registerModule(worker, module, options["timeout"])
    return worker


__all__ = ["Options", "makeService", "loadCallable", "registerModule"]

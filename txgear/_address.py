# -*- test-case-name: tests.test_address -*-
"""
Job server addresses as users write them, turned into client endpoints.

Accepted forms:
  - C{"host"}: TCP to C{host} on the Gearman port, 4730;
  - C{"host:port"}, C{"[v6addr]"}, C{"[v6addr]:port"}, or a bare IPv6
    literal such as C{"::1"};
  - any Twisted client endpoint string, e.g. C{"tcp:host=a:port=4730"},
    C{"tls:a:4730:trustRoots=/etc/gearman/ca:certificate=c.pem"},
    C{"unix:/run/gearman.sock"}.

With L{txgear._tlsclient.TLSOptions}, plain host forms connect with TLS.

Plain host forms use L{HostnameEndpoint}, which resolves names to IPv4 and
IPv6 addresses and tries them all.
"""
from __future__ import annotations

import re
from typing import Any, Optional

from twisted.internet.endpoints import HostnameEndpoint, clientFromString
from twisted.internet.interfaces import IStreamClientEndpoint

#: The IANA port of Gearman.
DEFAULT_PORT = 4730
#: Client endpoint string prefixes that encrypt.
_TLS_PREFIXES = ("tls", "ssl")

_HOST_PORT = re.compile(r"^([^:\[\]]+)(?::(\d+))?$")
_BRACKETED = re.compile(r"^\[([0-9A-Fa-f:.%a-zA-Z0-9]+)\](?::(\d+))?$")
_BARE_V6 = re.compile(r"^[0-9A-Fa-f]*:[0-9A-Fa-f:.]*:[0-9A-Fa-f:.%a-zA-Z0-9]*$")


class ServerAddress:
    """
    One job server's address.

    @ivar text: the address exactly as the user gave it (used in messages and
        as the server's name in L{txgear.client.BackgroundJob}).
    @ivar host: the host name or address for plain host forms, else C{None}.
    @ivar port: the port for plain host forms, else C{None}.
    @ivar description: a client endpoint description, for endpoint strings;
        C{None} for plain host forms.
    """

    __slots__ = ("text", "host", "port", "description")

    def __init__(self, text: str, host: Optional[str] = None, port: Optional[int] = None,
                 description: Optional[str] = None) -> None:
        self.text = text
        self.host = host
        self.port = port
        self.description = description

    def endpoint(self, reactor: Any, timeout: float = 30.0, tls: Any = None,
                 clock: Any = None) -> IStreamClientEndpoint:
        """
        A client endpoint that connects to this server.

        @param reactor: the reactor to connect with.
        @param timeout: connect timeout in seconds (plain host forms only;
            endpoint strings carry their own C{timeout=} parameter).
        @param tls: a L{txgear._tlsclient.TLSOptions}: plain host forms
            connect with TLS and verify the server's certificate against the
            host; C{tls:} and C{ssl:} endpoint strings are used as they are
            (they carry their own TLS parameters).
        @param clock: the clock of the TLS handshake timeout (default: C{reactor}).
        @raise ValueError: C{tls} is given and this is an endpoint string
            that would not encrypt (e.g. C{tcp:} or C{unix:}).
        """
        if self.description is not None:
            if tls is not None:
                self.checkEncrypts()
            return clientFromString(reactor, self.description)
        assert self.host is not None and self.port is not None
        if tls is not None:
            from txgear._tlsclient import tlsEndpoint

            return tlsEndpoint(reactor, self.host, self.port, tls, timeout=timeout, clock=clock)
        return HostnameEndpoint(reactor, self.host, self.port, timeout=timeout)

    def checkEncrypts(self) -> None:
        """
        Check that this address can be used with TLS options: a plain host
        form (which they turn into TLS), or a C{tls:} or C{ssl:} endpoint.

        @raise ValueError: another endpoint string, which would not encrypt.
        """
        if self.description is not None and \
                self.description.split(":", 1)[0].lower() not in _TLS_PREFIXES:
            raise ValueError(f"server {self.text!r}: with TLS options give host:port, or a "
                             f"tls: endpoint string; this endpoint would not be encrypted")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ServerAddress):
            return NotImplemented
        return (self.host, self.port, self.description) == (other.host, other.port, other.description)

    def __hash__(self) -> int:
        return hash((self.host, self.port, self.description))

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return f"ServerAddress({self.text!r})"


def parseAddress(text: str, defaultPort: int = DEFAULT_PORT) -> ServerAddress:
    """
    Parse one job server address.

    @param text: C{"host"}, C{"host:port"}, C{"[::1]:port"}, C{"::1"} or a
        client endpoint string.
    @param defaultPort: the port used when C{text} names none.
    @raise ValueError: C{text} is empty or has an invalid port.
    """
    if isinstance(text, ServerAddress):
        return text
    value = text.strip()
    if not value:
        raise ValueError("empty server address")
    m = _BRACKETED.match(value)
    if m is not None:
        return ServerAddress(text, m.group(1), _port(m.group(2), defaultPort, text))
    m = _HOST_PORT.match(value)
    if m is not None:
        return ServerAddress(text, m.group(1), _port(m.group(2), defaultPort, text))
    if "=" not in value and _BARE_V6.match(value) and value.count(":") >= 2 and "/" not in value:
        return ServerAddress(text, value, defaultPort)
    # An endpoint string: "tcp:host=a:port=1", "tls:a:4730", "unix:/path", ...
    prefix = value.split(":", 1)[0]
    if not prefix.isidentifier():
        raise ValueError(f"cannot parse server address {text!r}")
    return ServerAddress(text, description=value)


def _port(value: Optional[str], default: int, text: str) -> int:
    if value is None:
        return default
    port = int(value)
    if not 0 < port < 65536:
        raise ValueError(f"invalid port in server address {text!r}")
    return port


__all__ = ["DEFAULT_PORT", "ServerAddress", "parseAddress"]

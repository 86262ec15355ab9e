# -*- test-case-name: tests.test_tlsclient -*-
"""
TLS for txgear's client side: the client, the worker, their pool and the
console scripts.

L{TLSOptions} names the files (a CA to verify servers with, and a client
certificate and key to present); L{tlsEndpoint} turns a C{host:port} server
address into a client endpoint that connects with TLS, verifies the
server's certificate against the CA and the host name or IP address
(C{service_identity}, through L{twisted.internet.ssl.optionsForClientTLS}),
and fires only once the server has answered through the encrypted
connection. Every TLS failure fails the connection attempt with a
L{txgear.errors.TLSConnectError} that says what went wrong.

pyOpenSSL is imported only here, and only when TLS is asked for: the C{tls}
extra stays optional for plain users.
"""
from __future__ import annotations

import datetime
from typing import Any, List, Optional

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IHandshakeListener, IProtocolFactory, IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from txgear._packet import RES, PacketType, encodeRequest
from txgear.errors import TLSConnectError

#: With TLS 1.3 the client's handshake is over before the server has checked
#: the client's certificate: a server that refuses it says so afterwards. So
#: the connection is ready once the server has answered this request (every
#: Gearman server answers GET_STATUS; gear's server has no ECHO_REQ).
_PROBE = encodeRequest(PacketType.GET_STATUS, b"txgear-tls-check")
#: The largest answer to the probe that is believed.
_MAX_PROBE_REPLY = 4096

_INSTALL_HINT = "TLS needs pyOpenSSL and service_identity: pip install txgear[tls]"


def _requireTLS() -> None:
    """
    Check that pyOpenSSL and service_identity can be imported.

    @raise ImportError: one is missing; the text says what to install.
    """
    try:
        import OpenSSL  # noqa: F401
        import service_identity  # noqa: F401
        from twisted.protocols import tls  # noqa: F401
    except ImportError as e:
        raise ImportError(f"{_INSTALL_HINT} ({e})") from e


class TLSOptions:
    """
    How txgear's client, worker and tools connect to job servers with TLS.

    Pass it as C{tls=} to L{txgear.GearmanClient} or L{txgear.GearmanWorker}
    (the console scripts take C{--tls-ca}, C{--tls-cert} and C{--tls-key}):
    every C{host}, C{host:port} or C{[v6]:port} address then connects with
    TLS 1.2 or 1.3. The server's certificate must be signed by C{ca} (by a
    CA the system trusts, without C{ca}) and name the address's host: its
    DNS name, or its IP address as an IP subject alternative name. The
    client certificate, when given, is presented to servers that ask for
    one.

    The files are read once, when the client or worker is made; a restart
    picks up new ones.

    @ivar ca: path of a PEM file of the CA certificate(s) trusted to sign
        servers' certificates, or C{None} for the system's CAs.
    @ivar certificate: path of the PEM client certificate (it may also hold
        the key), or C{None}.
    @ivar key: path of the PEM private key of C{certificate}, or C{None} if
        the certificate's file holds it.
    @ivar handshakeTimeout: seconds the TLS handshake and the server's first
        answer may take, once connected.
    """

    def __init__(self, ca: Optional[str] = None, certificate: Optional[str] = None,
                 key: Optional[str] = None, handshakeTimeout: float = 30.0) -> None:
        """
        @raise ValueError: a key without a certificate, or a timeout not above 0.
        """
        if key is not None and certificate is None:
            raise ValueError("a TLS key needs its certificate (--tls-cert)")
        if not handshakeTimeout > 0:
            raise ValueError(f"handshakeTimeout must be more than 0, not {handshakeTimeout!r}")
        self.ca = ca
        self.certificate = certificate
        self.key = key
        self.handshakeTimeout = handshakeTimeout
        self._loaded: Any = None

    def __repr__(self) -> str:
        return f"TLSOptions(ca={self.ca!r}, certificate={self.certificate!r}, key={self.key!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TLSOptions):
            return NotImplemented
        return (self.ca, self.certificate, self.key, self.handshakeTimeout) == (
            other.ca, other.certificate, other.key, other.handshakeTimeout)

    def __hash__(self) -> int:
        return hash((self.ca, self.certificate, self.key, self.handshakeTimeout))

    def load(self) -> None:
        """
        Read and check the files (once; later calls do nothing).

        @raise ImportError: pyOpenSSL or service_identity is not installed.
        @raise ValueError: a file cannot be read or holds no usable
            certificate or key; the text names the file.
        """
        if self._loaded is None:
            self._loaded = _Loaded(self)

    def creatorFor(self, hostname: str) -> Any:
        """
        The TLS connection creator for a server at C{hostname} (a DNS name or
        an IP address, which the server's certificate must name).

        @return: an C{IOpenSSLClientConnectionCreator}.
        """
        self.load()
        return self._loaded.creatorFor(hostname)


class _Loaded:
    """What L{TLSOptions}' files hold, loaded with pyOpenSSL."""

    def __init__(self, options: TLSOptions) -> None:
        _requireTLS()
        from twisted.internet import ssl

        self.caCertificates: Optional[List[Any]] = None
        if options.ca is not None:
            self.caCertificates = _loadCertificates(options.ca, "--tls-ca")
            self.trustRoot: Any = ssl.trustRootFromCertificates(self.caCertificates)
        else:
            self.trustRoot = ssl.platformTrust()
        self.clientCertificate: Any = None
        if options.certificate is not None:
            certificate = _loadCertificates(options.certificate, "--tls-cert")[0]
            keyData = _read(options.key or options.certificate, "--tls-key")
            try:
                keyPair = ssl.KeyPair.load(keyData, 1)  # 1: FILETYPE_PEM
            except Exception as e:
                where = options.key or options.certificate
                raise ValueError(f"no usable private key in {where!r} "
                                 f"({'--tls-key' if options.key else '--tls-cert'}): {_text(e)}")
            try:
                self.clientCertificate = ssl.PrivateCertificate.fromCertificateAndKeyPair(
                    certificate, keyPair)
            except Exception as e:
                raise ValueError(f"the key {options.key!r} does not match the certificate "
                                 f"{options.certificate!r}: {_text(e)}")

    def creatorFor(self, hostname: str) -> Any:
        from twisted.internet.ssl import TLSVersion, optionsForClientTLS

        return optionsForClientTLS(hostname, trustRoot=self.trustRoot,
                                   clientCertificate=self.clientCertificate,
                                   extraCertificateOptions={"raiseMinimumTo": TLSVersion.TLSv1_2})


def _read(path: str, option: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise ValueError(f"cannot read {path!r} ({option}): {e.strerror or e}")


def _loadCertificates(path: str, option: str) -> List[Any]:
    """Every PEM certificate in the file at C{path} (at least one)."""
    from twisted.internet.ssl import Certificate

    data = _read(path, option)
    marker = b"-----BEGIN CERTIFICATE-----"
    blocks = [marker + block for block in data.split(marker)[1:]]
    certificates = []
    for block in blocks:
        try:
            certificates.append(Certificate.loadPEM(block))
        except Exception as e:
            raise ValueError(f"a certificate in {path!r} ({option}) cannot be read: {_text(e)}")
    if not certificates:
        raise ValueError(f"no PEM certificate in {path!r} ({option})")
    return certificates


def _text(error: BaseException) -> str:
    """An OpenSSL error's reasons, or the error's text."""
    from OpenSSL.SSL import Error

    if isinstance(error, Error) and error.args and isinstance(error.args[0], list):
        reasons = [item[-1] for item in error.args[0] if isinstance(item, tuple) and item[-1]]
        if reasons:
            return ", ".join(reasons)
    return str(error) or type(error).__name__


def tlsEndpoint(reactor: Any, host: str, port: int, options: TLSOptions, timeout: float = 30.0,
                clock: Any = None) -> IStreamClientEndpoint:
    """
    A client endpoint that connects to C{host:port} with TLS (see the module
    docstring).

    @param reactor: the reactor to connect with.
    @param host: the DNS name or IP address to connect to and verify.
    @param port: the TCP port.
    @param options: the CA and client certificate.
    @param timeout: the TCP connect timeout.
    @param clock: the clock for the handshake timeout (default: C{reactor}).
    @raise ValueError: see L{TLSOptions.load}.
    @raise ImportError: see L{TLSOptions.load}.
    """
    options.load()
    from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS

    tcp = HostnameEndpoint(reactor, host, port, timeout=timeout)
    return _VerifiedEndpoint(wrapClientTLS(options.creatorFor(host), tcp), host, options,
                             clock if clock is not None else reactor)


@implementer(IStreamClientEndpoint)
class _VerifiedEndpoint:
    """
    A TLS client endpoint whose connection is handed to the application's
    protocol only once the handshake is over, the server's certificate
    checked, and (with TLS 1.3, see L{_PROBE}) the server has answered a
    request through it. Any failure before that fails the L{connect}
    Deferred with a L{TLSConnectError}.
    """

    def __init__(self, wrapped: IStreamClientEndpoint, host: str, options: TLSOptions,
                 clock: Any) -> None:
        self._wrapped = wrapped
        self._host = host
        self._options = options
        self._clock = clock

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[Any]:
        gate = _Gate(self._host, self._options, self._clock)
        ready: Deferred[Any] = Deferred(gate.cancel)
        gate.ready = ready
        connecting = self._wrapped.connect(_GateFactory(protocolFactory, gate))
        gate.connecting = connecting

        def failedToConnect(reason: Failure) -> None:
            if not ready.called:
                ready.errback(reason)
        connecting.addErrback(failedToConnect)
        return ready


class _GateFactory(Factory):
    noisy = False

    def __init__(self, inner: IProtocolFactory, gate: "_Gate") -> None:
        self._inner = inner
        self._gate = gate

    def buildProtocol(self, addr: Any) -> Any:
        # The application's protocol is built once the connection is ready,
        # so that no one sees a protocol without a usable connection.
        self._gate.factory = self._inner
        self._gate.address = addr
        return _GateProtocol(self._gate)


class _Gate:
    """One connection attempt of a L{_VerifiedEndpoint}."""

    ready: Deferred[Any]
    connecting: Optional[Deferred[Any]] = None
    factory: Any = None
    address: Any = None
    application: Any = None
    protocol: Optional["_GateProtocol"] = None

    def __init__(self, host: str, options: TLSOptions, clock: Any) -> None:
        self.host = host
        self.options = options
        self.clock = clock
        self.timer: Any = None

    def cancel(self, d: Deferred[Any]) -> None:
        connecting = self.connecting
        if connecting is not None and not connecting.called:
            connecting.cancel()
        elif self.protocol is not None and self.protocol.transport is not None:
            self.protocol.transport.abortConnection()


@implementer(IHandshakeListener)
class _GateProtocol(Protocol):
    """
    The TLS layer's protocol: waits for the handshake (and the answer to
    L{_PROBE}), then connects the application's protocol to the TLS
    transport and passes it everything that arrives.
    """

    transport: Any

    def __init__(self, gate: _Gate) -> None:
        self._gate = gate
        self._open = False
        self._received = b""
        self._error: Optional[str] = None

    def connectionMade(self) -> None:
        gate = self._gate
        gate.protocol = self
        gate.timer = gate.clock.callLater(gate.options.handshakeTimeout, self._timedOut)

    def handshakeCompleted(self) -> None:
        problem = _identityProblem(self.transport, self._gate.host)
        if problem is not None:
            self._error = problem
            self.transport.abortConnection()
            return
        if self.transport.getHandle().get_protocol_version_name() == "TLSv1.3":
            self.transport.write(_PROBE)
        else:
            # TLS 1.2: the server checked our certificate before its Finished.
            self._openApplication(b"")

    def _timedOut(self) -> None:
        self._gate.timer = None
        self._error = (f"no TLS handshake and answer within "
                       f"{self._gate.options.handshakeTimeout:g} s")
        assert self.transport is not None
        self.transport.abortConnection()

    def dataReceived(self, data: bytes) -> None:
        if self._open:
            self._gate.application.dataReceived(data)
            return
        received = self._received = self._received + data
        if received[:4] != RES[:len(received[:4])]:
            self._refuse()
            return
        if len(received) < 12:
            return
        size = int.from_bytes(received[8:12], "big")
        if size > _MAX_PROBE_REPLY:
            self._refuse()
        elif len(received) >= 12 + size:
            self._received = b""
            self._openApplication(received[12 + size:])

    def _openApplication(self, rest: bytes) -> None:
        """Connect the application's protocol and fire the endpoint's Deferred."""
        self._stopTimer()
        gate = self._gate
        application = gate.factory.buildProtocol(gate.address)
        if application is None:
            self._error = "the protocol factory built no protocol"
            self.transport.abortConnection()
            return
        gate.application = application
        self._open = True
        application.makeConnection(self.transport)
        if not gate.ready.called:
            gate.ready.callback(application)
        if rest and self._open:
            application.dataReceived(rest)

    def _refuse(self) -> None:
        self._error = "the server's answer over TLS is not Gearman's (not a Gearman server?)"
        assert self.transport is not None
        self.transport.abortConnection()

    def _stopTimer(self) -> None:
        timer, self._gate.timer = self._gate.timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self._stopTimer()
        gate = self._gate
        if self._open:
            self._open = False
            gate.application.connectionLost(reason)
            return
        if not gate.ready.called:
            gate.ready.errback(TLSConnectError(self._explain(reason)))
        gate.protocol = None
        gate.factory = None

    def _explain(self, reason: Optional[Failure]) -> str:
        """Why the connection failed before it was ready, in words."""
        if self._error is not None:
            return "TLS: " + self._error
        value = reason.value if reason is not None else None
        try:
            from service_identity import VerificationError
        except ImportError:  # pragma: no cover - _requireTLS checked it
            VerificationError = ()  # type: ignore[assignment,misc]
        if isinstance(value, VerificationError):
            return "TLS: " + _notValidFor(self.transport, self._gate.host)
        from OpenSSL.SSL import Error

        if isinstance(value, Error):
            text = _text(value)
            if "certificate verify failed" in text:
                return "TLS: the server's certificate was not verified: " + self._whyUnverified()
            if "alert" in text:
                hint = "" if self._gate.options.certificate else " (no client certificate was given)"
                return f"TLS: the server refused the connection: {text}{hint}"
            return "TLS: handshake failed: " + text
        if reason is not None and not reason.check(Exception):
            return "TLS: the connection was closed during the handshake"
        detail = reason.getErrorMessage() if reason is not None else "connection closed"
        return f"TLS: the connection was closed before the server answered ({detail})"

    def _whyUnverified(self) -> str:
        """Verify the server's chain again to name the problem (OpenSSL only says it failed)."""
        handle = _handle(self.transport)
        chain = handle.get_peer_cert_chain() if handle is not None else None
        if not chain:
            return "no certificate received"
        from OpenSSL.crypto import X509Store, X509StoreContext, X509StoreContextError

        leaf = chain[0]
        loaded = self._gate.options._loaded
        if loaded.caCertificates is None:
            return f"not trusted by the system's CAs, or expired (it expires on {_notAfter(leaf)})"
        store = X509Store()
        for certificate in loaded.caCertificates:
            store.add_cert(certificate.original)
        try:
            X509StoreContext(store, leaf, chain=list(chain[1:])).verify_certificate()
        except X509StoreContextError as e:
            text = str(e.args[0]) if e.args else str(e)
            subject = leaf.to_cryptography().subject.rfc4514_string()
            if "unable to get local issuer" in text or "self-signed" in text or "self signed" in text:
                text += f" (not signed by the CA in {self._gate.options.ca!r})"
            elif "expired" in text:
                text += f" (it expired on {_notAfter(leaf)})"
            return f"{text}; certificate {subject}"
        return "certificate verify failed"


def _identityProblem(transport: Any, host: str) -> Optional[str]:
    """
    Check again that the server's certificate names C{host}, or say why not.

    Twisted checks it during the handshake, but lets a certificate without
    any subject alternative name through (service_identity raises a
    C{CertificateError} there, which Twisted logs and ignores).
    """
    from service_identity import CertificateError, VerificationError
    from service_identity.pyopenssl import verify_hostname, verify_ip_address
    from twisted.internet.abstract import isIPAddress, isIPv6Address

    handle = _handle(transport)
    if handle is None:
        return "the connection has no TLS session to check"
    try:
        if isIPAddress(host) or isIPv6Address(host):
            verify_ip_address(handle, host)
        else:
            verify_hostname(handle, host)
    except VerificationError:
        return _notValidFor(transport, host)
    except CertificateError:
        return (f"the server's certificate is not valid for {host!r}: it has no subject "
                f"alternative name")
    return None


def _notValidFor(transport: Any, host: str) -> str:
    names = _peerNames(transport)
    named = f" (it is for {', '.join(names)})" if names else ""
    return f"the server's certificate is not valid for {host!r}{named}"


def _handle(transport: Any) -> Any:
    getHandle = getattr(transport, "getHandle", None)
    return getHandle() if getHandle is not None else None


def _notAfter(certificate: Any) -> str:
    crypto = certificate.to_cryptography()
    end = getattr(crypto, "not_valid_after_utc", None) or crypto.not_valid_after
    if isinstance(end, datetime.datetime):
        return end.strftime("%Y-%m-%d %H:%M:%S UTC")
    return str(end)


def _peerNames(transport: Any) -> List[str]:
    """The DNS names and IP addresses the server's certificate names."""
    handle = _handle(transport)
    if handle is None:
        return []
    chain = handle.get_peer_cert_chain()
    if not chain:
        return []
    certificate = chain[0]
    from cryptography import x509

    crypto = certificate.to_cryptography()
    try:
        extension = crypto.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        names: List[str] = []
    else:
        names = [str(n) for n in extension.value.get_values_for_type(x509.DNSName)]
        names += [str(n) for n in extension.value.get_values_for_type(x509.IPAddress)]
    if not names:
        names = [a.value for a in crypto.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
                 if isinstance(a.value, str)]
    return names


def tlsOptionsFrom(ca: Optional[str], certificate: Optional[str],
                   key: Optional[str]) -> Optional[TLSOptions]:
    """
    The L{TLSOptions} the C{--tls-*} options of a command line describe,
    loaded (so that mistakes show before connecting), or C{None} without any.

    @raise ValueError: see L{TLSOptions.load}; also for a missing pyOpenSSL.
    """
    if ca is None and certificate is None and key is None:
        return None
    options = TLSOptions(ca=ca, certificate=certificate, key=key)
    try:
        options.load()
    except ImportError as e:
        raise ValueError(str(e))
    return options


__all__ = ["TLSOptions", "tlsEndpoint", "tlsOptionsFrom"]

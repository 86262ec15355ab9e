# -*- test-case-name: tests.test_tls_server -*-
"""
TLS for txgear's connections: certificates read from PEM files, the
OpenSSL settings, and the wrapping of any stream endpoint.

Importing this module needs no pyOpenSSL (the C{tls} extra): it is imported
when TLS is used. L{txgear._tlsprotocol} holds the connections' side.

Server side (the C{Server*} names; a client side sits beside them):
  - L{ServerTLS}: the server's certificate, key and (optional) client CA,
    read from files; it is the C{IOpenSSLServerConnectionCreator} of every
    TLS listener, and L{ServerTLS.reload} replaces what new connections get
    while open ones keep theirs;
  - L{ServerTLS.wrapEndpoint}: any server endpoint, carrying TLS from its
    first byte (what libgearman's C{-S} and gear expect on the Gearman port),
    with a handshake deadline.

TLS 1.2 is the minimum, TLS 1.3 is allowed. With a CA, a client must present
a certificate that CA signed (verified by OpenSSL: chain, validity dates);
without one, none is asked for and every peer is anonymous.
"""
from __future__ import annotations

import datetime
from typing import TYPE_CHECKING, Any, List, Optional, Sequence, Tuple

from zope.interface import implementer

from twisted.internet.interfaces import IOpenSSLServerConnectionCreator, IStreamServerEndpoint

from txgear._log import logger

if TYPE_CHECKING:
    from txgear._tlsprotocol import ServerTLSFactory, TLSServerEndpoint

#: Seconds a peer of a TLS listener has to finish its handshake, by default.
DEFAULT_HANDSHAKE_DEADLINE = 10.0

# OpenSSL's X509_V_ERR_* codes a client certificate most often fails with,
# in words for the log (others are logged by number).
_VERIFY_ERRORS = {
    2: "its issuer's certificate is unknown",
    7: "its signature is invalid",
    9: "it is not valid yet",
    10: "it has expired",
    18: "it is self-signed",
    19: "its chain ends in a self-signed certificate the CA file does not hold",
    20: "it is not signed by the CA of --tls-ca",
    21: "it is not signed by the CA of --tls-ca",
    23: "it has been revoked",
    24: "an intermediate certificate is not a CA",
    26: "it is not meant for client authentication",
}


class TLSFileError(Exception):
    """
    A certificate, key or CA file cannot be used.

    @ivar path: the file.
    @ivar problem: what is wrong with it.
    """

    def __init__(self, path: str, problem: str) -> None:
        Exception.__init__(self, f"{path}: {problem}")
        self.path = path
        self.problem = problem


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise TLSFileError(path, f"cannot read it ({e.strerror or e})")


def _certificates(path: str, data: bytes) -> List[Any]:
    """The PEM certificates in C{data} (C{cryptography} objects), at least one."""
    from cryptography import x509

    try:
        certificates = x509.load_pem_x509_certificates(data)
    except ValueError:
        certificates = []
    if not certificates:
        raise TLSFileError(path, "holds no PEM certificate")
    return certificates


def _privateKey(path: str, data: bytes) -> Any:
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        return load_pem_private_key(data, password=None)
    except TypeError:
        raise TLSFileError(path, "the private key is encrypted; give an unencrypted key")
    except (ValueError, Exception) as e:
        raise TLSFileError(path, f"holds no usable PEM private key ({e})")


def _publicKeyBytes(key: Any) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    return key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def _notAfter(certificate: Any) -> datetime.datetime:
    value = getattr(certificate, "not_valid_after_utc", None)
    if value is None:  # cryptography before 42
        value = certificate.not_valid_after.replace(tzinfo=datetime.timezone.utc)
    return value


class ServerTLSFiles:
    """
    What a server's TLS is made of, read and checked: its certificate (and
    the chain after it), its key, and the client CA's certificates.

    @ivar certificate: the server certificate (C{cryptography}).
    @ivar chain: intermediate certificates sent after it.
    @ivar key: the private key matching C{certificate}.
    @ivar authorities: the CA certificates client certificates must chain
        to; empty when no client certificate is asked for.
    """

    def __init__(self, certificatePath: str, keyPath: Optional[str] = None,
                 caPath: Optional[str] = None) -> None:
        self.certificatePath = certificatePath
        certificateData = _read(certificatePath)
        certificates = _certificates(certificatePath, certificateData)
        if keyPath is None:
            key = _privateKey(certificatePath, certificateData)
            keyFile = certificatePath
        else:
            key = _privateKey(keyPath, _read(keyPath))
            keyFile = keyPath
        wanted = _publicKeyBytes(key.public_key())
        matching = [c for c in certificates if _publicKeyBytes(c.public_key()) == wanted]
        if not matching:
            raise TLSFileError(keyFile, f"its private key does not match the certificate "
                                        f"in {certificatePath}")
        self.certificate = matching[0]
        self.chain = [c for c in certificates if c is not self.certificate]
        self.key = key
        self.authorities: List[Any] = []
        if caPath is not None:
            self.authorities = _certificates(caPath, _read(caPath))

    def expired(self, now: Optional[datetime.datetime] = None) -> bool:
        """Has the server certificate expired (at C{now}, by default the present)?"""
        now = now or datetime.datetime.now(datetime.timezone.utc)
        return _notAfter(self.certificate) < now


def serverCertificateOptions(files: ServerTLSFiles) -> Any:
    """
    Twisted's C{CertificateOptions} for a server using C{files}: TLS 1.2 at
    least; with CAs, a client certificate signed by one of them is required.

    @raise TLSFileError: OpenSSL refuses the certificate or key.
    """
    from OpenSSL import SSL, crypto
    from twisted.internet.ssl import Certificate, CertificateOptions, TLSVersion
    from twisted.internet.ssl import trustRootFromCertificates

    toOpenSSL = crypto.X509.from_cryptography
    settings: dict = {}
    if files.authorities:
        settings["trustRoot"] = trustRootFromCertificates(
            [Certificate(toOpenSSL(c)) for c in files.authorities])
    options = CertificateOptions(
        privateKey=crypto.PKey.from_cryptography_key(files.key),
        certificate=toOpenSSL(files.certificate),
        extraCertChain=[toOpenSSL(c) for c in files.chain],
        raiseMinimumTo=TLSVersion.TLSv1_2,
        **settings)
    try:
        context = options.getContext()
    except SSL.Error as e:
        raise TLSFileError(files.certificatePath, f"OpenSSL refuses the certificate or its "
                                                  f"key: {e}")
    if files.authorities:
        # Tell clients which CA is wanted: a client holding several
        # certificates (or a strict one) picks the right one.
        for authority in files.authorities:
            try:
                context.add_client_ca(authority)
            except TypeError:  # pyOpenSSL before 24.3 takes only its own X509
                context.add_client_ca(toOpenSSL(authority))
    return options


@implementer(IOpenSSLServerConnectionCreator)
class ServerTLS:
    """
    A server's TLS, read from PEM files, replaceable while it serves.

    New connections use the certificates read last (L{reload}); open ones
    keep those of their handshake.

    @param certificate: a PEM file with the server certificate, optionally
        followed by its chain (and its key, if C{key} is not given).
    @param key: a PEM file with the unencrypted private key.
    @param ca: a PEM file with the CA certificate(s) client certificates must
        be signed by; C{None}: no client certificate is asked for.
    @param handshakeDeadline: seconds a peer has to finish its TLS handshake
        before its connection is closed.
    @raise TLSFileError: a file cannot be read or used.
    """

    _log = logger()

    def __init__(self, certificate: str, key: Optional[str] = None, ca: Optional[str] = None,
                 handshakeDeadline: float = DEFAULT_HANDSHAKE_DEADLINE) -> None:
        self.certificatePath = certificate
        self.keyPath = key
        self.caPath = ca
        self.handshakeDeadline = handshakeDeadline
        self.files, self._options = self._load()

    def _load(self) -> Tuple[ServerTLSFiles, Any]:
        files = ServerTLSFiles(self.certificatePath, self.keyPath, self.caPath)
        options = serverCertificateOptions(files)
        if files.expired():
            self._log.warn("The server certificate in {path} expired on {date}: TLS clients "
                           "that check it will refuse the server", path=self.certificatePath,
                           date=_notAfter(files.certificate).isoformat())
        return files, options

    @property
    def requiresClientCertificate(self) -> bool:
        """Is a client certificate asked for, and required?"""
        return bool(self.files.authorities)

    def reload(self) -> None:
        """
        Read the files again; new connections use what they hold now.

        @raise TLSFileError: a file cannot be read or used; the certificates
            read before stay in use.
        """
        self.files, self._options = self._load()

    def serverConnectionForTLS(self, tlsProtocol: Any) -> Any:
        """The OpenSSL connection of a new TLS connection (C{IOpenSSLServerConnectionCreator})."""
        from OpenSSL import SSL

        connection = SSL.Connection(self._options.getContext(), None)
        connection.set_app_data(tlsProtocol)
        if self.files.authorities:
            # The same policy as the context's, plus a note of why a client
            # certificate failed, for the log.
            connection.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT
                                  | SSL.VERIFY_CLIENT_ONCE, _noteVerifyResult)
        return connection

    def wrapFactory(self, factory: Any, clock: Any) -> "ServerTLSFactory":
        """C{factory}'s protocols, over TLS with this server's certificates."""
        from txgear._tlsprotocol import ServerTLSFactory

        return ServerTLSFactory(self, factory, clock, self.handshakeDeadline)

    def wrapEndpoint(self, endpoint: IStreamServerEndpoint, clock: Any) -> "TLSServerEndpoint":
        """C{endpoint}, carrying TLS from the first byte of each connection."""
        from txgear._tlsprotocol import TLSServerEndpoint

        return TLSServerEndpoint(endpoint, self, clock)


def _noteVerifyResult(connection: Any, certificate: Any, error: int, depth: int,
                      ok: int) -> bool:
    if not ok:
        note = getattr(connection.get_app_data(), "noteVerifyError", None)
        if note is not None:
            note(certificate, error, depth)
    return bool(ok)


def describeVerifyError(error: int) -> str:
    """OpenSSL's certificate verification error C{error}, in words."""
    return _VERIFY_ERRORS.get(error, f"OpenSSL verification error {error}")


__all__: Sequence[str] = [
    "DEFAULT_HANDSHAKE_DEADLINE", "ServerTLS", "ServerTLSFiles", "TLSFileError",
    "describeVerifyError", "serverCertificateOptions",
]

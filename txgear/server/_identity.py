# -*- test-case-name: tests.test_server_identity -*-
"""
Who a connection is: the names its client certificate gives it, or
C{anonymous} when it presented none (every connection on a plain listener).
"""
from __future__ import annotations

from typing import Any, Tuple

#: The identity of a connection without a client certificate.
ANONYMOUS = "anonymous"


def peerNames(transport: Any) -> Tuple[str, ...]:
    """
    The names a connection's client certificate gives it, most specific
    to gear first: the subject's common name (gear's only identity), then
    each DNS subject alternative name, then each URI one, without repeats;
    C{("anonymous",)} when there is no verified certificate.

    Call it once the TLS handshake is over (any time after the first bytes
    arrive: a TLS transport delivers none before).
    """
    getPeerCertificate = getattr(transport, "getPeerCertificate", None)
    if getPeerCertificate is None:
        return (ANONYMOUS,)
    try:
        certificate = getPeerCertificate()
    except Exception:  # the handshake failed or is not over
        return (ANONYMOUS,)
    if certificate is None:
        return (ANONYMOUS,)
    return certificateNames(certificate) or (ANONYMOUS,)


def certificateNames(certificate: Any) -> Tuple[str, ...]:
    """
    The names of a certificate (a pyOpenSSL C{X509} or a C{cryptography}
    one) in L{peerNames}' order.
    """
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    if hasattr(certificate, "to_cryptography"):
        certificate = certificate.to_cryptography()
    names = [str(attribute.value)
             for attribute in certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    try:
        extension = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        pass
    else:
        names.extend(extension.value.get_values_for_type(x509.DNSName))
        names.extend(extension.value.get_values_for_type(x509.UniformResourceIdentifier))
    unique = []
    for name in names:
        if name and name not in unique:
            unique.append(name)
    return tuple(unique)


__all__ = ["ANONYMOUS", "certificateNames", "peerNames"]

"""Tests for L{txgear.server._identity}: who a connection is."""
from __future__ import annotations

from twisted.internet.testing import StringTransport

from tests._certs import Authority
from txgear.server._identity import ANONYMOUS, certificateNames, peerNames


class _CertificateTransport(StringTransport):
    def __init__(self, certificate: object) -> None:
        StringTransport.__init__(self)
        self._certificate = certificate

    def getPeerCertificate(self) -> object:
        return self._certificate


def test_plainTransportIsAnonymous() -> None:
    assert peerNames(StringTransport()) == (ANONYMOUS,)


def test_noCertificateIsAnonymous() -> None:
    assert peerNames(_CertificateTransport(None)) == (ANONYMOUS,)


def test_commonNameFirstThenDNSThenURI(tmp_path) -> None:
    ca = Authority(str(tmp_path))
    issued = ca.issue("worker-1", dnsNames=["w1.example", "worker-1"],
                      uris=["spiffe://example/worker"])
    assert certificateNames(issued.certificate) == (
        "worker-1", "w1.example", "spiffe://example/worker")


def test_pyOpenSSLCertificate(tmp_path) -> None:
    from OpenSSL import crypto

    ca = Authority(str(tmp_path))
    issued = ca.issue(None, uris=["spiffe://example/client"])
    certificate = crypto.X509.from_cryptography(issued.certificate)
    assert peerNames(_CertificateTransport(certificate)) == ("spiffe://example/client",)

"""
Throwaway certificate authorities and certificates for the TLS tests, made
with C{cryptography} (small EC keys: quick to make, and any TLS peer takes them).
"""
from __future__ import annotations

import datetime
import ipaddress
import os
from typing import Iterable, Optional

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


class Issued:
    """A certificate and its key, with PEM files written under a directory."""

    def __init__(self, certificate: x509.Certificate, key: ec.EllipticCurvePrivateKey,
                 directory: str, name: str) -> None:
        self.certificate = certificate
        self.key = key
        self.certPEM = certificate.public_bytes(serialization.Encoding.PEM)
        self.keyPEM = key.private_bytes(serialization.Encoding.PEM,
                                        serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption())
        self.certPath = os.path.join(directory, name + ".crt")
        self.keyPath = os.path.join(directory, name + ".key")
        #: certificate then key, in one file (libgearman, gear and Twisted's C{certificate=} take it)
        self.pemPath = os.path.join(directory, name + ".pem")
        with open(self.certPath, "wb") as f:
            f.write(self.certPEM)
        with open(self.keyPath, "wb") as f:
            f.write(self.keyPEM)
        with open(self.pemPath, "wb") as f:
            f.write(self.certPEM + self.keyPEM)


class Authority(Issued):
    """
    A certificate authority in C{directory}; L{issue} makes server and
    client certificates signed by it.
    """

    def __init__(self, directory: str, name: str = "txgear test CA") -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = _now()
        certificate = (
            x509.CertificateBuilder()
            .subject_name(subject).issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, key_cert_sign=True, crl_sign=True,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .sign(key, hashes.SHA256())
        )
        self.directory = directory
        os.makedirs(directory, exist_ok=True)
        Issued.__init__(self, certificate, key, directory, _fileName(name))

    def issue(self, commonName: Optional[str], dnsNames: Iterable[str] = (),
              ipAddresses: Iterable[str] = (), uris: Iterable[str] = (),
              expired: bool = False, fileName: Optional[str] = None) -> Issued:
        """
        A certificate for a server or a client (both usages), valid from
        yesterday for a week, or one that expired yesterday.
        """
        key = ec.generate_private_key(ec.SECP256R1())
        attributes = []
        if commonName is not None:
            attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, commonName))
        now = _now()
        if expired:
            start, end = now - datetime.timedelta(days=10), now - datetime.timedelta(days=1)
        else:
            start, end = now - datetime.timedelta(days=1), now + datetime.timedelta(days=7)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name(attributes))
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                  ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                self.key.public_key()), critical=False)
        )
        alternatives: list = [x509.DNSName(name) for name in dnsNames]
        alternatives += [x509.IPAddress(ipaddress.ip_address(address)) for address in ipAddresses]
        alternatives += [x509.UniformResourceIdentifier(uri) for uri in uris]
        if alternatives:
            builder = builder.add_extension(x509.SubjectAlternativeName(alternatives),
                                            critical=commonName is None)
        certificate = builder.sign(self.key, hashes.SHA256())
        name = fileName or _fileName(commonName or (list(dnsNames) + list(uris) + ["noname"])[0])
        return Issued(certificate, key, self.directory, name)

    def serverCertificate(self, expired: bool = False) -> Issued:
        """A certificate for a server on loopback: localhost, 127.0.0.1 and ::1."""
        return self.issue("localhost", dnsNames=["localhost"],
                          ipAddresses=["127.0.0.1", "::1"], expired=expired,
                          fileName="server-expired" if expired else "server")


def _fileName(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)


__all__ = ["Authority", "Issued"]

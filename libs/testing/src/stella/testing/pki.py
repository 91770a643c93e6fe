"""A private certificate authority for tests: a CA no system trusts, a TLS certificate it issued for loopback
(``127.0.0.1`` and ``localhost``), and an RSA signing key with a certificate from the same CA (for a registry's
token service). Clients trust the CA only when given :attr:`Pki.ca_pem` (or :attr:`TlsFiles.ca`)."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from stella.testing.registry import TlsFiles


@dataclass(frozen=True)
class Pki:
    """What :func:`make_pki` made."""

    ca_pem: str
    """The CA certificate, PEM."""
    files: TlsFiles
    """The loopback server certificate and key, and the CA, as files."""
    signer_key: rsa.RSAPrivateKey
    """An RSA key whose certificate the CA issued (not for TLS)."""
    signer_der: bytes
    """That certificate, DER (as a JWT's ``x5c`` carries it, base64)."""

    def server_context(self) -> ssl.SSLContext:
        """A TLS server context presenting the loopback certificate."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(self.files.certificate), str(self.files.key))
        return context


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _builder(subject: str, issuer: x509.Name, public_key: CertificateIssuerPublicKeyTypes) -> x509.CertificateBuilder:
    now = datetime.now(UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
    )


def make_pki(directory: Path) -> Pki:
    """Make a CA and what it issues, writing the PEM files into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        _builder("Stella test CA", _name("Stella test CA"), ca_key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    leaf = x509.BasicConstraints(ca=False, path_length=None)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = (
        _builder("127.0.0.1", ca_cert.subject, server_key.public_key())
        .add_extension(leaf, critical=True)
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(IPv4Address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    signer_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    signer_cert = (
        _builder("Stella test token signer", ca_cert.subject, signer_key.public_key())
        .add_extension(leaf, critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    ca_pem = ca_cert.public_bytes(serialization.Encoding.PEM).decode()
    files = TlsFiles(certificate=directory / "server.pem", key=directory / "server.key", ca=directory / "ca.pem")
    files.ca.write_text(ca_pem)
    files.certificate.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    files.key.write_bytes(
        server_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return Pki(ca_pem, files, signer_key, signer_cert.public_bytes(serialization.Encoding.DER))

"""A throwaway PKI for the TLS tests: one CA, a server certificate and client certificates.

Keys are ECDSA P-256, generated fresh for each test, and every file is PEM. The server
certificate names localhost and 127.0.0.1, so clients that check the host name accept it.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

try:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
except ImportError as error:
    raise ImportError(
        f"cryptography is not importable ({error}): pip install -r tests/python/requirements.txt "
        "(PyPI package cryptography)"
    ) from error

# Validity of every test certificate, starting one hour in the past so that a clock a little
# behind the broker's still accepts it.
VALIDITY = datetime.timedelta(days=2)
BACKDATE = datetime.timedelta(hours=1)


@dataclass
class KeyPairFiles:
    """A certificate and its private key, as PEM files."""

    cert: Path
    key: Path


@dataclass
class Pki:
    """Files of a CA, a server certificate it signed and client certificates."""

    ca_cert: Path
    server: KeyPairFiles
    clients: dict[str, KeyPairFiles]


class _Authority:
    def __init__(self, common_name: str):
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        now = datetime.datetime.now(datetime.timezone.utc)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(self.name)
            .issuer_name(self.name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(now + VALIDITY)
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
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False
            )
            .sign(self.key, hashes.SHA256())
        )

    def issue(
        self,
        subject: x509.Name,
        usage: x509.ObjectIdentifier,
        alternative_names: list[x509.GeneralName] | None = None,
    ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(now + VALIDITY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
        )
        if alternative_names:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(alternative_names), critical=False
            )
        return builder.sign(self.key, hashes.SHA256()), key


def _write_pair(folder: Path, name: str, cert: x509.Certificate, key) -> KeyPairFiles:
    cert_path = folder / f"{name}.pem"
    key_path = folder / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return KeyPairFiles(cert_path, key_path)


def make_test_pki(folder: Path) -> Pki:
    """Write a PKI into folder.

    Client certificates: `alice` (CN alice, signed by the CA), `no-cn` (signed by the CA,
    its subject has only an organization) and `stranger` (CN stranger, signed by another CA
    that the broker does not trust).
    """
    folder.mkdir(parents=True, exist_ok=True)
    authority = _Authority("CoreMQ test CA")
    other_authority = _Authority("Untrusted test CA")

    ca_cert = folder / "ca.pem"
    ca_cert.write_bytes(authority.cert.public_bytes(serialization.Encoding.PEM))

    server_cert, server_key = authority.issue(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]),
        ExtendedKeyUsageOID.SERVER_AUTH,
        [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
    )
    server = _write_pair(folder, "server", server_cert, server_key)

    def client_name(common_name: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])

    clients = {}
    cert, key = authority.issue(client_name("alice"), ExtendedKeyUsageOID.CLIENT_AUTH)
    clients["alice"] = _write_pair(folder, "alice", cert, key)
    no_cn = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "CoreMQ tests")])
    cert, key = authority.issue(no_cn, ExtendedKeyUsageOID.CLIENT_AUTH)
    clients["no-cn"] = _write_pair(folder, "no-cn", cert, key)
    cert, key = other_authority.issue(client_name("stranger"), ExtendedKeyUsageOID.CLIENT_AUTH)
    clients["stranger"] = _write_pair(folder, "stranger", cert, key)

    return Pki(ca_cert=ca_cert, server=server, clients=clients)

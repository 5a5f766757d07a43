"""Certificates and keys for the local control plane, made in process with `cryptography`."""

import ipaddress
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class Pki:
    dir: Path

    @property
    def ca_crt(self) -> Path:
        return self.dir / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.dir / "ca.key"

    @property
    def apiserver_crt(self) -> Path:
        return self.dir / "apiserver.crt"

    @property
    def apiserver_key(self) -> Path:
        return self.dir / "apiserver.key"

    @property
    def sa_key(self) -> Path:
        return self.dir / "sa.key"

    @property
    def sa_pub(self) -> Path:
        return self.dir / "sa.pub"

    @property
    def tokens_csv(self) -> Path:
        return self.dir / "tokens.csv"

    @property
    def admin_token(self) -> str:
        return self.tokens_csv.read_text().split(",", 1)[0]

    def exists(self) -> bool:
        return all(p.exists() for p in (self.ca_crt, self.apiserver_crt, self.sa_key, self.sa_pub, self.tokens_csv))

    def create(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        sa_key = _new_key()
        self.sa_key.write_bytes(_private_pem(sa_key))
        self.sa_pub.write_bytes(sa_key.public_key().public_bytes(serialization.Encoding.PEM,
                                                                 serialization.PublicFormat.SubjectPublicKeyInfo))
        ca_key = _new_key()
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "distillery-dev-ca")])
        ca = (_builder(ca_name, ca_name, ca_key.public_key())
              .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
              .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                           content_commitment=False, key_encipherment=False,
                                           data_encipherment=False, key_agreement=False, encipher_only=False,
                                           decipher_only=False), critical=True)
              .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
              .sign(ca_key, hashes.SHA256()))
        self.ca_key.write_bytes(_private_pem(ca_key))
        self.ca_crt.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
        server_key = _new_key()
        names = [x509.DNSName(n) for n in ("localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
                                          "kubernetes.default.svc.cluster.local")]
        addresses = [x509.IPAddress(ipaddress.ip_address(a)) for a in ("127.0.0.1", "10.96.0.1")]
        server = (self._signed(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]),
                               server_key, ExtendedKeyUsageOID.SERVER_AUTH)
                  .add_extension(x509.SubjectAlternativeName([*names, *addresses]), critical=False)
                  .sign(ca_key, hashes.SHA256()))
        self.apiserver_key.write_bytes(_private_pem(server_key))
        self.apiserver_crt.write_bytes(server.public_bytes(serialization.Encoding.PEM))
        # Static bearer tokens: one admin identity (system:masters bypasses RBAC)
        # shared by the control-plane components, the CLI and the tests.
        token = secrets.token_hex(24)
        self.tokens_csv.write_text(f'{token},admin,admin,"system:masters"\n')
        for key in (self.ca_key, self.apiserver_key, self.sa_key, self.tokens_csv):
            key.chmod(0o600)

    def client_certificate(self, user: str, groups: Sequence[str] = ()) -> tuple[bytes, bytes]:
        """(certificate, key) PEM for a user the apiserver authenticates by its client CA: CN is the user
        name, O the groups."""
        ca_key = serialization.load_pem_private_key(self.ca_key.read_bytes(), password=None)
        assert isinstance(ca_key, rsa.RSAPrivateKey)
        key = _new_key()
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, user),
                             *(x509.NameAttribute(NameOID.ORGANIZATION_NAME, g) for g in groups)])
        cert = self._signed(subject, key, ExtendedKeyUsageOID.CLIENT_AUTH).sign(ca_key, hashes.SHA256())
        return cert.public_bytes(serialization.Encoding.PEM), _private_pem(key)

    def serving_certificate(self, name: str, address: str = "127.0.0.1") -> tuple[bytes, bytes]:
        """(certificate, key) PEM for a server on this machine that the apiserver calls (an admission or
        conversion webhook), signed by the cluster CA so that a webhook's caBundle is the CA itself."""
        ca_key = serialization.load_pem_private_key(self.ca_key.read_bytes(), password=None)
        assert isinstance(ca_key, rsa.RSAPrivateKey)
        key = _new_key()
        cert = (self._signed(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]), key,
                             ExtendedKeyUsageOID.SERVER_AUTH)
                .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(address))]),
                               critical=False)
                .sign(ca_key, hashes.SHA256()))
        return cert.public_bytes(serialization.Encoding.PEM), _private_pem(key)

    def _signed(self, subject: x509.Name, key: rsa.RSAPrivateKey,
                usage: x509.ObjectIdentifier) -> x509.CertificateBuilder:
        ca = x509.load_pem_x509_certificate(self.ca_crt.read_bytes())
        ca_public = ca.public_key()
        assert isinstance(ca_public, rsa.RSAPublicKey)
        return (_builder(subject, ca.subject, key.public_key())
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_public), critical=False))


def _new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _private_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption())


def _builder(subject: x509.Name, issuer: x509.Name, public_key: rsa.RSAPublicKey) -> x509.CertificateBuilder:
    now = datetime.now(UTC)
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=3650)))

"""Certificates and keys for the local control plane, made with the openssl CLI."""

import secrets
import subprocess
from dataclasses import dataclass
from pathlib import Path


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
        self._openssl("genrsa", "-out", self.sa_key, "2048")
        self._openssl("rsa", "-in", self.sa_key, "-pubout", "-out", self.sa_pub)
        self._openssl(
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3650",
            "-subj", "/CN=distillery-dev-ca", "-keyout", self.ca_key, "-out", self.ca_crt,
        )
        csr = self.dir / "apiserver.csr"
        self._openssl(
            "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=kube-apiserver",
            "-keyout", self.apiserver_key, "-out", csr,
        )
        ext = self.dir / "apiserver.ext"
        ext.write_text(
            "subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,"
            "DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,IP:10.96.0.1\n"
        )
        self._openssl(
            "x509", "-req", "-in", csr, "-CA", self.ca_crt, "-CAkey", self.ca_key, "-CAcreateserial",
            "-days", "3650", "-extfile", ext, "-out", self.apiserver_crt,
        )
        # Static bearer tokens: one admin identity (system:masters bypasses RBAC)
        # shared by the control-plane components, the CLI and the tests.
        token = secrets.token_hex(24)
        self.tokens_csv.write_text(f'{token},admin,admin,"system:masters"\n')
        for key in (self.ca_key, self.apiserver_key, self.sa_key, self.tokens_csv):
            key.chmod(0o600)

    @staticmethod
    def _openssl(*args: object) -> None:
        subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)

"""Throwaway certificates for TLS tests, made with the openssl command: one CA, and as many
leaf certificates (server or client, for 127.0.0.1/localhost) as a test needs."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Leaf:
    cert: Path
    key: Path
    name: str


@dataclass(frozen=True)
class CA:
    directory: Path
    cert: Path
    key: Path

    def issue(self, name: str) -> Leaf:
        """A certificate with CN=`name`, valid for 127.0.0.1 and localhost."""
        d = self.directory
        _openssl(d, "req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key",
                 "-out", f"{name}.csr", "-subj", f"/CN={name}")  # fmt: skip
        _openssl(d, "x509", "-req", "-in", f"{name}.csr", "-CA", self.cert.name, "-CAkey",
                 self.key.name, "-CAcreateserial", "-out", f"{name}.pem", "-days", "2",
                 "-extfile", "san.ext")  # fmt: skip
        return Leaf(d / f"{name}.pem", d / f"{name}.key", name)


def _openssl(directory: Path, *args: str) -> None:
    subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True, timeout=30)


def make_ca(directory: Path, name: str = "relay-test-ca") -> CA:
    directory.mkdir(parents=True, exist_ok=True)
    _openssl(directory, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key",
             "-out", "ca.pem", "-days", "2", "-subj", f"/CN={name}")  # fmt: skip
    (directory / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    return CA(directory, directory / "ca.pem", directory / "ca.key")


def install(leaf: Leaf, cert: Path, key: Path) -> None:
    """Put `leaf` in place of the files a running process reads (as cert-manager does:
    write aside, then rename over)."""
    for source, target in ((leaf.cert, cert), (leaf.key, key)):
        temporary = target.with_suffix(".new")
        temporary.write_bytes(source.read_bytes())
        temporary.replace(target)

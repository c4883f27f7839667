"""Throwaway certificates for TLS tests, made with the openssl command: one CA, and as many
leaf certificates (server or client, for 127.0.0.1/localhost) as a test needs.

`make_pki` makes what a test of a sink's TLS needs at once: a CA that signs the server's
certificate and two client certificates (the one the relay starts with and the one it is
rotated to), a second CA that signs nothing the server knows (the wrong CA), and the client
certificate's files as the relay reads them, which `Pki.rotate()` replaces the way
cert-manager does."""

from __future__ import annotations

import os
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
        os.chmod(d / f"{name}.key", 0o600)
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
    write aside, then rename over). The key stays readable by its owner only (libpq refuses
    a key others can read)."""
    for source, target in ((leaf.cert, cert), (leaf.key, key)):
        temporary = target.with_suffix(".new")
        temporary.write_bytes(source.read_bytes())
        os.chmod(temporary, 0o600)
        temporary.replace(target)


@dataclass(frozen=True)
class ServerTls:
    """What a server needs to speak TLS and to require client certificates signed by `ca`."""

    ca: Path
    cert: Path
    key: Path


@dataclass(frozen=True)
class Pki:
    ca: CA
    server: Leaf
    old: Leaf  # the client certificate the relay starts with
    new: Leaf  # the one it is rotated to
    wrong: CA  # a CA that signed nothing the server has
    cert: Path  # the client certificate file the relay reads (TLS_CLIENT_CERT)
    key: Path  # and its key (TLS_CLIENT_KEY)

    @property
    def server_tls(self) -> ServerTls:
        return ServerTls(self.ca.cert, self.server.cert, self.server.key)

    def rotate(self) -> None:
        """Replace the relay's client certificate files with the `new` certificate."""
        install(self.new, self.cert, self.key)


def make_pki(directory: Path) -> Pki:
    """A private CA with a server certificate and two client certificates (CN=old, CN=new),
    a wrong CA, and `old` installed where the relay reads its client certificate."""
    ca = make_ca(directory / "ca")
    server, old, new = (ca.issue(name) for name in ("server", "old", "new"))
    wrong = make_ca(directory / "wrong", "relay-test-wrong-ca")
    pki = Pki(ca, server, old, new, wrong, directory / "client.pem", directory / "client.key")
    install(old, pki.cert, pki.key)
    return pki

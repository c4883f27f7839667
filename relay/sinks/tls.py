"""TLS for a sink's client connections, built from its CA / client certificate / key options.
One place, so every sink checks and reports its TLS files the same way, and every sink's
files are reloaded when they change on disk (relay/tls.py): `client_context` for a client
that takes an ssl.SSLContext, `CaBundle` for one that takes a CA bundle's bytes."""

from __future__ import annotations

import ssl
from pathlib import Path

from relay.config import ConfigError, SinkConfig, SinkSpec
from relay.tls import keep_fresh, on_change


def client_context(
    spec: SinkSpec,
    config: SinkConfig | None = None,
    *,
    ca: str = "tls_ca",
    cert: str = "tls_client_cert",
    key: str = "tls_client_key",
    skip_verify: bool = False,
) -> ssl.SSLContext:
    """A verifying client context (the system CAs unless the `ca` key names a bundle), with
    the client certificate when one is set. `ca`, `cert`, `key` name the sink's keys that
    hold the files. ConfigError names the variable of a bad file."""
    ca_file, cert_file, key_file = (
        (getattr(config, name) if config is not None else spec.options.get(name)) or ""
        for name in (ca, cert, key)
    )
    if key_file and not cert_file:
        raise ConfigError(f"{spec.variable(cert)}: required with {spec.variable(key)}")

    def load(context: ssl.SSLContext) -> None:
        if ca_file:
            context.load_verify_locations(ca_file)
        if cert_file:
            context.load_cert_chain(cert_file, key_file or None)

    try:
        # the CA given replaces the system's (create_default_context with cafile)
        context = ssl.create_default_context(cafile=ca_file or None)
        if cert_file:
            context.load_cert_chain(cert_file, key_file or None)
    except (OSError, ssl.SSLError) as exc:
        name = cert if cert_file else ca
        raise ConfigError(f"{spec.variable(name)}: cannot load TLS files: {exc}") from None
    keep_fresh(f"sink {spec.name}", context, [ca_file, cert_file, key_file], load)
    if skip_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


class CaBundle:
    """A CA bundle's PEM bytes, for a client that takes them instead of an SSLContext
    (obstore's `root_certificate`), kept fresh: `current` is (version, bytes), the version
    going up each time the file changed and still holds CA certificates. A client built from
    an older version is to be built again; one that cannot be loaded leaves the last good
    bundle in use (relay/tls.py)."""

    def __init__(self, spec: SinkSpec, config: SinkConfig, key: str = "tls_ca") -> None:
        self.path: str = getattr(config, key)
        try:
            self.current = (0, self._read())
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"{spec.variable(key)}: cannot load TLS files: {exc}") from None
        on_change(f"sink {spec.name}", [self.path], self._reload)

    def _read(self) -> bytes:
        pem = Path(self.path).read_bytes()
        # what is not a PEM CA bundle is refused here, not by the client at its next use
        if not pem.strip():
            raise ssl.SSLError(f"{self.path} is empty")
        ssl.create_default_context(cadata=pem.decode("latin-1"))
        return pem

    def _reload(self) -> None:  # from the watcher's thread: one assignment, seen whole
        self.current = (self.current[0] + 1, self._read())

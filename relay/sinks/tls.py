"""TLS for a sink's client connections, built from its CA / client certificate / key options.
One place, so every sink checks and reports its TLS files the same way, and every sink's
files are reloaded when they change on disk (relay/tls.py)."""

from __future__ import annotations

import ssl

from relay.config import ConfigError, SinkConfig, SinkSpec
from relay.tls import keep_fresh


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
    # without the sink's Config, the raw option values (converting them to SinkConfig
    # would refuse a sink's own values of a common key, e.g. the SQL sinks' FORMAT)
    ca_file, cert_file, key_file = (
        getattr(config, name, None) or spec.options.get(name) or "" for name in (ca, cert, key)
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

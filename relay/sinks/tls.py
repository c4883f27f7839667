"""TLS for a sink's client connections, built from its CA / client certificate / key options.
One place, so every sink checks and reports its TLS files the same way, and every sink's
files are reloaded when they change on disk (relay/tls.py)."""

from __future__ import annotations

import ssl

from relay.config import ConfigError, SinkSpec
from relay.tls import keep_fresh


def client_context(
    spec: SinkSpec,
    *,
    ca: str = "tls_ca",
    cert: str = "tls_client_cert",
    key: str = "tls_client_key",
    skip_verify: bool = False,
) -> ssl.SSLContext:
    """A verifying client context (the system CAs unless `ca` names a bundle), with the
    client certificate when one is set. ConfigError names the variable of a bad file."""
    if spec[key] and not spec[cert]:
        raise ConfigError(f"{spec.variable(cert)}: required with {spec.variable(key)}")

    def load(context: ssl.SSLContext) -> None:
        if spec[ca]:
            context.load_verify_locations(spec[ca])
        if spec[cert]:
            context.load_cert_chain(spec[cert], spec[key] or None)

    try:
        # the CA given replaces the system's (create_default_context with cafile)
        context = ssl.create_default_context(cafile=spec[ca] or None)
        if spec[cert]:
            context.load_cert_chain(spec[cert], spec[key] or None)
    except (OSError, ssl.SSLError) as exc:
        name = cert if spec[cert] else ca
        raise ConfigError(f"{spec.variable(name)}: cannot load TLS files: {exc}") from None
    keep_fresh(f"sink {spec.name}", context, [spec[ca], spec[cert], spec[key]], load)
    if skip_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context

"""TLS files on disk, kept fresh: when cert-manager (or an operator) replaces a certificate,
key or CA file, the contexts built from them load the new files in place, so new
connections use them within seconds, with no restart and no lost event. Connections already
open keep the certificate they were made with.

Every context built from files (the ingest server's here, each sink's in
relay/sinks/tls.py) is registered with `keep_fresh`; a client that takes the files' bytes
instead of a context registers what to do when they change with `on_change`. `watch()`
polls the files' change times and SIGHUP checks at once. A file that cannot be loaded
(caught half-written, say) leaves the previous certificate in use and is tried again at the
next check. CA bundles are added to a context, not replaced: removing a trusted CA takes a
restart.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from relay.config import ConfigError, Settings

log = logging.getLogger("relay.tls")

CHECK_EVERY = 2.0  # seconds between checks of the files


@dataclass
class _Watched:
    what: str  # for log lines: "ingest", "sink webhook:primary"
    files: tuple[Path, ...]
    reload: Callable[[], None]  # raises OSError or ssl.SSLError when the files cannot be used
    stamps: tuple[tuple[int, int], ...]


_WATCHED: list[_Watched] = []


def _stamps(files: Sequence[Path]) -> tuple[tuple[int, int], ...]:
    out = []
    for path in files:
        try:
            stat = path.stat()
            out.append((stat.st_mtime_ns, stat.st_size))
        except OSError:
            out.append((0, 0))
    return tuple(out)


def keep_fresh(
    what: str, context: ssl.SSLContext, files: Sequence[str], load: Callable[[ssl.SSLContext], None]
) -> None:
    """Load `files` into `context` again (with `load`) whenever one of them changes."""
    on_change(what, files, lambda: load(context))


def on_change(what: str, files: Sequence[str], reload: Callable[[], None]) -> None:
    """Call `reload` (from a worker thread) whenever one of `files` changes; when it raises
    OSError or ssl.SSLError, what it reloads must stay as it was."""
    paths = tuple(Path(f) for f in files if f)
    if paths:
        _WATCHED.append(_Watched(what, paths, reload, _stamps(paths)))


def check() -> int:
    """Reload every context whose files changed; returns how many were reloaded."""
    reloaded = 0
    for watched in _WATCHED:
        stamps = _stamps(watched.files)
        if stamps == watched.stamps:
            continue
        try:
            watched.reload()
        except (OSError, ssl.SSLError) as exc:
            log.error("TLS files changed but cannot be loaded; the previous ones stay in use",
                      extra={"for": watched.what, "error": str(exc)})  # fmt: skip
            continue
        watched.stamps = stamps
        reloaded += 1
        log.info("TLS files reloaded", extra={"for": watched.what})
    return reloaded


async def watch(interval: float = CHECK_EVERY) -> None:
    while True:
        await asyncio.sleep(interval)
        await asyncio.to_thread(check)


def server_context(settings: Settings) -> ssl.SSLContext | None:
    """The ingest server's context (RELAY_TLS_CERT/KEY, and RELAY_TLS_CLIENT_CA to require
    client certificates), or None for plain HTTP."""
    if not settings.tls_cert and not settings.tls_key:
        if settings.tls_client_ca:
            raise ConfigError("RELAY_TLS_CLIENT_CA: needs RELAY_TLS_CERT and RELAY_TLS_KEY")
        return None
    if not (settings.tls_cert and settings.tls_key):
        missing = "RELAY_TLS_KEY" if settings.tls_cert else "RELAY_TLS_CERT"
        raise ConfigError(f"{missing}: RELAY_TLS_CERT and RELAY_TLS_KEY go together")

    def load(context: ssl.SSLContext) -> None:
        context.load_cert_chain(settings.tls_cert, settings.tls_key)
        if settings.tls_client_ca:
            context.load_verify_locations(settings.tls_client_ca)

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        load(context)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"RELAY_TLS_CERT: cannot load the TLS files: {exc}") from None
    if settings.tls_client_ca:
        context.verify_mode = ssl.CERT_REQUIRED
    keep_fresh("ingest", context,
               [settings.tls_cert, settings.tls_key, settings.tls_client_ca], load)  # fmt: skip
    return context

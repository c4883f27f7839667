"""The sinks. Each is one module that knows one client library; modules load on first use,
so a relay that only forwards to a webhook never imports a Kafka client.

Sink types come from the `s3_notify_relay.sinks` entry-point group: the built-in ones are
registered there by this package's own metadata (pyproject.toml), third-party packages add
theirs the same way. A sink module has `Config` (a relay.config.SinkConfig subclass: its
keys, typed and documented where declared; or `OPTIONS`, a tuple of relay.config.Option)
and `create(spec) -> Sink` (see relay/sinks/base.py).
"""

from __future__ import annotations

import importlib
import logging
import re
from collections.abc import Iterator, Mapping, Sequence
from functools import cache
from importlib.metadata import entry_points
from types import ModuleType

from relay.config import COMMON_OPTIONS, ConfigError, Option, SinkSpec, options_of
from relay.sinks.base import Sink

log = logging.getLogger("relay.sinks")

GROUP = "s3_notify_relay.sinks"
# Used only when the package metadata is missing (a source tree run without installing).
_SOURCE_TREE = {
    name: f"relay.sinks.{name}"
    for name in (
        "webhook",
        "file",
        "kafka",
        "amqp",
        "redis",
        "mqtt",
        "audit_bucket",
    )
} | {
    "postgres": "relay.sinks.table.postgres",
    "mysql": "relay.sinks.table.mysql",
    "nats": "relay.sinks.nats.messages",
    "nats_objects": "relay.sinks.nats.objects",
}
_TYPE_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


@cache
def registry() -> dict[str, str]:
    """Sink type → module path, from the entry points."""
    found: dict[str, str] = {}
    for entry in entry_points(group=GROUP):
        name = entry.name.lower()
        if not _TYPE_NAME.match(name):
            log.warning("sink plugin ignored: bad type name", extra={"plugin": entry.value})
            continue
        if name in found and found[name] != entry.value:
            log.warning("two packages register the sink type; the first is used",
                        extra={"type": name, "ignored": entry.value})  # fmt: skip
            continue
        found[name] = entry.value
    return found or dict(_SOURCE_TREE)


def module(sink_type: str) -> ModuleType:
    path = registry()[sink_type]
    try:
        loaded = importlib.import_module(path)
    except ImportError as exc:
        raise ConfigError(f"the {sink_type} sink cannot be loaded from {path}: {exc}") from None
    declares = hasattr(loaded, "Config") or hasattr(loaded, "OPTIONS")
    if not declares or not callable(getattr(loaded, "create", None)):
        raise ConfigError(f"{path} is not a sink module (it needs Config and create(spec))")
    return loaded


def options(loaded: ModuleType) -> Sequence[Option]:
    """A sink type's own keys: those its Config adds to, or declares unlike, SinkConfig."""
    declared: Sequence[Option] | None = getattr(loaded, "OPTIONS", None)
    if declared is not None:
        return declared
    return tuple(o for o in options_of(loaded.Config) if o not in COMMON_OPTIONS)


class _DeclaredOptions(Mapping[str, Sequence[Option]]):
    """Sink type → its OPTIONS, importing a sink module only when its type is asked for."""

    def __getitem__(self, sink_type: str) -> Sequence[Option]:
        return options(module(sink_type))

    def __iter__(self) -> Iterator[str]:
        return iter(registry())

    def __len__(self) -> int:
        return len(registry())


def declared_options() -> Mapping[str, Sequence[Option]]:
    return _DeclaredOptions()


def create(spec: SinkSpec) -> Sink:
    sink: Sink = module(spec.type).create(spec)
    return sink

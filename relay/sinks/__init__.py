"""The sinks. Each is one module that knows one client library; modules load on first use,
so a relay that only forwards to a webhook never imports a Kafka client."""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping, Sequence
from types import ModuleType

from relay.config import Option, SinkSpec
from relay.sinks.base import Sink

# sink type → module. The type is the <TYPE> of RUSTFS_NOTIFY_<TYPE>_<KEY>_<ID>.
BUILTIN: dict[str, str] = {
    "webhook": "relay.sinks.webhook",
    "file": "relay.sinks.file",
    "kafka": "relay.sinks.kafka",
    "amqp": "relay.sinks.amqp",
    "nats": "relay.sinks.nats",
    "redis": "relay.sinks.redis",
    "mqtt": "relay.sinks.mqtt",
    "postgres": "relay.sinks.postgres",
    "mysql": "relay.sinks.mysql",
}


def module(sink_type: str) -> ModuleType:
    return importlib.import_module(BUILTIN[sink_type])


class _DeclaredOptions(Mapping[str, Sequence[Option]]):
    """Sink type → its OPTIONS, importing a sink module only when its type is asked for."""

    def __getitem__(self, sink_type: str) -> Sequence[Option]:
        options: Sequence[Option] = module(sink_type).OPTIONS
        return options

    def __iter__(self) -> Iterator[str]:
        return iter(BUILTIN)

    def __len__(self) -> int:
        return len(BUILTIN)


def declared_options() -> Mapping[str, Sequence[Option]]:
    return _DeclaredOptions()


def create(spec: SinkSpec) -> Sink:
    sink: Sink = module(spec.type).create(spec)
    return sink

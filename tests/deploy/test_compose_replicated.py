"""deploy/compose/replicated.yaml: two relays on a 3-node NATS JetStream cluster. The relays'
environment goes through the relay's own configuration loader."""

from __future__ import annotations

from typing import Any

import yaml

from relay.app import load_config
from tests.deploy.test_compose import COMPOSE, SETTINGS, environment, interpolate, volume_mounts


def load() -> dict[str, Any]:
    lines = (COMPOSE / "replicated.yaml").read_text().splitlines()
    text = "\n".join(line for line in lines if not line.lstrip().startswith("#"))
    return yaml.safe_load(interpolate(text, SETTINGS))


def test_two_relays_share_one_replicated_log_on_three_servers() -> None:
    compose = load()
    services = compose["services"]
    nats = sorted(n for n in services if n.startswith("nats-"))
    relays = sorted(n for n in services if n.startswith("relay-"))
    assert len(nats) == 3 and len(relays) == 2
    routes = set()
    for name in nats:
        command = services[name]["command"]
        assert command[command.index("--name") + 1] == name  # every node its own server name
        assert "-js" in command and volume_mounts(services[name])["/data"] == name
        routes.add(command[command.index("--routes") + 1])
        assert ":" in services[name]["image"] and "latest" not in services[name]["image"]
    (route_list,) = routes  # the same routes on every node, every node in them
    assert sorted(r.split("//")[1].split(":")[0] for r in route_list.split(",")) == nats
    data = set()
    for name in relays:
        env = environment(services[name])
        config = load_config(env)  # a misspelt variable fails here
        servers = config.settings.log.split(",")
        assert sorted(s.split("//")[1].split(":")[0] for s in servers) == nats
        assert config.settings.log_replicas == 3
        assert not config.warnings or all("RELAY_" not in w for w in config.warnings)
        data.add(volume_mounts(services[name])["/data"])
        depends = services[name]["depends_on"]
        assert all(depends[n]["condition"] == "service_healthy" for n in nats)
    assert len(data) == 2  # each relay its own data dir (its lock)

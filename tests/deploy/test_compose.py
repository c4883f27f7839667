"""deploy/compose: each file has the store, the relay built from this repository, the store's
notification target pointing at the relay with the relay's token, volumes the non-root
containers can write, and healthchecks. The relay's environment goes through the relay's own
configuration loader, so a misspelt variable fails here."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from relay.app import load_config
from tests.deploy.support import DEPLOY, ROOT, read_dockerfile, relay_shutdown_budget

COMPOSE = DEPLOY / "compose"
IMAGE = read_dockerfile().final
UID = IMAGE.one("USER").args.split(":")[0]
PORT = int(IMAGE.one("EXPOSE").args)
DATA_DIR = IMAGE.env()["RELAY_DATA_DIR"]
SETTINGS = {  # what an operator exports before `docker compose up`
    "RELAY_TOKEN": "t0ken-for-the-test",
    "RUSTFS_ACCESS_KEY": "access",
    "RUSTFS_SECRET_KEY": "secret",
    "MINIO_ROOT_USER": "user",
    "MINIO_ROOT_PASSWORD": "password",
}
# store → (its service, env prefix of its target, ingest path, ARN `mc event add` uses)
STORES = {
    "rustfs": ("rustfs", "RUSTFS_NOTIFY_WEBHOOK_", "/rustfs", "arn:rustfs:sqs::relay:webhook"),
    "minio": ("minio", "MINIO_NOTIFY_WEBHOOK_", "/minio", "arn:minio:sqs::RELAY:webhook"),
}


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default}, ${VAR:?error} and $$."""

    def one(match: re.Match[str]) -> str:
        name, op, arg = match.group(1), match.group(2), match.group(3)
        if name in env and (env[name] or op is None):
            return env[name]
        if op == ":?":
            raise AssertionError(f"{name} is required: {arg}")
        return arg or ""

    text = re.sub(r"\$\{(\w+)(?:(:\?|:-)([^}]*))?\}", one, text.replace("$$", "\x00"))
    assert "$" not in text.replace("\x00", ""), "a $ that compose would not interpolate"
    return text.replace("\x00", "$")


def load(store: str, env: dict[str, str] = SETTINGS) -> dict[str, Any]:
    path = COMPOSE / f"{store}.yaml"
    without_comments = "\n".join(
        line for line in path.read_text().splitlines() if not line.lstrip().startswith("#")
    )
    return yaml.safe_load(interpolate(without_comments, env))


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    assert isinstance(env, dict), "environment as a map"
    return {k: str(v) for k, v in env.items()}


def volume_mounts(service: dict[str, Any]) -> dict[str, str]:
    """target → named volume (bind mounts are refused: the examples use named volumes)."""
    mounts = {}
    for entry in service.get("volumes", []):
        source, target = entry.split(":")[:2]
        assert not source.startswith((".", "/")), f"{entry}: a bind mount"
        mounts[target] = source
    return mounts


@pytest.mark.parametrize("store", sorted(STORES))
def test_the_relay_service(store: str) -> None:
    compose = load(store)
    relay = compose["services"]["relay"]
    assert (COMPOSE / relay["build"]["context"]).resolve() == ROOT
    assert (ROOT / relay["build"]["dockerfile"]).is_file()
    assert relay["read_only"] is True and relay["tmpfs"] == ["/tmp"]
    assert relay["cap_drop"] == ["ALL"]
    assert "no-new-privileges:true" in relay["security_opt"]
    mounts = volume_mounts(relay)
    assert DATA_DIR in mounts and mounts[DATA_DIR] in compose["volumes"]
    test = relay["healthcheck"]["test"]
    assert test[:2] == ["CMD", "python"] and f"127.0.0.1:{PORT}/healthz" in test[-1]
    env = environment(relay)
    assert env["RELAY_AUTH_TOKENS"] == SETTINGS["RELAY_TOKEN"]
    seconds = _duration(relay["stop_grace_period"])
    assert seconds > relay_shutdown_budget(env)

    config = load_config({**IMAGE.env(), **env})  # the image's ENV, then the service's
    assert config.settings.listen_port == PORT
    assert config.specs, "a sink, so the example delivers somewhere"
    for spec in config.specs:
        if spec.type == "file":
            path = Path(spec["path"])
            assert any(path.is_relative_to(target) for target in mounts), f"{path} not on a volume"
        if spec.type == "webhook":
            assert "relay:" not in spec["endpoint"], "the relay would post to itself"
    assert not [w for w in config.warnings if "no sink type" in w or "not created" in w]


@pytest.mark.parametrize("store", sorted(STORES))
def test_the_store_posts_to_the_relay_with_its_token(store: str) -> None:
    compose = load(store)
    name, prefix, path, _ = STORES[store]
    service = compose["services"][name]
    env = environment(service)
    suffix = "RELAY"
    assert env[f"{prefix}ENABLE_{suffix}"] == "on"
    endpoint = urlsplit(env[f"{prefix}ENDPOINT_{suffix}"])
    assert (endpoint.scheme, endpoint.hostname, endpoint.port, endpoint.path) == (
        "http", "relay", PORT, path,
    )  # fmt: skip
    assert env[f"{prefix}AUTH_TOKEN_{suffix}"] == SETTINGS["RELAY_TOKEN"]
    # the store keeps events on a volume while the relay restarts
    queue = env[f"{prefix}QUEUE_DIR_{suffix}"]
    assert queue in volume_mounts(service) and not queue.startswith("/data")
    assert service["depends_on"]["relay"]["condition"] == "service_healthy"
    assert service["healthcheck"]["test"][0] == "CMD"
    if store == "rustfs":
        assert env["RUSTFS_NOTIFY_ENABLE"] == "true"  # env targets need the global switch
        origin = f"{endpoint.scheme}://{endpoint.hostname}:{endpoint.port}"
        assert origin in env["RUSTFS_OUTBOUND_ALLOW_ORIGINS"].split(",")
    relay_env = environment(compose["services"]["relay"])
    assert not [k for k in relay_env if k.startswith(prefix) and k.endswith("_" + suffix)]


@pytest.mark.parametrize("store", sorted(STORES))
def test_setup_subscribes_the_bucket_to_the_relay_target(store: str) -> None:
    compose = load(store)
    name, _, _, arn = STORES[store]
    setup = compose["services"]["setup"]
    script = "\n".join(setup["command"])
    assert re.search(rf"mc event add {name}/\S+ {re.escape(arn)} ", script)
    assert f"@{name}:9000" in environment(setup)[f"MC_HOST_{name}"]
    assert setup["depends_on"][name]["condition"] == "service_healthy"
    assert setup["restart"] == "no"


@pytest.mark.parametrize("store", sorted(STORES))
def test_volumes_written_by_uid_10001_are_chowned_first(store: str) -> None:
    """A new named volume mounted where the image has no directory belongs to root; the
    relay (and RustFS) run as uid 10001, so volume-init hands those volumes over first."""
    compose = load(store)
    services = compose["services"]
    init = services["volume-init"]
    assert init["user"] == "0:0" and init["command"][:2] == ["chown", f"{UID}:{UID}"]
    chowned = {volume_mounts(init)[target] for target in init["command"][2:]}
    needing = {v for t, v in volume_mounts(services["relay"]).items() if t != DATA_DIR}
    if store == "rustfs":  # the RustFS image runs as 10001 and has only /data
        needing |= {v for t, v in volume_mounts(services["rustfs"]).items() if t != "/data"}
    assert needing and needing <= chowned
    for service in ("relay", name := STORES[store][0]):
        if service == "relay" or store == "rustfs":
            assert services[service]["depends_on"]["volume-init"]["condition"] == (
                "service_completed_successfully"
            ), name


@pytest.mark.parametrize("store", sorted(STORES))
def test_images_are_pinned_and_tokens_required(store: str) -> None:
    compose = load(store)
    for name, service in compose["services"].items():
        image = service["image"]
        assert ":" in image and not image.endswith(":latest"), f"{name}: {image}"
    with pytest.raises(AssertionError, match="RELAY_TOKEN is required"):
        load(store, {k: v for k, v in SETTINGS.items() if k != "RELAY_TOKEN"})


def test_interpolation_follows_compose() -> None:
    assert interpolate("a ${X} ${Y:-d} $$HOME", {"X": "1"}) == "a 1 d $HOME"
    with pytest.raises(AssertionError, match="Z is required"):
        interpolate("${Z:?set Z}", {})
    with pytest.raises(AssertionError, match="would not interpolate"):
        interpolate("$(openssl rand -hex 32)", {})


def _duration(text: str) -> float:
    match = re.fullmatch(r"(\d+)(s|m)", text)
    assert match, text
    return int(match.group(1)) * (60 if match.group(2) == "m" else 1)

"""deploy/kubernetes/sidecar.yaml: RustFS and the relay in one pod of a StatefulSet. The store
posts to the relay on localhost with the token both read from one Secret; the relay's
container is probed, unprivileged and read-only, with its log on a PVC."""

from __future__ import annotations

import tomllib
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from relay.app import load_config
from tests.deploy.support import (
    DEPLOY,
    ROOT,
    check_relay_pod,
    env_values,
    read_dockerfile,
    secret_ref,
)

MANIFEST = DEPLOY / "kubernetes" / "sidecar.yaml"
PORT = int(read_dockerfile().final.one("EXPOSE").args)
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


@pytest.fixture(scope="module")
def docs() -> dict[str, dict[str, Any]]:
    loaded = [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d]
    by_key = {f"{d['kind']}/{d['metadata']['name']}": d for d in loaded}
    assert len(by_key) == len(loaded), "two objects of the same kind and name"
    for doc in loaded:
        assert doc["apiVersion"] and doc["metadata"]["name"]
    return by_key


def _pod(docs: dict[str, dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    (sts,) = [d for k, d in docs.items() if k.startswith("StatefulSet/")]
    pod = sts["spec"]["template"]["spec"]
    sidecars = [c for c in pod.get("initContainers", []) if c.get("restartPolicy") == "Always"]
    relay = next(c for c in sidecars + pod["containers"] if c["name"] == "relay")
    store = next(c for c in pod["containers"] if c["name"] == "rustfs")
    return sts, relay, store


def test_the_relay_container(docs: dict[str, dict[str, Any]]) -> None:
    sts, relay, _ = _pod(docs)
    claims = {t["metadata"]["name"] for t in sts["spec"]["volumeClaimTemplates"]}
    check_relay_pod(sts["spec"]["template"]["spec"], relay, claims)
    assert relay["image"].rsplit(":", 1)[1] == VERSION
    assert relay["args"] == ["serve"]
    secret, key = secret_ref(relay, "RELAY_AUTH_TOKENS")
    assert key in docs[f"Secret/{secret}"]["stringData"]
    config = load_config({**read_dockerfile().final.env(), **env_values(relay),
                          "RELAY_AUTH_TOKENS": "x"})  # fmt: skip
    assert config.specs, "an example sink"
    assert not [w for w in config.warnings if "no sink type" in w or "not created" in w]
    # a native sidecar (starts before the store, stops after it) or a plain container
    in_init = relay in sts["spec"]["template"]["spec"].get("initContainers", [])
    assert not in_init or relay["restartPolicy"] == "Always"


def test_the_store_posts_to_the_relay_on_localhost(docs: dict[str, dict[str, Any]]) -> None:
    sts, relay, store = _pod(docs)
    env = env_values(store)
    assert env["RUSTFS_NOTIFY_ENABLE"] == "true"
    assert env["RUSTFS_NOTIFY_WEBHOOK_ENABLE_RELAY"] == "on"
    endpoint = urlsplit(env["RUSTFS_NOTIFY_WEBHOOK_ENDPOINT_RELAY"])
    assert (endpoint.hostname, endpoint.port, endpoint.path) == ("127.0.0.1", PORT, "/rustfs")
    origin = f"{endpoint.scheme}://{endpoint.hostname}:{endpoint.port}"
    assert origin in env["RUSTFS_OUTBOUND_ALLOW_ORIGINS"].split(",")
    assert secret_ref(store, "RUSTFS_NOTIFY_WEBHOOK_AUTH_TOKEN_RELAY") == secret_ref(
        relay, "RELAY_AUTH_TOKENS"
    )
    # RustFS's own queue (while the relay restarts) is on a PVC too
    claims = {t["metadata"]["name"] for t in sts["spec"]["volumeClaimTemplates"]}
    mounts = {m["mountPath"]: m["name"] for m in store["volumeMounts"]}
    assert mounts[env["RUSTFS_NOTIFY_WEBHOOK_QUEUE_DIR_RELAY"]] in claims
    assert mounts[env["RUSTFS_VOLUMES"]] in claims
    for name in ("RUSTFS_ACCESS_KEY", "RUSTFS_SECRET_KEY"):
        secret, key = secret_ref(store, name)
        assert key in docs[f"Secret/{secret}"]["stringData"]
    assert not [k for k in env_values(relay) if k.endswith("_RELAY")], "the relay's own target"


def test_services_select_the_pod_and_metrics_are_scraped(docs: dict[str, dict[str, Any]]) -> None:
    sts, _, store = _pod(docs)
    labels = sts["spec"]["template"]["metadata"]["labels"]
    assert sts["spec"]["selector"]["matchLabels"].items() <= labels.items()
    governing = docs[f"Service/{sts['spec']['serviceName']}"]
    assert governing["spec"]["clusterIP"] == "None"
    store_ports = {p["name"] for p in store["ports"]}
    for key, doc in docs.items():
        if key.startswith("Service/"):
            assert doc["spec"]["selector"].items() <= labels.items(), key
            assert {p["targetPort"] for p in doc["spec"]["ports"]} <= store_ports, key
    annotations = sts["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(PORT)
    assert annotations["prometheus.io/path"] == "/metrics"


def test_the_check_catches_a_writable_root(docs: dict[str, dict[str, Any]]) -> None:
    sts, relay, _ = _pod(docs)
    claims = {t["metadata"]["name"] for t in sts["spec"]["volumeClaimTemplates"]}
    broken = {
        **relay,
        "securityContext": {**relay["securityContext"], "readOnlyRootFilesystem": False},
    }
    with pytest.raises(AssertionError):
        check_relay_pod(sts["spec"]["template"]["spec"], broken, claims)
    short = {**sts["spec"]["template"]["spec"], "terminationGracePeriodSeconds": 10}
    with pytest.raises(AssertionError):
        check_relay_pod(short, relay, claims)

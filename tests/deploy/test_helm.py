"""deploy/helm/s3-notify-relay, rendered with its values.yaml (and with the optional parts
switched on) by tests/deploy/helmlite.py: a renderer for the subset of Helm's template language
the chart keeps to. It is not helm; `helm lint`/`helm template` were not run (no helm in CI)."""

from __future__ import annotations

import tomllib
from typing import Any

import pytest
import yaml

from relay.config import load_settings
from tests.deploy import helmlite
from tests.deploy.support import DEPLOY, ROOT, check_relay_pod, env_values, secret_ref

CHART = DEPLOY / "helm" / "s3-notify-relay"
VALUES = yaml.safe_load((CHART / "values.yaml").read_text())
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
OPTIONAL = {
    "auth": {"createSecret": True, "token": "t0ken"},
    "serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
    "env": [{"name": "RUSTFS_NOTIFY_FILE_ENABLE_AUDIT", "value": "on"},
            {"name": "RUSTFS_NOTIFY_FILE_PATH_AUDIT", "value": "/data/audit.ndjson"}],
    "envFrom": [{"secretRef": {"name": "relay-sinks"}}],
    "podAnnotations": {"example.com/team": "storage"},
    "persistence": {"storageClassName": "fast"},
    "nodeSelector": {"disktype": "ssd"},
}  # fmt: skip


def rendered(values: dict[str, Any]) -> dict[str, dict[str, Any]]:
    objects = {}
    for name, text in helmlite.render_chart(CHART, values, "relay").items():
        for doc in yaml.safe_load_all(text):
            if doc is None:
                continue
            assert doc["apiVersion"] and doc["metadata"]["name"], name
            objects[f"{doc['kind']}/{doc['metadata']['name']}"] = doc
    return objects


def test_chart_metadata_follows_the_project() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2" and chart["name"] == "s3-notify-relay"
    assert chart["appVersion"] == VERSION == VALUES["image"]["tag"]


def test_default_values_render_a_deployment_service_and_claim() -> None:
    objects = rendered(VALUES)
    assert sorted(objects) == [
        "Deployment/relay-s3-notify-relay",
        "PersistentVolumeClaim/relay-s3-notify-relay",
        "Service/relay-s3-notify-relay",
    ]  # no Secret (it must exist) and no ServiceMonitor unless asked for
    deployment = objects["Deployment/relay-s3-notify-relay"]
    spec = deployment["spec"]
    assert spec["replicas"] == 1 and spec["strategy"]["type"] == "Recreate"  # one writer per log
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    check_relay_pod(pod, container, {"relay-s3-notify-relay"})
    assert container["image"] == f"{VALUES['image']['repository']}:{VERSION}"
    assert secret_ref(container, "RELAY_AUTH_TOKENS") == (
        VALUES["auth"]["secretName"], VALUES["auth"]["secretKey"],
    )  # fmt: skip
    settings = load_settings(env_values(container))  # the chart's RELAY_* are valid
    assert settings.sync == VALUES["relay"]["sync"]
    labels = spec["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    service = objects["Service/relay-s3-notify-relay"]["spec"]
    assert service["selector"].items() <= labels.items()
    assert {p["targetPort"] for p in service["ports"]} <= {p["name"] for p in container["ports"]}
    claim = objects["PersistentVolumeClaim/relay-s3-notify-relay"]
    assert claim["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert claim["spec"]["resources"]["requests"]["storage"] == VALUES["persistence"]["size"]
    assert "storageClassName" not in claim["spec"]


def test_optional_parts_render_and_fit_together() -> None:
    values = helmlite.merge(VALUES, OPTIONAL)
    objects = rendered(values)
    deployment = objects["Deployment/relay-s3-notify-relay"]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    check_relay_pod(pod, container, {"relay-s3-notify-relay"})
    secret = objects[f"Secret/{values['auth']['secretName']}"]
    name, key = secret_ref(container, "RELAY_AUTH_TOKENS")
    assert name == secret["metadata"]["name"] and secret["stringData"][key] == "t0ken"
    assert env_values(container)["RUSTFS_NOTIFY_FILE_PATH_AUDIT"] == "/data/audit.ndjson"
    assert container["envFrom"] == OPTIONAL["envFrom"]
    assert deployment["spec"]["template"]["metadata"]["annotations"] == OPTIONAL["podAnnotations"]
    assert pod["nodeSelector"] == {"disktype": "ssd"}
    claim = objects["PersistentVolumeClaim/relay-s3-notify-relay"]
    assert claim["spec"]["storageClassName"] == "fast"
    monitor = objects["ServiceMonitor/relay-s3-notify-relay"]
    service = objects["Service/relay-s3-notify-relay"]
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["path"] == "/metrics"
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}


def test_the_replicated_log_runs_replicas_and_needs_no_claim() -> None:
    urls = "nats://nats-0.nats:4222,nats://nats-1.nats:4222,nats://nats-2.nats:4222"
    values = helmlite.merge(VALUES, {"log": {"nats": urls}, "replicaCount": 3})
    objects = rendered(values)
    assert "PersistentVolumeClaim/relay-s3-notify-relay" not in objects
    spec = objects["Deployment/relay-s3-notify-relay"]["spec"]
    assert spec["replicas"] == 3 and spec["strategy"]["type"] == "RollingUpdate"
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    settings = load_settings(env_values(container))  # the chart's RELAY_* are valid
    assert (settings.log, settings.log_replicas, settings.log_lease) == (urls, 3, 10.0)
    (data,) = [v for v in pod["volumes"] if v["name"] == "data"]
    assert "emptyDir" in data and "persistentVolumeClaim" not in data
    # the embedded log ignores replicaCount: one writer
    single = rendered(helmlite.merge(VALUES, {"replicaCount": 3}))
    assert single["Deployment/relay-s3-notify-relay"]["spec"]["replicas"] == 1


def test_a_grace_period_shorter_than_the_shutdown_fails_the_check() -> None:
    values = helmlite.merge(VALUES, {"relay": {"shutdownTimeout": "60s"}})
    pod = rendered(values)["Deployment/relay-s3-notify-relay"]["spec"]["template"]["spec"]
    with pytest.raises(AssertionError):
        check_relay_pod(pod, pod["containers"][0], {"relay-s3-notify-relay"})


# -- the subset renderer itself ------------------------------------------------------------------

RELEASE = {"Name": "r"}


def test_renderer_values_trimming_and_if() -> None:
    template = (
        "a: {{ .Values.a }}\n"
        "b:\n  {{- toYaml .Values.b | nindent 2 }}\n"
        "{{- if .Values.off }}\nhidden: 1\n{{- end }}\n"
        "{{- if not .Values.on }}\nhidden: 2\n{{- end }}\n"
        "{{- if not .Values.off }}\nnot-off: 1\n{{- end }}\n"
        "{{- if .Values.on }}\nshown: {{ .Release.Name }}\n{{- end }}\n"
        "n: {{ .Values.n }} t: {{ .Values.t }}\n"
        "x: {{ .Values.a -}}   \n  y\n"
    )
    out = helmlite.render(
        template, {"a": "v", "b": {"z": 1, "k": [1, 2]}, "off": [], "on": {"x": 1}, "n": 45, "t": True},
        RELEASE,
    )  # fmt: skip
    assert out == (
        "a: v\nb:\n  k:\n  - 1\n  - 2\n  z: 1\nnot-off: 1\nshown: r\nn: 45 t: true\nx: vy\n"
    )


@pytest.mark.parametrize(
    "template",
    [
        '{{ include "x" . }}',
        '{{ .Values.a | default "b" }}',
        "{{ .Values.a | quote }}",
        "{{- if .Values.a }}x{{- else }}y{{- end }}",
        "{{ range .Values.l }}x{{ end }}",
        "{{ $x := 1 }}",
        "{{/* a comment */}}",
        "{{ .Chart.Name }}",
        "{{- if .Values.a }}",
        "{{ .Values.missing }}",
        "{{ .Values.map }}",
        "{{ .Values.big }}",
        "{{- if .Values.off }}{{ tpl .Values.a . }}{{- end }}",
    ],
)
def test_renderer_refuses_what_it_does_not_render_like_helm(template: str) -> None:
    values = {"a": "x", "l": [1], "map": {"k": 1}, "big": 2_000_000, "off": False}
    with pytest.raises(helmlite.TemplateError):
        helmlite.render(template, values, RELEASE)

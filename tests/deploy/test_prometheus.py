"""The alert rules and the dashboard, checked by the real Prometheus tools: `promtool check
rules` on deploy/prometheus/alerts.yaml; `promtool test rules` on its unit tests
(deploy/prometheus/alerts.test.yaml), which must make every alert fire and stay silent; and a
real Prometheus that scrapes a running relay, fires RelaySinkDown for a sink that is down with
events waiting, and answers every query of deploy/grafana/s3-notify-relay.json with data."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from tests.deploy.support import DEPLOY
from tests.support.bodies import minio_body
from tests.support.prometheus import Prometheus, prometheus, promtool
from tests.support.receiver import Receiver
from tests.support.relay_process import RelayProcess
from tests.support.servers import free_port, nats_server
from tests.support.waiting import eventually

ALERTS = DEPLOY / "prometheus" / "alerts.yaml"
ALERT_TESTS = DEPLOY / "prometheus" / "alerts.test.yaml"
DASHBOARD = DEPLOY / "grafana" / "s3-notify-relay.json"
TOKEN = "prometheus-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
RATE_INTERVAL = "5m"  # what $__rate_interval stands for: the whole test, at a 1 s scrape


def alert_names() -> list[str]:
    return [r["alert"] for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]]


def test_promtool_checks_the_rules() -> None:
    checked = promtool("check", "rules", str(ALERTS))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(alert_names())} rules found" in checked.stdout


def test_every_alert_is_unit_tested_firing_and_silent() -> None:
    tests = yaml.safe_load(ALERT_TESTS.read_text())
    assert tests["rule_files"] == [ALERTS.name]
    fires: set[str] = set()
    silent: set[str] = set()
    for case in tests["tests"]:
        for check in case["alert_rule_test"]:
            (fires if check.get("exp_alerts") else silent).add(check["alertname"])
    names = set(alert_names())
    assert names - fires == set(), "alerts no test makes fire"
    assert names - silent == set(), "alerts no test shows silent"
    assert fires | silent <= names, "tests of alerts that do not exist"

    ran = promtool("test", "rules", ALERT_TESTS.name, cwd=ALERT_TESTS.parent)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "SUCCESS" in ran.stdout


def test_a_failing_unit_test_fails_promtool(tmp_path: Path) -> None:
    """The check above can fail: a test that expects RelaySinkDown of a healthy sink does."""
    (tmp_path / ALERTS.name).write_text(ALERTS.read_text())
    wrong = {
        "rule_files": [ALERTS.name],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": [
                {"series": 'relay_sink_up{sink="webhook:a"}', "values": "1x10"},
                {"series": 'relay_sink_pending{sink="webhook:a"}', "values": "5x10"},
            ],
            "alert_rule_test": [{
                "eval_time": "10m", "alertname": "RelaySinkDown",
                "exp_alerts": [{"exp_labels": {"severity": "warning", "sink": "webhook:a"}}],
            }],
        }],
    }  # fmt: skip
    (tmp_path / "wrong.test.yaml").write_text(yaml.safe_dump(wrong))
    ran = promtool("test", "rules", "wrong.test.yaml", cwd=tmp_path)
    assert ran.returncode != 0 and "RelaySinkDown" in ran.stdout + ran.stderr


# -- a real Prometheus scraping a running relay ---------------------------------------------


def quick_rules(directory: Path) -> Path:
    """The shipped rules with every `for:` cut to 2 s, for a Prometheus evaluating each
    second (the shipped file is left as it is)."""
    text = re.sub(r"(?m)^(\s+for:) \d+[smh]$", r"\1 2s", ALERTS.read_text())
    assert text != ALERTS.read_text()
    path = directory / "alerts-quick.yaml"
    path.write_text(text)
    return path


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every panel, with the dashboard's variables as Grafana
    fills them for "All" sinks."""
    dashboard = json.loads(DASHBOARD.read_text())
    found = []
    for panel in dashboard["panels"]:
        for p in [panel, *panel.get("panels", [])]:
            for target in p.get("targets", []):
                expr = target["expr"].replace("$__rate_interval", RATE_INTERVAL)
                found.append((p["title"], expr.replace("$sink", ".*")))
    return found


def relay_env(
    receiver: Receiver, out: Path, nats_port: int, audit_bucket: str, unused_port: int
) -> dict[str, str]:
    return {
        "RELAY_AUTH_TOKENS": TOKEN,
        # only creations and removals are stored: a GET's event is filtered out (and counted)
        "RELAY_INGEST_EVENTS": "s3:ObjectCreated:*,s3:ObjectRemoved:*",
        # the audit trail marks every event of the test's principal (minioadmin) unexpected
        "RELAY_EXPECTED_PRINCIPALS": "relay-operator",
        # down: its receiver answers 503; bounded, it sheds its oldest events
        "RUSTFS_NOTIFY_WEBHOOK_ENABLE_DOWN": "on",
        "RUSTFS_NOTIFY_WEBHOOK_ENDPOINT_DOWN": receiver.url,
        "RUSTFS_NOTIFY_WEBHOOK_BACKOFF_MAX_DOWN": "500ms",
        "RUSTFS_NOTIFY_WEBHOOK_MAX_BACKLOG_DOWN": "2",
        "RUSTFS_NOTIFY_WEBHOOK_ON_FULL_DOWN": "shed",
        # stuck: the same receiver, paused once it has failed for a second
        "RUSTFS_NOTIFY_WEBHOOK_ENABLE_STUCK": "on",
        "RUSTFS_NOTIFY_WEBHOOK_ENDPOINT_STUCK": receiver.url,
        "RUSTFS_NOTIFY_WEBHOOK_BACKOFF_MAX_STUCK": "200ms",
        "RUSTFS_NOTIFY_WEBHOOK_PAUSE_AFTER_STUCK": "1s",
        # up: a local file; an older event of an object it already has is flagged stale
        "RUSTFS_NOTIFY_FILE_ENABLE_OK": "on",
        "RUSTFS_NOTIFY_FILE_PATH_OK": str(out),
        "RUSTFS_NOTIFY_FILE_STALE_OK": "flag",
        # an audit trail in a NATS object store, which marks unexpected principals
        "RUSTFS_NOTIFY_NATS_OBJECTS_ENABLE_AUDIT": "on",
        "RUSTFS_NOTIFY_NATS_OBJECTS_ADDRESS_AUDIT": f"127.0.0.1:{nats_port}",
        "RUSTFS_NOTIFY_NATS_OBJECTS_BUCKET_AUDIT": audit_bucket,
        "RUSTFS_NOTIFY_NATS_OBJECTS_MAX_OBJECT_AGE_AUDIT": "0",
        "RELAY_RULE_PHOTOS_BUCKETS": "photos",
        "RELAY_RULE_PHOTOS_SINKS": "webhook:down,webhook:stuck,file:ok,nats_objects:audit",
        # an audit bucket that gets only events about itself: its self-loop guard leaves
        # them out (and counts them), so it never needs its S3 server
        "RUSTFS_NOTIFY_AUDIT_BUCKET_ENABLE_TRAIL": "on",
        "RUSTFS_NOTIFY_AUDIT_BUCKET_ENDPOINT_TRAIL": f"http://127.0.0.1:{unused_port}",
        "RUSTFS_NOTIFY_AUDIT_BUCKET_ALLOW_HTTP_TRAIL": "on",
        "RUSTFS_NOTIFY_AUDIT_BUCKET_BUCKET_TRAIL": audit_bucket,
        "RUSTFS_NOTIFY_AUDIT_BUCKET_ACCESS_KEY_TRAIL": "relay-test",
        "RUSTFS_NOTIFY_AUDIT_BUCKET_SECRET_KEY_TRAIL": "relay-test-secret",
        "RUSTFS_NOTIFY_AUDIT_BUCKET_MAX_OBJECT_AGE_TRAIL": "0",
        "RELAY_RULE_TRAIL_BUCKETS": audit_bucket,
        "RELAY_RULE_TRAIL_SINKS": "audit_bucket:trail",
    }


async def post(relay: RelayProcess, body: bytes, headers: dict[str, str] = AUTH) -> int:
    async with aiohttp.ClientSession() as session:
        async with session.post(relay.url, data=body, headers=headers) as response:
            return response.status


async def produce_every_kind_of_event(relay: RelayProcess, audit_bucket: str, out: Path) -> None:
    """What makes every series of the dashboard exist and move: ingest of each kind, a
    rejection, a duplicate, a test event, a filtered event, a stale event, events about the
    audit trail's own bucket, and more events than the bounded sink may keep."""
    for n in range(1, 6):
        assert await post(relay, minio_body("photos", f"k{n}", n)) == 200
    assert await post(relay, minio_body("photos", "k1", 1)) == 200  # a duplicate
    assert await post(relay, json.dumps({"Event": "s3:TestEvent"}).encode()) == 200
    assert await post(relay, minio_body("photos", "k1", 90, "s3:ObjectAccessed:Get")) == 200
    assert await post(relay, minio_body("photos", "k1", 1), {"Authorization": "Bearer no"}) == 401
    assert await post(relay, minio_body(audit_bucket, "audit/x.ndjson", 7)) == 200
    # k9's event 20 first, then its older event 10: the file sink flags the second as stale
    assert await post(relay, minio_body("photos", "k9", 20)) == 200
    await eventually(lambda: "photos/k9" in out.read_text())
    assert await post(relay, minio_body("photos", "k9", 10)) == 200


def finite(samples: list[dict[str, Any]]) -> bool:
    return any(math.isfinite(float(s["value"][1])) for s in samples)


async def test_a_real_prometheus_scrapes_the_relay_fires_sink_down_and_answers_the_dashboard(
    tmp_path: Path, relay_factory: Callable[..., RelayProcess]
) -> None:
    receiver = await Receiver(status=503).start()
    audit_bucket = "relay-prom-audit"
    out = tmp_path / "out.ndjson"
    out.touch()
    with nats_server(tmp_path) as nats:
        env = relay_env(receiver, out, nats.port, audit_bucket, free_port())
        # a first run with one more sink, then without it: that sink is orphaned
        earlier = await relay_factory({
            **env, "RUSTFS_NOTIFY_FILE_ENABLE_GONE": "on",
            "RUSTFS_NOTIFY_FILE_PATH_GONE": str(tmp_path / "gone.ndjson"),
        }).start()  # fmt: skip
        assert await earlier.stop() == 0
        relay = await relay_factory(env).start()
        try:
            with prometheus(tmp_path, targets=[relay.port], rules=[quick_rules(tmp_path)]) as prom:
                await check_prometheus(prom, relay, audit_bucket, out)
        finally:
            await receiver.stop()


async def check_prometheus(
    prom: Prometheus, relay: RelayProcess, audit_bucket: str, out: Path
) -> None:
    await eventually(prom.ready, timeout=30)
    groups = await prom.rule_groups()
    assert {r["name"] for g in groups for r in g["rules"]} == set(alert_names())
    assert all(r["health"] != "err" for g in groups for r in g["rules"])
    await eventually(prom.targets_up, timeout=30)
    await eventually(lambda: prom.query("relay_log_events"), timeout=30)

    await produce_every_kind_of_event(relay, audit_bucket, out)

    async def sink_down_fires() -> list[dict[str, Any]]:
        return [a for a in await prom.alerts()
                if a["labels"]["alertname"] == "RelaySinkDown" and a["state"] == "firing"
                and a["labels"]["sink"] == "webhook:down"]  # fmt: skip

    firing = await eventually(sink_down_fires, timeout=60, interval=0.5)
    assert firing[0]["labels"]["severity"] == "warning"
    assert "webhook:down" in firing[0]["annotations"]["summary"]
    healthy = {"file:ok", "nats_objects:audit", "audit_bucket:trail"}
    assert {a["labels"]["sink"] for a in await prom.alerts()
            if a["labels"]["alertname"] == "RelaySinkDown"} & healthy == set()  # fmt: skip

    async def paused_fires() -> list[dict[str, Any]]:
        return [a["labels"]["sink"] for a in await prom.alerts()
                if a["labels"]["alertname"] == "RelaySinkPaused" and a["state"] == "firing"]  # fmt: skip

    assert await eventually(paused_fires, timeout=60, interval=0.5) == ["webhook:stuck"]
    others = {a["labels"]["alertname"] for a in await prom.alerts() if a["state"] == "firing"}
    assert "RelayAbsent" not in others and "RelaySinkBacklogOld" not in others

    assert await prom.label_values("sink", "relay_sink_up") == [
        "audit_bucket:trail", "file:ok", "nats_objects:audit", "webhook:down", "webhook:stuck"
    ]  # fmt: skip
    empty: dict[str, str] = {}
    for title, expr in dashboard_queries():

        async def answered(expr: str = expr) -> bool:
            return finite(await prom.query(expr))

        try:
            await eventually(answered, timeout=30, interval=0.5)
        except AssertionError:
            empty[title] = expr
    assert empty == {}, "dashboard queries without data"
    # the series that exist only after an event of their kind carry its labels
    assert await prom.query('relay_events_stale_total{sink="file:ok", action="flag"} == 1')
    assert await prom.query('relay_sink_orphaned{sink="file:gone"} == 1')
    assert await prom.query(
        'relay_sink_missed_events_total{sink="webhook:down", reason="max_backlog"} > 0'
    )
    assert await prom.query('relay_audit_self_events_total{sink="audit_bucket:trail"} == 1')
    assert await prom.query('relay_unexpected_principal_total{bucket="photos"} > 0')
    assert await prom.query('relay_events_filtered_total{event="s3:ObjectAccessed:Get"} == 1')
    assert await prom.query('relay_ingest_rejected_total{reason="unauthorized"} == 1')
    assert await prom.query("relay_events_duplicate_total == 1")
    assert await prom.query("relay_test_events_total == 1")
